"""LEARN (Bo et al. 2025): thumbs and feedback text move a dimension's value each turn.

LEARN is the paper's Eq. 1 per dimension: ``d ← clip(d + p · dissatisfaction · direction)``.
Dissatisfaction is 1 for thumbs down, 0 for thumbs up, optionally blended with the feedback
text's sentiment. Direction ∈ [−1, 1] comes from the feedback text when it names a dimension
(its embedding similarity to request phrases for each pole, see ``text_directions``; what a
negation governs counts the other way).
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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from app.preferences.select import UI_MAX, clip_ui
from app.storage import concepts_dir

Thumbs = Literal["up", "down"]
TEXT_TEMPERATURE = 0.05  # cosine similarities differ by ~0.05–0.3 between poles
# Texts about nothing in particular sit below this similarity (measured ~0.1–0.25).
NULL_SIMILARITY = 0.3
MIN_TEXT_DIRECTION = 0.15  # below this the text did not name the dimension
# Words that turn what follows in their clause around: "not", "no", "don't"... and "avoid", "skip",
# "without". In a question only the last three do: "Can't we go somewhere cheaper?" asks for it.
GRAMMATICAL_NEGATION = r"not|no|never|nothing|none|nor|neither|cannot|\w+n['’]t"
LEXICAL_NEGATION = r"without|avoid|skip"
NEGATION_CUE = re.compile(rf"\b(?:{GRAMMATICAL_NEGATION}|{LEXICAL_NEGATION})\b", re.IGNORECASE)
QUESTION_NEGATION_CUE = re.compile(rf"\b(?:{LEXICAL_NEGATION})\b", re.IGNORECASE)
SENTENCE = re.compile(r"([^.!?]*)([.!?]*)")
CLAUSE_BREAK = re.compile(r"[,;:]+|\bbut\b", re.IGNORECASE)
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
    path = Path(path) if path is not None else concepts_dir() / "questions" / "feedback_phrases.json"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read feedback phrases {path}: {error}") from error
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected {{dimension: {{'positive': [...], 'negative': [...]}}}}")
    for dim, poles in data.items():
        sides = [poles.get(side) if isinstance(poles, dict) else None for side in ("positive", "negative")]
        if not all(isinstance(texts, list) and texts for texts in sides):
            raise ValueError(f"{path}: {dim!r} needs non-empty 'positive' and 'negative' lists")
    return data


def text_directions(text: str, phrases: Mapping[str, Mapping[str, Sequence[str]]]) -> dict[str, float]:
    """Which way the text asks each dimension to move, in [−1, 1] (0: not mentioned).

    A softmax over the text's cosine similarity to every pole's request phrases plus a
    "none of these" option at ``NULL_SIMILARITY``; a dimension's direction is
    P(positive pole) − P(negative pole).

    Sentence embeddings barely see a negation ("Nothing fancy, please." sits next to "something
    fancy"), so a text with a negation cue is read in pieces (:func:`negation_scopes`): what a cue
    governs, to the end of its clause, counts against its own direction; the rest counts as said.
    The pieces' directions add up, clipped to [−1, 1].
    """
    from app.analysis.embeddings import embed

    if not text.strip() or not phrases:
        return dict.fromkeys(phrases, 0.0)
    pieces = negation_scopes(text) if NEGATION_CUE.search(text) else [(text, 1)]
    if not pieces:  # only cues ("No."): nothing named
        return dict.fromkeys(phrases, 0.0)
    embeddings = embed([piece for piece, _ in pieces])
    total = dict.fromkeys(phrases, 0.0)
    for e, (_, sign) in zip(embeddings, pieces):
        for dim, direction in _pole_directions(e, phrases).items():
            total[dim] += sign * direction
    return {dim: max(-1.0, min(1.0, value)) for dim, value in total.items()}


def _pole_directions(embedding: np.ndarray, phrases: Mapping[str, Mapping[str, Sequence[str]]]) -> dict[str, float]:
    from app.analysis.metrics import pole_centroid

    sims = {
        (dim, side): float(embedding @ pole_centroid(poles[side]))
        for dim, poles in phrases.items()
        for side in ("positive", "negative")
    }
    top = max(NULL_SIMILARITY, *sims.values())
    weights = {key: math.exp((s - top) / TEXT_TEMPERATURE) for key, s in sims.items()}
    total = sum(weights.values()) + math.exp((NULL_SIMILARITY - top) / TEXT_TEMPERATURE)
    return {dim: (weights[dim, "positive"] - weights[dim, "negative"]) / total for dim in phrases}


def negation_scopes(text: str) -> list[tuple[str, int]]:
    """The text's pieces with their sign: −1 for what a negation cue governs, +1 for the rest.

    A cue governs the rest of its clause (up to punctuation or "but"); a second cue in the same
    scope does not flip it back (double negatives are rare in requests and often emphatic). In a
    question a grammatical negation is a way of asking ("Isn't there anything cheaper?", "Why not
    somewhere famous?"), so there only "avoid", "skip" and "without" count. Pieces with no letters
    are dropped. ``"No burgers, I want sushi."`` → ``[("burgers", -1), ("I want sushi", 1)]``.
    """
    pieces: list[tuple[str, int]] = []
    for sentence, end in SENTENCE.findall(text):
        cues = QUESTION_NEGATION_CUE if "?" in end else NEGATION_CUE
        for clause in CLAUSE_BREAK.split(sentence):
            cue = cues.search(clause)
            parts = [(clause, 1)] if cue is None else [(clause[: cue.start()], 1), (clause[cue.end() :], -1)]
            pieces += [(part.strip(), sign) for part, sign in parts if re.search(r"[^\W\d_]", part)]
    return pieces


def text_sentiment(text: str) -> float:
    """Rough sentiment in [−1, 1] from similarity to satisfied vs dissatisfied phrases."""
    from app.analysis.embeddings import embed
    from app.analysis.metrics import pole_centroid

    if not text.strip():
        return 0.0
    e = embed([text])[0]
    return math.tanh(float(e @ pole_centroid(SATISFIED) - e @ pole_centroid(DISSATISFIED)) / 0.15)


def dissatisfaction(thumbs: Thumbs | None, sentiment: float | None = None, text_weight: float = 0.25) -> float:
    """1 for thumbs down, 0 for up; with a text sentiment s, blended with (1 − s) / 2."""
    from_text = None if sentiment is None else (1.0 - max(-1.0, min(1.0, sentiment))) / 2
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
        values[dim] = clip_ui(value + state.step * badness * direction)
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
