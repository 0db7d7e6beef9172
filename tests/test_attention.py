"""Attention row by row for padded rows (app/models/attention.py): a row's bits do not depend on its batch."""

from __future__ import annotations

import pytest
import torch

from app.models import attention, kernels
from app.steering.engine import Steer, Steering, SteeringEngine
from app.steering.generation import GenerationRequest, generate
from tests.conftest import TINY_CONFIGS, make_tiny_model
from tests.test_engine import random_vector


def causal(pads: list[int], queries: int, keys: int) -> torch.Tensor:
    """The mask transformers gives sdpa for left-padded rows: [batch, 1, queries, keys]."""
    position = torch.arange(keys - queries, keys)[:, None]
    column = torch.arange(keys)[None, :]
    return torch.stack([((column <= position) & (column >= pad))[None] for pad in pads])


def test_left_padding_reads_each_rows_padding():
    assert attention.left_padding(causal([0, 2, 5], 1, 7), 1) == [0, 2, 5]  # a decoding step
    assert attention.left_padding(causal([0, 3], 6, 6), 6) == [0, 3]  # a prompt: padded queries are ignored
    finished = causal([1, 0], 1, 6)
    finished[1, 0, 0, -1] = False  # a row that ended: its last token is masked, not padding
    assert attention.left_padding(finished, 1) == [1, None]
    window = causal([0, 0], 6, 6) & (torch.arange(6)[None, :] > torch.arange(6)[:, None] - 3)  # a sliding window
    assert attention.left_padding(window, 6) == [None, None]


# GPT-2's projections are Conv1D (torch's addmm), not nn.Linear: no kernel of ours makes their rows batch-invariant.
LINEAR_MODELS = sorted(set(TINY_CONFIGS) - {"gpt2"})
needs_panels = pytest.mark.skipif(
    kernels.panels.unavailable_reason() is not None,
    reason="rows are bit-equal by construction with the panel product only (oneDNN's packed one is not built to be)",
)


@needs_panels
@pytest.mark.parametrize("model_type", LINEAR_MODELS)
def test_a_padded_rows_logits_are_the_bits_it_gets_alone(model_type):
    model = make_tiny_model(model_type)
    kernels.use(model, "panels")
    if not attention.install(model):
        pytest.skip(f"{model_type} does not use sdpa attention")
    torch.manual_seed(1)
    short, long = torch.randint(4, 120, (1, 40)), torch.randint(4, 120, (1, 150))  # lengths where sdpa's
    batch = torch.cat([torch.cat([torch.zeros(1, 110, dtype=torch.long), short], 1), long])  # batched call differs
    mask = torch.tensor([[0] * 110 + [1] * 40, [1] * 150])
    with torch.inference_mode():
        alone = model(input_ids=short).logits[0]
        batched = model(input_ids=batch, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert torch.equal(batched[0, 110:], alone)
    assert torch.equal(batched[1], model(input_ids=long).logits[0])


def test_install_switches_only_sdpa_models():
    model = make_tiny_model("llama")
    assert model.config._attn_implementation == "sdpa"
    assert attention.install(model) and model.config._attn_implementation == attention.NAME
    assert attention.install(model)  # twice is fine
    eager = make_tiny_model("llama")
    eager.set_attn_implementation("eager")
    assert not attention.install(eager) and eager.config._attn_implementation == "eager"


@needs_panels
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "phi3"])
def test_batched_generation_of_different_lengths_equals_one_at_a_time(model_type, char_tokenizer):
    engine = SteeringEngine(make_tiny_model(model_type))
    kernels.use(engine.model, "panels")
    assert attention.install(engine.model)
    vector = random_vector(engine)
    requests = [
        GenerationRequest("Hi there, " * 4, max_new_tokens=10),
        GenerationRequest("A much longer prompt than that. " * 5, Steering((Steer(vector, 6.0),)), max_new_tokens=10),
        GenerationRequest("Mid length " * 7, Steering((Steer(-vector, 3.0),), "generated"), max_new_tokens=7),
    ]
    batched = generate(engine, char_tokenizer, requests)
    alone = [generate(engine, char_tokenizer, [r])[0] for r in requests]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert engine.hook_count() == 0


def test_a_decoding_steps_attention_runs_on_one_thread(monkeypatch):
    seen: list[tuple[int, int]] = []
    forward = attention.sdpa_attention_forward

    def recording(module, query, key, value, mask, **kwargs):
        seen.append((query.shape[2], torch.get_num_threads()))
        return forward(module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", recording)
    monkeypatch.setattr(attention, "ONE_THREAD_ELEMENTS", 4 * 2 * 16 * 8)  # the tiny model: 2 kv heads of 8
    model = make_tiny_model("llama")
    attention.install(model)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        model(input_ids=torch.tensor([[3]]))  # one query over one key: one thread
        model(input_ids=torch.randint(4, 100, (1, 40)))  # a 40-token prompt: every thread
    layers = model.config.num_hidden_layers
    assert seen == [(1, 1)] * layers + [(40, threads)] * layers
