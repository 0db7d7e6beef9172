"""Where Steering Lab keeps its files, and writes that never leave a half-written file behind."""

from __future__ import annotations

import errno
import glob
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The cache root: ``$STEERING_LAB_CACHE`` or ``<repo>/cache``."""
    return Path(os.environ.get("STEERING_LAB_CACHE") or REPO_ROOT / "cache")


def concepts_dir() -> Path:
    """The concept packs: ``$STEERING_LAB_CONCEPTS`` or ``<repo>/concepts``."""
    return Path(os.environ.get("STEERING_LAB_CONCEPTS") or REPO_ROOT / "concepts")


STALE_TEMP_SECONDS = 3600  # a temp file this old was left by a killed process, not a running write


class StorageError(OSError, ValueError):
    """A write that failed (full disk, read-only folder); the previous file is untouched.

    An ``OSError`` (callers that already catch those keep working) and a ``ValueError`` (the CLI
    and the UI show its message as a user error rather than a traceback).
    """

    def __str__(self) -> str:
        return str(self.strerror)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], *, exclusive: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a mix. On failure the
    temp file is removed and the error propagates; the previous file is untouched. An ``OSError``
    while writing or renaming becomes a :class:`StorageError` that says so.

    Args:
        exclusive: refuse to replace an existing file (``FileExistsError``), also when two
            writers race for the same new name: the second one fails instead of overwriting.
    """
    path = Path(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file where a folder should be
            blocker = next(
                (p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), path.parent
            )
            raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder") from None
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as error:
        raise _storage_error(path, error) from error
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; saved concepts, vectors and docs are meant to be read
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise _storage_error(path, error) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _link_new(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if no file has it (``FileExistsError`` otherwise)."""
    try:
        os.link(tmp, path)  # atomic: fails if ``path`` exists
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # A file system without hard links (FAT, some network shares): check, then rename.
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _storage_error(path: Path, error: OSError) -> StorageError:
    reason = error.strerror or str(error) or type(error).__name__
    return StorageError(error.errno, f"could not write {path.name}: {reason}; the previous file is kept")


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of ``path`` left behind by a process killed mid-write (over an hour old)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
        except OSError:
            pass  # another process removed or renamed it


def atomic_write_text(path: str | os.PathLike[str], text: str, *, exclusive: bool = False) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), exclusive=exclusive)


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, exclusive: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n", exclusive=exclusive)
