"""Our own CPU product for ``nn.Linear`` (``panels.c``): the weight in panels of 16 outputs, read once
per block of up to 6 rows, at close to the machine's memory speed for a decoding step's few rows.

The C source is compiled on first use with the machine's C compiler (``$CC``, else ``cc``) for
this CPU (``-O3 -march=native -fopenmp``) into ``cache/build/panels-<key>/``, where ``<key>``
covers the source, the compiler, the flags and the CPU, so a new machine or a changed source
builds again (under a second) and everything else reuses it. The library must share the OpenMP
runtime torch already loaded (its ``libgomp.so.1`` resolves to torch's; checked at load), so there
is one thread pool, and its wait policy (``OMP_WAIT_POLICY``) holds for both. Where any of that fails (no compiler, another
platform, another OpenMP runtime), :func:`unavailable_reason` says why and
:mod:`app.models.kernels` keeps oneDNN's packed product.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from app.models.threads import one_thread
from app.storage import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("panels.c")
PANEL = 16  # outputs per panel (PANEL in panels.c)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 120


class Unavailable(RuntimeError):
    """The panel product cannot run here; the message says why, in one line."""


def _compiler() -> str:
    name = os.environ.get("CC") or "cc"
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"no C compiler ({name!r} is not on PATH)")
    return path


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux): ``-march=native`` code is only valid on a CPU with them."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _build_key(compiler: str) -> str:
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise Unavailable(f"the C compiler {compiler} does not run: {error}") from error
    parts = (SOURCE.read_bytes().decode(), compiler, version, " ".join(FLAGS), platform.machine(), _cpu_flags())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _build(compiler: str, target: Path) -> None:
    """Compile ``SOURCE`` into ``target``, atomically: a crash or a racing process never leaves half a library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libpanels.", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S
        )
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if line.strip()), f"exit {done.returncode}")
            raise Unavailable(f"compiling {SOURCE.name} failed: {first}")
        os.replace(tmp, target)
    except subprocess.TimeoutExpired as error:
        raise Unavailable(f"compiling {SOURCE.name} took over {COMPILE_TIMEOUT_S} s") from error
    except OSError as error:
        raise Unavailable(f"cannot build {target}: {error.strerror or error}") from error
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_shared_runtime(library: ctypes.CDLL) -> None:
    """Refuse a library bound to another OpenMP runtime than torch's: two thread pools would fight
    over the cores. Its thread count must follow torch's, set for the calling thread only."""
    probe = library.panel_max_threads
    probe.argtypes, probe.restype = [], ctypes.c_int
    threads = torch.get_num_threads()
    if threads == 1:
        return  # products then run on the calling thread alone (threads=1 opens no parallel region)
    with one_thread():
        inside = probe()
    if inside != 1 or probe() != threads:
        raise Unavailable("it would not share torch's OpenMP runtime (its thread count does not follow torch's)")


@functools.cache
def _load() -> Callable[..., None] | Unavailable:
    """The compiled ``panel_product``, built if needed, or why it cannot be had (once per process)."""
    try:
        if platform.system() != "Linux":
            raise Unavailable(f"built and checked on Linux only (this is {platform.system()})")
        if not torch.backends.openmp.is_available():
            raise Unavailable("this torch is built without OpenMP")
        compiler = _compiler()
        target = cache_dir() / "build" / f"panels-{_build_key(compiler)}" / "libpanels.so"
        if not target.exists():
            _build(compiler, target)
            log.info("panel product compiled into %s", target)
        try:
            library = ctypes.CDLL(str(target))
        except OSError as error:
            raise Unavailable(f"cannot load {target}: {error}") from error
        _check_shared_runtime(library)
        product = library.panel_product
        product.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        product.restype = None
        return product
    except Unavailable as reason:
        return reason


def unavailable_reason() -> str | None:
    """None when the panel product can run in this process, else why not (one line)."""
    loaded = _load()
    return str(loaded) if isinstance(loaded, Unavailable) else None


def to_panels(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [out, in] as panels [ceil(out / 16), in, 16], zero-padded (:func:`from_panels` inverts it)."""
    out, width = weight.shape
    count = -(-out // PANEL)
    padded = torch.zeros(count * PANEL, width, dtype=weight.dtype)
    padded[:out] = weight.detach()
    return padded.view(count, PANEL, width).transpose(1, 2).contiguous()


def from_panels(panels: torch.Tensor, out_features: int) -> torch.Tensor:
    """The [out, in] weight that :func:`to_panels` laid out as ``panels``, exactly."""
    count, width, _ = panels.shape
    return panels.transpose(1, 2).reshape(count * PANEL, width)[:out_features].contiguous()


def product(
    x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None, out_features: int, threads: int
) -> torch.Tensor:
    """``x @ W.T + bias`` for the weight ``W`` laid out as ``panels``, on ``threads`` OpenMP threads."""
    loaded = _load()
    if isinstance(loaded, Unavailable):
        raise loaded
    width = panels.shape[1]
    rows = x.reshape(-1, width)
    if rows.dtype != torch.float32 or rows.device.type != "cpu" or (bias is not None and bias.dtype != torch.float32):
        raise TypeError(f"the panel product takes float32 on the CPU, not {rows.dtype} on {rows.device.type}")
    rows = rows.contiguous()
    bias = None if bias is None else bias.contiguous()  # held here: the call reads it by address
    result = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    loaded(
        panels.data_ptr(),
        rows.data_ptr(),
        None if bias is None else bias.data_ptr(),
        result.data_ptr(),
        rows.shape[0],
        width,
        out_features,
        threads,
    )
    return result.reshape(*x.shape[:-1], out_features)
