"""A decoding step of a decoder layer as one compiled call: used where it stands in for transformers'
forward, close to it (the same keys and values, logits within 1e-5), the same bits for a row in any
batch, and out of the way of hooks, other caches and kernels.restore."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from app.models import attention, kernels, layer_step, panels
from tests.conftest import make_tiny_model

pytestmark = pytest.mark.skipif(panels.unavailable_reason() is not None, reason="the panel product cannot run here")

STEPPED = ("llama", "mistral", "qwen2")


@pytest.fixture
def steps(monkeypatch):
    """Counts the layer calls that ran as one compiled step."""
    counted = {"steps": 0}
    original = layer_step._step

    def counting(*args):
        result = original(*args)
        counted["steps"] += result is not None
        return result

    monkeypatch.setattr(layer_step, "_step", counting)
    return counted


def _model(model_type: str) -> torch.nn.Module:
    model = make_tiny_model(model_type)
    if model_type == "mistral":
        model.config.sliding_window = None  # as Mistral-7B-Instruct v0.2 on; a window: the last test
    attention.install(model)
    kernels.use(model, "panels")
    return model


@torch.inference_mode()
def _decode(model: torch.nn.Module, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor, DynamicCache]:
    """Greedy tokens and their logits [steps + 1, vocab] from a prompt, and the cache at the end."""
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True)
    logits, tokens = [out.logits[0, -1]], []
    for _ in range(steps):
        tokens.append(int(out.logits[0, -1].argmax()))
        out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
        logits.append(out.logits[0, -1])
    return tokens, torch.stack(logits), cache


@pytest.mark.parametrize("model_type", STEPPED)
def test_a_decoding_step_is_one_call_close_to_transformers(model_type, steps):
    model = _model(model_type)
    layers = model.config.num_hidden_layers
    tokens, logits, cache = _decode(model, [3, 7, 11, 2, 6], 8)
    assert steps["steps"] == 8 * layers
    assert layer_step.restore(model) == layers
    plain_tokens, plain_logits, plain_cache = _decode(model, [3, 7, 11, 2, 6], 8)
    assert steps["steps"] == 8 * layers  # none since
    assert tokens == plain_tokens
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=1e-5)
    # The first layer's keys and values of the first new position: the same bits (norm, products,
    # rotary), as its input is the embedding either way; attention only differs from there on.
    for mine, theirs in (
        (cache.layers[0].keys, plain_cache.layers[0].keys),
        (cache.layers[0].values, plain_cache.layers[0].values),
    ):
        assert mine.shape == theirs.shape == (1, 2, 13, 8)
        assert torch.equal(mine[:, :, :6], theirs[:, :, :6])


@torch.inference_mode()
def test_a_row_gets_the_same_bits_alone_and_in_a_left_padded_batch(steps):
    model = _model("qwen2")
    prompts = [[5, 9, 14], [3, 7, 11, 2, 6], [8, 1, 4, 4]]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    batched = []
    for _ in range(6):
        token = out.logits[:, -1:].argmax(-1)
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=-1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        batched.append(out.logits[:, -1])
    assert steps["steps"] == 6 * model.config.num_hidden_layers
    for row, prompt in enumerate(prompts):
        _, alone, _ = _decode(model, prompt, 6)
        assert torch.equal(torch.stack([b[row] for b in batched]), alone[1:])


@torch.inference_mode()
def test_positions_shared_by_the_batch_serve_every_row(steps):
    # Without position ids transformers computes one rotary row for the whole batch: [1, 1, head].
    model = _model("llama")
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([[3, 7, 11], [3, 7, 11]]), past_key_values=cache, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    twice = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1]
    assert steps["steps"] == model.config.num_hidden_layers
    _, alone, _ = _decode(model, [3, 7, 11], 1)
    assert torch.equal(twice[0], alone[1]) and torch.equal(twice[1], alone[1])


@torch.inference_mode()
def test_a_cropped_cache_gives_the_same_step_again(steps):
    model = _model("llama")
    tokens, logits, cache = _decode(model, [3, 7, 11], 4)
    cache.crop(-1)  # the bench's paired steps: the last step once more, on the same cache
    again = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True).logits[0, -1]
    assert torch.equal(again, logits[-1])
    assert cache.get_seq_length() == 3 + 4


@torch.inference_mode()
def test_several_positions_after_decoding_start_a_new_buffer_and_agree(steps):
    model = _model("mistral")

    def run() -> torch.Tensor:
        _, _, cache = _decode(model, [3, 7, 11], 2)
        out = model(input_ids=torch.tensor([[9, 4, 12]]), past_key_values=cache, use_cache=True)  # concatenated
        logits = [out.logits[0, -1]]
        for _ in range(3):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True)
            logits.append(out.logits[0, -1])
        assert cache.get_seq_length() == 3 + 2 + 3 + 3
        return torch.stack(logits)

    stepped = run()
    assert steps["steps"] == (2 + 3) * model.config.num_hidden_layers
    layer_step.restore(model)
    torch.testing.assert_close(stepped, run(), rtol=0, atol=1e-5)


@torch.inference_mode()
def test_a_hook_inside_a_layer_takes_transformers_forward_and_one_on_the_layer_still_runs(steps):
    model = _model("llama")
    layers = model.model.layers
    seen = []
    inner = layers[0].self_attn.register_forward_hook(lambda module, args, output: seen.append("attention"))
    delta = torch.full((model.config.hidden_size,), 0.5)
    outer = layers[1].register_forward_hook(lambda module, args, output: output + delta)
    try:
        steered, steered_logits, _ = _decode(model, [3, 7, 11], 3)
        assert seen == ["attention"] * 4  # the prompt and every step: transformers' forward ran
        assert steps["steps"] == 3 * (model.config.num_hidden_layers - 1)
    finally:
        inner.remove()
        outer.remove()
    _, plain_logits, _ = _decode(model, [3, 7, 11], 3)
    assert steps["steps"] == 3 * (model.config.num_hidden_layers - 1) + 3 * model.config.num_hidden_layers
    assert not torch.allclose(steered_logits, plain_logits, atol=1e-3)  # the layer's hook changed the output
    layer_step.restore(model)
    outer = layers[1].register_forward_hook(lambda module, args, output: output + delta)
    try:
        _, reference, _ = _decode(model, [3, 7, 11], 3)
    finally:
        outer.remove()
    torch.testing.assert_close(steered_logits, reference, rtol=0, atol=1e-5)


def test_a_replaced_weight_is_read_at_once(steps):
    model = _model("llama")
    _decode(model, [3, 7, 11], 2)
    down = model.model.layers[2].mlp.down_proj
    down.weight = torch.nn.Parameter(torch.zeros_like(down.weight), requires_grad=False)
    _, logits, _ = _decode(model, [3, 7, 11], 2)
    layer_step.restore(model)
    _, plain, _ = _decode(model, [3, 7, 11], 2)
    torch.testing.assert_close(logits, plain, rtol=0, atol=1e-5)
    assert steps["steps"] == 4 * model.config.num_hidden_layers


def test_kernels_restore_gives_back_transformers_layers():
    model = _model("qwen2")
    names = {type(layer).__name__ for layer in model.model.layers}
    assert names == {"OneCallQwen2DecoderLayer"}
    kernels.restore(model)
    assert {type(layer).__name__ for layer in model.model.layers} == {"Qwen2DecoderLayer"}
    assert not any(isinstance(m, layer_step.OneCallLayer) for m in model.modules())


def test_other_caches_and_training_take_transformers_forward(steps):
    model = _model("llama")
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([[3, 7, 11]]), use_cache=False)
        model(input_ids=out.logits[:, -1:].argmax(-1), use_cache=False)  # no cache at all
    model.train()
    _decode(model, [3, 7, 11], 2)
    assert steps["steps"] == 0


def test_a_sliding_window_cache_takes_transformers_forward(steps):
    model = make_tiny_model("mistral")  # a window of 4096: DynamicCache keeps sliding layers
    attention.install(model)
    kernels.use(model, "panels")
    tokens, logits, cache = _decode(model, [3, 7, 11], 3)
    assert steps["steps"] == 0 and type(cache.layers[0]).__name__ == "DynamicSlidingWindowLayer"
    layer_step.restore(model)
    plain_tokens, plain_logits, _ = _decode(model, [3, 7, 11], 3)
    assert tokens == plain_tokens and torch.equal(logits, plain_logits)


def test_a_cache_outgrowing_its_buffer_moves_to_a_larger_one(steps):
    model = _model("llama")
    steps_taken = layer_step.MIN_CAPACITY + 20  # past the first buffer's room
    tokens, logits, cache = _decode(model, [3, 7, 11], steps_taken)
    held = cache.layers[0].__dict__["_step_buffers"][0]
    assert held.shape[2] > 3 + layer_step.MIN_CAPACITY and cache.layers[0].keys.data_ptr() == held.data_ptr()
    assert steps["steps"] == steps_taken * model.config.num_hidden_layers
    layer_step.restore(model)
    plain_tokens, plain_logits, _ = _decode(model, [3, 7, 11], steps_taken)
    assert tokens == plain_tokens
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=1e-5)


def test_a_cache_of_another_shape_is_never_written():
    # The C step writes into the cache by address: a cache layer that does not hold the layer's
    # key heads (or rows) is left to transformers.
    model = _model("llama")
    _, _, cache = _decode(model, [3, 7, 11], 1)
    layout = model.model.layers[0]._layout()
    assert layout is not None
    layer = cache.layers[0]
    assert layer_step._buffers(layer, 1, layout.struct) is not None
    assert layer_step._buffers(layer, 2, layout.struct) is None  # two rows asked of a one-row cache
    layer.keys, layer.values = layer.keys[:, :1], layer.values[:, :1]  # one key head where the layer has two
    assert layer_step._buffers(layer, 1, layout.struct) is None
