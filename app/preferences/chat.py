"""What the SELECT, CALIBRATE and LEARN tabs share, without Gradio: the preference dimensions,
steering from UI values, chat requests, calibration questions and profile merges.

A UI value u ∈ [−100, 100] per dimension becomes one :class:`Steer` at the dimension's
recommended layers (the probe's top three for preference concepts) with strength
``ui_to_strength(u, functional_range)``; every non-zero dimension joins one :class:`Steering`,
so ``h' = h + Σ_i d_i · v_i`` as in Bo et al. A dimension at 0 is left out (and its vector is
not even built).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.preferences.learn import load_feedback_phrases
from app.preferences.profiles import Interface, Profile, load_profile, save_profile
from app.preferences.select import share_label, ui_to_strength
from app.progress import Progress
from app.steering.chat import Message, chat_prompt, history_to_messages
from app.steering.concepts import Concept
from app.steering.engine import Steer, Steering
from app.steering.generation import GenerationRequest
from app.steering.vectors import SteeringVector
from app.storage import concepts_dir

if TYPE_CHECKING:
    from app.lab import Lab

# The paper's five dimensions, in the order the tabs show them; other preference concepts follow.
PREFERENCE_ORDER = ("cost", "ambiance", "age", "time", "culture")
# Used when concepts/questions/calibration.json has nothing for a dimension.
FALLBACK_QUESTIONS = (
    "Can you suggest a restaurant for dinner this weekend?",
    "What should I do on a free day in a new city?",
    "What gift would you recommend for a friend's birthday?",
    "Can you suggest a recipe I could cook tonight?",
)


@dataclass(frozen=True)
class Dimension:
    """A preference dimension and its pole names (negative first, as on the slider)."""

    name: str
    negative: str
    positive: str

    @property
    def labels(self) -> tuple[str, str]:
        return (self.negative, self.positive)

    @property
    def slider_label(self) -> str:
        return f"{self.negative} ◀ {self.name} ▶ {self.positive}"

    def share(self, value: float) -> str:
        """``"35% budget"`` / ``"neutral"``."""
        return share_label(value, self.labels)


def preference_dimensions(concepts: Mapping[str, Concept]) -> list[Dimension]:
    """Every concept of category ``preference``, the paper's five first.

    Args:
        concepts: name -> :class:`app.steering.concepts.Concept` (``lab.library.concepts()``).
    """
    found = [
        Dimension(name, concept.negative_label, concept.positive_label)
        for name, concept in concepts.items()
        if concept.category == "preference"
    ]
    rank = {name: i for i, name in enumerate(PREFERENCE_ORDER)}
    return sorted(found, key=lambda d: (rank.get(d.name, len(rank)), d.name))


def active_values(values: Mapping[str, float]) -> dict[str, float]:
    """The dimensions that steer (non-zero), as floats."""
    return {dim: float(v) for dim, v in values.items() if v is not None and float(v) != 0.0}


def steering_from_values(
    values: Mapping[str, float],
    vectors: Mapping[str, SteeringVector],
    ranges: Mapping[str, float],
) -> Steering:
    """One :class:`Steering` with one :class:`Steer` per non-zero dimension.

    Args:
        values: dimension -> UI value in [−100, 100].
        vectors: dimension -> its vector (only the non-zero ones are needed).
        ranges: dimension -> functional range (the strength that ±100 maps to).
    """
    steers = []
    for dim, value in active_values(values).items():
        if dim not in vectors or dim not in ranges:
            raise ValueError(f"no vector or functional range for preference dimension {dim!r}")
        steers.append(Steer(vectors[dim], ui_to_strength(value, ranges[dim])))
    return Steering(tuple(steers))


def unbuilt(lab: Lab, values: Mapping[str, float]) -> list[str]:
    """The steering dimensions whose vector is not built yet (the next reply builds them first)."""
    return [dim for dim in active_values(values) if lab.library.cached(dim) is None]


def preference_steering(lab: Lab, values: Mapping[str, float], progress: Progress | None = None) -> Steering:
    """:func:`steering_from_values` on ``lab``: builds the vectors it needs now (with ``progress``)."""
    from app.preferences.functional_range import functional_range

    active = active_values(values)
    vectors, ranges = {}, {}
    for dim in active:
        report = None
        if progress is not None and lab.library.cached(dim) is None:
            progress(0.0, f"building the {dim} vector (first use on this model)")
            report = lambda f, m, dim=dim: progress(f, f"building the {dim} vector: {m}")  # noqa: E731
        vectors[dim] = lab.library.get(dim, progress=report)
        ranges[dim] = functional_range(lab, dim)
    return steering_from_values(active, vectors, ranges)


def describe_steering(steering: Steering) -> str:
    """``cost ×-2.4 @ 10,12,14 + age ×3 @ 8,9,11`` or ``no steering``."""
    parts = [
        f"{s.vector.name} ×{s.strength:.3g} @ {','.join(map(str, s.resolved_layers()))}"
        for s in steering.steers
        if s.strength != 0
    ]
    return " + ".join(parts) or "no steering"


def describe_values(values: Mapping[str, float], dims: Sequence[Dimension]) -> str:
    """``cost: 35% budget · age: 60% adults``, or ``all neutral (no steering)``."""
    parts = [f"{d.name}: {d.share(values[d.name])}" for d in dims if d.name in values and values[d.name]]
    return " · ".join(parts) or "all neutral (no steering)"


# --- chat ------------------------------------------------------------------------------


def text_of(content: object) -> str:
    """A Gradio chatbot message's content as text (Gradio 6 gives a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, list | tuple):
        return "".join(text_of(part) for part in content)
    return ""


def plain_history(history: Sequence[dict] | None) -> list[dict]:
    """Chatbot messages reduced to ``{"role", "content": str}`` (empty ones dropped)."""
    messages = []
    for item in history or []:
        role, text = item.get("role"), text_of(item.get("content"))
        if role in ("user", "assistant") and text.strip():
            messages.append({"role": role, "content": text})
    return messages


def chat_request(
    lab: Lab,
    history: Sequence[dict] | None,
    user_text: str,
    steering: Steering,
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> GenerationRequest:
    """The next reply of a conversation as one request (the history through the chat template)."""
    if not (user_text or "").strip():
        raise ValueError("type a message first")
    messages: list[Message] = history_to_messages(plain_history(history), user_text.strip())
    return GenerationRequest(
        prompt=chat_prompt(lab.lm.tokenizer, messages),
        steering=steering,
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        seed=int(seed),
        chat=False,  # chat_prompt already applied the template
    )


# --- calibration questions and profiles ---------------------------------------------------


def load_calibration_questions(path: str | Path | None = None) -> dict[str, list[str]]:
    """``concepts/questions/calibration.json`` as {dimension: [questions]}; {} when missing."""
    path = Path(path) if path is not None else concepts_dir() / "questions" / "calibration.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(dim): [q.strip() for q in questions if isinstance(q, str) and q.strip()]
        for dim, questions in data.items()
        if isinstance(questions, list)
    }


def calibration_question(questions: Mapping[str, Sequence[str]], dim: str, round_index: int) -> str:
    """The question for a round: the dimension's list in turn (the fallback list when it has none)."""
    pool = list(questions.get(dim) or FALLBACK_QUESTIONS)
    return pool[round_index % len(pool)]


def feedback_phrases(dims: Sequence[Dimension], path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """Request phrases per dimension for reading feedback text (LEARN).

    From ``concepts/questions/feedback_phrases.json``; a dimension it lacks (or a missing file)
    gets phrases made from its pole names, so text feedback works for every dimension.
    """
    try:
        phrases = load_feedback_phrases(path)
    except ValueError:
        phrases = {}
    out = {}
    for d in dims:
        out[d.name] = phrases.get(d.name) or {
            side: [
                f"I want something more {want}.",
                f"Make it more {want}, please.",
                f"Less {avoid}, more {want}.",
                f"Can you suggest more {want} options?",
            ]
            for side, want, avoid in (("positive", d.positive, d.negative), ("negative", d.negative, d.positive))
        }
    return out


def merge_into_profile(
    name: str,
    values: Mapping[str, float],
    method: Interface,
    model_id: str | None = None,
    directory: str | Path | None = None,
) -> Profile:
    """Save ``values`` into profile ``name``, keeping its other dimensions; returns the saved profile."""
    try:
        profile = load_profile(name, directory)
    except ValueError as error:
        if "no profile named" not in str(error):
            raise
        profile = Profile(name=name)
    for dim, value in values.items():
        profile.set(dim, round(float(value), 2), method)
    profile.model_id = model_id or profile.model_id
    save_profile(profile, directory)
    return profile
