"""Shared fixtures: tiny random-weight models (no download) and a character tokenizer."""

from __future__ import annotations

import string

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from app.steering.engine import SteeringEngine

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
def tiny_llama() -> torch.nn.Module:
    return make_tiny_model("llama")


@pytest.fixture
def tiny_engine(tiny_llama) -> SteeringEngine:
    return SteeringEngine(tiny_llama)
