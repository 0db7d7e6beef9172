"""Independent judges of a reply: does it show a concept, and is it still text?

These are deliberately *not* the Effect metric the strength sweep tunes on (sentence-embedding
similarity): a feeling is judged by VADER's sentiment lexicon, a topic or persona by a word list,
a style by simple statistics. A reply moved toward the concept when
``direction * (score(steered) - score(baseline)) > margin``.

Degenerate replies are flagged separately (``repetition``; word salad is judged by the caller from
perplexity under the unsteered model, which needs the model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

ScorerKind = Literal["sentiment", "words", "word_length", "sentence_length", "question_marks", "exclamation_marks"]
SCORER_KINDS: tuple[str, ...] = (
    "sentiment",
    "words",
    "word_length",
    "sentence_length",
    "question_marks",
    "exclamation_marks",
)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
_SENTENCE_END = re.compile(r"[.!?]+")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'"})


def words(text: str) -> list[str]:
    """Lower-case words; an apostrophe inside a word keeps it whole (``y'all``, ``ain't``)."""
    return _WORD.findall(text.lower().translate(_QUOTES))


@cache
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # ships its lexicon: no download

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER's compound sentiment in [-1, 1]."""
    return float(_vader().polarity_scores(text)["compound"])


def word_hits(text: str, stems: Sequence[str]) -> int:
    """How many words of ``text`` are on the list: ``"sea"`` matches the word only, ``"wave*"`` any
    word starting with ``wave``."""
    exact = {s for s in stems if not s.endswith("*")}
    prefixes = tuple(s[:-1] for s in stems if s.endswith("*"))
    return sum(1 for w in words(text) if w in exact or (prefixes and w.startswith(prefixes)))


def mean_word_length(text: str) -> float:
    """Mean letters per word (0 for a text without words)."""
    found = words(text)
    return sum(len(w.replace("'", "")) for w in found) / len(found) if found else 0.0


def mean_sentence_length(text: str) -> float:
    """Mean words per sentence; an unfinished last sentence counts as one."""
    pieces = [p for p in _SENTENCE_END.split(text) if words(p)]
    return sum(len(words(p)) for p in pieces) / len(pieces) if pieces else 0.0


@dataclass(frozen=True)
class Scorer:
    """How one concept is judged. ``direction`` is +1 when a higher score means more of the concept."""

    kind: ScorerKind
    direction: int = 1
    margin: float = 0.0
    stems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in SCORER_KINDS:
            raise ValueError(f"unknown scorer kind {self.kind!r}: use one of {', '.join(SCORER_KINDS)}")
        if self.direction not in (1, -1):
            raise ValueError(f"direction must be 1 or -1, got {self.direction!r}")
        if self.kind == "words" and not self.stems:
            raise ValueError("a 'words' scorer needs a non-empty list of stems")

    def score(self, text: str) -> float:
        if self.kind == "sentiment":
            return sentiment(text)
        if self.kind == "words":
            return float(word_hits(text, self.stems))
        if self.kind == "word_length":
            return mean_word_length(text)
        if self.kind == "sentence_length":
            return mean_sentence_length(text)
        if self.kind == "question_marks":
            return float(text.count("?"))
        return float(text.count("!"))

    def moved(self, baseline: str, steered: str) -> bool:
        """Whether ``steered`` shows more of the concept than ``baseline`` by more than the margin."""
        return self.direction * (self.score(steered) - self.score(baseline)) > self.margin

    def describe(self) -> str:
        sign = "higher" if self.direction > 0 else "lower"
        if self.kind == "words":
            return f"word list ({len(self.stems)} stems), more hits by > {self.margin:g}"
        return f"{self.kind}, {sign} by > {self.margin:g}"


def scorer_from_dict(data: object, name: str = "") -> Scorer:
    """A :class:`Scorer` from ``{"kind", "direction", "margin", "stems"}``."""
    if not isinstance(data, dict):
        raise ValueError(f"scorer {name!r} must be an object with a 'kind'")
    stems = data.get("stems", [])
    if not isinstance(stems, list) or not all(isinstance(s, str) and s.strip("*") for s in stems):
        raise ValueError(f"scorer {name!r}: 'stems' must be a list of words (a trailing * matches a prefix)")
    return Scorer(
        kind=data.get("kind", ""),
        direction=int(data.get("direction", 1)),
        margin=float(data.get("margin", 0.0)),
        stems=tuple(s.lower() for s in stems),
    )


def load_scorers(path: Path) -> dict[str, Scorer]:
    """Read a ``{concept name: scorer}`` JSON file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read scorers {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping concept names to scorers")
    return {name: scorer_from_dict(spec, name) for name, spec in data.items()}


# --- degenerate replies -----------------------------------------------------------------

REPEAT_N = 3
MAX_REPEATED_SHARE = 0.3  # over this share of repeated word 3-grams, a reply is a loop


def repeated_ngram_share(tokens: Sequence[object], n: int = REPEAT_N) -> float:
    """Share of the ``n``-grams of ``tokens`` that already appeared earlier (0: none repeat)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_repetitive(text: str) -> bool:
    """Whether a reply loops: more than ``MAX_REPEATED_SHARE`` of its word 3-grams are repeats."""
    return repeated_ngram_share(words(text)) > MAX_REPEATED_SHARE
