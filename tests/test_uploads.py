"""Vectors uploaded over the REST API outlive the server: they are kept beside the model's vectors."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
import torch

from app.api import uploads
from app.api.uploads import UploadedVectors
from app.steering.concepts import ConceptError
from app.steering.vectors import SteeringVector


def fake_lab(root, fingerprint: str = "fp-a", model_id: str = "model-a"):
    """What the uploads read of a lab: its model's identity and its library's vector folder."""
    library = SimpleNamespace(folder=root / "vectors" / fingerprint)
    return SimpleNamespace(
        lm=SimpleNamespace(fingerprint=fingerprint, model_id=model_id, hidden_size=4), library=library
    )


def vector(lab, name: str, value: float = 1.0, method: str = "mean_diff") -> SteeringVector:
    return SteeringVector(
        name=name,
        model_id=lab.lm.model_id,
        model_fingerprint=lab.lm.fingerprint,
        hidden_size=4,
        layers={1: torch.full((4,), value)},
        norms={1: 2.0},
        method=method,
    )


def test_an_upload_is_found_again_after_a_restart(tmp_path):
    lab = fake_lab(tmp_path)
    UploadedVectors().put(lab, "mine", vector(lab, "mine", 3.0))
    UploadedVectors().put(lab, "cv", vector(lab, "cv", 5.0, method="gguf"))
    restarted = UploadedVectors()  # a new server process on the same cache
    assert restarted.names(lab) == ["cv", "mine"]
    mine, cv = restarted.get(lab, "mine"), restarted.get(lab, "cv")
    assert torch.equal(mine.layers[1], torch.full((4,), 3.0)) and mine.name == "mine"
    assert cv.method == "gguf"  # still steers in raw units, as uploaded
    assert restarted.get(lab, "other") is None
    assert (tmp_path / "vectors" / "fp-a" / "uploads" / "mine.safetensors").is_file()


def test_a_second_upload_of_a_name_replaces_the_first_in_memory_and_on_disk(tmp_path):
    lab = fake_lab(tmp_path)
    kept = UploadedVectors()
    kept.put(lab, "mine", vector(lab, "mine", 1.0))
    kept.put(lab, "mine", vector(lab, "mine", 2.0))
    assert float(kept.get(lab, "mine").layers[1][0]) == 2.0
    assert float(UploadedVectors().get(lab, "mine").layers[1][0]) == 2.0


def test_after_a_model_switch_an_upload_for_the_other_model_is_refused_by_name(tmp_path):
    first, second = fake_lab(tmp_path), fake_lab(tmp_path, "fp-b", "model-b")
    kept = UploadedVectors()
    kept.put(first, "mine", vector(first, "mine"))
    with pytest.raises(ValueError, match="uploaded for model-a; the server now runs model-b: upload it again"):
        kept.get(second, "mine")
    assert kept.names(second) == []
    assert UploadedVectors().get(second, "mine") is None  # on disk it sits with model-a's vectors only
    assert UploadedVectors().get(first, "mine") is not None


def test_at_most_max_uploaded_are_kept_per_model_the_oldest_going_first(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_UPLOADED", 2)
    lab = fake_lab(tmp_path)
    kept = UploadedVectors()
    for i, name in enumerate(("a", "b", "c")):
        kept.put(lab, name, vector(lab, name))
        stamp = 1_000_000 + i  # mtimes one second apart: file systems with coarse clocks
        path = UploadedVectors.folder(lab) / f"{name}.safetensors"
        os.utime(path, (stamp, stamp))
    kept.put(lab, "d", vector(lab, "d"))
    assert kept.names(lab) == ["c", "d"] and UploadedVectors().names(lab) == ["c", "d"]
    assert kept.get(lab, "a") is None


def test_a_disk_that_cannot_take_the_file_keeps_the_upload_in_memory(tmp_path, caplog):
    lab = fake_lab(tmp_path)
    (tmp_path / "vectors").write_text("a file where the folder should be")
    kept = UploadedVectors()
    with caplog.at_level(logging.WARNING, logger="app.api.uploads"):
        kept.put(lab, "mine", vector(lab, "mine"))
    assert "lasts until the server stops" in caplog.text
    assert kept.get(lab, "mine") is not None and kept.names(lab) == ["mine"]


def test_a_broken_file_is_ignored_with_a_warning(tmp_path, caplog):
    lab = fake_lab(tmp_path)
    folder = UploadedVectors.folder(lab)
    folder.mkdir(parents=True)
    (folder / "bad.safetensors").write_bytes(b"not a vector")
    with caplog.at_level(logging.WARNING, logger="app.api.uploads"):
        assert UploadedVectors().get(lab, "bad") is None
    assert "ignoring the uploaded vector" in caplog.text


@pytest.mark.parametrize("name", ["../mine", "a/b", "", "Mine"])
def test_only_names_are_looked_up_never_paths(tmp_path, name):
    with pytest.raises(ConceptError):
        UploadedVectors().get(fake_lab(tmp_path), name)
