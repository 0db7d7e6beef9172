"""next_token_shift (teacher-forced steered vs unsteered probabilities) and token_diff, on a tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from app.analysis.token_shift import next_token_shift, token_diff
from app.steering.engine import NO_STEERING, Steer, Steering, SteeringEngine
from app.steering.generation import GenerationRequest, generate
from app.steering.vectors import SteeringVector


def _vector(hidden: int = 32, n_layers: int = 3) -> SteeringVector:
    generator = torch.Generator().manual_seed(7)
    return SteeringVector(
        name="random",
        model_id="tiny",
        model_fingerprint="tiny",
        hidden_size=hidden,
        layers={i: torch.randn(hidden, generator=generator) for i in range(n_layers)},
        norms=dict.fromkeys(range(n_layers), 1.0),
    )


@pytest.fixture
def lab(tiny_llama, char_tokenizer):
    engine = SteeringEngine(tiny_llama)
    lm = SimpleNamespace(tokenizer=char_tokenizer, is_chat=False, model=tiny_llama)
    return SimpleNamespace(lm=lm, engine=engine)


def _steered_request(positions="all", strength=6.0) -> GenerationRequest:
    steering = Steering((Steer(_vector(), strength, (1,), unit="raw"),), positions)
    return GenerationRequest(prompt="hello", steering=steering, max_new_tokens=6, chat=False, record_top_k=4)


def test_steered_probabilities_match_what_generation_saw(lab):
    request = _steered_request()
    (result,) = generate(lab.engine, lab.lm.tokenizer, [request])
    shifts = next_token_shift(lab, request, result.token_ids, k=4)
    assert [s.token_id for s in shifts] == result.token_ids
    assert [s.step for s in shifts] == list(range(len(result.token_ids)))
    for shift, recorded in zip(shifts, result.top_k):
        assert list(shift.candidates) == [token for token, _ in recorded]
        assert shift.steered == pytest.approx([p for _, p in recorded], abs=1e-5)
        # greedy: the chosen token is the steered run's most likely one
        assert shift.token_id == shift.candidates[0]
        assert shift.chosen_steered == pytest.approx(shift.steered[0])
    assert lab.engine.hook_count() == 0


def test_baseline_column_is_the_unsteered_model_on_the_same_prefix(lab):
    request = _steered_request()
    (result,) = generate(lab.engine, lab.lm.tokenizer, [request])
    shifts = next_token_shift(lab, request, result.token_ids, k=3)
    prompt = lab.lm.tokenizer("hello")["input_ids"]
    ids = torch.tensor([prompt + result.token_ids[:-1]])
    with torch.inference_mode():
        probs = torch.softmax(lab.engine.model(input_ids=ids).logits[0].float(), -1)  # [pos, vocab]
    for shift in shifts:
        row = probs[len(prompt) - 1 + shift.step]
        assert shift.baseline == pytest.approx(row[list(shift.candidates)].tolist(), abs=1e-5)
        assert shift.chosen_baseline == pytest.approx(float(row[shift.token_id]), abs=1e-5)
    assert any(abs(s.chosen_baseline - s.chosen_steered) > 1e-3 for s in shifts)  # steering did something


def test_no_steering_gives_equal_columns_and_generated_mode_spares_the_first_step(lab):
    plain = GenerationRequest(prompt="hello", steering=NO_STEERING, chat=False)
    shifts = next_token_shift(lab, plain, [10, 11, 12], k=5)
    for shift in shifts:  # two identical rows of one batch: equal up to float rounding
        assert shift.baseline == pytest.approx(shift.steered, abs=1e-6)

    generated_only = _steered_request(positions="generated")
    shifts = next_token_shift(lab, generated_only, [10, 11, 12], k=5)
    assert shifts[0].baseline == pytest.approx(shifts[0].steered, abs=1e-6)  # predicted from the unsteered prompt
    assert shifts[1].baseline != pytest.approx(shifts[1].steered, abs=1e-3)


def test_nothing_generated_and_bad_k(lab):
    assert next_token_shift(lab, _steered_request(), [], k=3) == []
    with pytest.raises(ValueError, match="k must be at least 1"):
        next_token_shift(lab, _steered_request(), [10], k=0)


def test_token_diff_marks_where_the_texts_part():
    diff = token_diff(["The", " day", " was", " fine"], ["The", " day", " was", " great", "!"])
    assert diff.first_difference == 3
    assert diff.segments == [("The day was", None), (" fine", "baseline only"), (" great!", "steered only")]


def test_token_diff_identical_and_prefix():
    same = token_diff(["a", "b"], ["a", "b"])
    assert same.first_difference is None and same.segments == [("ab", None)]
    longer = token_diff(["a", "b"], ["a", "b", "c"])
    assert longer.first_difference == 2
    assert longer.segments == [("ab", None), ("c", "steered only")]
