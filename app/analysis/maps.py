"""2-D maps of concept vectors and of one concept's example activations (UMAP, or PCA when there
are too few points for UMAP)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from app.progress import Progress
from app.steering.engine import SteeringEngine
from app.steering.extraction import capture
from app.steering.vectors import SteeringVector

MIN_UMAP_POINTS = 15  # UMAP needs a neighbourhood graph; below this it fails or means nothing
MapMethod = Literal["auto", "umap", "pca"]


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
        from app.analysis.umap_cache import umap_2d  # slow to import (numba); only when a map is asked for

        return umap_2d(points, random_state), "umap", ""
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
    tokenizer: PreTrainedTokenizerBase,
    positive: Sequence[str],
    negative: Sequence[str],
    layer: int,
    labels: tuple[str, str] = ("positive", "negative"),
    method: MapMethod = "auto",
    progress: Progress | None = None,
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
