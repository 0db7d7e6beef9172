"""Fused q/k/v and gate/up panel products: the same bits as the separate products, the same modules,
parameters and hooks, and nothing left behind when the weights go back to torch's layout."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from app.models import attention, fusion, kernels, layer_step, panels
from tests.conftest import TINY_CONFIGS, make_tiny_model

pytestmark = pytest.mark.skipif(panels.unavailable_reason() is not None, reason="the panel product cannot run here")

FUSED = {"llama", "mistral", "qwen2"}
MLP_ONLY = {"gemma2", "gemma3_text"}  # their attention (q and k norms) runs as written


def _fused_blocks(model: torch.nn.Module) -> list[str]:
    return sorted(type(m).__name__ for m in model.modules() if isinstance(m, fusion._Fused))


@torch.inference_mode()
def _outputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a left-padded batch, then of eight greedy decoding steps on a cache."""
    ids = torch.tensor([[0, 0, 5, 9, 14], [3, 7, 11, 2, 6]])
    mask = (ids != 0).long()
    batch = model(input_ids=ids, attention_mask=mask).logits
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids[1:], past_key_values=cache, use_cache=True)
    steps = [out.logits[:, -1]]
    for _ in range(8):
        token = out.logits[:, -1:].argmax(-1)
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        steps.append(out.logits[:, -1])
    return batch, torch.cat(steps)


@pytest.mark.parametrize("model_type", sorted(FUSED))
@pytest.mark.parametrize("ours", [False, True], ids=["sdpa", "steering_lab_sdpa"])
def test_fused_products_give_the_very_bits_of_the_separate_ones(model_type, ours):
    model = make_tiny_model(model_type)
    if model_type == "qwen2":  # Qwen2's q, k and v carry biases: fused too
        assert model.model.layers[0].self_attn.q_proj.bias is not None
    if ours:
        attention.install(model)
    mlp = f"Fused{type(model.model.layers[0].mlp).__name__}"
    kernels.use(model, "panels")
    layer_step.restore(model)  # decoding steps through the blocks, as with separate products
    blocks = _fused_blocks(model)
    layers = model.config.num_hidden_layers
    assert len(blocks) == 2 * layers and mlp in blocks
    fused = _outputs(model)
    assert fusion.unfuse(model) == 2 * layers and _fused_blocks(model) == []
    separate = _outputs(model)
    assert torch.equal(fused[0], separate[0]) and torch.equal(fused[1], separate[1])


def test_other_architectures_are_left_as_they_are():
    for model_type in sorted(set(TINY_CONFIGS) - FUSED - MLP_ONLY):
        model = make_tiny_model(model_type)
        kernels.use(model, "panels")
        assert _fused_blocks(model) == [], model_type


@pytest.mark.parametrize("model_type", sorted(MLP_ONLY))
def test_gemmas_fuse_their_mlp_with_the_very_bits(model_type):
    model = make_tiny_model(model_type)
    mlp = f"Fused{type(model.model.layers[0].mlp).__name__}"
    kernels.use(model, "panels")
    assert _fused_blocks(model) == [mlp] * model.config.num_hidden_layers
    fused = _outputs(model)
    fusion.unfuse(model)
    separate = _outputs(model)
    assert torch.equal(fused[0], separate[0]) and torch.equal(fused[1], separate[1])


def test_projections_that_are_not_whole_panels_are_not_fused():
    params = dict(TINY_CONFIGS["llama"], num_key_value_heads=1)  # k and v: 8 outputs, half a panel
    config = AutoConfig.for_model(params.pop("model_type"), **params)
    model = AutoModelForCausalLM.from_config(config).eval()
    kernels.use(model, "panels")
    assert _fused_blocks(model) == ["FusedLlamaMLP"] * 3


def test_projections_keep_their_parameters_as_views_and_get_them_back_exactly():
    model = make_tiny_model("qwen2")
    dense = {name: p.detach().clone().requires_grad_(p.requires_grad) for name, p in model.named_parameters()}
    kernels.use(model, "panels")
    block = model.model.layers[1].self_attn
    start = block.fused_weight.data_ptr()
    assert block.q_proj.weight.data_ptr() == start
    assert block.k_proj.weight.data_ptr() == start + block.q_proj.weight.numel() * 4  # no copy: a view
    assert set(dict(model.named_parameters())) == set(dense)  # the state dict's keys as before
    kernels.restore(model)
    assert _fused_blocks(model) == []
    restored = dict(model.named_parameters())
    assert all(torch.equal(restored[name], value) for name, value in dense.items())
    assert all(restored[name].requires_grad == value.requires_grad for name, value in dense.items())


def test_a_hook_on_a_projection_is_called_and_its_change_kept():
    model = make_tiny_model("llama")
    kernels.use(model, "panels")
    ids = torch.tensor([[4, 8, 15, 16]])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
    calls = []

    def silence_keys(module, args, output):
        calls.append(output.shape)
        return torch.zeros_like(output)

    handle = model.model.layers[0].self_attn.k_proj.register_forward_hook(silence_keys)
    try:
        with torch.inference_mode():
            hooked = model(input_ids=ids).logits
        fusion.unfuse(model)  # the separate products with the same hook: what the hook promises
        with torch.inference_mode():
            separate = model(input_ids=ids).logits
    finally:
        handle.remove()
    assert calls == [torch.Size([1, 4, 16])] * 2
    assert not torch.equal(hooked, plain) and torch.equal(hooked, separate)


def test_a_replaced_weight_is_read_instead_of_the_fused_copy():
    model = make_tiny_model("llama")
    kernels.use(model, "panels")
    ids = torch.tensor([[4, 8, 15, 16]])
    mlp = model.model.layers[2].mlp
    mlp.up_proj.weight = torch.nn.Parameter(torch.zeros_like(mlp.up_proj.weight), requires_grad=False)
    with torch.inference_mode():
        replaced = model(input_ids=ids).logits
        assert torch.equal(mlp(torch.ones(1, 1, 32)), torch.zeros(1, 1, 32))  # up is zero: so is the MLP
        fusion.unfuse(model)
        assert torch.equal(model(input_ids=ids).logits, replaced)
