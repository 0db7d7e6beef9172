"""``python -m app quality`` on the real embedded SmolLM2: the table, --json and --out.

Skipped when the model is not set up, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import shutil

import pytest

from app.storage import REPO_ROOT
from tests.conftest import SMALL_MODEL, require_model, sandbox_cache

MODEL_ID = SMALL_MODEL
HELDOUT = REPO_ROOT / "tests" / "heldout"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a library build and generation on a busy CPU


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A cache with the real models linked in, and a held-out folder with one concept and two questions."""
    require_model(MODEL_ID)
    sandbox_cache(tmp_path)
    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path / "cache"))
    heldout = tmp_path / "heldout"
    (heldout / "concepts").mkdir(parents=True)
    shutil.copy(HELDOUT / "concepts" / "ocean.json", heldout / "concepts")
    scorers = json.loads((HELDOUT / "scorers.json").read_text(encoding="utf-8"))
    (heldout / "scorers.json").write_text(json.dumps({"ocean": scorers["ocean"]}))
    questions = json.loads((HELDOUT / "questions.json").read_text(encoding="utf-8"))[:2]
    (heldout / "questions.json").write_text(json.dumps(questions))
    return tmp_path


def test_quality_json_table_and_out(sandbox, capsys):
    from app.cli import main

    args = ["quality", "--model", MODEL_ID, "--device", "cpu", "--heldout", str(sandbox / "heldout")]
    args += ["--max-new-tokens", "6"]
    assert main([*args, "--json", "--out", str(sandbox / "out")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == MODEL_ID
    [ocean] = report["concepts"]
    assert ocean["concept"] == "ocean" and ocean["n"] == 2 and len(ocean["pairs"]) == 2
    assert ocean["strength"] > 0 and ocean["layers"]
    for pair in ocean["pairs"]:
        assert pair["baseline"] and pair["steered"] and pair["baseline"] != pair["steered"]
        assert pair["moved"] == (pair["steered_score"] > pair["baseline_score"])  # word list, margin 0
        assert pair["steered_perplexity"] > 0
    assert ocean["moved"] == sum(p["moved"] for p in ocean["pairs"])
    saved = json.loads((sandbox / "out" / "ocean.json").read_text(encoding="utf-8"))
    assert saved["pairs"] == ocean["pairs"]
    assert json.loads((sandbox / "out" / "summary.json").read_text(encoding="utf-8"))["concepts"][0]["n"] == 2

    assert main(args) == 0  # the vector is cached now: the table only
    out = capsys.readouterr().out
    assert f"model: {MODEL_ID}" in out and "ocean" in out and "/2" in out


def test_quality_names_an_unknown_concept(sandbox, capsys):
    from app.cli import main

    args = ["quality", "--model", MODEL_ID, "--heldout", str(sandbox / "heldout"), "--only", "volcano"]
    assert main(args) == 1
    assert "no held-out concept named volcano" in capsys.readouterr().err
