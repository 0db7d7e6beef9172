"""The held-out judges: exact scores on crafted sentences, and the held-out set itself is valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.quality.scorers import (
    Scorer,
    is_repetitive,
    load_scorers,
    mean_sentence_length,
    mean_word_length,
    repeated_ngram_share,
    scorer_from_dict,
    sentiment,
    word_hits,
    words,
)
from app.steering.concepts import load_all

HELDOUT = Path(__file__).parent / "heldout"


def test_words_keep_apostrophes_and_curly_quotes():
    assert words("Howdy, Y\u2019all! Ain't it 2 o'clock?") == ["howdy", "y'all", "ain't", "it", "o'clock"]


def test_word_hits_exact_words_and_prefixes():
    stems = ["sea", "wave*"]
    assert word_hits("The sea, the seas, the season; waves and a wavelet.", stems) == 3  # sea, waves, wavelet
    assert word_hits("Nothing here.", stems) == 0


def test_style_statistics():
    assert mean_word_length("I am so tall") == pytest.approx(9 / 4)
    assert mean_word_length("...") == 0.0
    assert mean_sentence_length("One two three. Four five! Six") == pytest.approx(2.0)
    assert Scorer("question_marks").score("Why? How? Now.") == 2.0
    assert Scorer("exclamation_marks").score("Yes! Yes!!") == 3.0


def test_sentiment_is_vader_compound():
    assert sentiment("I am so thankful for you!") == pytest.approx(0.7213)
    assert sentiment("The table is brown.") == 0.0
    assert sentiment("I am terrified and miserable.") < -0.5


def test_moved_needs_the_margin_in_the_concept_direction():
    anxious = Scorer("sentiment", direction=-1, margin=0.05)
    assert anxious.moved("The table is brown.", "I am terrified and miserable.")
    assert not anxious.moved("I am terrified and miserable.", "The table is brown.")
    ocean = Scorer("words", stems=("sea",), margin=0)
    assert ocean.moved("A day.", "A sea day.")
    assert not ocean.moved("A sea day.", "Another sea day.")  # equal counts: not moved


def test_repetition():
    assert repeated_ngram_share("a b c a b c a b c".split()) == pytest.approx(1 - 3 / 7)
    assert repeated_ngram_share("a b".split()) == 0.0
    assert is_repetitive("the sea the sea the sea the sea the sea")
    assert not is_repetitive("I walked to the shore and watched the boats come in.")


def test_bad_scorers_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="unknown scorer kind"):
        scorer_from_dict({"kind": "vibes"})
    with pytest.raises(ValueError, match="stems"):
        scorer_from_dict({"kind": "words"})
    with pytest.raises(ValueError, match="direction"):
        scorer_from_dict({"kind": "sentiment", "direction": 2})


def test_the_heldout_set_is_complete_and_new():
    concepts = load_all(HELDOUT / "concepts")
    scorers = load_scorers(HELDOUT / "scorers.json")
    questions = json.loads((HELDOUT / "questions.json").read_text(encoding="utf-8"))
    assert len(concepts) >= 8 and set(concepts) == set(scorers)
    assert all(len(c.positive) >= 12 and len(c.negative) >= 12 for c in concepts.values())
    assert not set(concepts) & set(load_all())  # none is a built-in concept
    assert len(questions) == 8 == len(set(questions))
    kinds = {c.category for c in concepts.values()}
    assert {"emotion", "topic", "style", "persona"} <= kinds


def test_the_tuning_set_is_complete_and_apart_from_the_heldout_set():
    # Recommendations are chosen on tests/tuning, so the held-out set stays unseen (docs/quality.md).
    tuning = Path(__file__).parent / "tuning"
    concepts = load_all(tuning / "concepts")
    scorers = load_scorers(tuning / "scorers.json")
    questions = json.loads((tuning / "questions.json").read_text(encoding="utf-8"))
    heldout_questions = json.loads((HELDOUT / "questions.json").read_text(encoding="utf-8"))
    assert len(concepts) >= 16 and set(concepts) == set(scorers)
    assert all(len(c.positive) >= 12 and len(c.negative) >= 12 for c in concepts.values())
    assert not set(concepts) & (set(load_all()) | set(load_all(HELDOUT / "concepts")))
    assert len(questions) == 8 == len(set(questions)) and not set(questions) & set(heldout_questions)
    assert {"emotion", "topic", "style", "persona"} <= {c.category for c in concepts.values()}
