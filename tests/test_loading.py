"""What loading leaves in memory: a packed model lets its checkpoint file go, once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.models import loading
from app.models.loading import _leave_the_file, load_model
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


def test_copies_keep_tied_weights_tied_and_views_views(monkeypatch):
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(50, 8)
    model.head = torch.nn.Linear(8, 50, bias=False)
    model.head.weight = model.embed.weight  # tied: one parameter
    whole = torch.arange(16.0)
    model.first = torch.nn.Parameter(whole[:8])  # two views of one storage
    model.second = torch.nn.Parameter(whole[8:])
    model.register_buffer("scale", torch.ones(3))
    model.big = torch.nn.Linear(64, 64)  # not in the "file", as a packed copy is not
    in_file = [model.embed.weight, whole, model.scale]
    monkeypatch.setattr(
        loading,
        "_mapped_checkpoints",
        lambda: [(t.untyped_storage().data_ptr(), t.untyped_storage().data_ptr() + 1) for t in in_file],
    )
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    embed, scale, big = model.embed.weight.data_ptr(), model.scale.data_ptr(), model.big.weight.data_ptr()

    copied = _leave_the_file(model)

    assert copied == (50 * 8 + 16 + 3) * 4
    assert model.head.weight is model.embed.weight and model.embed.weight.data_ptr() != embed
    assert model.first.untyped_storage().data_ptr() == model.second.untyped_storage().data_ptr() != whole.data_ptr()
    assert model.second.storage_offset() == 8 and model.scale.data_ptr() != scale
    assert model.big.weight.data_ptr() == big  # what was not in the file stays where it is
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())


def test_nothing_is_copied_when_most_weights_are_still_in_the_file(monkeypatch):
    model = torch.nn.Linear(64, 64)
    model.small = torch.nn.Parameter(torch.zeros(4))
    in_file = [model.weight, model.bias]  # most of the model
    monkeypatch.setattr(loading, "_mapped_checkpoints", lambda: [(t.data_ptr(), t.data_ptr() + 1) for t in in_file])
    pointer = model.weight.data_ptr()
    assert _leave_the_file(model) == 0 and model.weight.data_ptr() == pointer


def test_without_a_memory_map_nothing_is_copied(monkeypatch):
    monkeypatch.setattr(loading, "MAPS", Path("/nonexistent/maps"))
    model = torch.nn.Linear(4, 4)
    assert loading._mapped_checkpoints() == [] and _leave_the_file(model) == 0


def test_memory_freed_while_loading_is_handed_back_where_the_c_library_can(tmp_path, monkeypatch):
    trims = []

    class Libc:
        def malloc_trim(self, pad):
            trims.append(pad)

    monkeypatch.setattr(loading, "_c_library", Libc)
    load_model(str(save_tiny_model(tmp_path / "model")), device="cpu")
    assert trims == [0]
    monkeypatch.setattr(loading, "_c_library", object)  # no malloc_trim (macOS)
    load_model(str(tmp_path / "model"), device="cpu")
