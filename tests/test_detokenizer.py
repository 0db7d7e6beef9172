"""Streaming text decoded a few tokens at a time equals the full decode, emojis and accents included.

Uses the embedded SmolLM2's tokenizer (byte-level BPE: one character may span several tokens).
Skipped when the model is not set up, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from app.models.embedded import models_dir
from app.steering.generation import _Detokenizer
from tests.conftest import SMALL_MODEL, require_model

MODEL_ID = SMALL_MODEL
pytestmark = pytest.mark.slow
TEXTS = [
    "Plain words, then a café, naïve façades and 😀🎉 emojis; 日本語のテキスト.",
    "  leading spaces\n\nnew lines\ttabs   and trailing  ",
    "🙂",
]


@pytest.fixture(scope="module")
def tokenizer():
    require_model(MODEL_ID)
    return AutoTokenizer.from_pretrained(models_dir() / MODEL_ID)


@pytest.mark.parametrize("text", TEXTS)
def test_each_step_extends_the_text_and_the_last_equals_a_full_decode(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    stop = {tokenizer.eos_token_id}
    detokenizer = _Detokenizer(tokenizer, stop)
    seen = []
    for i, token in enumerate([*ids, tokenizer.eos_token_id]):
        seen.append(detokenizer.add(token))
        full = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        assert "\ufffd" not in seen[-1]
        assert full.startswith(seen[-1])  # never shows what the full decode would not
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:]))
    assert seen[-1] == detokenizer.final() == tokenizer.decode(ids, skip_special_tokens=True) == text
