"""The model table, device and memory detection, the hub check, and auto-selection (docs/architecture.md, "Models").

Nothing here imports torch or transformers at module level, so ``python -m app models`` and
the set-up script start fast; ``detect_device`` imports torch when it runs.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from app.models.embedded import DEFAULT_MODEL, EMBEDDED, is_set_up, models_dir

Status = Literal["cached", "downloadable", "embedded-set-up", "unavailable"]
HUB_TIMEOUT_S = 3.0
HUB_ENDPOINT = "https://huggingface.co"


class ModelNotAvailable(FileNotFoundError):
    """A model that is not set up (or cannot be reached) here; the message says how to get it.

    Every command ends with this message and a non-zero exit (app/cli.py), never a traceback.
    """


@dataclass(frozen=True)
class ModelRow:
    id: str
    source: str  # "hub:<org>/<name>" or "embedded"
    model_type: str  # config.model_type
    params_b: float  # billions of parameters
    memory_gb: float  # needed in float16/bfloat16 (weights + room to run); float32 doubles it
    chat: bool  # has a chat template
    why: str

    @property
    def repo(self) -> str | None:
        return self.source.removeprefix("hub:") if self.source.startswith("hub:") else None

    @property
    def embedded(self) -> bool:
        return self.source == "embedded"

    def memory_needed_gb(self, dtype_bytes: int) -> float:
        """Memory to load and run this model with weights of ``dtype_bytes`` (2 or 4) each."""
        return self.memory_gb * dtype_bytes / 2


def _row(id: str, source: str, model_type: str, params_b: float, chat: bool, why: str) -> ModelRow:
    # fp16 weights (2 bytes a parameter) plus ~20 % for activations, KV cache and the runtime.
    return ModelRow(id, source, model_type, params_b, round(params_b * 2 * 1.2 + 0.3, 1), chat, why)


# fmt: off
MODELS: dict[str, ModelRow] = {r.id: r for r in [
    #    id                             source                                     model_type     params chat
    _row("mistral-7b-instruct-v0.2",    "hub:mistralai/Mistral-7B-Instruct-v0.2", "mistral",     7.24,  True,
         "first choice when memory allows"),
    _row("phi-3-mini-4k-instruct",      "hub:microsoft/Phi-3-mini-4k-instruct",   "phi3",        3.82,  True,
         "fallback on less memory"),
    _row("stablelm-2-1.6b-chat",        "hub:stabilityai/stablelm-2-1_6b-chat",   "stablelm",    1.64,  True,
         "paper model (Bo et al. 2025)"),
    _row("gemma-2-2b-it",               "hub:google/gemma-2-2b-it",               "gemma2",      2.61,  True,
         "paper model"),
    _row("gemma-2-9b-it",               "hub:google/gemma-2-9b-it",               "gemma2",      9.24,  True,
         "paper model"),
    _row("mistral-7b-instruct-v0.3",    "hub:mistralai/Mistral-7B-Instruct-v0.3", "mistral",     7.25,  True,
         "paper model"),
    _row("qwen2.5-7b-instruct",         "hub:Qwen/Qwen2.5-7B-Instruct",           "qwen2",       7.62,  True,
         "paper model"),
    _row("qwen2.5-coder-1.5b-instruct", "embedded",                               "qwen2",       1.54,  True,
         "largest model that installs with pip alone; used when asked for"),
    _row("qwen2.5-coder-0.5b-instruct", "embedded",                               "qwen2",       0.49,  True,
         "the default (the 1.5B shows concepts no more often, at 2.6x the time)"),
    _row("smollm2-135m-instruct",       "embedded",                               "llama",       0.135, True,
         "fastest real model; tests"),
    _row("gemma-3-270m",                "embedded",                               "gemma3_text", 0.27,  False,
         "base (non-chat) model for completion-style lessons"),
]}
# fmt: on
# Auto-selection tries these hub models in order, then the embedded models set up (the default first).
PREFERRED_HUB = ("mistral-7b-instruct-v0.2", "phi-3-mini-4k-instruct")


# --- devices and memory -------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    kind: Literal["cuda", "mps", "cpu"]
    name: str
    free_gb: float  # GPU memory free (all CUDA devices together) or system RAM available
    dtype_bytes: int  # 2 on GPU/MPS (fp16/bf16), 4 on CPU (float32)


def detect_device(device: str | None = None) -> DeviceInfo:
    """CUDA first, then Apple MPS, then the CPU, with the memory free on it.

    Args:
        device: report on this device instead ("cpu", "cuda", "cuda:1", "mps"); a single
            "cuda:N" counts that GPU's memory only, plain "cuda" all GPUs together.
    """
    import psutil
    import torch

    kind = device.split(":")[0] if device else None
    if kind == "cuda" or (kind is None and torch.cuda.is_available()):
        indices = [int(device.split(":")[1])] if device and ":" in device else range(torch.cuda.device_count())
        free = sum(torch.cuda.mem_get_info(i)[0] for i in indices)
        name = torch.cuda.get_device_name(indices[0])
        if len(indices) > 1:
            name += f" x{len(indices)}"
        return DeviceInfo("cuda", name, free / 2**30, 2)
    ram = psutil.virtual_memory().available / 2**30
    mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    if kind == "mps" or (kind is None and mps):
        return DeviceInfo("mps", "Apple MPS", ram, 2)  # unified memory: system RAM is the limit
    return DeviceInfo("cpu", "CPU", ram, 4)


# --- where a model can come from ----------------------------------------------------------


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hf_snapshot(repo: str) -> Path | None:
    """The snapshot dir of ``repo`` in the HF cache if it holds a config and weights."""
    base = hf_hub_cache() / ("models--" + repo.replace("/", "--"))
    snapshots = base / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = base / "refs" / "main"
    candidates = [snapshots / ref.read_text().strip()] if ref.is_file() else []
    candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((c for c in candidates if looks_like_model(c)), None)


def looks_like_model(path: Path) -> bool:
    """A directory with a config.json and weights (safetensors or .bin), every shard present."""
    if not (path / "config.json").is_file():
        return False
    for index in path.glob("*.index.json"):  # sharded: a half-finished download lacks shards
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return False
        if not all((path / shard).is_file() for shard in shards):
            return False
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


def local_model_dir(model_id: str) -> Path | None:
    """``cache/models/<id>`` if it holds a usable model (a finished conversion or a link)."""
    row = MODELS[model_id]
    path = models_dir() / model_id
    if row.embedded:
        return path if is_set_up(model_id) else None
    return path if looks_like_model(path) else None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _head(url: str, timeout: float) -> int | str:
    """HTTP status of a HEAD request (redirects are fine), or a short error text."""
    request = urllib.request.Request(url, method="HEAD")
    token = os.environ.get("HF_TOKEN") or _saved_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except urllib.error.URLError as error:
        return str(error.reason)[:80]
    except (OSError, ValueError) as error:
        return f"{type(error).__name__}: {error}"[:80]


def _saved_token() -> str | None:
    path = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "token"
    return path.read_text().strip() if path.is_file() else None


@cache
def hub_check(repo: str, timeout: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """Can ``repo`` be downloaded now? Returns (ok, why-not). Never waits past ``timeout``.

    The request runs in a daemon thread that is abandoned at the deadline: a socket timeout
    does not cover a DNS lookup, which can hang for much longer on a machine with no network.
    """
    if hub_offline():
        return False, "HF_HUB_OFFLINE is set"
    result: list[int | str] = []
    url = f"{os.environ.get('HF_ENDPOINT', HUB_ENDPOINT)}/{repo}/resolve/main/config.json"
    worker = threading.Thread(target=lambda: result.append(_head(url, timeout)), daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return False, f"hub did not answer within {timeout:.0f} s"
    status = result[0]
    if status == 200:
        return True, ""
    if status in (401, 403):
        return False, "gated on the hub: accept its licence there and log in (hf auth login)"
    return False, f"hub unreachable ({status})"


def hub_checks(repos: list[str], timeout: float = HUB_TIMEOUT_S) -> dict[str, tuple[bool, str]]:
    """``hub_check`` for several repos at once, all within one ``timeout``."""
    results: dict[str, tuple[bool, str]] = {}
    threads = [
        threading.Thread(target=lambda r=r: results.__setitem__(r, hub_check(r, timeout)), daemon=True) for r in repos
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 0.5)
    return {r: results.get(r, (False, f"hub did not answer within {timeout:.0f} s")) for r in repos}


@dataclass(frozen=True)
class Availability:
    status: Status
    detail: str  # where it is, or why not


def availability(model_id: str, hub: tuple[bool, str] | None = None) -> Availability:
    """Where ``model_id`` would load from. ``hub`` is a precomputed hub check (else one is made)."""
    row = MODELS[model_id]
    local = local_model_dir(model_id)
    if row.embedded:
        if local:
            return Availability("embedded-set-up", str(local))
        return Availability("unavailable", f"not set up: run ./setup_local_cache.sh --model {model_id}")
    if local:
        return Availability("cached", str(local))
    snapshot = hf_snapshot(row.repo) if row.repo else None
    if snapshot:
        return Availability("cached", str(snapshot))
    ok, why = hub if hub is not None else hub_check(row.repo) if row.repo else (False, "no hub repository")
    if ok:
        return Availability("downloadable", f"from the hub ({row.repo})")
    return Availability("unavailable", f"not in any local cache; {why}")


def availabilities(model_ids: list[str] | None = None) -> dict[str, Availability]:
    """``availability`` for many models, with the hub checks made in parallel."""
    ids = list(model_ids or MODELS)
    repos = {i: MODELS[i].repo for i in ids}
    need_hub = [repo for i, repo in repos.items() if repo and not local_model_dir(i) and not hf_snapshot(repo)]
    hub = hub_checks(need_hub) if need_hub else {}
    return {i: availability(i, hub.get(repo) if repo else None) for i, repo in repos.items()}


# --- selection ----------------------------------------------------------------------------


def auto_select(device: DeviceInfo | None = None, avail: dict[str, Availability] | None = None) -> tuple[str, str]:
    """Pick the model for this machine; returns (id, one-line reason).

    Mistral-7B if it fits and is available, else Phi-3, else the default embedded model if set up,
    else the largest embedded chat model that is set up (the base gemma-3-270m only if no chat model is).

    Raises:
        FileNotFoundError: nothing is available; the message says how to set a model up.
    """
    device = device or detect_device()
    where = f"{device.kind} ({device.name}, {device.free_gb:.1f} GB free)"
    avail = avail if avail is not None else availabilities(list(PREFERRED_HUB) + list(EMBEDDED))
    skipped: list[str] = []
    for model_id in PREFERRED_HUB:
        row, state = MODELS[model_id], avail[model_id]
        need = row.memory_needed_gb(device.dtype_bytes)
        if need > device.free_gb:
            skipped.append(f"{model_id} needs {need:.0f} GB")
        elif state.status == "unavailable":
            skipped.append(f"{model_id} {state.detail.removeprefix('not in any local cache; ')}")
        else:
            return model_id, f"picked {model_id} ({state.status}) on {where}"
    # The default embedded model first: the larger Qwen 1.5B steers no better on the held-out check
    # (docs/quality.md) and takes 2.6x the time per reply, so it runs when asked for (--model).
    embedded = sorted(
        (MODELS[i] for i in EMBEDDED if avail[i].status == "embedded-set-up"),
        key=lambda r: (r.chat, r.id == DEFAULT_MODEL, r.params_b),
        reverse=True,
    )
    for n, row in enumerate(embedded):
        if row.memory_needed_gb(device.dtype_bytes) <= device.free_gb:
            bigger = [r.id for r in embedded[n + 1 :] if r.chat and r.params_b > row.params_b]
            if bigger:
                skipped.append(
                    f"{', '.join(bigger)} set up but not preferred (no better on the held-out check, slower)"
                )
            because = "; ".join(skipped)
            return row.id, f"picked {row.id} (embedded) on {where}: {because}"
        skipped.append(f"{row.id} needs {row.memory_needed_gb(device.dtype_bytes):.1f} GB")
    raise ModelNotAvailable(
        f"no model fits and is available on {where}: {'; '.join(skipped) or 'no embedded model set up'}. "
        "Run ./setup_local_cache.sh to set up the embedded models, or pass --model."
    )


@dataclass(frozen=True)
class ResolvedModel:
    """What ``load_model`` should load: a registry id or a local dir, and from where."""

    model_id: str  # registry id, or the local path as given
    source: str  # a local dir or a hub repo name, passed to from_pretrained
    row: ModelRow | None
    reason: str


def resolve_model(spec: str | None, device: DeviceInfo | None = None) -> ResolvedModel:
    """Turn ``--model`` (an id, ``hub:org/name``, a local path, or None for auto) into a source.

    Raises:
        ValueError: unknown id, or a path that is not a model.
        ModelNotAvailable: a known model that is not available here (with what to do).
    """
    if spec is None:
        model_id, reason = auto_select(device)
        return ResolvedModel(model_id, _source(model_id), MODELS[model_id], reason)
    if spec in MODELS:
        return ResolvedModel(spec, _source(spec), MODELS[spec], f"using {spec} (--model)")
    if spec.startswith("hub:"):
        return ResolvedModel(spec, spec.removeprefix("hub:"), None, f"using {spec} (--model)")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ValueError(f"{spec} is not a model: expected a directory with a config.json and weights")
        if not looks_like_model(path):
            raise ValueError(f"{spec} is not a model: it has a config.json but no *.safetensors or *.bin weights")
        return ResolvedModel(spec, str(path.resolve()), None, f"using local model {spec} (--model)")
    raise ValueError(
        f"unknown model {spec!r}: not a known id and no such path. Known ids: {', '.join(MODELS)} "
        "(or a local model directory, or hub:<org>/<name>)"
    )


def _source(model_id: str) -> str:
    row = MODELS[model_id]
    local = local_model_dir(model_id)
    if local:
        return str(local)
    if row.embedded:
        raise ModelNotAvailable(f"{model_id} is not set up: run ./setup_local_cache.sh --model {model_id}")
    state = availability(model_id)
    if state.status == "unavailable":
        raise ModelNotAvailable(f"{model_id} is not available: {state.detail}")
    return row.repo if state.status == "downloadable" and row.repo else state.detail


# --- links into an existing HF cache -------------------------------------------------------


def link_hf_models(root: Path | None = None, say: Callable[[str], object] = print) -> list[str]:
    """Symlink hub models already in the user's HF cache into ``cache/models/<id>``."""
    root = root or models_dir()
    linked = []
    for row in MODELS.values():
        if not row.repo:
            continue
        snapshot = hf_snapshot(row.repo)
        target = root / row.id
        if snapshot is None:
            continue
        if target.is_symlink() and target.resolve() == snapshot.resolve():
            linked.append(row.id)
            continue
        if target.exists() and not target.is_symlink():
            say(f"[setup] {row.id}: {target} exists and is not a link; leaving it")
            continue
        root.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.symlink_to(snapshot, target_is_directory=True)
        say(f"[setup] {row.id}: linked {target} -> {snapshot}")
        linked.append(row.id)
    if not linked:
        say(f"[setup] no hub models found in the HF cache ({hf_hub_cache()}); nothing to link")
    return linked
