"""Where Steering Lab keeps its files, and writes that never leave a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app import REPO_ROOT


def cache_dir() -> Path:
    """The cache root: ``$STEERING_LAB_CACHE`` or ``<repo>/cache``."""
    return Path(os.environ.get("STEERING_LAB_CACHE") or REPO_ROOT / "cache")


def concepts_dir() -> Path:
    """The concept packs: ``$STEERING_LAB_CONCEPTS`` or ``<repo>/concepts``."""
    return Path(os.environ.get("STEERING_LAB_CONCEPTS") or REPO_ROOT / "concepts")


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a mix. On failure the
    temp file is removed and the error propagates; the previous file is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
