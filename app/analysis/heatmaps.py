"""Tokens × layers: how much the residual stream points along a concept, unsteered and steered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from app.analysis.residuals import DirectionMetric, direction_scores, residual_stream, token_texts
from app.steering.engine import Steering, SteeringEngine
from app.steering.vectors import SteeringVector


@dataclass
class Heatmap:
    """Tokens × layers scores of one text on a concept direction, without and with steering."""

    tokens: list[str]
    baseline: np.ndarray  # [n_layers, n_tokens]
    steered: np.ndarray  # [n_layers, n_tokens]
    concept: str
    metric: DirectionMetric
    steered_layers: list[int] = field(default_factory=list)

    @property
    def difference(self) -> np.ndarray:
        return self.steered - self.baseline


def steering_heatmap(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    token_ids: Sequence[int],
    vector: SteeringVector,
    steering: Steering,
    metric: DirectionMetric = "cosine",
) -> Heatmap:
    """Score every token at every layer on ``vector``'s direction, unsteered and steered.

    The two runs are separate forward passes of the same text, so layers before the first
    steered layer give bit-identical readings and the difference starts where steering does.
    """
    baseline = direction_scores(residual_stream(engine, token_ids), vector, metric)
    steered = direction_scores(residual_stream(engine, token_ids, steering), vector, metric)
    layers = sorted({layer for steer in steering.steers if steer.strength for layer in steer.resolved_layers()})
    return Heatmap(token_texts(tokenizer, token_ids), baseline, steered, vector.name, metric, layers)
