"""A recommended strength (and layer) for a concept on a model, judged on generated replies.

For a few candidate layers (the best by held-out separability) and strengths, we generate a short
reply to a few neutral tuning prompts, all rows in one batched call that differ only in
steering. Each reply is scored for the concept (the Effect metric: sentence-embedding similarity
to the concept's own positive examples minus its negative ones) and for fluency (perplexity of the
reply under the unsteered model, and repeated 3-grams). The recommendation is the strongest
setting that stays fluent: the top of the concept's functional range. Among candidate layers, the
one whose recommended setting shows the concept most wins.

The tuning prompts are fixed here and are not the held-out questions of ``python -m app quality``.
"""

from __future__ import annotations

import copy
import math
import statistics
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from app.steering.engine import NO_STEERING, Steer, Steering, SteeringEngine
from app.steering.generation import GenerationRequest, GenerationResult, encode_prompt, generate, left_pad
from app.steering.vectors import SteeringVector

CHAT_PROMPTS: tuple[str, ...] = (
    "What do you like to do when you have some free time?",
    "Write a short note to a friend.",
    "Can you tell me something interesting?",
)
CONTINUATION_PROMPTS: tuple[str, ...] = (
    "The meeting went",
    "My favourite place in the city is",
    "Yesterday after work I",
)
CANDIDATES: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
CANDIDATE_LAYERS = 1  # how many of the best layers a one-layer concept tries (each adds a row per strength)
SWEEP_TOKENS = 24
MAX_PERPLEXITY_RATIO = 6.0  # a fluent setting's median perplexity is at most this times the baseline's ...
MIN_PERPLEXITY_LIMIT = 12.0  # ... or this, whichever is larger (greedy chat replies score ~1.5)
MAX_REPEATED_SHARE = 0.3  # a reply with more repeated 3-grams than this is a loop
PERPLEXITY_ROWS = 8  # replies scored per forward pass (a waiting user gets in between passes)

EffectFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], Any]  # -> one float per text


@dataclass
class StrengthSweep:
    """One row per (layer set, strength), each the median (or mean, for effect) over the prompts."""

    layers: list[list[int]]
    strengths: list[float]
    effect: list[list[float]]  # [layer set][strength]: mean Effect gain over the baseline replies
    perplexity: list[list[float]]  # [layer set][strength]: median perplexity under the unsteered model
    repetition: list[list[float]]  # [layer set][strength]: worst repeated 3-gram share over the prompts
    baseline_effect: float
    baseline_perplexity: float
    perplexity_limit: float
    chosen_layers: list[int]
    chosen_strength: float

    def to_dict(self) -> dict:
        return asdict(self)


def repeated_ngram_share(tokens: Sequence[object], n: int = 3) -> float:
    """Share of the ``n``-grams of ``tokens`` that already appeared earlier (0: none repeat)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def candidate_layers(vector: SteeringVector, count: int = CANDIDATE_LAYERS) -> list[list[int]]:
    """The recommended layer set first, then (for a one-layer concept) the next best layers by
    held-out accuracy, ties by separation, within the same 20-65% depth band as extraction."""
    recommended = vector.recommended_layers
    stats = vector.metadata.get("stats") or {}
    accuracy, separation = stats.get("accuracy"), stats.get("separation")
    if len(recommended) != 1 or not accuracy or not separation:
        return [recommended]
    n = len(accuracy)
    band = range(int(round(0.2 * (n - 1))), max(int(round(0.65 * (n - 1))), 0) + 1)
    ranked = sorted(
        (i for i in band if i in vector.layers), key=lambda i: (round(accuracy[i], 3), separation[i]), reverse=True
    )
    others = [[layer] for layer in ranked if layer != recommended[0]]
    return [recommended, *others[: count - 1]]


def choose(
    effect: Sequence[Sequence[float]],
    perplexity: Sequence[Sequence[float]],
    repetition: Sequence[Sequence[float]],
    strengths: Sequence[float],
    perplexity_limit: float,
) -> tuple[int, int]:
    """(layer set index, strength index) of the recommendation.

    Per layer set, the strongest strength that is fluent (median perplexity within the limit, no
    looping reply). Across layer sets, the one whose chosen strength has the largest Effect gain.
    A layer set with no fluent strength offers its weakest; it loses to any set that has one.
    """
    best: tuple[bool, float, int, int] | None = None
    for li in range(len(effect)):
        fluent = [
            si
            for si in range(len(strengths))
            if perplexity[li][si] <= perplexity_limit and repetition[li][si] <= MAX_REPEATED_SHARE
        ]
        si = (
            max(fluent, key=lambda i: strengths[i])
            if fluent
            else min(range(len(strengths)), key=lambda i: strengths[i])
        )
        candidate = (bool(fluent), effect[li][si], -li, si)
        if best is None or candidate[:3] > best[:3]:
            best = candidate
    if best is None:
        raise ValueError("the sweep has no layer set to choose from")
    return -best[2], best[3]


@dataclass(frozen=True)
class _Baseline:
    """The unsteered replies to the tuning prompts: the same for every concept of a model."""

    texts: list[str]
    token_ids: list[list[int]]
    perplexity: list[float]


# Per loaded model (weakly: a model that is let go takes its entry along), by (prompts, chat, tokens).
_BASELINES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Baseline]] = weakref.WeakKeyDictionary()


@torch.inference_mode()
def reply_perplexities(
    engine: SteeringEngine, prompts: Sequence[Sequence[int]], replies: Sequence[tuple[int, Sequence[int]]]
) -> list[float]:
    """Perplexity of each reply under the unsteered model, as the continuation of its prompt.

    ``replies``: (prompt index, reply token ids). The prompts run once; each chunk of replies then
    continues from a copy of their cache, so only reply positions are computed after that, and the
    output layer runs on reply positions alone. Each forward pass takes the model's lock on its own,
    so background work lets a waiting user in between them. A reply with no tokens gives NaN.
    """
    model, device = engine.model, engine.device
    ids, mask = left_pad([list(p) for p in prompts], 0)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with engine.lock:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1, :].float()  # [prompts, vocab]: each reply's first token is predicted here
    prompt_cache = out.past_key_values
    result = [math.nan] * len(replies)
    scored = [i for i, (_, reply) in enumerate(replies) if len(reply) > 0]
    for start in range(0, len(scored), PERPLEXITY_ROWS):
        rows = scored[start : start + PERPLEXITY_ROWS]
        which = torch.tensor([replies[i][0] for i in rows], device=device)
        width = max(len(replies[i][1]) for i in rows)
        reply_ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        reply_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for r, i in enumerate(rows):
            reply_ids[r, : len(replies[i][1])] = torch.tensor(list(replies[i][1]))
            reply_mask[r, : len(replies[i][1])] = 1  # right padding: no real token attends to it
        cache = copy.deepcopy(prompt_cache)
        cache.batch_select_indices(which)
        steps = torch.arange(1, width + 1, device=device)[None, :]
        with engine.lock:
            logits = model(
                input_ids=reply_ids,
                attention_mask=torch.cat([mask[which], reply_mask], dim=-1),
                position_ids=positions[which, -1:] + steps,
                past_key_values=cache,
                use_cache=True,
            ).logits.float()  # [rows, width, vocab]
        for r, i in enumerate(rows):
            tokens = torch.tensor(list(replies[i][1]), device=device)
            predicted = torch.cat([first[replies[i][0]][None], logits[r, : len(tokens) - 1]])
            result[i] = math.exp(float(F.cross_entropy(predicted, tokens)))
    return result


def baseline_replies(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    is_chat: bool,
    max_new_tokens: int,
    generated: Sequence[GenerationResult] | None = None,
) -> _Baseline:
    """The unsteered replies to ``prompts`` and their perplexities, computed once per model.

    ``generated``: these replies, when the caller generated them already (in its own batch)."""
    key = (tuple(prompts), is_chat, max_new_tokens)
    known = _BASELINES.setdefault(engine.model, {})
    if key not in known:
        if generated is None:
            requests = [GenerationRequest(prompt=p, max_new_tokens=max_new_tokens, chat=True) for p in prompts]
            generated = generate(engine, tokenizer, requests, is_chat=is_chat)
        encoded = [encode_prompt(tokenizer, p, True, is_chat) for p in prompts]
        perplexity = reply_perplexities(engine, encoded, [(i, r.token_ids) for i, r in enumerate(generated)])
        known[key] = _Baseline([r.text for r in generated], [list(r.token_ids) for r in generated], perplexity)
    return known[key]


@torch.inference_mode()
def sweep_strengths(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    vector: SteeringVector,
    positive: Sequence[str],
    negative: Sequence[str],
    effect: EffectFn,
    strengths: Sequence[float] = CANDIDATES,
    layer_sets: Sequence[Sequence[int]] | None = None,
    max_new_tokens: int = SWEEP_TOKENS,
) -> StrengthSweep:
    """Generate, score and choose (see the module docstring). One batched generate call; the
    unsteered rows join it only the first time for a model (their replies are kept)."""
    is_chat = bool(getattr(tokenizer, "chat_template", None))
    prompts = CHAT_PROMPTS if is_chat else CONTINUATION_PROMPTS
    sets: list[list[int]] = [list(s) for s in (layer_sets or candidate_layers(vector))]
    steered: list[Steering] = [
        Steering((Steer(vector, float(s), tuple(layers)),)) for layers in sets for s in strengths
    ]
    known = (tuple(prompts), is_chat, max_new_tokens) in _BASELINES.get(engine.model, {})
    settings = steered if known else [NO_STEERING, *steered]
    requests = [
        GenerationRequest(prompt=p, steering=steering, max_new_tokens=max_new_tokens, chat=True)
        for steering in settings
        for p in prompts
    ]
    results = generate(engine, tokenizer, requests, is_chat=is_chat)
    n = len(prompts)
    if not known:
        baseline = baseline_replies(engine, tokenizer, prompts, is_chat, max_new_tokens, generated=results[:n])
        results = results[n:]
    else:
        baseline = baseline_replies(engine, tokenizer, prompts, is_chat, max_new_tokens)
    encoded = [encode_prompt(tokenizer, p, True, is_chat) for p in prompts]
    ppl = baseline.perplexity + reply_perplexities(
        engine, encoded, [(k % n, r.token_ids) for k, r in enumerate(results)]
    )
    texts = baseline.texts + [r.text for r in results]
    effects = [float(e) for e in effect(texts, positive, negative)]
    repeats = [repeated_ngram_share(ids) for ids in baseline.token_ids + [r.token_ids for r in results]]
    n_settings = 1 + len(steered)

    def per_setting(values: list[float], reduce: Callable[[list[float]], float]) -> list[float]:
        return [
            reduce([v for v in values[k * n : (k + 1) * n] if not math.isnan(v)] or [float("inf")])
            for k in range(n_settings)
        ]

    mean_effect = per_setting(effects, statistics.fmean)
    median_ppl = per_setting(ppl, statistics.median)
    worst_repeat = per_setting(repeats, max)
    base_effect, base_ppl = mean_effect[0], median_ppl[0]
    limit = max(MAX_PERPLEXITY_RATIO * base_ppl, MIN_PERPLEXITY_LIMIT)

    def grid(values: list[float]) -> list[list[float]]:
        return [
            [round(values[1 + li * len(strengths) + si], 4) for si in range(len(strengths))] for li in range(len(sets))
        ]

    gains = grid([e - base_effect for e in mean_effect])
    perplexities, repetition = grid(median_ppl), grid(worst_repeat)
    li, si = choose(gains, perplexities, repetition, strengths, limit)
    return StrengthSweep(
        layers=sets,
        strengths=[float(s) for s in strengths],
        effect=gains,
        perplexity=perplexities,
        repetition=repetition,
        baseline_effect=round(base_effect, 4),
        baseline_perplexity=round(base_ppl, 4),
        perplexity_limit=round(limit, 4),
        chosen_layers=sets[li],
        chosen_strength=float(strengths[si]),
    )
