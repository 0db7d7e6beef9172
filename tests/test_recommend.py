"""The recommendation: the strongest fluent setting of a sweep judged on generated replies."""

from __future__ import annotations

import pytest
import torch

import app.steering.recommend as recommend
from app.steering.extraction import extract
from app.steering.recommend import (
    CONTINUATION_PROMPTS,
    MAX_REPEATED_SHARE,
    candidate_layers,
    choose,
    repeated_ngram_share,
    sweep_strengths,
)
from app.steering.vectors import SteeringVector
from tests.test_extraction import NEG, POS

STRENGTHS = (2.0, 4.0, 6.0, 8.0)


def test_choose_takes_the_strongest_fluent_strength():
    effect = [[0.01, 0.05, 0.09, 0.12]]
    perplexity = [[2.0, 3.0, 9.0, 40.0]]  # 8.0 is past the limit of 10
    repetition = [[0.0, 0.0, 0.1, 0.0]]
    assert choose(effect, perplexity, repetition, STRENGTHS, perplexity_limit=10.0) == (0, 2)


def test_a_looping_reply_is_not_fluent_even_at_low_perplexity():
    effect = [[0.01, 0.05, 0.09, 0.12]]
    perplexity = [[2.0, 2.0, 2.0, 2.0]]
    repetition = [[0.0, 0.0, MAX_REPEATED_SHARE + 0.01, 0.0]]
    assert choose(effect, perplexity, repetition, STRENGTHS, perplexity_limit=10.0) == (0, 3)
    repetition = [[0.0, 0.0, 0.0, 0.9]]
    assert choose(effect, perplexity, repetition, STRENGTHS, perplexity_limit=10.0) == (0, 2)


def test_choose_prefers_the_layer_that_shows_the_concept_most_at_its_own_choice():
    effect = [[0.01, 0.02, 0.03, 0.04], [0.02, 0.06, 0.10, 0.30]]
    perplexity = [[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 5.0, 50.0]]
    repetition = [[0.0] * 4, [0.0] * 4]
    # layer set 0 fluent up to 8.0 (effect 0.04); layer set 1 up to 6.0 (effect 0.10): set 1 wins
    assert choose(effect, perplexity, repetition, STRENGTHS, perplexity_limit=10.0) == (1, 2)


def test_with_nothing_fluent_the_weakest_strength_is_offered():
    effect = [[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.01]]
    perplexity = [[99.0] * 4, [2.0, 99.0, 99.0, 99.0]]
    repetition = [[0.0] * 4, [0.0] * 4]
    assert choose(effect, perplexity, repetition, STRENGTHS, perplexity_limit=10.0) == (1, 0)
    assert choose(effect[:1], perplexity[:1], repetition[:1], STRENGTHS, perplexity_limit=10.0) == (0, 0)


def test_repeated_ngram_share():
    assert repeated_ngram_share([1, 2, 3, 1, 2, 3, 1, 2, 3]) == pytest.approx(1 - 3 / 7)
    assert repeated_ngram_share([1, 2]) == 0.0
    assert repeated_ngram_share([1, 2, 3, 4, 5]) == 0.0


def _vector(tiny_engine, char_tokenizer) -> SteeringVector:
    return extract(tiny_engine, char_tokenizer, POS, NEG, name="joy", model_id="tiny", model_fingerprint="fp").vector


def _stats_vector(accuracy: list[float], separation: list[float], recommended: list[int]) -> SteeringVector:
    """A vector with every layer of a 24-layer model and the given per-layer statistics."""
    n = len(accuracy)
    return SteeringVector(
        name="joy",
        model_id="tiny",
        model_fingerprint="fp",
        hidden_size=4,
        layers={i: torch.ones(4) for i in range(n)},
        metadata={
            "recommended_layers": recommended,
            "stats": {"accuracy": accuracy, "separation": separation},
        },
    )


def test_candidate_layers_come_from_the_early_middle_band():
    # Qwen2.5 0.5B's pattern: accuracy ties in the middle, separation grows with depth, so the
    # extraction band (20-65%) picks layer 15; the candidate band (25-45%) is layers 6..10 of 24.
    accuracy = [1.0] * 5 + [0.7] * 10 + [0.9] * 9
    separation = [float(i) for i in range(24)]
    vector = _stats_vector(accuracy, separation, recommended=[15])
    assert candidate_layers(vector) == [[10]]
    assert candidate_layers(vector, count=2) == [[10], [9]]
    accuracy[7] = 0.8  # accuracy first, separation only breaks ties
    assert candidate_layers(vector, count=2) == [[7], [10]]
    assert candidate_layers(vector, count=9) == [[7], [10], [9], [8], [6]]  # the band has five layers


def test_candidate_layers_keep_a_multi_layer_concept_and_need_statistics(tiny_engine, char_tokenizer):
    vector = _vector(tiny_engine, char_tokenizer)  # three layers: the band is layers 0..1
    assert candidate_layers(vector)[0][0] in (0, 1)
    vector.metadata["recommended_layers"] = [0, 1]  # a multi-layer concept keeps its layers
    assert candidate_layers(vector) == [[0, 1]]
    vector.metadata["recommended_layers"] = [2]
    del vector.metadata["stats"]  # no statistics (an imported vector): its recommended layer
    assert candidate_layers(vector) == [[2]]


def test_sweep_is_one_batched_call_scored_per_setting(tiny_engine, char_tokenizer, monkeypatch):
    vector = _vector(tiny_engine, char_tokenizer)
    calls = []
    real_generate = recommend.generate

    def counting_generate(*args, **kwargs):
        calls.append(len(args[2]))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(recommend, "generate", counting_generate)
    seen: list[list[str]] = []

    def fake_effect(texts, positive, negative):  # deterministic: the reply's length
        seen.append(list(texts))
        return [len(t) / 100 for t in texts]

    sweep = sweep_strengths(
        tiny_engine, char_tokenizer, vector, POS, NEG, fake_effect, strengths=(1.0, 3.0), max_new_tokens=4
    )
    n_sets = len(sweep.layers)
    assert calls == [len(CONTINUATION_PROMPTS) * (1 + n_sets * 2)]  # one call: baseline + every setting
    assert len(seen) == 1 and len(seen[0]) == calls[0]
    assert [len(row) for row in sweep.effect] == [2] * n_sets
    assert sweep.chosen_strength in (1.0, 3.0) and sweep.chosen_layers in sweep.layers
    assert sweep.perplexity_limit >= recommend.MIN_PERPLEXITY_LIMIT
    assert all(torch.isfinite(torch.tensor(row)).all() for row in sweep.perplexity)
