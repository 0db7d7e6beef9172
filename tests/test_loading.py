"""What loading leaves in memory: a packed model lets its checkpoint file go, once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.models.loading import _leave_the_file, _storages, load_model
from tests.reliability_support import save_tiny_model

MAPS = Path("/proc/self/maps")
needs_maps = pytest.mark.skipif(not MAPS.exists(), reason="reads the process's memory map (Linux)")


def mapped(path: Path) -> bool:
    return str(path.resolve()) in MAPS.read_text()


@needs_maps
def test_a_packed_model_lets_its_checkpoint_file_go(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERING_LAB_LINEAR", "packed")
    folder = save_tiny_model(tmp_path / "model")
    loaded = load_model(str(folder), device="cpu")
    assert not mapped(folder / "model.safetensors")  # no page of the file is held twice
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert mapped(folder / "model.safetensors")  # the check above can see a mapping
    ours = loaded.model.state_dict()
    unpacked = [name for name in ours if not ours[name].is_mkldnn]  # the linear layers are packed copies
    assert "model.embed_tokens.weight" in unpacked and "model.norm.weight" in unpacked
    assert all(torch.equal(ours[name], plain.state_dict()[name]) for name in unpacked)  # copied as they were
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(loaded.model(ids).logits, plain(ids).logits, atol=1e-5)


@needs_maps
def test_weights_still_read_from_the_file_stay_there(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERING_LAB_LINEAR", "torch")  # nothing packed: the file's pages are the weights
    folder = save_tiny_model(tmp_path / "model")
    loaded = load_model(str(folder), device="cpu")
    assert mapped(folder / "model.safetensors") and loaded.linear_kernel.startswith("torch")


def test_copies_keep_tied_weights_tied_and_views_views():
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(50, 8)
    model.head = torch.nn.Linear(8, 50, bias=False)
    model.head.weight = model.embed.weight  # tied: one parameter
    whole = torch.arange(16.0)
    model.first = torch.nn.Parameter(whole[:8])  # two views of one storage
    model.second = torch.nn.Parameter(whole[8:])
    model.big = torch.nn.Linear(64, 64)  # replaced below, as packing replaces a weight
    as_loaded = _storages(model)
    model.big.weight.data = model.big.weight.data.clone()
    model.big.bias.data = model.big.bias.data.clone()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    old = model.embed.weight.untyped_storage().data_ptr()

    copied = _leave_the_file(model, as_loaded)

    assert copied == (50 * 8 + 16) * 4
    assert model.head.weight is model.embed.weight and model.embed.weight.untyped_storage().data_ptr() != old
    assert model.first.untyped_storage().data_ptr() == model.second.untyped_storage().data_ptr() != whole.data_ptr()
    assert model.second.storage_offset() == 8
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())


def test_nothing_is_copied_when_most_weights_are_still_the_loaded_ones():
    model = torch.nn.Linear(64, 64)
    model.small = torch.nn.Parameter(torch.zeros(4))
    as_loaded = _storages(model)
    model.small.data = model.small.data.clone()  # only a small part was replaced
    pointer = model.weight.data_ptr()
    assert _leave_the_file(model, as_loaded) == 0 and model.weight.data_ptr() == pointer
