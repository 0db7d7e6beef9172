"""Shared fixtures: tiny random-weight models (no download) and a character tokenizer; for the
tests that run a real embedded model, the check that it is set up and a sandbox cache around it."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import NoReturn

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from app.steering.engine import SteeringEngine

SMALL_MODEL = "smollm2-135m-instruct"  # the embedded model the tests run for real: the smallest


def missing(message: str) -> NoReturn:
    """Skip a test that needs what set-up provides; under CI=true, where set-up always runs, fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def require_model(model_id: str = SMALL_MODEL) -> None:
    """Skip (or, under CI=true, fail) unless ``model_id`` is set up in this checkout's cache."""
    from app.models.embedded import is_set_up, models_dir

    if not is_set_up(model_id):
        missing(f"{model_id} is not set up in {models_dir()}: run ./setup_local_cache.sh --model {model_id}")


def sandbox_cache(root: Path) -> Path:
    """``root/cache`` with the set-up models linked in: vectors and files written there stay under ``root``."""
    from app.models.embedded import models_dir

    cache = root / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(models_dir().resolve(), target_is_directory=True)
    return cache


IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=128, **IDS)

# One config per architecture in app.steering.layers.LAYER_PATHS that transformers can build offline.
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", num_key_value_heads=2, **TINY),
    "mistral": dict(model_type="mistral", num_key_value_heads=2, **TINY),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, **TINY),
    "phi3": dict(model_type="phi3", num_key_value_heads=2, **TINY),
    "gemma2": dict(model_type="gemma2", num_key_value_heads=2, head_dim=8, **TINY),
    "gemma3_text": dict(model_type="gemma3_text", num_key_value_heads=2, head_dim=8, **TINY),
    "stablelm": dict(model_type="stablelm", num_key_value_heads=2, **TINY),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=3, n_head=4, vocab_size=128, n_positions=256, **IDS),
    "gpt_neox": dict(model_type="gpt_neox", **TINY),
}


def make_tiny_model(model_type: str = "llama", seed: int = 0) -> torch.nn.Module:
    from transformers import AutoConfig

    params = dict(TINY_CONFIGS[model_type])
    config = AutoConfig.for_model(params.pop("model_type"), **params)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def make_char_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.padding_side = "left"
    return tokenizer


@pytest.fixture(scope="session")
def char_tokenizer() -> PreTrainedTokenizerFast:
    return make_char_tokenizer()


@pytest.fixture
def two_threads():
    """torch on two threads, as on the 2-core machines the lab is measured on, whatever this one has."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    return make_tiny_model("llama")


@pytest.fixture
def tiny_engine(tiny_llama) -> SteeringEngine:
    return SteeringEngine(tiny_llama)
