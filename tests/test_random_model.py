"""``random-model`` writes a loadable model of the asked shape with the donor's tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from app.cli import main
from app.commands.random_model import SHAPES
from app.lab import Lab
from app.models.loading import load_model
from app.steering.generation import GenerationRequest, generate
from tests.conftest import make_char_tokenizer
from tests.reliability_support import save_tiny_model


@pytest.fixture
def donor(tmp_path):
    return save_tiny_model(tmp_path / "donor")


@pytest.mark.parametrize("out_exists", [False, True])  # an empty folder may be there already
def test_writes_a_loadable_model_of_the_shape(donor, tmp_path, out_exists):
    out = tmp_path / "random"
    if out_exists:
        out.mkdir()
    assert main(["random-model", "--shape", "mistral-tiny", "--out", str(out), "--tokenizer-from", str(donor)]) == 0

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mistral"
    assert {k: config[k] for k in SHAPES["mistral-tiny"]} == SHAPES["mistral-tiny"]
    assert config["vocab_size"] == len(make_char_tokenizer())
    assert not (tmp_path / "random.partial").exists()
    lm = load_model(str(out), device="cpu")
    assert lm.n_layers == 4 and lm.hidden_size == 64
    assert {p.dtype for p in lm.model.parameters()} == {torch.float32}  # loaded in the CPU dtype
    lab = Lab(lm, cache_root=tmp_path / "cache")
    result = generate(lab.engine, lm.tokenizer, [GenerationRequest("hello", max_new_tokens=3, chat=False)])[0]
    assert len(result.token_ids) >= 1


def test_refuses_a_folder_that_is_not_empty(donor, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["random-model", "--shape", "mistral-tiny", "--out", str(out), "--tokenizer-from", str(donor)]) == 1
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
