"""The README's Python example runs as written, on the embedded SmolLM2, with `from app import ...`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from app.storage import REPO_ROOT
from tests.conftest import SMALL_MODEL, require_model, sandbox_cache

MODEL_ID = SMALL_MODEL


def python_example() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_example_imports_only_the_public_api():
    imports = [line for line in python_example().splitlines() if line.startswith(("from ", "import "))]
    assert imports and all(line.startswith("from app import ") for line in imports)
    names = imports[0].removeprefix("from app import ").split(", ")
    import app

    assert set(names) <= set(app.__all__)


@pytest.mark.slow
def test_the_example_runs_as_written(tmp_path):
    require_model(MODEL_ID)
    sandbox_cache(tmp_path)
    (tmp_path / "concepts").mkdir()
    for name in ("happy", "sad"):
        shutil.copy(REPO_ROOT / "concepts" / f"{name}.json", tmp_path / "concepts")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "STEERING_LAB_CACHE": str(tmp_path / "cache"),
        "STEERING_LAB_CONCEPTS": str(tmp_path / "concepts"),
    }
    result = subprocess.run(
        [sys.executable, "-c", python_example()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    base, _, steered = result.stdout.strip().partition(" | ")
    assert base and steered and base != steered
    assert (tmp_path / "calm.safetensors").is_file()
