"""Extraction on a tiny random model: pooling, methods and statistics, checked by hand."""

from __future__ import annotations

import pytest
import torch

from app.steering.engine import SteeringEngine
from app.steering.extraction import LayerStats, capture, directions, extract, recommend_layers
from app.steering.layers import layer_output_tensor
from tests.conftest import make_tiny_model

POS = ["I love this!", "What a joy.", "So happy now", "Great fun :)", "Best day ever", "Sunny smiles"]
NEG = ["I hate this.", "What a pain.", "So sad now", "Awful mess :(", "Worst day ever", "Grey frowns"]


@pytest.fixture
def engine():
    return SteeringEngine(make_tiny_model("llama", seed=4))


def manual_pool(engine, tokenizer, text):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    outs = []
    handles = [
        layer.register_forward_hook(lambda m, a, o: outs.append(layer_output_tensor(o))) for layer in engine.layers
    ]
    try:
        with torch.inference_mode():
            engine.model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([out[0, 1:].mean(0) for out in outs])  # skip the first token


def test_pooling_skips_first_token_and_padding(engine, char_tokenizer):
    texts = ["ab", "a much longer sentence here", "mid size text"]
    acts = capture(engine, char_tokenizer, texts, batch_size=3)
    assert acts.pooled.shape == (3, engine.n_layers, engine.hidden_size)
    for i, text in enumerate(texts):
        assert torch.allclose(acts.pooled[i], manual_pool(engine, char_tokenizer, text), atol=1e-5), text
    assert acts.n_tokens == sum(len(t) for t in texts)


def test_methods(engine, char_tokenizer):
    acts = capture(engine, char_tokenizer, POS + NEG)
    pos, neg = acts.pooled[:6], acts.pooled[6:]
    mean_diff = directions(pos, neg, "mean_diff")
    assert torch.allclose(mean_diff, pos.mean(0) - neg.mean(0))
    pca = directions(pos, neg, "pca")
    # signed toward the positive set
    assert bool(((pca * mean_diff).sum(-1) > 0).all())
    probe = directions(pos, neg, "probe")
    assert probe.shape == mean_diff.shape
    assert bool(((probe * mean_diff).sum(-1) > 0).all())
    lda = directions(pos, neg, "lda")
    assert torch.allclose(lda.norm(dim=-1), mean_diff.norm(dim=-1))
    assert bool(((lda * mean_diff).sum(-1) > 0).all())
    with pytest.raises(ValueError, match="unknown method"):
        directions(pos, neg, "magic")


def _two_sets(noise_std: list[float], shift: list[float], n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled activations ``[n, 1 layer, d]``: the positive set is the negative one moved by ``shift``."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2 * n, 1, len(noise_std), generator=generator) * torch.tensor(noise_std)
    return noise[:n] + torch.tensor(shift), noise[n:]


def test_lda_shrinks_a_dimension_that_varies_a_lot():
    # dimension 0 varies 10x more than the others and its shift is 5x theirs: in the difference of
    # means it holds most of the length, divided by its variance it holds little
    # (dimension 4 barely varies at all: the median variance keeps it from being blown up)
    pos, neg = _two_sets(noise_std=[10.0, 1.0, 1.0, 1.0, 1e-3], shift=[5.0, 1.0, 1.0, 1.0, 1e-3])
    mean_diff, lda = directions(pos, neg, "mean_diff")[0], directions(pos, neg, "lda")[0]
    share = lambda v, i: float(v[i] ** 2 / (v**2).sum())  # noqa: E731
    assert share(mean_diff, 0) > 0.8 and share(lda, 0) < 0.05
    assert share(lda, 4) < 1e-4
    assert float(lda.norm()) == pytest.approx(float(mean_diff.norm()))  # only the direction changes
    assert float(lda @ mean_diff) > 0


def test_lda_stays_near_the_difference_of_means_when_the_noise_is_alike():
    pos, neg = _two_sets(noise_std=[1.0, 1.0, 1.0, 1.0], shift=[3.0, -1.0, 0.5, 0.0], n=2000)
    mean_diff, lda = directions(pos, neg, "mean_diff")[0], directions(pos, neg, "lda")[0]
    assert float(torch.nn.functional.cosine_similarity(lda, mean_diff, dim=0)) > 0.95
    # the variance is taken over both sets, so the shift's own spread weighs in: 3.0 shrinks most
    assert float(lda[0] / mean_diff[0]) < float(lda[2] / mean_diff[2])


def test_extract_builds_every_layer_with_stats(engine, char_tokenizer):
    seen = []
    result = extract(
        engine, char_tokenizer, POS, NEG, name="joy", model_id="tiny", model_fingerprint="fp",
        method="probe", progress=lambda f, m: seen.append(f),
    )  # fmt: skip
    vector = result.vector
    assert sorted(vector.layers) == [0, 1, 2] and vector.method == "probe"
    assert seen[-1] == 1.0
    stats = vector.metadata["stats"]
    assert all(0.0 <= a <= 1.0 for a in stats["accuracy"])
    assert len(result.probe_accuracy) == 3
    assert vector.recommended_layers and all(0 <= layer < 3 for layer in vector.recommended_layers)
    assert all(norm > 0 for norm in vector.norms.values())
    with pytest.raises(ValueError, match="at least 2 examples"):
        extract(engine, char_tokenizer, POS[:1], NEG, name="x", model_id="m", model_fingerprint="f")


def test_recommended_layers_come_from_the_early_middle_band():
    n = 30
    stats = LayerStats(
        accuracy=[1.0] * n, separation=[float(i) for i in range(n)], residual_norm=[1.0] * n, vector_norm=[1.0] * n
    )
    # everything is separable: the deepest layer inside 20%-65% of the depth wins on separation
    assert recommend_layers(stats) == [19]
    stats.accuracy = [0.5] * n
    stats.accuracy[8] = 0.9
    assert recommend_layers(stats) == [8]
    assert recommend_layers(stats, k=3) == [8, 18, 19]
