"""Looking inside the model: per-layer views of a prompt, steering heatmaps, concept maps, sweeps.

- :func:`layer_view`: for one prompt, the residual-stream norm per layer and token, the logit
  lens (the model's final norm and unembedding applied to every layer's last position), and
  how each layer's residual lines up with a concept's direction.
- :func:`steering_heatmap`: tokens × layers, the cosine (or projection) of the residual stream
  on a concept direction, for the unsteered and a steered run of the same text.
- :func:`library_map` / :func:`examples_map`: 2-D maps of concept vectors and of one concept's
  example activations (UMAP, or PCA when there are too few points for UMAP).
- :func:`layer_sweep`, :func:`strength_sweep`, :func:`concept_mix`: one batched generation each
  (rows differ only in steering), scored with :func:`score_sweep` (Effect and perplexity).

Residuals are captured with forward hooks that exist only inside one ``with`` block, while the
engine's lock is held, so no other request's steering can leak into a reading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from app.engine import NO_STEERING, Steer, Steering, SteeringEngine, StrengthUnit
from app.extraction import capture
from app.generation import GenerationRequest, GenerationResult, encode_prompt
from app.layers import layer_output_tensor
from app.vectors import SteeringVector

MAX_TOKENS = 256  # the views draw one column per token; longer prompts are unreadable anyway
MIN_UMAP_POINTS = 15  # UMAP needs a neighbourhood graph; below this it fails or means nothing
STRENGTH_MULTIPLES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
Metric = Literal["cosine", "projection"]
MapMethod = Literal["auto", "umap", "pca"]
Generate = Callable[[Sequence[GenerationRequest]], list[GenerationResult]]

# Where the final norm (applied before the unembedding) lives, by config.model_type.
FINAL_NORM_PATHS: dict[str, str] = {
    "llama": "model.norm",
    "mistral": "model.norm",
    "qwen2": "model.norm",
    "qwen3": "model.norm",
    "phi3": "model.norm",
    "gemma": "model.norm",
    "gemma2": "model.norm",
    "gemma3_text": "model.norm",
    "gemma3": "model.language_model.norm",
    "stablelm": "model.norm",
    "gpt2": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
}
_FALLBACK_NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm")


# --- capture ----------------------------------------------------------------------------


def encode(tokenizer, text: str, *, chat: bool = False, is_chat: bool = False) -> list[int]:
    """Token ids of ``text`` (through the chat template when asked), checked for the views' size."""
    if not (text or "").strip():
        raise ValueError("the prompt is empty: type something to look at")
    ids = encode_prompt(tokenizer, text, chat, is_chat)
    if not ids:
        raise ValueError("the prompt encodes to no tokens: type at least one character")
    if len(ids) > MAX_TOKENS:
        raise ValueError(f"the prompt is {len(ids)} tokens; these views show at most {MAX_TOKENS}: shorten it")
    return ids


def token_texts(tokenizer, token_ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([t]) for t in token_ids]


@contextmanager
def _recording(layers: nn.ModuleList) -> Iterator[list[torch.Tensor | None]]:
    """Record every layer's output hidden states while the block runs (hooks removed after)."""
    outputs: list[torch.Tensor | None] = [None] * len(layers)

    def make_hook(index: int):
        def hook(module: nn.Module, args: tuple, output) -> None:
            outputs[index] = layer_output_tensor(output)[0].detach().float().cpu()  # [pos, d_model]

        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def residual_stream(engine: SteeringEngine, token_ids: Sequence[int], steering: Steering = NO_STEERING) -> torch.Tensor:
    """Every layer's output at every position of one text, in one forward pass.

    The recording hooks are registered after the steering hooks, so a steered layer's reading
    includes what steering added there.

    Returns:
        ``[n_layers, pos, d_model]`` float32 on the CPU.
    """
    device = engine._device_dtype[0]
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)  # [1, pos]
    positions = torch.arange(ids.shape[1], device=device)[None, :]
    with engine.lock, engine.steer(steering), _recording(engine.layers) as outputs:
        engine._base_model()(
            input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, use_cache=False
        )
    return torch.stack(outputs)  # type: ignore[arg-type]


# --- logit lens and the per-layer view --------------------------------------------------


def final_norm(model: nn.Module) -> nn.Module:
    """The norm a model applies to the last residual before its unembedding."""
    model_type = getattr(model.config, "model_type", "unknown")
    known = FINAL_NORM_PATHS.get(model_type)
    for path in (known,) if known else _FALLBACK_NORM_PATHS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(
        f"cannot find the final norm of this {model_type} model: add its path to app.analysis.FINAL_NORM_PATHS"
    )


@torch.inference_mode()
def logit_lens(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits the model would give if each residual ``[..., d_model]`` were its last.

    Applies the final norm, the unembedding and (Gemma 2/3) the logit soft-cap, exactly as the
    model does after its last layer. Returns float32 ``[..., vocab]`` on the CPU.
    """
    head = model.get_output_embeddings()
    parameter = next(head.parameters())
    logits = head(final_norm(model)(hidden.to(device=parameter.device, dtype=parameter.dtype))).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.cpu()


@dataclass
class LayerView:
    """What each layer holds for one prompt.

    Attributes:
        tokens: the prompt's tokens as text.
        norms: ``[n_layers, n_tokens]`` residual norm per layer and token.
        lens_tokens / lens_probs: per layer, the logit lens's top tokens at the last position
            and their probabilities (``[n_layers][k]``).
        concept: the concept whose direction ``cosine``/``projection`` measure, if any.
        cosine / projection: ``[n_layers]`` at the last token; ``mean_cosine`` over the tokens
            after the first (the first is an attention sink with an outsized norm).
    """

    tokens: list[str]
    norms: np.ndarray
    lens_tokens: list[list[str]]
    lens_probs: np.ndarray
    concept: str | None = None
    cosine: np.ndarray | None = None
    projection: np.ndarray | None = None
    mean_cosine: np.ndarray | None = None


def direction_scores(hidden: torch.Tensor, vector: SteeringVector, metric: Metric = "cosine") -> np.ndarray:
    """Cosine (or projection on the unit direction) of ``hidden`` ``[n_layers, pos, d]`` with the
    vector's direction at each layer: ``[n_layers, pos]``; NaN at layers the vector lacks."""
    if metric not in ("cosine", "projection"):
        raise ValueError(f"unknown metric {metric!r}: use 'cosine' or 'projection'")
    scores = np.full(hidden.shape[:2], np.nan)
    for layer in range(hidden.shape[0]):
        direction = vector.layers.get(layer)
        if direction is None or float(direction.norm()) == 0:
            continue
        projection = hidden[layer] @ (direction / direction.norm())  # [pos]
        if metric == "cosine":
            projection = projection / hidden[layer].norm(dim=-1).clamp_min(1e-12)
        scores[layer] = projection.numpy()
    return scores


def layer_view(
    engine: SteeringEngine,
    tokenizer,
    token_ids: Sequence[int],
    *,
    vector: SteeringVector | None = None,
    top_k: int = 5,
) -> LayerView:
    """Residual norms, the logit lens at the last position, and (with ``vector``) the concept's
    cosine and projection per layer, from one unsteered forward pass."""
    hidden = residual_stream(engine, token_ids)  # [n_layers, pos, d_model]
    probs = torch.softmax(logit_lens(engine.model, hidden[:, -1, :]), dim=-1)  # [n_layers, vocab]
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    view = LayerView(
        tokens=token_texts(tokenizer, token_ids),
        norms=hidden.norm(dim=-1).numpy(),
        lens_tokens=[token_texts(tokenizer, row) for row in top.indices.tolist()],
        lens_probs=top.values.numpy(),
    )
    if vector is not None:
        cosine = direction_scores(hidden, vector, "cosine")
        view.concept = vector.name
        view.cosine = cosine[:, -1]
        view.projection = direction_scores(hidden[:, -1:, :], vector, "projection")[:, 0]
        view.mean_cosine = cosine[:, 1:].mean(axis=1) if cosine.shape[1] > 1 else cosine[:, 0]
    return view


# --- steering heatmap -----------------------------------------------------------------


@dataclass
class Heatmap:
    """Tokens × layers scores of one text on a concept direction, without and with steering."""

    tokens: list[str]
    baseline: np.ndarray  # [n_layers, n_tokens]
    steered: np.ndarray  # [n_layers, n_tokens]
    concept: str
    metric: Metric
    steered_layers: list[int] = field(default_factory=list)

    @property
    def difference(self) -> np.ndarray:
        return self.steered - self.baseline


def steering_heatmap(
    engine: SteeringEngine,
    tokenizer,
    token_ids: Sequence[int],
    vector: SteeringVector,
    steering: Steering,
    metric: Metric = "cosine",
) -> Heatmap:
    """Score every token at every layer on ``vector``'s direction, unsteered and steered.

    The two runs are separate forward passes of the same text, so layers before the first
    steered layer give bit-identical readings and the difference starts where steering does.
    """
    baseline = direction_scores(residual_stream(engine, token_ids), vector, metric)
    steered = direction_scores(residual_stream(engine, token_ids, steering), vector, metric)
    layers = sorted({layer for steer in steering.steers if steer.strength for layer in steer.resolved_layers()})
    return Heatmap(token_texts(tokenizer, token_ids), baseline, steered, vector.name, metric, layers)


# --- concept maps -----------------------------------------------------------------------


@dataclass
class ConceptMap:
    """2-D positions of points (concept vectors or example activations) for a scatter plot."""

    coords: np.ndarray  # [n, 2]
    labels: list[str]  # what each point is (concept name, example text)
    groups: list[str]  # colour groups (category, pole)
    method: Literal["umap", "pca"]
    layer: int
    note: str = ""


def pca_2d(points: np.ndarray) -> np.ndarray:
    """First two principal coordinates ``[n, 2]``, signs fixed so reruns draw the same picture."""
    centered = points - points.mean(axis=0)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    axes = np.zeros((2, points.shape[1]))
    # n points span at most n - 1 directions; an axis along rounding noise is drawn as 0, not 1e-15
    real = [i for i in range(min(2, len(vt))) if singular[i] > 1e-9 * max(singular[0], 1e-300)]
    axes[real] = vt[real]
    for axis in axes:  # a principal axis' sign is arbitrary: point its largest entry up
        if axis[np.argmax(np.abs(axis))] < 0:
            axis *= -1
    return centered @ axes.T


def embed_2d(points: np.ndarray, method: MapMethod = "auto", random_state: int = 0) -> tuple[np.ndarray, str, str]:
    """Project ``points`` ``[n, d]`` to 2-D with UMAP (``auto``: when there are enough points) or PCA.

    Returns:
        ``(coords [n, 2], method used, note)``; the note says why PCA replaced UMAP.
    """
    n = len(points)
    if n < 2:
        raise ValueError(f"a map needs at least 2 points, got {n}")
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"unknown map method {method!r}: use auto, umap or pca")
    if method == "pca":
        return pca_2d(points), "pca", ""
    if n < MIN_UMAP_POINTS:
        return pca_2d(points), "pca", f"PCA: {n} points are too few for UMAP (it needs {MIN_UMAP_POINTS})"
    try:
        import umap  # slow to import (numba); only when a map is asked for

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), init="pca", random_state=random_state, n_jobs=1)
        return np.asarray(reducer.fit_transform(points), dtype=np.float64), "umap", ""
    except Exception as error:  # UMAP's failures on odd data must not cost the user the map
        return pca_2d(points), "pca", f"PCA: UMAP failed ({type(error).__name__}: {error})"


def _unit_rows(points: np.ndarray) -> np.ndarray:
    return points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)


def library_map(
    vectors: Mapping[str, SteeringVector],
    layer: int,
    groups: Mapping[str, str] | None = None,
    method: MapMethod = "auto",
) -> ConceptMap:
    """Every vector's direction at ``layer`` (unit length, so nearness means a small angle)."""
    usable = {name: v for name, v in vectors.items() if layer in v.layers and float(v.layers[layer].norm()) > 0}
    if len(usable) < 2:
        raise ValueError(f"a map needs at least 2 concept vectors with layer {layer}; {len(usable)} are ready")
    names = sorted(usable)
    points = _unit_rows(torch.stack([usable[name].layers[layer] for name in names]).double().numpy())
    coords, used, note = embed_2d(points, method)
    return ConceptMap(coords, names, [(groups or {}).get(name, "concept") for name in names], used, layer, note)  # type: ignore[arg-type]


def examples_map(
    engine: SteeringEngine,
    tokenizer,
    positive: Sequence[str],
    negative: Sequence[str],
    layer: int,
    labels: tuple[str, str] = ("positive", "negative"),
    method: MapMethod = "auto",
    progress: Callable[[float, str], None] | None = None,
) -> ConceptMap:
    """A concept's example sentences at ``layer``: each pooled activation, centred and unit length."""
    if not 0 <= layer < engine.n_layers:
        raise ValueError(
            f"layer {layer} is out of range: the model has {engine.n_layers} layers (0..{engine.n_layers - 1})"
        )
    texts = [*positive, *negative]
    with engine.lock:  # capture's hooks must not see another request's forward pass
        pooled = capture(engine, tokenizer, texts, progress=progress).pooled[:, layer, :].double().numpy()  # [n, d]
    points = _unit_rows(pooled - pooled.mean(axis=0))
    coords, used, note = embed_2d(points, method)
    groups = [labels[0]] * len(positive) + [labels[1]] * len(negative)
    return ConceptMap(coords, texts, groups, used, layer, note)  # type: ignore[arg-type]


# --- sweeps ---------------------------------------------------------------------------


@dataclass
class Sweep:
    """Outputs of one batched generation whose rows differ only in steering.

    Row 0 is always the unsteered baseline. ``effect`` maps a concept to each row's Effect;
    ``perplexity`` is each output's perplexity under the unsteered model (fluency).
    """

    kind: Literal["layer", "strength", "mix"]
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


def _sweep(kind, request: GenerationRequest, rows: list[Steering], labels: list[str], x: list) -> Sweep:
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
    tokenizer,
    *,
    references: Mapping[str, tuple[Sequence[str], Sequence[str]]] | None = None,
    is_chat: bool = False,
) -> Sweep:
    """Fill in Effect (per concept in ``references``: its positive and negative reference texts)
    and the perplexity of each output's tokens after its prompt under the unsteered model."""
    from app import metrics  # loads the sentence-embedding model on first use

    for name, (positive, negative) in (references or {}).items():
        sweep.effect[name] = metrics.effect(sweep.texts, positive, negative).tolist()
    prompts = [encode_prompt(tokenizer, r.prompt, r.chat, is_chat) for r in sweep.requests]
    with engine.lock:  # no one else's steering hooks while we score
        sweep.perplexity = metrics.perplexity_from_ids(
            engine.model, [p + ids for p, ids in zip(prompts, sweep.token_ids)], [len(p) for p in prompts]
        )
    return sweep
