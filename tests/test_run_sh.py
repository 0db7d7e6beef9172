"""run.sh's model step: `./run.sh` sets up the default model, `./run.sh test` only SmolLM2.

run.sh runs in a copy of the repository's top level whose ``.venv/bin/python`` is a stand-in
(it answers run.sh's own questions with the real interpreter and only prints what ``-m app`` or
``-m pytest`` would have run) and whose ``setup_local_cache.sh`` records its arguments and
writes the model's manifest. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.storage import REPO_ROOT

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
TEST_MODEL = "smollm2-135m-instruct"

FAKE_PYTHON = f"""#!/usr/bin/env bash
if [[ "${{1:-}}" == -m && ( "${{2:-}}" == app || "${{2:-}}" == pytest ) ]]; then echo "RAN $*"; exit 0; fi
exec {sys.executable} "$@"
"""

FAKE_SETUP = """#!/usr/bin/env bash
echo "$*" >> "$STEERING_LAB_CACHE/setup-calls"
model=qwen2.5-coder-0.5b-instruct
[[ "${1:-}" == --model ]] && model="$2"
mkdir -p "$STEERING_LAB_CACHE/models/$model"
echo '{}' > "$STEERING_LAB_CACHE/models/$model/config.json"
echo '{}' > "$STEERING_LAB_CACHE/models/$model/manifest.json"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "run.sh", root / "run.sh")
    shutil.copy(REPO_ROOT / "requirements.txt", root / "requirements.txt")
    digest = hashlib.sha256((root / "requirements.txt").read_bytes()).hexdigest()
    (root / ".venv" / ".requirements.sha256").write_text(digest + "\n")
    for path, text in ((root / ".venv" / "bin" / "python", FAKE_PYTHON), (root / "setup_local_cache.sh", FAKE_SETUP)):
        path.write_text(text)
        path.chmod(0o755)
    (tmp_path / "cache" / "models").mkdir(parents=True)
    return root


def run_sh(root: Path, *args: str) -> tuple[str, list[str]]:
    cache = root.parent / "cache"
    env = {**os.environ, "STEERING_LAB_CACHE": str(cache)}
    done = subprocess.run(
        ["bash", str(root / "run.sh"), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    calls = cache / "setup-calls"
    return done.stdout, calls.read_text().splitlines() if calls.exists() else []


def add_model(root: Path, model_id: str) -> None:
    folder = root.parent / "cache" / "models" / model_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "manifest.json").write_text("{}")


def test_serve_sets_up_the_default_model_when_only_the_test_model_is_there(checkout):
    add_model(checkout, TEST_MODEL)
    out, calls = run_sh(checkout)
    assert calls == [f"--model {DEFAULT_MODEL}"]
    assert "RAN -m app serve" in out
    out, calls = run_sh(checkout)  # a second start skips the step
    assert calls == [f"--model {DEFAULT_MODEL}"]


def test_serve_on_an_empty_cache_sets_up_both_models(checkout):
    _, calls = run_sh(checkout)
    assert calls == [""]  # setup_local_cache.sh's default: the default model and SmolLM2


def test_serve_with_the_default_model_set_up_sets_up_nothing(checkout):
    add_model(checkout, DEFAULT_MODEL)
    out, calls = run_sh(checkout, "--port", "7861")
    assert calls == []
    assert "RAN -m app serve --port 7861" in out


def test_test_mode_sets_up_only_smollm2(checkout):
    out, calls = run_sh(checkout, "test", "-x")
    assert calls == [f"--model {TEST_MODEL}"]
    assert "RAN -m pytest -x" in out
    add_model(checkout, "some-other-model")
    _, calls = run_sh(checkout, "test")
    assert calls == [f"--model {TEST_MODEL}"]  # never the default model
