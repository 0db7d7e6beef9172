"""The injection engine's promises, pinned exactly on tiny random-weight models."""

from __future__ import annotations

import pytest
import torch

from app.steering.engine import Steer, Steering, SteeringEngine
from app.steering.generation import GenerationRequest, generate
from app.steering.vectors import SteeringVector
from tests.conftest import TINY_CONFIGS, make_tiny_model


def random_vector(engine: SteeringEngine, name: str = "concept", seed: int = 1) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    layers = {i: torch.randn(engine.hidden_size, generator=generator) for i in range(engine.n_layers)}
    return SteeringVector(
        name=name,
        model_id="tiny",
        model_fingerprint="tiny",
        hidden_size=engine.hidden_size,
        layers=layers,
        norms={i: 10.0 for i in range(engine.n_layers)},
        metadata={"recommended_layers": [1]},
    )


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 30, 42, 8, 9, 60]])


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_steering_changes_logits_and_leaves_no_trace(model_type):
    model = make_tiny_model(model_type)
    engine = SteeringEngine(model)
    before = logits(model, IDS)
    with engine.steer(Steering((Steer(random_vector(engine), 8.0, layers=(0, 2)),))):
        during = logits(model, IDS)
        assert engine.hook_count() == 2
    after = logits(model, IDS)
    assert not torch.allclose(before, during)
    assert torch.equal(before, after)
    assert engine.hook_count() == 0 and engine.active_hooks() == []


def test_strength_zero_registers_nothing_and_is_exact(tiny_engine):
    model = tiny_engine.model
    before = logits(model, IDS)
    with tiny_engine.steer(Steering((Steer(random_vector(tiny_engine), 0.0),))):
        assert tiny_engine.hook_count() == 0
        assert torch.equal(logits(model, IDS), before)


def test_hooks_removed_when_body_raises(tiny_engine):
    before = logits(tiny_engine.model, IDS)
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_engine.steer(Steering((Steer(random_vector(tiny_engine), 5.0),))):
            raise RuntimeError("boom")
    assert tiny_engine.hook_count() == 0
    assert torch.equal(logits(tiny_engine.model, IDS), before)


def test_hooks_removed_when_a_forward_pass_raises(tiny_engine):
    with pytest.raises(ValueError, match="set up for 2 rows"):
        with tiny_engine.steer([Steering((Steer(random_vector(tiny_engine), 5.0),)), Steering()]):
            logits(tiny_engine.model, torch.cat([IDS, IDS, IDS]))
    assert tiny_engine.hook_count() == 0


def test_normalized_delta_size_and_raw_mode():
    vector = SteeringVector("v", "m", "f", 4, {0: torch.tensor([3.0, 0, 4.0, 0])}, norms={0: 20.0})
    # strength 2 adds 2 * 10% of the layer norm 20 = 4 along the unit direction
    assert torch.allclose(vector.delta(0, 2.0), torch.tensor([2.4, 0, 3.2, 0]))
    assert torch.equal(vector.delta(0, 2.0, "raw"), torch.tensor([6.0, 0, 8.0, 0]))
    with pytest.raises(ValueError, match="finite"):
        vector.delta(0, float("nan"))
    with pytest.raises(ValueError, match="no layer 3"):
        vector.delta(3, 1.0)


def test_several_concepts_sum_per_layer(tiny_engine):
    a, b = random_vector(tiny_engine, "a", 1), random_vector(tiny_engine, "b", 2)
    both = Steering((Steer(a, 1.0, (1,), "raw"), Steer(b, 2.0, (1,), "raw")))
    summed = Steering((Steer(a + b * 2.0, 1.0, (1,), "raw"),))
    with tiny_engine.steer(both):
        first = logits(tiny_engine.model, IDS)
    with tiny_engine.steer(summed):
        second = logits(tiny_engine.model, IDS)
    assert torch.allclose(first, second, atol=1e-6)


def test_out_of_range_layer_is_a_clear_error(tiny_engine):
    with pytest.raises(ValueError, match=r"layer 7 is out of range: the model has 3 layers \(0..2\)"):
        with tiny_engine.steer(Steering((Steer(random_vector(tiny_engine), 1.0, (7,)),))):
            pass
    assert tiny_engine.hook_count() == 0


def test_per_row_steering_equals_one_at_a_time(tiny_engine):
    ids = torch.cat([IDS, IDS, IDS])
    vector = random_vector(tiny_engine)
    rows = [Steering(), Steering((Steer(vector, 4.0),)), Steering((Steer(-vector, 6.0, (0, 2)),))]
    with tiny_engine.steer(rows):
        batched = logits(tiny_engine.model, ids)
    for i, row in enumerate(rows):
        with tiny_engine.steer(row):
            alone = logits(tiny_engine.model, IDS)
        assert torch.allclose(batched[i], alone[0], atol=1e-5), i
    # an unsteered row is bit-identical to the same row of an unsteered batch
    assert torch.equal(batched[0], logits(tiny_engine.model, ids)[0])


@pytest.mark.parametrize(
    ("mode", "steered_positions"),
    [("all", [0, 1, 2, 3, 4]), ("prompt", [0, 1, 2]), ("generated", [3, 4]), ("last", [2, 3, 4])],
)
def test_position_modes_select_positions(tiny_engine, mode, steered_positions):
    seen: list[torch.Tensor] = []

    def observe(module, args, output):
        seen.append(output.detach().clone())

    layer = tiny_engine.layers[2]
    ids = IDS[:, :5]
    handle = layer.register_forward_hook(observe)
    logits(tiny_engine.model, ids)
    handle.remove()
    with tiny_engine.steer(
        Steering((Steer(random_vector(tiny_engine), 3.0, (2,)),), positions=mode), prompt_lengths=[3]
    ):
        handle = layer.register_forward_hook(observe)  # runs after the steering hook
        try:
            logits(tiny_engine.model, ids)
        finally:
            handle.remove()
    changed = (seen[1] - seen[0]).abs().sum(-1)[0] > 0  # [pos]
    assert changed.nonzero().flatten().tolist() == steered_positions


def test_greedy_generation_strength_zero_equals_baseline(tiny_engine, char_tokenizer):
    vector = random_vector(tiny_engine)
    plain = generate(tiny_engine, char_tokenizer, [GenerationRequest("Hello", max_new_tokens=12)])
    zero = generate(
        tiny_engine,
        char_tokenizer,
        [GenerationRequest("Hello", Steering((Steer(vector, 0.0),)), max_new_tokens=12)],
    )
    assert plain[0].token_ids == zero[0].token_ids
    assert len(plain[0].token_ids) == 12 and plain[0].finish_reason == "length"


def test_batched_generation_equals_one_at_a_time(tiny_engine, char_tokenizer):
    vector = random_vector(tiny_engine)
    requests = [
        GenerationRequest("The cat", max_new_tokens=10),
        GenerationRequest("The cat", Steering((Steer(vector, 6.0),)), max_new_tokens=10),
        GenerationRequest("A much longer prompt here", Steering((Steer(-vector, 3.0),), "generated"), max_new_tokens=7),
        GenerationRequest("Hi", Steering((Steer(vector, 2.0),), "last"), max_new_tokens=10, temperature=0.8, seed=3),
    ]
    batched = generate(tiny_engine, char_tokenizer, requests)
    alone = [generate(tiny_engine, char_tokenizer, [r])[0] for r in requests]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert batched[0].token_ids != batched[1].token_ids
    assert len(batched[2].token_ids) == 7
    assert tiny_engine.hook_count() == 0


def test_closing_a_stream_early_removes_hooks(tiny_engine, char_tokenizer):
    from app.steering.generation import stream_generate

    vector = random_vector(tiny_engine)
    stream = stream_generate(
        tiny_engine, char_tokenizer, [GenerationRequest("Hi", Steering((Steer(vector, 2.0),)), max_new_tokens=50)]
    )
    next(stream)
    assert tiny_engine.hook_count() == 1
    stream.close()
    assert tiny_engine.hook_count() == 0
