"""Batched generation where every row has its own steering, sampling settings and seed.

One loop (prefill, then one token per step with a KV cache) serves side-by-side comparisons,
sweeps and concurrent users: the engine gives each row its own delta, and each row samples from
its own seeded generator, so a row's output does not depend on what else is in the batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from app.limits import Limits
from app.limits import current as current_limits
from app.steering.engine import NO_STEERING, Steering, SteeringEngine, row_deltas

FinishReason = Literal["eos", "length", "stopped"]
MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflow to inf and sampling fails
MAX_TEMPERATURE = 100.0
MAX_RECORD_TOP_K = 100
SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts


class StopSignal(Protocol):
    """Anything with ``is_set()``, e.g. a ``threading.Event`` set by a Stop button."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class GenerationRequest:
    """One row of a batch.

    Attributes:
        prompt: the user's text.
        steering: what this row is steered with (none by default).
        max_new_tokens: at most this many new tokens.
        temperature: 0 for greedy decoding.
        top_k: sample among the k most likely tokens (0: all).
        top_p: nucleus sampling threshold (1.0: off).
        seed: the row's own random stream; equal seeds give equal draws.
        chat: wrap the prompt in the model's chat template when it has one.
        record_top_k: keep the k most likely next tokens and their probabilities at every step.
    """

    prompt: str
    steering: Steering = NO_STEERING
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 0
    chat: bool = True
    record_top_k: int = 0


@dataclass
class GenerationResult:
    """What one row produced."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: FinishReason | None = None
    top_k: list[list[tuple[int, float]]] = field(default_factory=list)  # per step: (token id, prob)


def validate_request(
    engine: SteeringEngine,
    request: GenerationRequest,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    is_chat: bool = False,
    limits: Limits | None = None,
) -> None:
    """Raise ``ValueError`` naming what is wrong with a request, before it joins a shared batch.

    Checks the request's fields and the server's :class:`~app.limits.Limits` (the process's
    limits by default). With a ``tokenizer``, also the prompt's length in tokens. Anything that
    could fail inside a shared batch (and so fail every user in it) is caught here instead.
    """
    limits = limits or current_limits()
    prompt = request.prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type something for the model to continue")
    if len(prompt) > limits.max_prompt_chars:
        raise ValueError(
            limits.over("max_prompt_chars", f"the prompt's length ({len(prompt):,} characters)", len(prompt))
        )
    max_new = request.max_new_tokens
    if not _is_int(max_new) or max_new < 1:
        raise ValueError(f"max_new_tokens must be a whole number of at least 1, got {max_new!r}")
    if max_new > limits.max_new_tokens:
        raise ValueError(limits.over("max_new_tokens", f"max_new_tokens {max_new:,}", max_new))
    temperature = request.temperature
    if not _is_number(temperature) or not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise ValueError(
            f"temperature must be 0 (greedy) or between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, got {temperature!r}"
        )
    if not _is_number(request.top_p) or not 0 < request.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {request.top_p!r}")
    if not _is_int(request.top_k) or request.top_k < 0:
        raise ValueError(f"top_k must be 0 (off) or a positive whole number, got {request.top_k!r}")
    if not _is_int(request.seed) or not SEED_RANGE[0] <= request.seed < SEED_RANGE[1]:
        raise ValueError(
            f"seed must be a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1] - 1}, got {request.seed!r}"
        )
    if not _is_int(request.record_top_k) or not 0 <= request.record_top_k <= MAX_RECORD_TOP_K:
        raise ValueError(f"record_top_k must be 0 to {MAX_RECORD_TOP_K}, got {request.record_top_k!r}")
    _validate_steering(request.steering, limits)
    row_deltas(request.steering, engine.n_layers, engine.hidden_size)  # layers, sizes, strengths
    if tokenizer is not None:
        n_tokens = len(encode_prompt(tokenizer, prompt, request.chat, is_chat))
        if n_tokens == 0:
            raise ValueError("the prompt encodes to no tokens: type at least one character")
        if n_tokens > limits.max_prompt_tokens:
            raise ValueError(limits.over("max_prompt_tokens", f"the prompt's length ({n_tokens:,} tokens)", n_tokens))


def validate_batch(
    engine: SteeringEngine,
    requests: Sequence[GenerationRequest],
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    is_chat: bool = False,
    limits: Limits | None = None,
) -> None:
    """:func:`validate_request` for every row, and the number of rows against ``max_rows``."""
    limits = limits or current_limits()
    if len(requests) > limits.max_rows:
        raise ValueError(limits.over("max_rows", f"a request of {len(requests)} generations", len(requests)))
    for request in requests:
        validate_request(engine, request, tokenizer, is_chat=is_chat, limits=limits)


def _validate_steering(steering: Steering, limits: Limits) -> None:
    if not isinstance(steering, Steering):
        raise ValueError(f"steering must be a Steering, got {type(steering).__name__}")
    if len(steering.steers) > limits.max_concepts:
        raise ValueError(
            limits.over("max_concepts", f"steering with {len(steering.steers)} concepts", len(steering.steers))
        )
    for steer in steering.steers:
        name = getattr(steer.vector, "name", "?")
        strength = steer.strength
        if not _is_number(strength) or not math.isfinite(strength):
            raise ValueError(f"strength for {name!r} must be a finite number, got {strength!r}")
        if steer.unit not in ("normalized", "raw"):
            raise ValueError(f"unknown strength unit {steer.unit!r}: use 'normalized' or 'raw'")
        limit = "max_strength" if steer.unit == "normalized" else "max_raw_strength"
        if abs(strength) > getattr(limits, limit):
            raise ValueError(limits.over(limit, f"strength {strength:g} ({steer.unit}) for {name!r}", abs(strength)))
        if steer.layers is not None and not all(_is_int(layer) for layer in steer.layers):
            raise ValueError(f"layers for {name!r} must be whole numbers, got {steer.layers!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool, is_chat: bool) -> list[int]:
    """Token ids of a prompt, through the chat template when asked and available."""
    if chat and is_chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``input_ids`` and ``attention_mask`` ``[batch, pos]``."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask


def eos_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask out tokens outside top-k / top-p for one row: ``[vocab]``."""
    if top_k > 0 and top_k < logits.shape[-1]:
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the token that crosses p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


class _Detokenizer:
    """One row's text, decoded a few tokens at a time instead of re-decoding every token each step.

    Decodes a short window (the last committed tokens as context, then the new ones) and appends
    what the new tokens add; a window that ends inside a multi-byte character (U+FFFD) waits for
    the next token. :meth:`final` decodes the whole row once, so the last text is exactly what a
    full decode gives.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.ids: list[int] = []  # the row's tokens without stop ids
        self.text = ""
        self.prefix = 0  # context tokens start here
        self.read = 0  # tokens before this are in ``text``

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def add(self, token: int) -> str:
        if token not in self.stop_ids:
            self.ids.append(token)
            context = self._decode(self.ids[self.prefix : self.read])
            window = self._decode(self.ids[self.prefix :])
            if len(window) > len(context) and not window.endswith("\ufffd"):
                self.text += window[len(context) :]
                self.prefix, self.read = self.read, len(self.ids)
        return self.text

    def final(self) -> str:
        self.text = self._decode(self.ids)
        return self.text


class _Sampler:
    """Chooses each row's next token with that row's own settings and generator."""

    def __init__(self, requests: Sequence[GenerationRequest], device: torch.device) -> None:
        self.requests = requests
        self.generators = []
        for request in requests:
            if request.temperature < 0 or request.temperature != request.temperature:
                raise ValueError(f"temperature must be 0 (greedy) or positive, got {request.temperature}")
            generator = None
            if request.temperature > 0:
                generator = torch.Generator(device=device)
                generator.manual_seed(int(request.seed))
            self.generators.append(generator)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        # logits: [batch, vocab] (float32)
        choice = logits.argmax(dim=-1)
        for i, (request, generator) in enumerate(zip(self.requests, self.generators)):
            if generator is None:
                continue
            row = _filter_logits(logits[i] / request.temperature, request.top_k, request.top_p)
            choice[i] = torch.multinomial(torch.softmax(row, dim=-1), 1, generator=generator)[0]
        return choice


@torch.inference_mode()
def stream_generate(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[GenerationRequest],
    *,
    is_chat: bool = False,
    stop: StopSignal | None = None,
) -> Iterator[list[GenerationResult]]:
    """Generate all rows in one batch, yielding every row's result after each step.

    The engine's lock is held and the steering hooks are in place while a step runs; closing the
    generator early (a Stop button) ends the ``with`` block and removes every hook. A user's
    generation holds them for the whole loop; background work lets a waiting user in between steps.
    """
    if not requests:
        return
    model = engine.model
    for request in requests:
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
    prompts = [encode_prompt(tokenizer, r.prompt, r.chat, is_chat) for r in requests]
    if any(not ids for ids in prompts):
        raise ValueError("a prompt encodes to no tokens: type at least one character")
    device = engine.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention_mask = left_pad(prompts, pad_id)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [batch, pos]
    stop_ids = eos_ids(model, tokenizer)
    sampler = _Sampler(requests, device)
    results = [GenerationResult(text="", token_ids=[], prompt_tokens=len(p)) for p in prompts]
    texts = [_Detokenizer(tokenizer, stop_ids) for _ in requests]
    finished = torch.zeros(len(requests), dtype=torch.bool, device=device)
    limits = torch.tensor([r.max_new_tokens for r in requests], device=device)

    config: Any = model.config
    cache = DynamicCache(config=config)
    step_ids, step_positions = input_ids, position_ids
    steps, done = int(limits.max()), False
    rows = [r.steering for r in requests]
    prompt_lengths = [len(p) for p in prompts]
    while steps > 0 and not done:
        # Background work (the library's strength sweeps) leaves this block between two steps when a
        # user's work is pending, and comes back to the same cache; hooks exist only inside it.
        with engine.lock, engine.steer(rows, prompt_lengths=prompt_lengths):
            while steps > 0:
                if stop is not None and stop.is_set():
                    for result in results:
                        result.finish_reason = result.finish_reason or "stopped"
                    done = True
                    break
                output = model(
                    input_ids=step_ids,
                    attention_mask=attention_mask,
                    position_ids=step_positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                steps -= 1
                logits = output.logits[:, -1, :].float()  # [batch, vocab]
                cache = output.past_key_values
                chosen = sampler(logits)
                _record_top_k(results, requests, logits, finished)
                for i, result in enumerate(results):
                    if finished[i]:
                        continue
                    token = int(chosen[i])
                    result.token_ids.append(token)
                    result.text = texts[i].add(token)
                    if token in stop_ids:
                        finished[i] = True
                        result.finish_reason = "eos"
                    elif len(result.token_ids) >= requests[i].max_new_tokens:
                        finished[i] = True
                        result.finish_reason = "length"
                if bool(finished.all()):
                    done = True
                    break
                yield results
                step_ids = torch.where(finished, torch.full_like(chosen, pad_id), chosen)[:, None]
                attention_mask = torch.cat([attention_mask, (~finished).long()[:, None]], dim=-1)
                step_positions = step_positions[:, -1:] + 1
                if engine.lock.should_yield():
                    break
    for result, text in zip(results, texts):
        result.text = text.final()
    # The last state is yielded after the block, so a caller that sees it finished sees no hooks left.
    yield results


def generate(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[GenerationRequest],
    *,
    is_chat: bool = False,
    stop: StopSignal | None = None,
) -> list[GenerationResult]:
    """Run :func:`stream_generate` to the end and return the final results."""
    return last(stream_generate(engine, tokenizer, requests, is_chat=is_chat, stop=stop))


def last(stream: Iterator[list[GenerationResult]]) -> list[GenerationResult]:
    """Run a stream to its end and return its final state (empty for an empty stream)."""
    final: list[GenerationResult] = []
    for final in stream:  # noqa: B007 - only the last state matters
        pass
    return final


def _record_top_k(
    results: list[GenerationResult],
    requests: Sequence[GenerationRequest],
    logits: torch.Tensor,
    finished: torch.Tensor,
) -> None:
    k = max(r.record_top_k for r in requests)
    if k <= 0:
        return
    probs, ids = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    for i, (result, request) in enumerate(zip(results, requests)):
        if request.record_top_k and not finished[i]:
            n = request.record_top_k
            result.top_k.append(list(zip(ids[i, :n].tolist(), probs[i, :n].tolist())))
