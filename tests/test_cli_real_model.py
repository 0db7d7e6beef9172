"""The CLI and core on the real embedded SmolLM2: exactness and visible steering.

Skipped when the model is not set up, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from app.models.embedded import is_set_up, models_dir
from app.storage import REPO_ROOT

MODEL_ID = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A cache with the real models linked in, and a concepts folder with two concepts."""
    if not is_set_up(MODEL_ID):
        message = f"{MODEL_ID} is not set up in {models_dir()}: run ./setup_local_cache.sh --model {MODEL_ID}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    root = tmp_path_factory.mktemp("cli")
    (root / "cache").mkdir()
    (root / "cache" / "models").symlink_to(models_dir().resolve())
    (root / "concepts" / "custom").mkdir(parents=True)
    for name in ("happy", "pirate"):
        shutil.copy(REPO_ROOT / "concepts" / f"{name}.json", root / "concepts")
    return root


@pytest.fixture
def env(sandbox, monkeypatch):
    monkeypatch.setenv("STEERING_LAB_CACHE", str(sandbox / "cache"))
    monkeypatch.setenv("STEERING_LAB_CONCEPTS", str(sandbox / "concepts"))
    return sandbox


@pytest.fixture(scope="module")
def lab(sandbox):
    from app.lab import Lab
    from app.models.loading import load_model

    return Lab(load_model(MODEL_ID, device="cpu"), concepts_root=sandbox / "concepts", cache_root=sandbox / "vectors")


def run_cli(capsys, *argv: str) -> dict:
    from app.cli import main

    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_compare_json_shows_visible_steering(env, capsys):
    out = run_cli(
        capsys, "generate", "The meeting went", "--model", MODEL_ID, "--steer", "happy@15=6",
        "--compare", "--max-new-tokens", "24", "--no-chat", "--json",
    )  # fmt: skip
    assert set(out) >= {"model", "prompt", "baseline", "steered", "steering"}
    assert out["model"] == MODEL_ID
    assert out["steering"] == [{"concept": "happy", "layers": [15], "strength": 6.0, "unit": "normalized"}]
    assert out["baseline"] and out["steered"] and out["baseline"] != out["steered"]


def test_defaults_come_from_the_concept(env, capsys):
    out = run_cli(
        capsys, "generate", "Hello", "--model", MODEL_ID, "--steer", "pirate", "--max-new-tokens", "4", "--json"
    )
    (steer,) = out["steering"]
    assert steer["concept"] == "pirate" and len(steer["layers"]) == 1 and steer["strength"] > 0
    assert "baseline" not in out


def test_extract_and_export(env, capsys, tmp_path):
    out = run_cli(capsys, "extract", "happy", "--model", MODEL_ID, "--method", "pca", "--json")
    assert out["method"] == "pca" and out["layers"] == 30 and len(out["accuracy"]) == 30
    gguf_path = tmp_path / "happy.gguf"
    out = run_cli(capsys, "export", "happy", "--model", MODEL_ID, "--format", "gguf", "--out", str(gguf_path),
                  "--layers", "10,12", "--strength", "4", "--json")  # fmt: skip
    assert out["layers"] == [10, 12] and out["strength"] == 4.0 and out["unit"] == "normalized"
    from app.steering import control_vectors

    back = control_vectors.load(gguf_path, name="h", model_id=MODEL_ID, model_fingerprint="x")
    assert sorted(back.layers) == [10, 12]
    assert back.metadata["made_for"]["layers"] == [10, 12] and back.metadata["made_for"]["strength"] == 4.0


def test_export_then_import_steers_like_the_concept(env, capsys, tmp_path):
    """export -> --steer file.gguf gives the concept's own steered text (recommended layers and strength)."""
    gguf_path = tmp_path / "happy.gguf"
    out = run_cli(capsys, "export", "happy", "--model", MODEL_ID, "--out", str(gguf_path), "--json")
    assert len(out["layers"]) >= 1 and out["strength"] > 0
    common = ("The meeting went", "--model", MODEL_ID, "--no-chat", "--max-new-tokens", "20", "--json")
    concept = run_cli(capsys, "generate", *common, "--steer", "happy", "--compare")
    imported = run_cli(capsys, "generate", *common, "--steer", str(gguf_path))
    assert imported["steering"] == [{"concept": "happy", "layers": out["layers"], "strength": 1.0, "unit": "raw"}]
    assert concept["steered"] != concept["baseline"]
    assert imported["steered"] == concept["steered"]


def test_layer_zero_cannot_be_exported_for_llama_cpp(env, capsys, tmp_path):
    from app.cli import main

    assert main(["export", "happy", "--model", MODEL_ID, "--out", str(tmp_path / "h.gguf"), "--layers", "0"]) != 0
    assert "cannot steer layer 0" in capsys.readouterr().err


def test_a_new_concept_file_works_with_no_tuning(env, capsys, tmp_path):
    concept = {
        "name": "ocean",
        "positive": [
            f"The waves and the salty sea breeze {i}." for i in ["roll in", "crash", "hiss", "sparkle", "rise"]
        ]
        + ["Sailors watch the tide under the sea spray.", "Dolphins leap across the blue ocean."],
        "negative": [f"The desert sand and the dry heat {i}." for i in ["roll in", "crash", "hiss", "sparkle", "rise"]]
        + ["Nomads cross the dunes under the dry sun.", "Camels trudge across the hot desert."],
    }
    path = tmp_path / "ocean.json"
    path.write_text(json.dumps(concept))
    out = run_cli(capsys, "generate", "My favourite place is", "--model", MODEL_ID, "--steer", str(path),
                  "--compare", "--no-chat", "--max-new-tokens", "20", "--json")  # fmt: skip
    assert out["baseline"] != out["steered"]


def test_strength_zero_and_after_block_are_exact_on_the_real_model(lab):
    from app.steering.engine import Steer, Steering
    from app.steering.generation import GenerationRequest

    vector = lab.library.get("happy")
    ids = lab.lm.tokenizer("The meeting went", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        before = lab.lm.model(input_ids=ids).logits
        with lab.engine.steer(Steering((Steer(vector, 8.0),))):
            during = lab.lm.model(input_ids=ids).logits
        after = lab.lm.model(input_ids=ids).logits
    assert not torch.equal(before, during) and torch.equal(before, after)
    base, zero, steered = lab.generate(
        [
            GenerationRequest("The meeting went", max_new_tokens=16, chat=False),
            GenerationRequest("The meeting went", Steering((Steer(vector, 0.0),)), max_new_tokens=16, chat=False),
            GenerationRequest("The meeting went", Steering((Steer(vector, 6.0),)), max_new_tokens=16, chat=False),
        ]
    )
    assert base.token_ids == zero.token_ids != steered.token_ids
    assert lab.engine.hook_count() == 0


def test_batched_rows_equal_one_at_a_time_on_the_real_model(lab):
    from app.steering.engine import Steer, Steering
    from app.steering.generation import GenerationRequest

    vector = lab.library.get("happy")
    requests = [
        GenerationRequest("Tell me about your weekend.", Steering((Steer(vector, s),)), max_new_tokens=12)
        for s in (-4.0, 0.0, 3.0, 6.0)
    ]
    batched = lab.generate(requests)
    alone = [lab.generate([r])[0] for r in requests]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
