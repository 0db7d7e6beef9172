"""The matrix product behind ``nn.Linear`` on CPU: torch's default, or the same product transposed.

``nn.Linear`` computes ``x @ W.T``. With the MKL build of torch on some CPUs (measured on an AMD
EPYC: docs/performance.md) that call is 2-3x slower than the same product written ``(W @ x.T).T``
when ``x`` has few rows, which is every decoding step: batch 2 costs twice batch 1, and batching
side-by-side runs or concurrent users buys nothing. One row is the slowest case of all (a
matrix-vector product), so a single row is computed as two.

:func:`tune` times both forms on the model's own weights at load (once per process for weights
of the same shapes), in back-to-back pairs whose ratios are compared by their median, so a busy
machine and a quiet one make the same choice, and switches the model's linear layers to
:class:`TransposedLinear` only when that is clearly faster here. The switch changes which kernel runs, nothing else: same
modules, same parameters, same state dict, and :func:`restore` switches back.
``STEERING_LAB_LINEAR=torch|transposed`` overrides the choice.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

Kernel = Literal["torch", "transposed"]
KERNELS: tuple[Kernel, ...] = ("torch", "transposed")
ENV_VAR = "STEERING_LAB_LINEAR"
TUNE_ROWS = (1, 4, 64)  # a decoding step alone, a small batch of them, a prompt
TUNE_BYTES = 96 * 2**20  # weights timed per pass: about 3x a large L3 cache, so memory speed counts
MIN_GAIN = 0.9  # switch only when the transposed form takes at most 90% of torch's time overall
TUNE_PAIRS = 5  # timed pairs per row count: the median ratio outvotes 2 disturbed pairs

# Timings already taken in this process, by the sampled weights' shapes and the thread count: a
# model loaded again (tests, the model switcher, the benchmark) keeps its choice, untimed.
_TIMED: dict[tuple, Samples] = {}


class TransposedLinear(nn.Linear):
    """``nn.Linear`` whose product is computed as ``(W @ x.T).T``; the result is the same up to
    float rounding (a different summation order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [m, in]
        single = rows.shape[0] == 1
        if single:
            rows = torch.cat([rows, rows])  # two rows take the fast matrix-matrix path
        out = torch.mm(self.weight, rows.contiguous().t())  # [out, m]
        if single:
            out = out[:, :1]
        out = out.t().contiguous()  # [m, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def _plain_linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if type(m) is nn.Linear]


def use(model: nn.Module, kernel: Kernel) -> int:
    """Make every plain ``nn.Linear`` of ``model`` use ``kernel``; returns how many layers changed."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown linear kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    if kernel == "torch":
        return restore(model)
    linears = _plain_linears(model)
    for module in linears:
        module.__class__ = TransposedLinear  # same object, parameters and hooks: only forward differs
    return len(linears)


def restore(model: nn.Module) -> int:
    """Undo :func:`use`: every :class:`TransposedLinear` back to ``nn.Linear``."""
    changed = [m for m in model.modules() if type(m) is TransposedLinear]
    for module in changed:
        module.__class__ = nn.Linear  # type: ignore[assignment]
    return len(changed)


Samples = dict[Kernel, dict[int, list[float]]]  # kernel -> rows -> seconds of each timed pass


@dataclass
class KernelChoice:
    """What :func:`tune` chose and why: seconds of each timed pass over the sampled weights,
    per kernel and row count (pass ``i`` of both kernels ran back to back)."""

    kernel: Kernel
    reason: str
    seconds: Samples = field(default_factory=dict)


def ratios(seconds: Samples) -> dict[int, float]:
    """Per row count, the median over pairs of transposed/torch time.

    Each pair ran back to back, so a burst of load from another process mostly hits one pair
    (and is outvoted by the others) or both halves of a pair (and cancels in its ratio); a
    best-of-n time per kernel does neither, which once gave "1 rows 11.69x" on a busy machine.
    """
    ours, theirs = seconds["transposed"], seconds["torch"]
    return {rows: statistics.median(a / b for a, b in zip(ours[rows], theirs[rows])) for rows in theirs}


def overall_ratio(seconds: Samples) -> float:
    """Median over pairs of the transposed/torch time summed over every row count."""
    ours, theirs = seconds["transposed"], seconds["torch"]
    pairs = len(next(iter(theirs.values())))
    return statistics.median(
        sum(ours[rows][i] for rows in ours) / sum(theirs[rows][i] for rows in theirs) for i in range(pairs)
    )


def decide(seconds: Samples, min_gain: float = MIN_GAIN) -> Kernel:
    """``transposed`` when its time summed over the row counts is at most ``min_gain`` x torch's
    and no row count is more than 10% slower with it (medians of paired ratios); else ``torch``."""
    overall = overall_ratio(seconds) <= min_gain
    nowhere_worse = all(ratio <= 1.1 for ratio in ratios(seconds).values())
    return "transposed" if overall and nowhere_worse else "torch"


def _sample_weights(model: nn.Module, budget: int) -> list[nn.Linear]:
    """Distinct linear layers in model order until ``budget`` bytes of weights."""
    chosen, seen, total = [], set(), 0
    for module in _plain_linears(model):
        key = module.weight.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        chosen.append(module)
        total += module.weight.numel() * module.weight.element_size()
        if total >= budget:
            break
    return chosen


@torch.inference_mode()
def time_kernels(model: nn.Module, rows: tuple[int, ...] = TUNE_ROWS, repeats: int = TUNE_PAIRS) -> Samples:
    """Seconds of ``repeats`` pairs of passes (one per kernel, back to back, the order alternating
    from pair to pair) over a sample of the model's linear layers, after one untimed warm-up pair."""
    sample = _sample_weights(model, TUNE_BYTES)
    forwards: dict[str, Callable[[nn.Linear, torch.Tensor], torch.Tensor]] = {
        "torch": nn.Linear.forward,
        "transposed": TransposedLinear.forward,  # type: ignore[dict-item]  # a Linear subclass's forward
    }
    seconds: Samples = {kernel: {m: [] for m in rows} for kernel in KERNELS}
    for m in rows:
        inputs = {module.in_features: torch.randn(m, module.in_features) for module in sample}
        for pair in range(-1, repeats):  # pair -1 warms caches and allocators up, untimed
            for kernel in KERNELS if pair % 2 == 0 else KERNELS[::-1]:
                forward = forwards[kernel]
                started = time.perf_counter()
                for module in sample:
                    forward(module, inputs[module.in_features])
                if pair >= 0:
                    seconds[kernel][m].append(time.perf_counter() - started)
    return seconds


def _spin_warning() -> str:
    """A note when OpenMP threads spin: on busy cores that, not the kernels, decides the timings."""
    if os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive":
        return ""
    return (
        "; OMP_WAIT_POLICY is not PASSIVE, so on busy cores spinning threads skew these timings"
        " (python -m app sets it; docs/performance.md)"
    )


def tune(model: nn.Module, device: torch.device, dtype: torch.dtype) -> KernelChoice:
    """Choose the kernel for ``model`` (already on ``device``) and switch to it."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced and forced != "auto":
        if forced not in KERNELS:
            raise ValueError(f"{ENV_VAR}={forced!r} is not a linear kernel: use auto, {', '.join(KERNELS)}")
        choice = KernelChoice(forced, f"set by {ENV_VAR}")
    elif device.type != "cpu" or dtype != torch.float32:
        choice = KernelChoice("torch", f"torch's kernels are used on {device.type} with {dtype}")
    elif not _plain_linears(model):
        choice = KernelChoice("torch", "the model has no nn.Linear layers")
    else:
        key = (tuple(m.weight.shape for m in _sample_weights(model, TUNE_BYTES)), torch.get_num_threads())
        started = time.perf_counter()
        when = "timed earlier in this process"
        if key not in _TIMED:
            _TIMED[key] = time_kernels(model)
            when = f"timed in {time.perf_counter() - started:.2f} s"
        seconds = _TIMED[key]
        per_rows = ", ".join(f"{m} rows {ratio:.2f}x" for m, ratio in ratios(seconds).items())
        pairs = len(next(iter(seconds["torch"].values())))
        choice = KernelChoice(
            decide(seconds),
            f"transposed/torch time, medians of {pairs} back-to-back pairs: {per_rows}, overall "
            f"{overall_ratio(seconds):.2f}x (switch at <= {MIN_GAIN}x, no row count over 1.1x; {when}){_spin_warning()}",
            seconds,
        )
    use(model, choice.kernel)
    log.info("linear kernel: %s (%s)", choice.kernel, choice.reason)
    return choice
