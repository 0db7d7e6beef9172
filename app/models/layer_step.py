"""A decoding step of a Llama-family decoder layer as one call into the compiled library (``layer_step.c``).

After fusion (:mod:`app.models.fusion`) and the compiled norms (:mod:`app.models.norms`), a
SmolLM2 decoding step still spent about a third of its time between the panel products: some 25
tensor operations a layer (the rotary embedding, the cache's concatenations, attention, SiLU, the
residual sums), each a few microseconds of dispatch for a few hundred floats. With one new position
per row, a layer's whole step is one C call: norm, the fused q/k/v product, rotary, the new key and
value written into the cache, attention, o, residual, norm, the fused gate/up product, SiLU, down,
residual (docs/performance.md has the figures).

The call stands in for the layer's forward only where it computes what that forward would:

- one new position per row (prompts still run through transformers, fused as before);
- inference on float32 CPU weights, with the layer's blocks fused and its norms compiled, SiLU as
  the MLP's activation, and torch's attention (``sdpa`` or ours, not ``eager``);
- no hook on any module inside the layer (hooks on the layer itself, which is where steering adds
  its vectors, run as always: the call is the layer's forward);
- a cache layer that is transformers' plain ``DynamicLayer`` holding this batch, and a boolean mask
  (or none) over exactly its keys and the new one, with no sliding window cutting them.

Anything else runs transformers' forward. The cache keeps its type and its meaning: each layer's
keys and values become views of a larger buffer, so a step writes one position instead of
concatenating the whole cache again; ``crop``, ``get_seq_length`` and the rest read the views as
before, and anything that replaces the tensors (a prompt's concatenation, ``batch_select_indices``)
simply makes the next step start a new buffer.

Each row is computed on its own, so a row's result does not depend on its batch. The attention and
SiLU are not torch's kernels, so logits are not bit-equal to transformers': over 90 greedy steps
they moved by at most 8e-5 on SmolLM2 and 5e-5 on Qwen 0.5B (logits up to 36), with the same
tokens; the new keys and values of the first layer are the same bits (tests/test_layer_step.py).
"""

from __future__ import annotations

import ctypes
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules import module as torch_module
from transformers.cache_utils import DynamicCache, DynamicLayer

from app.models import attention, fusion, mixins, panels
from app.models.norms import CompiledRMSNorm

LAYERS = ("LlamaDecoderLayer", "Qwen2DecoderLayer", "MistralDecoderLayer")
ATTENTION = (attention.NAME, "sdpa")  # torch's attention, which the C attention stands in for
MIN_CAPACITY = 64  # positions a new cache buffer holds beyond the keys it starts with, at least


class _Layer(ctypes.Structure):
    """``layer_t`` in layer_step.c."""

    _fields_ = [
        ("input_norm", ctypes.c_void_p),
        ("post_norm", ctypes.c_void_p),
        ("input_eps", ctypes.c_float),
        ("post_eps", ctypes.c_float),
        ("qkv", ctypes.c_void_p),
        ("qkv_bias", ctypes.c_void_p),
        ("o", ctypes.c_void_p),
        ("o_bias", ctypes.c_void_p),
        ("gate_up", ctypes.c_void_p),
        ("gate_up_bias", ctypes.c_void_p),
        ("down", ctypes.c_void_p),
        ("down_bias", ctypes.c_void_p),
        ("width", ctypes.c_long),
        ("heads", ctypes.c_long),
        ("kv_heads", ctypes.c_long),
        ("head_dim", ctypes.c_long),
        ("middle", ctypes.c_long),
        ("scaling", ctypes.c_float),
    ]


def use(model: nn.Module) -> int:
    """Give each decoder layer of ``model`` listed in ``LAYERS`` the one-call decoding step; returns how many."""
    changed = 0
    for module in model.modules():
        if type(module).__name__ in LAYERS and getattr(module, "self_attn", None) is not None:
            mixins.mix_in(module, OneCallLayer, "OneCall")
            changed += 1
    return changed


def restore(model: nn.Module) -> int:
    """Undo :func:`use`; returns how many layers went back to transformers' forward."""
    restored = mixins.mix_out(model, OneCallLayer)
    for module in restored:
        module.__dict__.pop("_step_layout", None)
    return len(restored)


class OneCallLayer(nn.Module):
    """A decoder layer whose decoding step is one call where it can be (module docstring)."""

    plain_class: type[nn.Module]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if hidden_states.shape[1] == 1 and not self.training and position_embeddings is not None:
            layout = self._layout()
            cache = None if layout is None else _cache_layer(past_key_values, layout.index)
            if layout is not None and cache is not None:
                stepped = _step(layout, hidden_states, attention_mask, cache, position_embeddings)
                if stepped is not None:
                    return stepped
        plain = cast(Any, self.plain_class)
        return cast(
            torch.Tensor,
            plain.forward(
                self,
                hidden_states,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            ),
        )

    def _layout(self) -> _Layout | None:
        """What the C step reads of this layer, or None when the step cannot stand in for the forward now."""
        layout: _Layout | None = self.__dict__.get("_step_layout")
        if layout is not None and layout.current():
            return layout
        layout = _Layout.of(self)
        self.__dict__["_step_layout"] = layout
        return layout


class _Layout:
    """A layer's weights and shape for the C step (``layer_t``), and what they were read from.

    Made once and checked on every call (:meth:`current`, a few microseconds): the layer's parts are
    the same modules of the same classes with no hooks, and their parameters the same tensors at the
    same addresses. Anything else (a hook, a replaced weight, kernels.restore) makes a new one.
    """

    def __init__(self, layer: nn.Module) -> None:
        block = cast(Any, layer)
        self.config: Any = block.self_attn.config
        self.index: int = block.self_attn.layer_idx
        parents = (layer, block.self_attn, block.mlp)
        self.children = tuple(
            (parent._modules, name, child)
            for parent in parents
            for name, child in parent._modules.items()
            if child is not None
        )
        self.watched = tuple((child, type(child)) for _, _, child in self.children)
        self.params = tuple(
            (child._parameters, name, tensor, 0 if tensor is None else tensor.data_ptr())
            for _, _, child in self.children
            for name, tensor in child._parameters.items()
        )
        self.norms: tuple[Any, Any] = (block.input_layernorm, block.post_attention_layernorm)
        self.eps = (self.norms[0].variance_epsilon, self.norms[1].variance_epsilon)
        self.struct = _Layer()
        self.window: int | None = None

    def current(self) -> bool:
        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return False
        if self.config._attn_implementation not in ATTENTION:
            return False
        for modules, name, child in self.children:
            if modules.get(name) is not child:
                return False
        for child, kind in self.watched:
            if child.__class__ is not kind or child._forward_hooks or child._forward_pre_hooks:
                return False
        for params, name, tensor, address in self.params:
            now = params.get(name)
            if now is not tensor or (now is not None and now.data_ptr() != address):
                return False
        return (self.norms[0].variance_epsilon, self.norms[1].variance_epsilon) == self.eps

    @classmethod
    def of(cls, layer: nn.Module) -> _Layout | None:
        block = cast(Any, layer)
        if not (isinstance(block.self_attn, fusion.FusedAttention) and isinstance(block.mlp, fusion.FusedMLP)):
            return None
        attn: Any = block.self_attn
        mlp: Any = block.mlp
        norms: tuple[Any, Any] = (block.input_layernorm, block.post_attention_layernorm)
        if type(attn.o_proj) is not panels.PanelLinear or type(mlp.down_proj) is not panels.PanelLinear:
            return None
        if not all(isinstance(n, CompiledRMSNorm) for n in norms):
            return None
        layout = cls(layer)
        if not layout.current() or not (attn.intact() and mlp.intact()):
            return None
        size = attn.head_dim
        heads, kv_heads = attn.q_proj.out_features // size, attn.k_proj.out_features // size
        middle = mlp.gate_proj.out_features
        width = norms[0].weight.shape[0]
        parts: tuple[torch.Tensor | None, ...] = (attn.fused_weight, attn.fused_bias, attn.o_proj.weight)
        parts += (attn.o_proj.bias, mlp.fused_weight, mlp.fused_bias, mlp.down_proj.weight, mlp.down_proj.bias)
        parts += (norms[0].weight, norms[1].weight)
        tensors = [p for p in parts if p is not None]
        panel = panels.PANEL
        q_out, kv_out = heads * size, kv_heads * size
        shapes = (  # what layer_step.c reads by address: every size it assumes
            (attn.fused_weight, ((q_out + 2 * kv_out) // panel, width, panel)),
            (attn.fused_bias, (q_out + 2 * kv_out,)),
            (attn.o_proj.weight, (-(-width // panel), q_out, panel)),
            (attn.o_proj.bias, (width,)),
            (mlp.fused_weight, (2 * middle // panel, width, panel)),
            (mlp.fused_bias, (2 * middle,)),
            (mlp.down_proj.weight, (-(-width // panel), middle, panel)),
            (mlp.down_proj.bias, (width,)),
            (norms[1].weight, (width,)),
        )
        usable = (
            getattr(attn.config, "hidden_act", None) == "silu"
            and size % 8 == 0
            and heads % kv_heads == 0
            and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors)
            and all(t is None or tuple(t.shape) == shape for t, shape in shapes)
        )
        if not usable:
            return None
        address = [0 if p is None else p.data_ptr() for p in parts]
        s = layout.struct
        s.qkv, s.qkv_bias, s.o, s.o_bias, s.gate_up = address[:5]
        s.gate_up_bias, s.down, s.down_bias, s.input_norm, s.post_norm = address[5:]
        s.input_eps, s.post_eps = layout.eps
        s.width, s.heads, s.kv_heads, s.head_dim, s.middle = width, heads, kv_heads, size, middle
        s.scaling = attn.scaling
        layout.window = fusion.ATTENTION[attn.unfused_class.__name__](attn).get("sliding_window")
        return layout


def _cache_layer(cache: Any, index: int) -> DynamicLayer | None:
    """The plain dynamic cache layer the step may write into, or None."""
    if not isinstance(cache, DynamicCache) or index >= len(cache.layers):
        return None
    layer = cache.layers[index]
    if type(layer) is not DynamicLayer or not layer.is_initialized or cast(torch.Tensor, layer.keys).dim() != 4:
        return None
    return layer


def _buffers(layer: DynamicLayer, rows: int, struct: _Layer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Buffers whose first positions are the layer's keys and values, with room for one more; None
    when the cache does not hold ``rows`` float32 rows of the layer's key heads."""
    keys, values = cast(torch.Tensor, layer.keys), cast(torch.Tensor, layer.values)
    if keys.shape != (rows, struct.kv_heads, keys.shape[2], struct.head_dim) or keys.shape != values.shape:
        return None
    if keys.dtype != torch.float32 or values.dtype != torch.float32 or keys.device.type != "cpu":
        return None
    length = keys.shape[2]
    held = layer.__dict__.get("_step_buffers")
    if held is not None:
        k, v = held
        if (
            keys.data_ptr() == k.data_ptr()
            and values.data_ptr() == v.data_ptr()
            and keys.stride() == k.stride()
            and values.stride() == v.stride()
            and length < k.shape[2]
        ):
            return held
    capacity = length + max(length // 2, MIN_CAPACITY)  # grows by half: a copy now and then, little memory idle
    k = keys.new_empty(keys.shape[0], keys.shape[1], capacity, keys.shape[3])
    v = values.new_empty(values.shape[0], values.shape[1], capacity, values.shape[3])
    k[:, :, :length] = keys
    v[:, :, :length] = values
    layer.__dict__["_step_buffers"] = (k, v)
    return k, v


def _per_row(values: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``values`` [rows or 1, n] as a contiguous [rows, n] (one row shared by a batch is repeated), or None."""
    if values.shape[0] == rows:
        return values.contiguous()
    return values.expand(rows, -1).contiguous() if values.shape[0] == 1 else None


def _step(
    layout: _Layout,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    cache: DynamicLayer,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor | None:
    """The C step for ``hidden`` [rows, 1, width], or None where it does not apply (module docstring)."""
    rows = hidden.shape[0]
    if hidden.dtype != torch.float32 or hidden.device.type != "cpu" or hidden.shape[2] != layout.struct.width:
        return None
    length = cast(torch.Tensor, cache.keys).shape[2]
    if layout.window is not None and length + 1 > layout.window:
        return None
    if mask is not None:  # [rows or 1, 1, 1, keys]
        if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:] != (1, 1, length + 1):
            return None
        mask = _per_row(mask.reshape(mask.shape[0], length + 1), rows)
        if mask is None:
            return None
    buffers = _buffers(cache, rows, layout.struct)
    if buffers is None:
        return None
    keys, values = buffers
    cos, sin = (_per_row(e.reshape(e.shape[0], -1), rows) for e in position_embeddings)  # [rows, head_dim]
    if cos is None or sin is None or cos.shape[1] != layout.struct.head_dim or cos.dtype != torch.float32:
        return None
    hidden = hidden.contiguous()
    out = torch.empty_like(hidden)
    failed = panels.library().layer_step(
        ctypes.byref(layout.struct),
        hidden.data_ptr(),
        out.data_ptr(),
        rows,
        cos.data_ptr(),
        sin.data_ptr(),
        keys.data_ptr(),
        values.data_ptr(),
        keys.shape[2],
        length,
        None if mask is None else mask.data_ptr(),
        torch.get_num_threads(),
    )
    if failed:
        raise MemoryError("no memory for a decoding step's scratch space")
    cache.keys, cache.values = keys[:, :, : length + 1], values[:, :, : length + 1]
    return out
