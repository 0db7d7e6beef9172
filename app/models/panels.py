"""Our own CPU product for ``nn.Linear`` (``panels.c``): the weight in panels of 16 outputs, read once
per block of up to 6 rows, at close to the machine's memory speed for a decoding step's few rows.
The same library computes the RMS norm of Llama-family layers (:func:`rms_norm`, used by
:mod:`app.models.norms`) and a whole decoding step of such a layer (:mod:`app.models.layer_step`).

The C sources (``panels.c`` and ``layer_step.c``, one library) are compiled on first use with the
machine's C compiler (``$CC``, else ``cc``) for this CPU (``-O3 -march=native -pthread``) into
``cache/build/panels-<key>/``, where ``<key>`` covers the sources, the compiler, the flags and the
CPU, so a new machine or a changed source builds again (under a second) and everything else
reuses it. Where that fails (no compiler,
another platform), :func:`unavailable_reason` says why and :mod:`app.models.kernels` keeps
oneDNN's packed product.

A product runs on the calling thread and up to ``threads - 1`` helper threads of the library's
own, started on first use. Helpers claim panels while the caller does, so the caller never waits
for a helper that is asleep or has lost its core; an idle helper watches for the next product for
``HELPER_SPIN_US`` (the gaps between a decoding step's products are shorter), then sleeps. OpenMP
threads that sleep between products (``OMP_WAIT_POLICY=PASSIVE``, for busy machines) took longer
to wake than a small product takes; OpenMP threads that spin all the time held the cores of a
busy machine (docs/performance.md).
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
from pathlib import Path

import torch
from torch import nn

from app.storage import cache_dir

log = logging.getLogger(__name__)

SOURCES = (Path(__file__).with_name("panels.c"), Path(__file__).with_name("layer_step.c"))  # one library
PANEL = 16  # outputs per panel (PANEL in panels.c)
FLAGS = ("-O3", "-march=native", "-pthread", "-shared", "-fPIC")
LIBRARIES = ("-lm",)  # linked after the source (the norm's sqrtf)
COMPILE_TIMEOUT_S = 120
HELPER_SPIN_US = 200  # an idle helper thread watches this long for the next product, then sleeps


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
    flags = " ".join((*FLAGS, *LIBRARIES))
    parts = (
        *(source.read_bytes().decode() for source in SOURCES),
        compiler,
        version,
        flags,
        platform.machine(),
        _cpu_flags(),
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _build(compiler: str, target: Path) -> None:
    """Compile ``SOURCES`` into ``target``, atomically: a crash or a racing process never leaves half a library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libpanels.", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *FLAGS, *map(str, SOURCES), *LIBRARIES, "-o", tmp],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
        )
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if line.strip()), f"exit {done.returncode}")
            raise Unavailable(f"compiling {', '.join(s.name for s in SOURCES)} failed: {first}")
        os.replace(tmp, target)
    except subprocess.TimeoutExpired as error:
        raise Unavailable(f"compiling {', '.join(s.name for s in SOURCES)} took over {COMPILE_TIMEOUT_S} s") from error
    except OSError as error:
        raise Unavailable(f"cannot build {target}: {error.strerror or error}") from error
    finally:
        Path(tmp).unlink(missing_ok=True)


@functools.cache
def _load() -> ctypes.CDLL | Unavailable:
    """The compiled library, built if needed, or why it cannot be had (once per process)."""
    try:
        if platform.system() != "Linux":
            raise Unavailable(f"built and checked on Linux only (this is {platform.system()})")
        compiler = _compiler()
        target = cache_dir() / "build" / f"panels-{_build_key(compiler)}" / "libpanels.so"
        if not target.exists():
            _build(compiler, target)
            log.info("panel product compiled into %s", target)
        try:
            library = ctypes.CDLL(str(target))  # its calls release the GIL: other Python threads run on
        except OSError as damaged:  # a library left damaged on disk: built again, once
            log.warning("the cached panel product %s does not load (%s); compiling it again", target, damaged)
            _build(compiler, target)
            try:
                library = ctypes.CDLL(str(target))
            except OSError as error:
                raise Unavailable(f"cannot load {target}: {error}") from error
        library.panel_product.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        library.panel_product.restype = None
        library.rms_norm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 2 + [ctypes.c_float]
        library.rms_norm.restype = None
        # layer, hidden, out; rows; cos, sin, keys, values; capacity, length; mask; threads
        library.layer_step.argtypes = (
            [ctypes.c_void_p] * 3 + [ctypes.c_long] + [ctypes.c_void_p] * 4 + [ctypes.c_long] * 2 + [ctypes.c_void_p]
        ) + [ctypes.c_int]
        library.layer_step.restype = ctypes.c_int
        library.panel_set_spin_ns.argtypes, library.panel_set_spin_ns.restype = [ctypes.c_long], None
        library.panel_helpers.argtypes, library.panel_helpers.restype = [], ctypes.c_int
        library.panel_helped.argtypes, library.panel_helped.restype = [], ctypes.c_long
        library.panel_set_spin_ns(HELPER_SPIN_US * 1000)
        return library
    except Unavailable as reason:
        return reason


def library() -> ctypes.CDLL:
    """The compiled library, loaded once (raises :class:`Unavailable`: why it cannot be had)."""
    loaded = _load()
    if isinstance(loaded, Unavailable):
        raise loaded
    return loaded


def set_helper_spin_us(microseconds: int) -> None:
    """How long an idle helper thread watches for the next product before it sleeps (0: at once)."""
    library().panel_set_spin_ns(max(0, microseconds) * 1000)


def helpers_started() -> int:
    """Helper threads the library has started in this process (they last as long as it does)."""
    return int(library().panel_helpers())


def panels_by_helpers() -> int:
    """Panels the helper threads have computed in this process, all products together."""
    return int(library().panel_helped())


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
    """``x @ W.T + bias`` for the weight ``W`` laid out as ``panels``, on this thread and ``threads - 1`` helpers."""
    compiled = library()
    width = panels.shape[1]
    rows = x.reshape(-1, width)
    if rows.dtype != torch.float32 or rows.device.type != "cpu" or (bias is not None and bias.dtype != torch.float32):
        raise TypeError(f"the panel product takes float32 on the CPU, not {rows.dtype} on {rows.device.type}")
    rows = rows.contiguous()
    bias = None if bias is None else bias.contiguous()  # held here: the call reads it by address
    result = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    compiled.panel_product(
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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x ** 2) + eps)`` over the last dimension, each row on its own (float32 on the CPU)."""
    compiled = library()
    if (
        x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.device.type != "cpu"
        or weight.device.type != "cpu"
    ):
        raise TypeError(f"the compiled RMS norm takes float32 on the CPU, not {x.dtype} on {x.device.type}")
    width = weight.shape[-1]
    if x.shape[-1] != width:
        raise ValueError(f"the RMS norm's weight has {width} values for rows of {x.shape[-1]}")
    rows = x.contiguous()
    scale = weight.contiguous()  # held here: the call reads it by address
    result = torch.empty_like(rows)
    compiled.rms_norm(rows.data_ptr(), scale.data_ptr(), result.data_ptr(), rows.numel() // max(width, 1), width, eps)
    return result


class PanelLinear(nn.Linear):
    """``nn.Linear`` whose weight is held in panels (:func:`to_panels`: same values,
    shape [ceil(out / 16), in, 16]) and multiplied by the compiled panel product. Each row's result
    does not depend on the other rows in the batch nor on the thread count. Inference only."""

    dense_requires_grad: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return product(x, self.weight, self.bias, self.out_features, torch.get_num_threads())


class PanelCopyLinear(nn.Linear):
    """``nn.Linear`` computed from a panel copy of its weight, for a weight another module reads in
    torch's layout (a tied output layer): the parameter stays as it is, the copy costs its size in
    memory and is made once (inference only: call :func:`app.models.kernels.use` again after changing the weight)."""

    panel_weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return product(x, self.panel_weight, self.bias, self.out_features, torch.get_num_threads())
