"""The type checker over the core packages (settings in pyproject.toml's [tool.mypy])."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.storage import REPO_ROOT


@pytest.mark.slow
def test_the_core_type_checks():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(REPO_ROOT / ".mypy_cache")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
