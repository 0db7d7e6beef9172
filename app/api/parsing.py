"""API request bodies -> the core's ``GenerationRequest``s and ``Steering``.

Everything here is a plain function of a parsed body and the lab, so the tests check it without
a server. What it refuses raises ``ValueError`` (400); the limits are checked afterwards by
``validate_batch``, the same check the UI's requests pass.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from app import limits
from app.api.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields, SteeringFields, SteeringItem
from app.api.uploads import UploadedVectors
from app.lab import Lab
from app.preferences.chat import active_values, preference_dimensions, preference_steering
from app.steering.chat import Message, chat_prompt
from app.steering.concepts import validate_name
from app.steering.engine import Steer, Steering
from app.steering.generation import GenerationRequest
from app.steering.vectors import SteeringVector

DEFAULT_MAX_TOKENS = 128
NO_TRIM = 1 << 40  # a chat prompt is never cut: one over the token limit is refused instead


def max_new_tokens(body: SamplingFields) -> int:
    """``max_completion_tokens`` or ``max_tokens``; else 128, or the server's limit if lower."""
    chosen = body.max_completion_tokens or body.max_tokens
    return chosen if chosen is not None else min(DEFAULT_MAX_TOKENS, limits.current().max_new_tokens)


def seed(body: SamplingFields) -> int:
    return body.seed if body.seed is not None else secrets.randbits(62)


def resolve_vector(lab: Lab, uploads: UploadedVectors, name: str) -> SteeringVector:
    """A vector uploaded under ``name``, else the concept ``name`` (built now if needed)."""
    validate_name(name)  # names only: no file paths on the server
    return uploads.get(lab, name) or lab.library.get(name)


def make_steer(vector: SteeringVector, item: SteeringItem) -> Steer:
    """One :class:`Steer`; left-out strength and layers come from the vector's recommendations.

    A llama.cpp vector carries its own scale: it steers in raw units, 1.0 unless given.
    """
    if vector.method == "gguf":
        strength = 1.0 if item.strength is None else item.strength
        return Steer(vector, float(strength), tuple(item.layers) if item.layers else None, "raw")
    strength = vector.recommended_strength if item.strength is None else item.strength
    return Steer(vector, float(strength), tuple(item.layers) if item.layers else None, item.unit)


def steering(lab: Lab, uploads: UploadedVectors, body: SteeringFields) -> Steering:
    """The ``steering`` list and the ``preferences`` sliders as one :class:`Steering`."""
    values = active_values(body.preferences or {})
    count, allowed = len(body.steering) + len(values), limits.current().max_concepts
    if count > allowed:  # before any vector is built
        raise ValueError(limits.current().over("max_concepts", f"steering with {count} concepts", count))
    if values:
        dims = [d.name for d in preference_dimensions(lab.library.concepts())]
        unknown = sorted(set(values) - set(dims))
        if unknown:
            raise ValueError(
                f"unknown preference dimension {unknown[0]!r}: use {', '.join(dims) or 'none (no preference concepts)'}"
            )
    steers = [make_steer(resolve_vector(lab, uploads, item.concept), item) for item in body.steering]
    if values:
        steers.extend(preference_steering(lab, values).steers)
    return Steering(tuple(steers), body.positions)


def chat_text(lab: Lab, body: ChatCompletionRequest) -> str:
    """The conversation through the model's chat template, with the assistant's turn opened."""
    if body.messages[-1].role != "user":
        raise ValueError("messages: the last message must be the user's")
    messages: list[Message] = [{"role": m.role, "content": m.text} for m in body.messages]
    if not messages[-1]["content"].strip():
        raise ValueError("messages: the user's message is empty")
    return chat_prompt(lab.lm.tokenizer, messages, budget=NO_TRIM)


def rows(
    body: SamplingFields, prompts: Sequence[str], count: int, steered: Steering, *, chat: bool
) -> list[GenerationRequest]:
    """``count`` rows per prompt (seeds ``seed``, ``seed + 1``, ...), one batch for the batcher."""
    total, allowed = len(prompts) * count, limits.current().max_rows
    if total > allowed:  # before making the rows
        raise ValueError(limits.current().over("max_rows", f"a request of {total} generations", total))
    first = seed(body)
    return [
        GenerationRequest(
            prompt=prompt,
            steering=steered,
            max_new_tokens=max_new_tokens(body),
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            seed=first + i,
            chat=chat,
        )
        for prompt in prompts
        for i in range(count)
    ]


def chat_requests(lab: Lab, uploads: UploadedVectors, body: ChatCompletionRequest) -> list[GenerationRequest]:
    return rows(body, [chat_text(lab, body)], body.n, steering(lab, uploads, body), chat=False)


def completion_requests(lab: Lab, uploads: UploadedVectors, body: CompletionRequest) -> list[GenerationRequest]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise ValueError("prompt: give a prompt or a non-empty list of prompts")
    return rows(body, prompts, body.n, steering(lab, uploads, body), chat=False)


def describe(steered: Steering) -> list[str]:
    """``["pirate ×6 @ 15", ...]``: what steered a row, for responses."""
    return [
        f"{s.vector.name} ×{s.strength:g}{' raw' if s.unit == 'raw' else ''} @ {','.join(map(str, s.resolved_layers()))}"
        for s in steered.steers
    ]
