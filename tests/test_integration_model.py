"""The real embedded SmolLM2, loaded from cache/ as the app loads it, generating a few tokens.

Skipped when the model is not set up (run ./setup_local_cache.sh), except under CI=true, where
a missing model is a failed set-up and so a failure.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import SMALL_MODEL, require_model

MODEL_ID = SMALL_MODEL
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded():
    require_model(MODEL_ID)
    from app.models.loading import load_model

    return load_model(MODEL_ID, device="cpu")


def test_loaded_as_the_contract_says(loaded):
    assert loaded.model_id == MODEL_ID
    assert loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None
    assert (loaded.n_layers, loaded.hidden_size) == (30, 576)
    assert loaded.is_chat  # the GGUF carries SmolLM2's chat template
    prompt = loaded.format_prompt("Hello")
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert "smollm2-135m-instruct" in loaded.reason
    assert loaded.model.config._attn_implementation == "steering_lab_sdpa"  # a row's bits do not depend on its batch


def test_fingerprint_is_stable_and_depends_on_the_weights(loaded):
    from app.models.loading import fingerprint

    assert fingerprint(MODEL_ID, loaded.model) == loaded.fingerprint
    assert len(loaded.fingerprint) == 16 and int(loaded.fingerprint, 16) >= 0
    assert fingerprint("another-id", loaded.model) != loaded.fingerprint
    first = next(loaded.model.parameters())
    saved = first.data[0, 0].item()
    with torch.no_grad():
        first.data[0, 0] += 1.0
    try:
        assert fingerprint(MODEL_ID, loaded.model) != loaded.fingerprint
    finally:
        with torch.no_grad():
            first.data[0, 0] = saved


@torch.inference_mode()
def test_generates_a_few_tokens_with_plain_generate(loaded):
    tokenizer = loaded.tokenizer
    prompts = [
        loaded.format_prompt("What is the capital of France?"),
        loaded.format_prompt("Say hi."),
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0  # left padding: the shorter prompt is padded in front
    out = loaded.model.generate(**batch, max_new_tokens=8, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    assert 0 < new.shape[1] <= 8
    answer = tokenizer.decode(new[0], skip_special_tokens=True)
    assert "Paris" in answer, answer  # a real model, not random weights
