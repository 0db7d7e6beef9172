"""How steering moved the next-token distribution, and where two generations part.

``next_token_shift`` compares both distributions on the *same* prefix: one batched
teacher-forced forward pass of the prompt plus the steered continuation, the first row
unsteered and the second steered. At every step of the steered text it reports the steered
top-k tokens with their probability under steering and without it, so a student sees which
tokens steering promoted ("great" 4% -> 61%) rather than comparing two unrelated prefixes.

``token_diff`` lines up the baseline and steered token sequences (difflib on token ids) for a
highlighted view of the first differing token and every token-level difference.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from app.steering.engine import NO_STEERING
from app.steering.generation import GenerationRequest, encode_prompt, left_pad

if TYPE_CHECKING:
    from app.lab import Lab

DiffLabel = str | None  # "baseline only", "steered only" or None (shared)


@dataclass(frozen=True)
class StepShift:
    """One generation step of the steered text.

    Attributes:
        step: 0-based index of the generated token.
        token_id: the token the steered run actually produced at this step.
        candidates: the steered top-k token ids, most likely first.
        steered: their probabilities with steering (same order).
        baseline: their probabilities without steering, on the same prefix (same order).
    """

    step: int
    token_id: int
    candidates: tuple[int, ...]
    steered: tuple[float, ...]
    baseline: tuple[float, ...]
    chosen_steered: float  # probability of ``token_id`` with steering
    chosen_baseline: float  # ... and without


@torch.inference_mode()
def next_token_shift(
    lab: Lab, request: GenerationRequest, steered_token_ids: Sequence[int], k: int = 5
) -> list[StepShift]:
    """Steered vs unsteered next-token probabilities at every step of a steered continuation.

    Args:
        lab: the :class:`app.lab.Lab` whose model produced the continuation.
        request: the steered row's request (its prompt, chat flag and steering are used).
        steered_token_ids: the tokens the steered row generated (an end token included).
        k: how many of the steered run's most likely tokens to report per step.

    Returns:
        One :class:`StepShift` per generated token; empty when nothing was generated.
        Probabilities are a plain softmax of the logits (temperature 1), as ``record_top_k``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    steps = list(steered_token_ids)
    if not steps:
        return []
    tokenizer = lab.lm.tokenizer
    prompt = encode_prompt(tokenizer, request.prompt, request.chat, lab.lm.is_chat)
    if not prompt:
        raise ValueError("a prompt encodes to no tokens: type at least one character")
    sequence = prompt + steps[:-1]  # position L-1+i predicts step i
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, mask = left_pad([sequence, sequence], pad_id)
    engine = lab.engine
    device = engine.device
    rows = [NO_STEERING, request.steering]
    with engine.lock, engine.steer(rows, prompt_lengths=[len(prompt), len(prompt)]):
        logits = engine.model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
            logits_to_keep=len(steps),
        ).logits.float()  # [2, steps, vocab]
    probs = torch.softmax(logits, dim=-1).cpu()
    baseline, steered = probs[0], probs[1]  # [steps, vocab]
    top_p, top_ids = steered.topk(min(k, steered.shape[-1]), dim=-1)  # [steps, k]
    chosen = torch.tensor(steps)[:, None]
    chosen_steered = steered.gather(-1, chosen)[:, 0]
    chosen_baseline = baseline.gather(-1, chosen)[:, 0]
    base_of_top = baseline.gather(-1, top_ids)
    return [
        StepShift(
            step=i,
            token_id=steps[i],
            candidates=tuple(top_ids[i].tolist()),
            steered=tuple(top_p[i].tolist()),
            baseline=tuple(base_of_top[i].tolist()),
            chosen_steered=float(chosen_steered[i]),
            chosen_baseline=float(chosen_baseline[i]),
        )
        for i in range(len(steps))
    ]


@dataclass(frozen=True)
class TokenDiff:
    """Where two token sequences part, and how they differ token by token.

    Attributes:
        first_difference: index of the first differing token, or ``None`` when identical.
        segments: ``(text, label)`` pieces in reading order; label ``None`` for shared text,
            ``"baseline only"`` for text only the baseline has, ``"steered only"`` for the steered run's.
    """

    first_difference: int | None
    segments: list[tuple[str, DiffLabel]]


def token_diff(baseline: Sequence[str], steered: Sequence[str]) -> TokenDiff:
    """Align two runs' tokens (as decoded strings) and label what each adds.

    Comparing the decoded strings (not the ids) makes a token that decodes to the same text
    count as shared.
    """
    first = next((i for i, (a, b) in enumerate(zip(baseline, steered)) if a != b), None)
    if first is None and len(baseline) != len(steered):
        first = min(len(baseline), len(steered))
    matcher = difflib.SequenceMatcher(a=list(baseline), b=list(steered), autojunk=False)
    segments: list[tuple[str, DiffLabel]] = []
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            segments.append(("".join(baseline[a0:a1]), None))
            continue
        if a1 > a0:
            segments.append(("".join(baseline[a0:a1]), "baseline only"))
        if b1 > b0:
            segments.append(("".join(steered[b0:b1]), "steered only"))
    return TokenDiff(first_difference=first, segments=[s for s in segments if s[0]])
