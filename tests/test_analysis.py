"""Analysis on tiny random-weight models: residual capture, logit lens, heatmaps, maps, sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.analysis import heatmaps, maps, residuals, sweeps
from app.steering.engine import NO_STEERING, Steer, Steering, SteeringEngine
from app.steering.generation import GenerationRequest, generate
from app.steering.vectors import SteeringVector
from tests.conftest import TINY_CONFIGS, make_tiny_model

TEXT = "The cat sat on the mat"


def random_vector(engine: SteeringEngine, name: str = "concept", seed: int = 1) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector(
        name=name,
        model_id="tiny",
        model_fingerprint="tiny",
        hidden_size=engine.hidden_size,
        layers={i: torch.randn(engine.hidden_size, generator=generator) for i in range(engine.n_layers)},
        norms={i: 10.0 for i in range(engine.n_layers)},
    )


def ids_of(tokenizer, text: str = TEXT) -> list[int]:
    return residuals.encode(tokenizer, text)


# --- capture and logit lens -------------------------------------------------------------


def test_residual_stream_matches_hidden_states_and_leaves_no_hooks(tiny_engine, char_tokenizer):
    ids = ids_of(char_tokenizer)
    hidden = residuals.residual_stream(tiny_engine, ids)
    assert tiny_engine.hook_count() == 0
    assert hidden.shape == (tiny_engine.n_layers, len(ids), tiny_engine.hidden_size)
    with torch.inference_mode():  # (transformers may leave its own recording hooks after this)
        reference = tiny_engine.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is layer i's output (the last one is after the final norm in llama)
    for layer in range(tiny_engine.n_layers - 1):
        assert torch.equal(hidden[layer], reference[layer + 1][0])


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_logit_lens_at_the_last_layer_is_the_models_own_prediction(model_type, char_tokenizer):
    model = make_tiny_model(model_type)
    engine = SteeringEngine(model)
    ids = ids_of(char_tokenizer)
    hidden = residuals.residual_stream(engine, ids)
    lens = residuals.logit_lens(model, hidden[-1])  # [pos, vocab]
    with torch.inference_mode():
        real = model(torch.tensor([ids])).logits[0].float()
    torch.testing.assert_close(lens, real, rtol=1e-5, atol=1e-5)
    assert torch.equal(lens.topk(5).indices, real.topk(5).indices)


def test_final_norm_table_and_unknown_model():
    gpt2 = make_tiny_model("gpt2")
    assert residuals.final_norm(gpt2) is gpt2.transformer.ln_f
    model = make_tiny_model("gpt_neox")
    assert residuals.final_norm(model) is model.gpt_neox.final_layer_norm
    llama = make_tiny_model("llama")
    llama.config.model_type = "something-new"  # not in the table: found by the generic fallback
    assert residuals.final_norm(llama) is llama.model.norm
    del llama.model.norm
    with pytest.raises(ValueError, match="FINAL_NORM_PATHS"):
        residuals.final_norm(llama)


def test_layer_view_shapes_and_concept_scores(tiny_engine, char_tokenizer):
    ids = ids_of(char_tokenizer)
    vector = random_vector(tiny_engine)
    view = residuals.layer_view(tiny_engine, char_tokenizer, ids, vector=vector, top_k=4)
    n = tiny_engine.n_layers
    assert view.tokens == list(TEXT)
    assert view.norms.shape == (n, len(ids))
    assert len(view.lens_tokens) == n and all(len(row) == 4 for row in view.lens_tokens)
    assert np.all(np.diff(view.lens_probs, axis=1) <= 0)  # top tokens in order
    hidden = residuals.residual_stream(tiny_engine, ids)
    for layer in range(n):
        unit = vector.layers[layer] / vector.layers[layer].norm()
        last = hidden[layer, -1]
        assert view.projection[layer] == pytest.approx(float(last @ unit), rel=1e-5)
        assert view.cosine[layer] == pytest.approx(float(last @ unit / last.norm()), rel=1e-5)
        assert view.norms[layer, -1] == pytest.approx(float(last.norm()), rel=1e-6)
    assert np.all(np.abs(view.mean_cosine) <= 1)


def test_direction_scores_skip_missing_layers(tiny_engine, char_tokenizer):
    vector = random_vector(tiny_engine)
    partial = SteeringVector("p", "tiny", "tiny", vector.hidden_size, {1: vector.layers[1]}, {1: 1.0})
    scores = residuals.direction_scores(residuals.residual_stream(tiny_engine, ids_of(char_tokenizer)), partial)
    assert np.isnan(scores[0]).all() and np.isnan(scores[2]).all() and np.isfinite(scores[1]).all()
    with pytest.raises(ValueError, match="metric"):
        residuals.direction_scores(torch.zeros(3, 2, 32), vector, "angle")


def test_encode_refuses_empty_and_too_long(char_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        residuals.encode(char_tokenizer, "   ")
    with pytest.raises(ValueError, match="at most"):
        residuals.encode(char_tokenizer, "x" * (residuals.MAX_TOKENS + 1))


# --- heatmap ------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "projection"])
def test_heatmap_difference_starts_at_the_steered_layer(tiny_engine, char_tokenizer, metric):
    vector = random_vector(tiny_engine)
    steering = Steering((Steer(vector, 8.0, (1,)),))
    heat = heatmaps.steering_heatmap(tiny_engine, char_tokenizer, ids_of(char_tokenizer), vector, steering, metric)
    assert heat.baseline.shape == heat.steered.shape == (3, len(TEXT))
    assert heat.steered_layers == [1]
    assert np.array_equal(heat.difference[0], np.zeros(len(TEXT)))  # before the steered layer: exact
    assert np.all(heat.difference[1] != 0) and np.all(heat.difference[2] != 0)
    assert tiny_engine.hook_count() == 0


def test_heatmap_steering_moves_toward_the_concept(tiny_engine, char_tokenizer):
    vector = random_vector(tiny_engine)
    steering = Steering((Steer(vector, 20.0, (0,)),))
    heat = heatmaps.steering_heatmap(tiny_engine, char_tokenizer, ids_of(char_tokenizer), vector, steering)
    assert np.all(heat.difference[0] > 0)  # adding the direction raises the cosine at that layer


# --- concept maps -------------------------------------------------------------------


def test_embed_2d_falls_back_to_pca_below_the_threshold():
    points = np.random.default_rng(0).normal(size=(maps.MIN_UMAP_POINTS - 1, 8))
    coords, method, note = maps.embed_2d(points)
    assert coords.shape == (len(points), 2) and method == "pca" and "too few" in note
    expected = maps.pca_2d(points)
    assert np.array_equal(coords, expected)
    # the first coordinate is the top principal component: it carries the most variance
    assert coords[:, 0].var() >= coords[:, 1].var()
    assert np.allclose(coords.mean(axis=0), 0)
    with pytest.raises(ValueError, match="at least 2"):
        maps.embed_2d(points[:1])


def test_pca_is_repeatable_and_sign_fixed():
    points = np.random.default_rng(1).normal(size=(6, 5))
    assert np.array_equal(maps.pca_2d(points), maps.pca_2d(points.copy()))
    flipped = maps.pca_2d(points)
    # the same cloud, mirrored: PCA coordinates are defined up to sign, and we fix the sign
    assert np.allclose(np.abs(maps.pca_2d(-points)), np.abs(flipped))
    line = np.outer(np.arange(4.0), np.ones(3))  # all variance on one axis
    coords = maps.pca_2d(line)
    assert np.array_equal(coords[:, 1], np.zeros(4))  # exactly 0, not rounding noise drawn as ±1e-15
    two = maps.pca_2d(np.random.default_rng(2).normal(size=(2, 5)))
    assert np.array_equal(two[:, 1], np.zeros(2)) and two[0, 0] == pytest.approx(-two[1, 0]) and two[0, 0] != 0


@pytest.mark.slow
def test_embed_2d_uses_umap_with_enough_points_and_is_repeatable():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (12, 8)), rng.normal(6, 1, (12, 8))])
    first, method, note = maps.embed_2d(points)
    second, _, _ = maps.embed_2d(points)
    assert method == "umap" and note == ""
    assert first.shape == (24, 2)
    assert np.array_equal(first, second)
    # the two clusters stay apart: every point is nearer its own cluster's centre
    a, b = first[:12].mean(0), first[12:].mean(0)
    assert all(np.linalg.norm(p - a) < np.linalg.norm(p - b) for p in first[:12])


def test_library_map_shapes_groups_and_too_few(tiny_engine):
    vectors = {name: random_vector(tiny_engine, name, seed) for seed, name in enumerate(["happy", "sad", "formal"])}
    cmap = maps.library_map(vectors, layer=1, groups={"happy": "emotion", "sad": "emotion", "formal": "style"})
    assert cmap.coords.shape == (3, 2) and cmap.method == "pca" and cmap.layer == 1
    assert cmap.labels == ["formal", "happy", "sad"]
    assert cmap.groups == ["style", "emotion", "emotion"]
    with pytest.raises(ValueError, match="at least 2"):
        maps.library_map({"happy": vectors["happy"]}, layer=1)


def test_library_map_depends_only_on_directions(tiny_engine):
    vectors = {name: random_vector(tiny_engine, name, seed) for seed, name in enumerate("abcd")}
    scaled = {name: v * 3.0 for name, v in vectors.items()}
    assert np.allclose(maps.library_map(vectors, 0).coords, maps.library_map(scaled, 0).coords, atol=1e-9)


def test_examples_map(tiny_engine, char_tokenizer):
    positive = ["I love this!", "What a joy", "So happy today"]
    negative = ["This is awful", "I feel so sad", "What a loss"]
    cmap = maps.examples_map(tiny_engine, char_tokenizer, positive, negative, layer=2, labels=("happy", "sad"))
    assert cmap.coords.shape == (6, 2) and cmap.method == "pca"
    assert cmap.labels == positive + negative
    assert cmap.groups == ["happy"] * 3 + ["sad"] * 3
    with pytest.raises(ValueError, match="out of range"):
        maps.examples_map(tiny_engine, char_tokenizer, positive, negative, layer=3)


# --- sweeps ---------------------------------------------------------------------------


def test_sweep_layers_respects_the_row_limit():
    assert sweeps.sweep_layers(30, 2, max_rows=16) == list(range(0, 30, 2))
    with pytest.raises(ValueError, match="every 2th layer"):
        sweeps.sweep_layers(30, 1, max_rows=16)
    with pytest.raises(ValueError, match="at least 1"):
        sweeps.sweep_layers(30, 0)


def test_layer_sweep_is_one_batch_equal_to_each_row_alone(tiny_engine, char_tokenizer):
    vector = random_vector(tiny_engine)
    request = GenerationRequest("Hello", max_new_tokens=6, temperature=0.8, seed=3, chat=False)
    calls = []

    def run(requests):
        calls.append(len(requests))
        return generate(tiny_engine, char_tokenizer, requests)

    sweep = sweeps.run_sweep(sweeps.layer_sweep(request, vector, 30.0, [0, 1, 2]), run)
    assert calls == [4]  # baseline + three layers in one batched call
    assert sweep.labels == ["baseline", "layer 0", "layer 1", "layer 2"]
    assert sweep.x == [None, 0.0, 1.0, 2.0]
    assert sweep.requests[0].steering == NO_STEERING
    for row, layer in zip(sweep.requests[1:], [0, 1, 2]):
        assert row.steering.steers[0].layers == (layer,) and row.seed == 3
    for i, row in enumerate(sweep.requests):
        alone = generate(tiny_engine, char_tokenizer, [row])[0]
        assert sweep.token_ids[i] == alone.token_ids
    assert len(set(map(tuple, sweep.token_ids))) > 1  # steering changed something


def test_strength_sweep_multiples_and_layers(tiny_engine):
    vector = random_vector(tiny_engine)
    sweep = sweeps.strength_sweep(GenerationRequest("Hi"), vector, 4.0, layers=[1])
    strengths = [row.steering.steers[0].strength for row in sweep.requests[1:]]
    assert strengths == [4.0 * m for m in sweeps.STRENGTH_MULTIPLES]
    assert strengths[0] == 2.0 and strengths[-1] == 20.0
    assert all(row.steering.steers[0].layers == (1,) for row in sweep.requests[1:])
    assert sweep.x[1:] == strengths and sweep.labels[1] == "0.5× (2)"


def test_concept_mix_rows(tiny_engine):
    a, b = random_vector(tiny_engine, "a", 1), random_vector(tiny_engine, "b", 2)
    steers = [Steer(a, 2.0, (1,)), Steer(b, -1.0, (1,)), Steer(a, 0.0)]
    sweep = sweeps.concept_mix(GenerationRequest("Hi"), steers)
    assert sweep.labels == ["baseline", "a ×2", "b ×-1", "a ×2 + b ×-1"]
    assert [len(r.steering.steers) for r in sweep.requests] == [0, 1, 1, 2]
    with pytest.raises(ValueError, match="two concepts"):
        sweeps.concept_mix(GenerationRequest("Hi"), steers[:1])


def test_score_sweep_perplexity_and_effect(tiny_engine, char_tokenizer, monkeypatch):
    from app.analysis import metrics

    vector = random_vector(tiny_engine)
    request = GenerationRequest("Hello", max_new_tokens=5, chat=False)
    sweep = sweeps.run_sweep(
        sweeps.strength_sweep(request, vector, 10.0, multiples=(1.0, 2.0)),
        lambda rows: generate(tiny_engine, char_tokenizer, rows),
    )
    seen = {}

    def fake_effect(outputs, positive, negative):
        seen["args"] = (list(outputs), list(positive), list(negative))
        return np.arange(len(outputs), dtype=np.float64)

    monkeypatch.setattr(metrics, "effect", fake_effect)
    sweeps.score_sweep(sweep, tiny_engine, char_tokenizer, references={"concept": (["p"], ["n"])})
    assert sweep.effect == {"concept": [0.0, 1.0, 2.0]}
    assert seen["args"] == (sweep.texts, ["p"], ["n"])
    prompt = char_tokenizer("Hello")["input_ids"]
    expected = metrics.perplexity_from_ids(tiny_engine.model, [prompt + t for t in sweep.token_ids], [len(prompt)] * 3)
    assert sweep.perplexity == expected
    assert all(p > 1 for p in sweep.perplexity)
