"""A recommended strength for a concept on a model, found by a cheap one-pass sweep.

Strength in normalized units already means about the same on every layer and model, but how
much a concept's own direction moves the output still varies. So for each candidate strength we
measure, in one batched forward pass over a few neutral prompts, how far steering moves the
next-token distribution (KL divergence from the unsteered one, in nats). The recommended strength
is the smallest candidate whose median KL reaches ``TARGET_KL``: clearly visible, still coherent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from app.steering.engine import Steer, Steering, SteeringEngine
from app.steering.generation import left_pad
from app.steering.vectors import SteeringVector

NEUTRAL_PROMPTS: tuple[str, ...] = (
    "Tell me about your day.",
    "The meeting went",
    "Here is what I think about the weather:",
    "My favourite place in the city is",
)
CANDIDATES: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)
TARGET_KL = 0.5
DEFAULT_STRENGTH = 4.0


@torch.inference_mode()
def next_token_kl(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    vector: SteeringVector,
    layers: Sequence[int],
    strengths: Sequence[float] = CANDIDATES,
    prompts: Sequence[str] = NEUTRAL_PROMPTS,
) -> list[float]:
    """Median KL(steered || unsteered) of the next token over ``prompts``, per strength."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [(s, ids) for s in (0.0, *strengths) for ids in encoded]
    input_ids, mask = left_pad([ids for _, ids in rows], pad_id)
    device = engine.device
    steering = [Steering((Steer(vector, s, tuple(layers)),)) for s, _ in rows]
    with engine.lock, engine.steer(steering):
        logits = (
            engine.model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
                logits_to_keep=1,
            )
            .logits[:, -1, :]
            .float()
        )  # [rows, vocab]
    logp = torch.log_softmax(logits, dim=-1).view(len(strengths) + 1, len(prompts), -1)
    base = logp[0]
    kl = (logp[1:].exp() * (logp[1:] - base)).sum(-1)  # [strengths, prompts]
    return kl.median(dim=-1).values.tolist()


def recommend_strength(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    vector: SteeringVector,
    layers: Sequence[int],
    strengths: Sequence[float] = CANDIDATES,
) -> tuple[float, list[float]]:
    """The recommended normalized strength and the sweep's KL per candidate."""
    kls = next_token_kl(engine, tokenizer, vector, layers, strengths)
    for strength, kl in zip(strengths, kls):
        if kl >= TARGET_KL:
            return float(strength), kls
    return float(strengths[-1]), kls
