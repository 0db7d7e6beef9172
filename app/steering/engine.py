"""The injection engine: add steering vectors to the residual stream, inside a ``with`` block.

``with engine.steer(rows):`` registers one forward hook per steered decoder layer and removes
every hook in ``finally``, also when the body raises or a streaming generator is closed early.
Each batch row gets its own delta (zero for an unsteered row), so baseline and steered outputs,
layer sweeps, strength sweeps and concurrent users all run as one batched forward pass.

Position modes (per row) decide which positions receive the delta; ``p`` is a token's position
id and ``L`` the row's prompt length in tokens:

    all        every position                       (default)
    prompt     p < L        (the prompt only)
    generated  p >= L       (generated tokens only)
    last       p >= L - 1   (the last prompt token, then every new token: the original lab's mode)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from app.steering.choices import POSITION_MODES, PositionMode, StrengthUnit
from app.steering.layers import get_layers, layer_output_tensor, replace_layer_output
from app.steering.model_lock import ModelLock
from app.steering.vectors import SteeringVector

LayerReader = Callable[[int, torch.Tensor], None]  # (layer index, hidden states [batch, pos, d_model])
ForwardHook = Callable[[nn.Module, tuple[Any, ...], Any], Any]  # (module, args, output) -> new output or None
_NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class Steer:
    """One concept applied at some layers with some strength.

    Attributes:
        vector: the concept's steering vector.
        strength: in ``unit``s; negative steers toward the opposite pole.
        layers: layers to steer; ``None`` means the vector's recommended layers.
        unit: ``normalized`` (strength × 10% of the layer's typical residual norm) or ``raw``.
    """

    vector: SteeringVector
    strength: float
    layers: tuple[int, ...] | None = None
    unit: StrengthUnit = "normalized"

    def resolved_layers(self) -> tuple[int, ...]:
        return tuple(self.layers) if self.layers is not None else tuple(self.vector.recommended_layers)


@dataclass(frozen=True)
class Steering:
    """Everything one batch row is steered with: several concepts, one position mode."""

    steers: tuple[Steer, ...] = ()
    positions: PositionMode = "all"

    @property
    def is_active(self) -> bool:
        return any(steer.strength != 0 for steer in self.steers)


NO_STEERING = Steering()


def row_deltas(steering: Steering, n_layers: int, hidden_size: int) -> dict[int, torch.Tensor]:
    """Sum every concept's delta per layer: layer -> ``[d_model]`` float32 (only non-zero layers)."""
    if steering.positions not in POSITION_MODES:
        raise ValueError(f"unknown position mode {steering.positions!r}: use one of {', '.join(POSITION_MODES)}")
    deltas: dict[int, torch.Tensor] = {}
    for steer in steering.steers:
        if steer.vector.hidden_size != hidden_size:
            raise ValueError(
                f"vector {steer.vector.name!r} has hidden size {steer.vector.hidden_size}; the model has {hidden_size}"
            )
        if steer.strength == 0:
            continue
        for layer in steer.resolved_layers():
            if not 0 <= layer < n_layers:
                raise ValueError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
            delta = steer.vector.delta(layer, steer.strength, steer.unit)
            deltas[layer] = deltas[layer] + delta if layer in deltas else delta
    return {layer: delta for layer, delta in deltas.items() if bool(delta.any())}


def _position_window(mode: PositionMode, prompt_length: int) -> tuple[int, int]:
    """Positions ``[start, end)`` that receive the delta."""
    return {
        "all": (0, _NO_LIMIT),
        "prompt": (0, prompt_length),
        "generated": (prompt_length, _NO_LIMIT),
        "last": (max(prompt_length - 1, 0), _NO_LIMIT),
    }[mode]


@dataclass
class _PositionGate:
    """Per-forward-pass mask ``[batch, pos, 1]`` of the positions each row steers."""

    modes: list[PositionMode]
    prompt_lengths: list[int] | None
    dtype: torch.dtype
    mask: torch.Tensor | None = None

    def update(self, position_ids: torch.Tensor) -> None:
        # position_ids: [batch or 1, pos]
        if self.prompt_lengths is None:
            # The first pass inside the block is the prompt: its last position ends each row's prompt.
            self.prompt_lengths = (position_ids.max(dim=-1).values + 1).tolist()
            if len(self.prompt_lengths) == 1 and len(self.modes) > 1:
                self.prompt_lengths = self.prompt_lengths * len(self.modes)
        windows = [_position_window(mode, length) for mode, length in zip(self.modes, self.prompt_lengths)]
        start = torch.tensor([w[0] for w in windows], device=position_ids.device)[:, None]
        end = torch.tensor([w[1] for w in windows], device=position_ids.device)[:, None]
        self.mask = ((position_ids >= start) & (position_ids < end)).to(self.dtype)[..., None]


@dataclass
class _ActiveHooks:
    owner: str
    handles: list[RemovableHandle] = field(default_factory=list)


class SteeringEngine:
    """Steers one model. Use :meth:`steer` as a context manager: it holds :attr:`lock` (re-entrant)
    for the whole block, so other threads' forward passes wait instead of passing through its hooks.
    The lock lets a user's work go before background work (app/steering/model_lock.py)."""

    def __init__(self, model: nn.Module, layer_path: str | None = None) -> None:
        self.model = model
        self.layers = get_layers(model, layer_path)
        self.n_layers = len(self.layers)
        config: Any = model.config
        self.hidden_size = int(config.hidden_size)
        self.lock = ModelLock()
        self._active: list[_ActiveHooks] = []

    @property
    def device(self) -> torch.device:
        """Where the first decoder layer's weights live (inputs go there)."""
        return next(self.layers[0].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The decoder layers' weight dtype (steering deltas are cast to it)."""
        return next(self.layers[0].parameters()).dtype

    @property
    def base_model(self) -> nn.Module:
        """The decoder stack without the language-model head (what extraction and analysis run)."""
        return getattr(self.model, "base_model", self.model)

    def active_hooks(self) -> list[str]:
        """Descriptions of the hooks registered now (empty outside ``steer`` and ``read_layers`` blocks)."""
        return [f"{block.owner}: {len(block.handles)} hooks" for block in self._active]

    def hook_count(self) -> int:
        """Hooks on the model's layers and base model right now, ours or anyone's."""
        modules = [*self.layers, self.base_model]
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)

    @contextmanager
    def steer(
        self,
        rows: Steering | Sequence[Steering],
        prompt_lengths: Sequence[int] | None = None,
    ) -> Iterator[None]:
        """Steer every forward pass inside the block.

        Args:
            rows: one :class:`Steering` for the whole batch, or one per batch row.
            prompt_lengths: each row's prompt length in tokens, for the prompt/generated/last
                modes; by default read from the first forward pass inside the block.
        """
        rows = [rows] if isinstance(rows, Steering) else list(rows)
        per_row = [row_deltas(row, self.n_layers, self.hidden_size) for row in rows]
        device, dtype = self.device, self.dtype
        steered_layers = sorted({layer for deltas in per_row for layer in deltas})
        stacked = {
            layer: torch.stack([deltas.get(layer, torch.zeros(self.hidden_size)) for deltas in per_row]).to(
                device=device, dtype=dtype
            )[:, None, :]  # [rows, 1, d_model]
            for layer in steered_layers
        }
        gate = None
        if any(row.positions != "all" for row in rows) and steered_layers:
            gate = _PositionGate(
                [row.positions for row in rows], list(prompt_lengths) if prompt_lengths else None, dtype
            )

        owner = ", ".join(sorted({s.vector.name for r in rows for s in r.steers})) or "none"

        def register() -> list[RemovableHandle]:
            handles = []
            if gate is not None:
                handles.append(self.base_model.register_forward_pre_hook(_make_gate_hook(gate), with_kwargs=True))
            for layer in steered_layers:
                handles.append(self.layers[layer].register_forward_hook(_make_add_hook(stacked[layer], gate)))
            return handles

        with self._hooks(owner, register):
            yield

    @contextmanager
    def read_layers(self, read: LayerReader, layers: Sequence[int] | None = None) -> Iterator[None]:
        """Call ``read(layer, hidden)`` with each chosen layer's output ``[batch, pos, d_model]`` on
        every forward pass inside the block (all layers by default).

        The one way to record activations (extraction, the analysis views): the hooks only read,
        so outputs are unchanged, and like :meth:`steer` they exist only inside the block, while
        :attr:`lock` is held. Entered inside a ``steer`` block, readings include the steering.
        """
        chosen = range(self.n_layers) if layers is None else list(layers)

        def register() -> list[RemovableHandle]:
            handles = []
            for layer in chosen:
                handles.append(self.layers[layer].register_forward_hook(_make_read_hook(layer, read)))
            return handles

        with self._hooks("reader", register):
            yield

    @contextmanager
    def _hooks(self, owner: str, register: Callable[[], list[RemovableHandle]]) -> Iterator[None]:
        """Hold the lock and the hooks ``register`` adds for the block; remove them in ``finally``."""
        block = _ActiveHooks(owner=owner)
        self.lock.acquire()  # hooks are global to the model: no one else's forward pass may see them
        try:
            try:
                block.handles.extend(register())
            except BaseException:
                _remove(block)
                raise
            self._active.append(block)
            try:
                yield
            finally:
                _remove(block)
                self._active.remove(block)
        finally:
            self.lock.release()


def _remove(block: _ActiveHooks) -> None:
    for handle in block.handles:
        handle.remove()
    block.handles.clear()


def _make_add_hook(delta: torch.Tensor, gate: _PositionGate | None) -> ForwardHook:
    """A forward hook adding ``delta`` ``[rows, 1, d_model]`` to a layer's output hidden states."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        hidden = layer_output_tensor(output)  # [batch, pos, d_model]
        if delta.shape[0] not in (1, hidden.shape[0]):
            raise ValueError(f"steering was set up for {delta.shape[0]} rows but the batch has {hidden.shape[0]}")
        add = delta if gate is None or gate.mask is None else delta * gate.mask
        return replace_layer_output(output, hidden + add)

    return hook


def _make_read_hook(layer: int, read: LayerReader) -> ForwardHook:
    """A forward hook that hands a layer's output hidden states to ``read`` and changes nothing."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        read(layer, layer_output_tensor(output))

    return hook


def _make_gate_hook(gate: _PositionGate) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
    """A base-model pre-hook that reads this pass's position ids and updates the gate's mask."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            inputs = kwargs.get("input_ids")
            if inputs is None:
                inputs = args[0] if args else kwargs.get("inputs_embeds")
            cache = kwargs.get("past_key_values")
            past = cache.get_seq_length() if cache is not None else 0
            if inputs is None:
                raise ValueError("a forward pass with neither input ids nor embeddings cannot be steered by position")
            position_ids = (torch.arange(inputs.shape[1], device=inputs.device) + past)[None, :]
        gate.update(position_ids)

    return hook
