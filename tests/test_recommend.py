"""The recommendation: the strongest fluent setting of a sweep judged on generated replies."""

from __future__ import annotations

import math
import weakref

import pytest
import torch

import app.steering.recommend as recommend
from app.analysis.metrics import perplexity_from_ids
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


def test_reply_perplexities_equal_scoring_each_whole_sequence(tiny_engine, char_tokenizer):
    prompts = [char_tokenizer("The cat")["input_ids"], char_tokenizer("A much longer prompt here")["input_ids"]]
    replies = [(0, [5, 9, 14, 3]), (1, [7]), (0, []), (1, [22, 8, 8, 31, 2, 6])]
    got = recommend.reply_perplexities(tiny_engine, prompts, replies)
    whole = [prompts[p] + list(r) for p, r in replies]
    expected = perplexity_from_ids(tiny_engine.model, whole, [len(prompts[p]) for p, _ in replies])
    assert math.isnan(got[2]) and math.isnan(expected[2])
    assert [got[i] for i in (0, 1, 3)] == pytest.approx([expected[i] for i in (0, 1, 3)], rel=1e-4)
    assert tiny_engine.hook_count() == 0


def test_candidate_layers_start_with_the_recommended_one(tiny_engine, char_tokenizer):
    vector = _vector(tiny_engine, char_tokenizer)
    sets = candidate_layers(vector)
    assert sets[0] == vector.recommended_layers and len(sets) == 1
    assert len(candidate_layers(vector, count=2)) == 2
    assert all(len(s) == 1 and s[0] in vector.layers for s in sets)
    vector.metadata["recommended_layers"] = [0, 1]  # a multi-layer concept keeps its layers
    assert candidate_layers(vector) == [[0, 1]]


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

    monkeypatch.setattr(recommend, "_BASELINES", weakref.WeakKeyDictionary())
    sweep = sweep_strengths(
        tiny_engine, char_tokenizer, vector, POS, NEG, fake_effect, strengths=(1.0, 3.0), max_new_tokens=4
    )
    n_sets = len(sweep.layers)
    assert calls == [len(CONTINUATION_PROMPTS) * (1 + n_sets * 2)]  # one call: baseline + every setting
    assert len(seen) == 1 and len(seen[0]) == calls[0]
    again = sweep_strengths(
        tiny_engine, char_tokenizer, vector, POS, NEG, fake_effect, strengths=(1.0, 3.0), max_new_tokens=4
    )
    assert calls[1] == len(CONTINUATION_PROMPTS) * n_sets * 2  # the unsteered replies are kept per model
    assert len(seen[1]) == calls[0] and seen[1] == seen[0]  # ... and still scored as the baseline
    assert again == sweep
    assert [len(row) for row in sweep.effect] == [2] * n_sets
    assert sweep.chosen_strength in (1.0, 3.0) and sweep.chosen_layers in sweep.layers
    assert sweep.perplexity_limit >= recommend.MIN_PERPLEXITY_LIMIT
    assert all(torch.isfinite(torch.tensor(row)).all() for row in sweep.perplexity)
