"""Preference steering as in Bo et al. 2025 (DESIGN §7): SELECT, CALIBRATE, LEARN, profiles.

Values live on the UI scale u ∈ [−100, 100] (positive = the concept's positive pole, e.g.
"luxury" for cost); ``ui_to_strength`` maps them to the model's functional range.

CALIBRATE shows two replies, steered at d_A < d_B, and asks which is better. The losing end
moves toward the winner, keeping the preferred value inside [d_A, d_B]:

    slightly better   the loser moves to the midpoint          (the interval halves)
    much better       the loser moves 3/4 of the way over      (the interval shrinks to 1/4)
    about the same    stop: the preference is between the two

It stops on "about the same", when the ends are within ``stop_width`` (20) of each other, or
after ``max_rounds`` (4); the result is the midpoint. With a consistent chooser the final width
is at most 200 / 2⁴ = 12.5, so the result is within 6.25 UI units of the preference.

LEARN is the paper's Eq. 1 per dimension: ``d ← clip(d + p · dissatisfaction · direction)``.
Dissatisfaction is 1 for thumbs down, 0 for thumbs up, optionally blended with the feedback
text's sentiment. Direction ∈ [−1, 1] comes from the feedback text when it names a dimension
(its embedding similarity to request phrases for each pole, see ``text_directions``).
Without such text a thumbs down is read from context, in this order:

1. the dimension moved last round: keep going the same way ("not there yet"). Thumbs alone
   cannot tell overshoot from undershoot; a liked reply stops the motion, and text corrects it.
2. otherwise move away from where the disliked reply sits, relative to the last reply the
   user liked (the unsteered reply until one is liked). "Where" is the reply's Effect
   relative to the unsteered reply when measured, else the value itself. A disliked reply
   at the liked spot (or at neutral, at first) gives no direction, so nothing moves: the UI
   should ask the user to say what they want.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from app.storage import atomic_write_json, cache_dir, concepts_dir

UI_MIN, UI_MAX = -100.0, 100.0


def _clip(value: float) -> float:
    return min(UI_MAX, max(UI_MIN, float(value)))


def ui_to_strength(value: float, functional_range: float) -> float:
    """Map a UI value in [−100, 100] to a steering strength in ±functional_range."""
    if not functional_range > 0:
        raise ValueError(f"functional range must be positive, got {functional_range}")
    if not UI_MIN <= value <= UI_MAX:
        raise ValueError(f"UI value {value} is outside [{UI_MIN:g}, {UI_MAX:g}]")
    return value / UI_MAX * functional_range


def strength_to_ui(strength: float, functional_range: float) -> float:
    """Inverse of ``ui_to_strength``, clipped to the UI scale."""
    if not functional_range > 0:
        raise ValueError(f"functional range must be positive, got {functional_range}")
    return _clip(strength / functional_range * UI_MAX)


def share_label(
    value: float, labels: tuple[str, str], neutral_within: float = 5.0
) -> str:
    """Readable position: ``"35% budget"``, ``"60% luxury"`` or ``"neutral"``.

    Args:
        labels: pole names ``(negative, positive)``, e.g. ``("budget", "luxury")``.
    """
    if abs(value) < neutral_within:
        return "neutral"
    return f"{round(abs(value))}% {labels[1] if value > 0 else labels[0]}"


# --- CALIBRATE ------------------------------------------------------------------------

Choice = Literal[
    "A much better",
    "A slightly better",
    "about the same",
    "B slightly better",
    "B much better",
]
CHOICES: tuple[Choice, ...] = (
    "A much better",
    "A slightly better",
    "about the same",
    "B slightly better",
    "B much better",
)
# How far the losing end moves toward the winner, as a fraction of the gap.
_PULL = {"slightly": 0.5, "much": 0.75}


@dataclass
class CalibrationState:
    """One calibration in progress (plain data: safe to keep in ``gr.State``)."""

    d_a: float = UI_MIN
    d_b: float = UI_MAX
    round: int = 0
    # one (d_a, d_b, choice) per round
    history: list[tuple[float, float, str]] = field(default_factory=list)
    done: bool = False
    max_rounds: int = 4
    stop_width: float = 20.0

    @property
    def result(self) -> float:
        return (self.d_a + self.d_b) / 2


def calibrate_step(state: CalibrationState, choice: str) -> CalibrationState:
    """Apply one graded choice and return the new state (the input is not changed)."""
    if state.done:
        raise ValueError("this calibration is finished: start a new one")
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}: use one of {', '.join(CHOICES)}")
    d_a, d_b = state.d_a, state.d_b
    if choice != "about the same":
        winner, grade = choice.split(" ")[:2]
        pull = _PULL[grade]
        if winner == "B":
            d_a = d_a + pull * (d_b - d_a)
        else:
            d_b = d_b - pull * (d_b - d_a)
    rounds = state.round + 1
    done = (
        choice == "about the same"
        or abs(d_b - d_a) <= state.stop_width
        or rounds >= state.max_rounds
    )
    history = [*state.history, (state.d_a, state.d_b, choice)]
    return replace(state, d_a=d_a, d_b=d_b, round=rounds, history=history, done=done)


# --- LEARN ----------------------------------------------------------------------------

Thumbs = Literal["up", "down"]
TEXT_TEMPERATURE = 0.05  # cosine similarities differ by ~0.05–0.3 between poles
# Texts about nothing in particular sit below this similarity (measured ~0.1–0.25).
NULL_SIMILARITY = 0.3
MIN_TEXT_DIRECTION = 0.15  # below this the text did not name the dimension
SATISFIED = (
    "This is great, exactly what I wanted.",
    "Perfect, thank you!",
    "I love these suggestions.",
    "Yes, that works for me.",
    "Nice, these sound good.",
)
DISSATISFIED = (
    "This is not what I wanted.",
    "No, I don't like these.",
    "These suggestions are bad.",
    "That doesn't work for me.",
    "Not helpful at all.",
)


def load_feedback_phrases(
    path: str | Path | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Request phrases per dimension and pole (``concepts/questions/feedback_phrases.json``)."""
    path = (
        Path(path)
        if path is not None
        else concepts_dir() / "questions" / "feedback_phrases.json"
    )
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read feedback phrases {path}: {error}") from error
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"{path}: expected {{dimension: {{'positive': [...], 'negative': [...]}}}}"
        )
    for dim, poles in data.items():
        sides = [
            poles.get(side) if isinstance(poles, dict) else None
            for side in ("positive", "negative")
        ]
        if not all(isinstance(texts, list) and texts for texts in sides):
            raise ValueError(
                f"{path}: {dim!r} needs non-empty 'positive' and 'negative' lists"
            )
    return data


def text_directions(
    text: str, phrases: Mapping[str, Mapping[str, Sequence[str]]]
) -> dict[str, float]:
    """Which way the text asks each dimension to move, in [−1, 1] (0: not mentioned).

    A softmax over the text's cosine similarity to every pole's request phrases plus a
    "none of these" option at ``NULL_SIMILARITY``; a dimension's direction is
    P(positive pole) − P(negative pole).
    """
    from app.embeddings import embed
    from app.metrics import pole_centroid

    if not text.strip() or not phrases:
        return dict.fromkeys(phrases, 0.0)
    e = embed([text])[0]
    sims = {
        (dim, side): float(e @ pole_centroid(poles[side]))
        for dim, poles in phrases.items()
        for side in ("positive", "negative")
    }
    top = max(NULL_SIMILARITY, *sims.values())
    weights = {key: math.exp((s - top) / TEXT_TEMPERATURE) for key, s in sims.items()}
    total = sum(weights.values()) + math.exp((NULL_SIMILARITY - top) / TEXT_TEMPERATURE)
    return {
        dim: (weights[dim, "positive"] - weights[dim, "negative"]) / total
        for dim in phrases
    }


def text_sentiment(text: str) -> float:
    """Rough sentiment in [−1, 1] from similarity to satisfied vs dissatisfied phrases."""
    from app.embeddings import embed
    from app.metrics import pole_centroid

    if not text.strip():
        return 0.0
    e = embed([text])[0]
    return math.tanh(
        float(e @ pole_centroid(SATISFIED) - e @ pole_centroid(DISSATISFIED)) / 0.15
    )


def dissatisfaction(
    thumbs: Thumbs | None, sentiment: float | None = None, text_weight: float = 0.25
) -> float:
    """1 for thumbs down, 0 for up; with a text sentiment s, blended with (1 − s) / 2."""
    from_text = (
        None if sentiment is None else (1.0 - max(-1.0, min(1.0, sentiment))) / 2
    )
    if thumbs is None:
        return 0.0 if from_text is None else from_text
    if thumbs not in ("up", "down"):
        raise ValueError(f"thumbs must be 'up', 'down' or None, got {thumbs!r}")
    from_thumbs = 1.0 if thumbs == "down" else 0.0
    if from_text is None:
        return from_thumbs
    return (1 - text_weight) * from_thumbs + text_weight * from_text


@dataclass
class LearnState:
    """Learned values per dimension plus the memory the no-text rule needs (plain data)."""

    values: dict[str, float]
    step: float = 25.0  # p in Eq. 1, in UI units
    # the direction each dimension moved last round (0: it did not move)
    last_move: dict[str, float] = field(default_factory=dict)
    # where the last liked reply sat, per dimension (same units as reply_positions)
    liked: dict[str, float] = field(default_factory=dict)
    round: int = 0
    history: list[dict] = field(default_factory=list)


def learn_step(
    state: LearnState,
    thumbs: Thumbs | None,
    directions: Mapping[str, float] | None = None,
    sentiment: float | None = None,
    reply_positions: Mapping[str, float] | None = None,
) -> LearnState:
    """One round of Eq. 1 for every dimension; returns the new state.

    Args:
        thumbs: the user's thumbs on the last reply (None: none given).
        directions: per dimension, from the feedback text (``text_directions``); None: no text.
        sentiment: the feedback text's sentiment (``text_sentiment``), blended into
            dissatisfaction; None: thumbs only.
        reply_positions: per dimension, where the last reply sits relative to the unsteered
            reply, in [−1, 1] (e.g. (Effect_d − Effect_0) / 0.15); None: use value / 100.
    """
    badness = dissatisfaction(thumbs, sentiment)
    directions = dict(directions or {})
    text_spoke = any(abs(v) >= MIN_TEXT_DIRECTION for v in directions.values())
    values, moves, liked = dict(state.values), {}, dict(state.liked)
    for dim, value in state.values.items():
        where = (reply_positions or {}).get(dim, value / UI_MAX)
        if thumbs == "up":
            liked[dim] = where
        if text_spoke:
            direction = directions.get(dim, 0.0)
            direction = direction if abs(direction) >= MIN_TEXT_DIRECTION else 0.0
        elif state.last_move.get(dim, 0.0) != 0.0:
            # still unhappy after a move: not there yet
            direction = state.last_move[dim]
        else:
            direction = -max(-1.0, min(1.0, where - liked.get(dim, 0.0)))
        moves[dim] = direction if badness > 0 else 0.0
        values[dim] = _clip(value + state.step * badness * direction)
    record = {
        "thumbs": thumbs,
        "dissatisfaction": badness,
        "moves": moves,
        "values": values,
    }
    return replace(
        state,
        values=values,
        last_move=moves,
        liked=liked,
        round=state.round + 1,
        history=[*state.history, record],
    )


def learn_from_feedback(
    state: LearnState,
    thumbs: Thumbs | None,
    text: str,
    phrases: Mapping[str, Mapping[str, Sequence[str]]],
    reply_positions: Mapping[str, float] | None = None,
) -> LearnState:
    """``learn_step`` with direction and sentiment read from the feedback text (embeddings)."""
    if not text.strip():
        return learn_step(state, thumbs, reply_positions=reply_positions)
    return learn_step(
        state,
        thumbs,
        directions=text_directions(text, phrases),
        sentiment=text_sentiment(text),
        reply_positions=reply_positions,
    )


# --- profiles -------------------------------------------------------------------------

PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Method = Literal["select", "calibrate", "learn"]
METHODS: tuple[Method, ...] = ("select", "calibrate", "learn")
PROFILE_VERSION = 1


@dataclass
class Profile:
    """A named set of preference values: dimension -> {"value": u, "method": how it was set}."""

    name: str
    dimensions: dict[str, dict] = field(default_factory=dict)
    model_id: str | None = None
    version: int = PROFILE_VERSION

    def set(self, dimension: str, value: float, method: Method) -> None:
        self.dimensions[dimension] = {"value": float(value), "method": method}


def profiles_dir() -> Path:
    return cache_dir() / "profiles"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not PROFILE_NAME.fullmatch(name):
        raise ValueError(
            f"bad profile name {name!r}: use 1–64 letters, digits, '_' or '-' (no spaces or dots)"
        )
    return name


def profile_from_json(data: dict | str) -> Profile:
    """Validate a profile given as a dict or a JSON string (e.g. one pasted in by a user)."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a profile: invalid JSON ({error})") from error
    dimensions = data.get("dimensions") if isinstance(data, dict) else None
    if not isinstance(dimensions, dict):
        raise ValueError("not a profile: expected {'name': ..., 'dimensions': {...}}")  # noqa: TRY004 (user input)
    model_id = data.get("model_id")
    if model_id is not None and not isinstance(model_id, str):
        raise ValueError("not a profile: 'model_id' must be a string or null")
    profile = Profile(name=_check_name(data.get("name")), model_id=model_id)
    for dim, entry in dimensions.items():
        value = entry.get("value") if isinstance(entry, dict) else None
        method = entry.get("method") if isinstance(entry, dict) else None
        if (
            not isinstance(value, int | float)
            or not math.isfinite(value)
            or abs(value) > UI_MAX
        ):
            raise ValueError(
                f"profile {profile.name!r}: {dim!r} needs a value in [−100, 100]"
            )
        if method not in METHODS:
            raise ValueError(
                f"profile {profile.name!r}: {dim!r} method must be one of {METHODS}"
            )
        profile.set(dim, value, method)
    return profile


def export_profile(profile: Profile) -> str:
    """The profile as a JSON string (what ``save_profile`` writes)."""
    _check_name(profile.name)
    return json.dumps(asdict(profile), indent=2, ensure_ascii=False)


def save_profile(profile: Profile, directory: str | Path | None = None) -> Path:
    """Write ``<cache>/profiles/<name>.json`` atomically (a failed write keeps the old file)."""
    profile = profile_from_json(
        json.loads(export_profile(profile))
    )  # validate before writing
    path = Path(directory or profiles_dir()) / f"{profile.name}.json"
    return atomic_write_json(path, asdict(profile))


def load_profile(name: str, directory: str | Path | None = None) -> Profile:
    path = Path(directory or profiles_dir()) / f"{_check_name(name)}.json"
    if not path.is_file():
        raise ValueError(f"no profile named {name!r} in {path.parent}")
    return profile_from_json(path.read_text(encoding="utf-8"))


def list_profiles(directory: str | Path | None = None) -> list[str]:
    root = Path(directory or profiles_dir())
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob("*.json") if PROFILE_NAME.fullmatch(p.stem))


def delete_profile(name: str, directory: str | Path | None = None) -> bool:
    """Remove a profile; False when there was none."""
    path = Path(directory or profiles_dir()) / f"{_check_name(name)}.json"
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True
