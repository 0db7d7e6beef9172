"""Layer sweeps, strength sweeps and concept mixes: one batched generation each (rows differ only
in steering), scored with :func:`score_sweep` (Effect and perplexity)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from transformers import PreTrainedTokenizerBase

from app.steering.engine import NO_STEERING, Steer, Steering, SteeringEngine, StrengthUnit
from app.steering.generation import GenerationRequest, GenerationResult, encode_prompt
from app.steering.vectors import SteeringVector

SweepKind = Literal["layer", "strength", "mix"]
STRENGTH_MULTIPLES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
Generate = Callable[[Sequence[GenerationRequest]], list[GenerationResult]]


@dataclass
class Sweep:
    """Outputs of one batched generation whose rows differ only in steering.

    Row 0 is always the unsteered baseline. ``effect`` maps a concept to each row's Effect;
    ``perplexity`` is each output's perplexity under the unsteered model (fluency).
    """

    kind: SweepKind
    labels: list[str]
    x: list[float | None]  # the swept value per row (None for the baseline and mixes)
    requests: list[GenerationRequest]
    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    effect: dict[str, list[float]] = field(default_factory=dict)
    perplexity: list[float] = field(default_factory=list)


def sweep_layers(n_layers: int, step: int = 1, max_rows: int = 16) -> list[int]:
    """Layers ``0, step, 2·step, …`` checked against the rows one batch may hold (one is the baseline)."""
    if step < 1:
        raise ValueError(f"the layer step must be at least 1, got {step}")
    layers = list(range(0, n_layers, step))
    if len(layers) + 1 > max_rows:
        need = -(-n_layers // (max_rows - 1))
        raise ValueError(
            f"{len(layers)} layers and a baseline are {len(layers) + 1} rows, over the limit of {max_rows}: "
            f"use every {need}th layer or more"
        )
    return layers


def layer_sweep(
    request: GenerationRequest,
    vector: SteeringVector,
    strength: float,
    layers: Sequence[int],
    unit: StrengthUnit = "normalized",
) -> Sweep:
    """One row per layer, each steered at that layer only (same prompt, seed and settings)."""
    rows = [Steering((Steer(vector, strength, (layer,), unit),), request.steering.positions) for layer in layers]
    return _sweep("layer", request, rows, [f"layer {layer}" for layer in layers], [float(x) for x in layers])


def strength_sweep(
    request: GenerationRequest,
    vector: SteeringVector,
    base_strength: float,
    layers: Sequence[int] | None = None,
    multiples: Sequence[float] = STRENGTH_MULTIPLES,
    unit: StrengthUnit = "normalized",
) -> Sweep:
    """One row per multiple of ``base_strength`` (by default 0.5× to 5× the recommended one)."""
    chosen = tuple(layers) if layers else None
    strengths = [base_strength * m for m in multiples]
    rows = [Steering((Steer(vector, s, chosen, unit),), request.steering.positions) for s in strengths]
    labels = [f"{m:g}× ({s:.2g})" for m, s in zip(multiples, strengths)]
    return _sweep("strength", request, rows, labels, strengths)


def concept_mix(request: GenerationRequest, steers: Sequence[Steer]) -> Sweep:
    """Each concept alone at its weight, then all of them together (one :class:`Steering`)."""
    active = [s for s in steers if s.strength != 0]
    if len(active) < 2:
        raise ValueError("mixing needs at least two concepts with a non-zero weight")
    positions = request.steering.positions
    rows = [Steering((s,), positions) for s in active] + [Steering(tuple(active), positions)]
    labels = [f"{s.vector.name} ×{s.strength:g}" for s in active] + [
        " + ".join(f"{s.vector.name} ×{s.strength:g}" for s in active)
    ]
    return _sweep("mix", request, rows, labels, [None] * len(rows))


def _sweep(
    kind: SweepKind, request: GenerationRequest, rows: list[Steering], labels: list[str], x: Sequence[float | None]
) -> Sweep:
    requests = [replace(request, steering=NO_STEERING)] + [replace(request, steering=row) for row in rows]
    return Sweep(kind, ["baseline", *labels], [None, *x], requests)


def run_sweep(sweep: Sweep, generate: Generate) -> Sweep:
    """Generate every row of ``sweep`` in one batched call and keep the texts."""
    results = generate(sweep.requests)
    sweep.texts = [r.text for r in results]
    sweep.token_ids = [list(r.token_ids) for r in results]
    return sweep


def score_sweep(
    sweep: Sweep,
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    *,
    references: Mapping[str, tuple[Sequence[str], Sequence[str]]] | None = None,
    is_chat: bool = False,
) -> Sweep:
    """Fill in Effect (per concept in ``references``: its positive and negative reference texts)
    and the perplexity of each output's tokens after its prompt under the unsteered model."""
    from app.analysis import metrics  # loads the sentence-embedding model on first use

    for name, (positive, negative) in (references or {}).items():
        sweep.effect[name] = metrics.effect(sweep.texts, positive, negative).tolist()
    prompts = [encode_prompt(tokenizer, r.prompt, r.chat, is_chat) for r in sweep.requests]
    with engine.lock:  # no one else's steering hooks while we score
        sweep.perplexity = metrics.perplexity_from_ids(
            engine.model, [p + ids for p, ids in zip(prompts, sweep.token_ids)], [len(p) for p in prompts]
        )
    return sweep
