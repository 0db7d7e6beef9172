"""The compiled RMS norm: transformers' norm to float32 rounding, each row on its own, and nothing
left behind when the model's kernels are put back."""

from __future__ import annotations

import pytest
import torch

from app.models import kernels, norms, panels
from tests.conftest import make_tiny_model

pytestmark = pytest.mark.skipif(panels.unavailable_reason() is not None, reason="the compiled library cannot run here")


def _norm_classes(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "RMSNorm" in type(m).__name__}


@pytest.mark.parametrize("width", [1, 3, 32, 576, 897])
def test_compiled_norm_is_transformers_norm_to_float_rounding(width):
    generator = torch.Generator().manual_seed(width)
    x = torch.randn(5, 3, width, generator=generator) * 4
    weight = torch.randn(width, generator=generator)
    eps = 1e-5
    expected = weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    got = panels.rms_norm(x, weight, eps)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=2e-6, atol=2e-6)


def test_a_row_gets_the_same_bits_alone_and_in_a_batch():
    x = torch.randn(9, 64)
    weight = torch.randn(64)
    batch = panels.rms_norm(x, weight, 1e-6)
    for row in range(9):
        assert torch.equal(panels.rms_norm(x[row : row + 1], weight, 1e-6), batch[row : row + 1])
    strided = panels.rms_norm(x.t().contiguous().t(), weight, 1e-6)  # a non-contiguous input is read as its values
    assert torch.equal(strided, batch)


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(TypeError, match="float32 on the CPU"):
        panels.rms_norm(torch.randn(2, 4, dtype=torch.float64), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="4 values for rows of 5"):
        panels.rms_norm(torch.randn(2, 5), torch.ones(4), 1e-6)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral", "phi3", "gemma2", "gemma3_text"])
def test_panels_give_a_model_compiled_norms_and_restore_takes_them_back(model_type):
    model = make_tiny_model(model_type)
    plain = _norm_classes(model)
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        kernels.use(model, "panels")
        assert {name.removeprefix("Compiled") for name in _norm_classes(model)} == plain
        assert all(name.startswith("Compiled") for name in _norm_classes(model))
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-5)
        kernels.restore(model)
        assert _norm_classes(model) == plain
        assert torch.equal(model(input_ids=ids).logits, before)


def test_other_norms_are_left_alone():
    for model_type in ("gpt2", "gpt_neox", "stablelm"):  # LayerNorm
        model = make_tiny_model(model_type)
        assert norms.use(model) == 0, model_type


@torch.inference_mode()
def test_a_gemma_norm_scales_by_one_plus_its_weight_and_follows_changes_to_it():
    model = make_tiny_model("gemma3_text")
    norm = model.model.norm
    x = torch.randn(3, 32) * 4

    def gemmas() -> torch.Tensor:
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)) * (1.0 + norm.weight)

    with torch.no_grad():
        norm.weight.copy_(torch.randn(32))
    assert norms.use(model) == 6 * model.config.num_hidden_layers + 1  # four a layer, its q and k norms, the last
    torch.testing.assert_close(norm(x), gemmas(), rtol=2e-6, atol=2e-6)
    with torch.no_grad():
        norm.weight.add_(0.5)  # in place: the held 1 + weight is made again
    torch.testing.assert_close(norm(x), gemmas(), rtol=2e-6, atol=2e-6)
    norm.weight = torch.nn.Parameter(torch.zeros(32))  # replaced
    torch.testing.assert_close(norm(x), gemmas(), rtol=2e-6, atol=2e-6)


def test_float64_runs_transformers_norm_and_gradients_change_nothing():
    model = make_tiny_model("llama")
    norm = model.model.norm
    x64 = torch.randn(2, 3, 32, dtype=torch.float64)
    x = torch.randn(2, 3, 32, requires_grad=True)
    expected64 = norm.double()(x64)
    norm.float()
    norms.use(model)
    assert type(norm).__name__ == "CompiledLlamaRMSNorm"
    assert torch.equal(norm.double()(x64), expected64)  # not float32: transformers' ops
    norm.float()
    with torch.inference_mode():
        inference = norm(x.detach())
    assert torch.equal(norm(x), inference)  # the same bits whether or not gradients are on (inference only)
