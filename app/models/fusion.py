"""One panel product for a layer's query, key and value projections, and one for its MLP's gate and up.

A decoding step of SmolLM2 makes 7 products a layer, 211 in all, each of 0.4-3.5 MB of weights:
at that size the Python around a product (module calls, checks, an empty result) and the hand-off
to the helper threads are a measurable part of the step. q, k and v read the same input rows, as
do the MLP's gate and up; with their panels laid end to end in one tensor they make one product
instead of three (two): 121 products a step, about 6% less time a step on SmolLM2
(docs/performance.md). The decoder layer's other steps run as transformers writes them, in the
same order, with the same bits.

The bits are the same because the panel product computes each output on its own (``panels.c``:
the sum over the input in order, whatever else is in the panel tensor), and the rotary embedding
is applied to q and k in one elementwise pass with the very operations transformers uses.

Nothing about the model changes but how these products run: each projection keeps its module,
its parameter (a view into the fused tensor: no memory is added) and its place in the state
dict. A fused block checks on every call that its projections still read the fused tensor and
carry no hooks; otherwise it runs transformers' own forward, calling each projection. Fusing
needs panel weights (:mod:`app.models.kernels`, which fuses after laying weights out in panels
and unfuses before putting them back) and an attention or MLP class whose forward is written out
below (``ATTENTION``, ``MLP``); any other block is left as it is (Gemma's attention, with its q and
k norms, runs as written; its MLP is fused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules import module as torch_module
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from app.models import panels

# The attention classes whose forward FusedAttention reproduces, and the extra keyword each passes
# to the attention function (Llama passes none; Qwen2 its layer's window, Mistral the config's).
ATTENTION: dict[str, Callable[[nn.Module], dict[str, Any]]] = {
    "LlamaAttention": lambda block: {},
    "Qwen2Attention": lambda block: {"sliding_window": block.sliding_window},
    "MistralAttention": lambda block: {"sliding_window": getattr(block.config, "sliding_window", None)},
}
MLP = ("LlamaMLP", "Qwen2MLP", "MistralMLP", "GemmaMLP", "Gemma2MLP", "Gemma3MLP")  # down(act(gate(x)) * up(x))

_fused_classes: dict[type, type] = {}


def fuse(model: nn.Module) -> int:
    """Give each attention and MLP block of ``model`` whose projections hold panel weights one fused
    product; returns how many blocks were fused."""
    fused = 0
    for block in list(model.modules()):
        name = type(block).__name__
        if name in ATTENTION:
            parts: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
        elif name in MLP:
            parts = ("gate_proj", "up_proj")
        else:
            continue
        projections = [getattr(block, part, None) for part in parts]
        if all(isinstance(p, nn.Linear) for p in projections) and _fusable(cast(list[nn.Linear], projections)):
            _fuse_block(block, cast(list[nn.Linear], projections))
            fused += 1
    return fused


def unfuse(model: nn.Module) -> int:
    """Undo :func:`fuse`: each projection gets its own copy of its panels again; returns how many blocks."""
    undone = 0
    for block in list(model.modules()):
        if not isinstance(block, _Fused):
            continue
        for projection in block.fused_parts():
            projection.weight = nn.Parameter(projection.weight.detach().clone(), requires_grad=False)
            if projection.bias is not None:
                bias = projection.bias
                projection.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        del block.fused_weight, block.fused_bias
        block.__class__ = cast(type[_Fused], block.unfused_class)
        undone += 1
    return undone


def _fusable(projections: list[nn.Linear]) -> bool:
    """Panel weights over the same input, each a whole number of panels, with a bias on all or none."""
    weights = [p.weight for p in projections]
    whole = all(
        w.dim() == 3 and w.shape[2] == panels.PANEL and p.out_features % panels.PANEL == 0
        for p, w in zip(projections, weights)
    )
    return (
        whole
        and len({w.shape[1] for w in weights}) == 1
        and len({w.dtype for w in weights}) == 1
        and weights[0].dtype == torch.float32
        and all(w.device.type == "cpu" for w in weights)
        and len({p.bias is None for p in projections}) == 1
    )


def _fuse_block(block: nn.Module, projections: list[nn.Linear]) -> None:
    weight = torch.cat([p.weight.detach() for p in projections])  # [panels, in, 16]: end to end
    bias = (
        None if projections[0].bias is None else torch.cat([cast(torch.Tensor, p.bias).detach() for p in projections])
    )
    start = 0
    outputs = 0
    for projection in projections:
        count = projection.weight.shape[0]
        projection.weight = nn.Parameter(weight[start : start + count], requires_grad=False)
        if bias is not None:  # a view too, keeping its flag (kernels.restore gives back what it found)
            trainable = cast(torch.Tensor, projection.bias).requires_grad
            projection.bias = nn.Parameter(bias[outputs : outputs + projection.out_features], requires_grad=trainable)
        start += count
        outputs += projection.out_features
    original = type(block)
    if original not in _fused_classes:
        mixin = FusedAttention if original.__name__ in ATTENTION else FusedMLP
        _fused_classes[original] = type(f"Fused{original.__name__}", (mixin, original), {"unfused_class": original})
    block.__class__ = _fused_classes[original]
    fused = cast(_Fused, block)
    fused.fused_weight = weight
    fused.fused_bias = bias


def _no_hooks(module: nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks)


class _Fused(nn.Module):
    """What a fused block holds: its projections' panels end to end (and their biases)."""

    fused_weight: torch.Tensor  # [panels, in, 16]
    fused_bias: torch.Tensor | None
    unfused_class: type[nn.Module]
    PARTS: tuple[str, ...] = ()

    def fused_parts(self) -> list[nn.Linear]:
        return [cast(nn.Linear, getattr(self, part)) for part in self.PARTS]

    def intact(self) -> bool:
        """Whether the fused product may stand in for the projections' own calls: they still read the
        fused tensor (nothing replaced a weight or bias since), and no hook waits on them."""
        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return False
        start = self.fused_weight.data_ptr()
        bias = None if self.fused_bias is None else self.fused_bias.data_ptr()
        for part in self.fused_parts():
            if not _no_hooks(part) or part.weight.data_ptr() != start:
                return False
            start += part.weight.numel() * 4
            if bias is not None:
                if part.bias is None or part.bias.data_ptr() != bias:
                    return False
                bias += part.out_features * 4
        return True

    def fused_product(self, x: torch.Tensor) -> torch.Tensor:
        return panels.product(
            x, self.fused_weight, self.fused_bias, self.fused_weight.shape[0] * panels.PANEL, torch.get_num_threads()
        )


class FusedAttention(_Fused):
    """A Llama-family attention block whose q, k and v come from one product (module docstring)."""

    PARTS = ("q_proj", "k_proj", "v_proj")

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        block = cast(Any, self)
        attend = ALL_ATTENTION_FUNCTIONS.get(block.config._attn_implementation)  # None: eager, or unknown
        if attend is None or self.training or not self.intact():  # eager attention, training, hooks: as written
            unfused = cast(Any, self.unfused_class)
            return cast(
                tuple[torch.Tensor, torch.Tensor | None],
                unfused.forward(self, hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs),
            )
        batch, length, _ = hidden_states.shape
        size = block.head_dim
        queries = block.q_proj.out_features // size
        keys = block.k_proj.out_features // size
        qkv = self.fused_product(hidden_states).view(batch, length, -1, size)  # [batch, pos, q + k + v heads, head]
        qk = qkv[:, :, : queries + keys]
        cos, sin = (e.unsqueeze(2) for e in position_embeddings)  # [batch, pos, 1, head]
        half = size // 2
        qk = (qk * cos) + (torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin)  # transformers' rotary
        query = qk[:, :, :queries].transpose(1, 2)  # [batch, heads, pos, head]
        key = qk[:, :, queries:].transpose(1, 2)
        value = qkv[:, :, queries + keys :].transpose(1, 2)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, block.layer_idx)
        extra = ATTENTION[self.unfused_class.__name__](self)
        output, weights = attend(
            self, query, key, value, attention_mask, dropout=0.0, scaling=block.scaling, **extra, **kwargs
        )
        output = output.reshape(batch, length, -1).contiguous()
        return block.o_proj(output), weights


class FusedMLP(_Fused):
    """A Llama-family MLP whose gate and up come from one product (module docstring)."""

    PARTS = ("gate_proj", "up_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = cast(Any, self)
        if self.training or not self.intact():
            return cast(torch.Tensor, cast(Any, self.unfused_class).forward(self, x))
        both = self.fused_product(x)  # [..., gate + up]
        middle = block.gate_proj.out_features
        return cast(torch.Tensor, block.down_proj(block.act_fn(both[..., :middle]) * both[..., middle:]))
