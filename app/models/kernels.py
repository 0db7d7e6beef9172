"""The matrix product behind ``nn.Linear`` on CPU: our own panel product, torch's default, the
same product transposed, or oneDNN's with the weight packed.

``nn.Linear`` computes ``x @ W.T``. A decoding step multiplies one row (or a few: side by side, a
sweep, a class) by every weight, so it should cost what reading the weights costs. The forms:

    panels      our product (:mod:`app.models.panels`, C compiled on this machine): the weight in
                panels of 16 outputs, each read once per 6 rows, at close to memory speed for a
                decoding step (0.75x oneDNN's packed step on Qwen 0.5B: docs/performance.md); a
                row's result is the same bits whatever else is in the batch, on any thread count
    transposed  ``(W @ x.T).T``, another MKL path (a single row is computed as two)
    packed      the weight reordered once into oneDNN's blocked layout (``PackedLinear``): 2 rows
                cost about what one does, 16-24 rows about half what torch's kernel takes, and a
                row's result is the same bits whatever else is in the batch

On a CPU with float32 weights every linear layer, the output layer included, gets the panel product
by rule when it can be compiled and loaded here (:func:`app.models.panels.unavailable_reason`),
on the calling thread and the library's own helper threads; a Llama-family layer's q, k and v (and
gate and up) then make one product each, with the same bits (:mod:`app.models.fusion`), and its RMS
norms run in the same library (:mod:`app.models.norms`). Otherwise the older rules hold: a
model narrower than ``PACK_MIN_WIDTH`` gets the packed form by rule, its products of up to
``ONE_THREAD_ROWS`` rows computed on one thread (:func:`one_thread`): so small a product costs less
than waking a second, sleeping OpenMP thread does. For a wider model :func:`tune` times torch's,
the transposed and the packed form on the model's own weights at load (once per process for
weights of the same shapes), in back-to-back passes whose ratios are compared by their median, so
a busy machine and a quiet one make the same choice, and switches the model's linear layers: to
the packed form unless it is slower overall, else to the transposed form when that is clearly
faster (:func:`decide`). The output layer, many times taller than wide, is packed whatever the
others use (:func:`packs_output`). The switch changes how the product runs, not what it
computes: the same modules and hooks; ``transposed`` keeps the very parameters, ``packed`` and
``panels`` replace each weight by its rearranged copy (same values, exactly recovered by
:func:`restore`; memory unchanged once :func:`app.models.loading.load_model` lets the checkpoint's
file mapping go), except a weight another module reads in torch's layout (a tied output layer),
which keeps its parameter and gets a copy beside it (memory: the copy's size).
``STEERING_LAB_LINEAR=torch|transposed|packed|panels`` overrides the choice (for every layer, the
output layer included).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from torch import nn

from app.models import fusion, layer_step, norms, panels
from app.models.panels import PanelCopyLinear, PanelLinear
from app.models.threads import one_thread

log = logging.getLogger(__name__)

Kernel = Literal["torch", "transposed", "packed", "panels"]
KERNELS: tuple[Kernel, ...] = ("torch", "transposed", "packed", "panels")
ENV_VAR = "STEERING_LAB_LINEAR"
TUNE_ROWS = (1, 2, 16, 64)  # one decoding row, a side-by-side pair, a sweep or a class, a prompt
TUNE_BYTES = 96 * 2**20  # weights timed per pass: about 3x a large L3 cache, so memory speed counts
MIN_GAIN = 0.85  # switch only to a kernel whose overall ratio to torch's time is at most this ...
MAX_ROW_RATIO = 1.6  # ... and at most 160% of it at every row count (a guard against a pathological shape)
PACK_MIN_WIDTH = 768  # wider models (Qwen 0.5B: 896) are timed; narrower ones (SmolLM2: 576) packed by rule
ONE_THREAD_ROWS = 32  # ... with products of up to this many rows on one thread
PACK_ROWS_HINT = 16  # oneDNN lays the packed weight out for about this many rows
OUTPUT_MIN_ASPECT = 8  # an output layer at least this many times taller than wide is packed by rule
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


class PackedLinear(nn.Linear):
    """``nn.Linear`` whose weight is held in oneDNN's blocked layout (same values, same shape), so
    a product with 2-24 rows costs about what one row costs and each row's result does not depend
    on the other rows in the batch (under ``torch.inference_mode``, as every generation runs).
    Inference only: the packed weight has no gradient."""

    dense_requires_grad: bool
    one_thread_rows: int = 0  # products of up to this many rows run on one thread (:func:`one_thread`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= self.one_thread_rows * self.in_features:
            with one_thread():
                return packed_product(x, self.weight, self.bias)
        return packed_product(x, self.weight, self.bias)


class PackedCopyLinear(nn.Linear):
    """``nn.Linear`` computed from a packed copy of its weight (:class:`PackedLinear`'s product), for a
    weight another module reads in torch's layout: a tied output layer, whose weight the input
    embedding looks rows up in. The parameter stays as it is; the copy costs its size in memory and
    is made once (inference only: call :func:`use` again after changing the weight)."""

    packed_weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_product(x, self.packed_weight, self.bias)


def packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` packed by :func:`pack`: oneDNN's inner product."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in oneDNN's layout for :class:`PackedLinear` (``to_dense()`` gives it back exactly)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)


def _plain_linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if type(m) is nn.Linear]


def _shared_parameters(model: nn.Module) -> set[int]:
    """Ids of parameters that more than one module holds (a tied input embedding and output layer)."""
    seen: set[int] = set()
    shared: set[int] = set()
    for _, parameter in model.named_parameters(remove_duplicate=False):
        (shared if id(parameter) in seen else seen).add(id(parameter))
    return shared


def use(model: nn.Module, kernel: Kernel, pack_output: bool = False) -> int:
    """Make the plain ``nn.Linear`` layers of ``model`` use ``kernel``; returns how many changed.

    ``packed`` gives a layer whose weight another module shares (a tied output layer, whose weight
    the input embedding reads) a packed copy (:class:`PackedCopyLinear`): the embedding cannot read
    a packed weight. On a model narrower than ``PACK_MIN_WIDTH`` the packed layers other than the
    output layer compute products of up to ``ONE_THREAD_ROWS`` rows on one thread (the output layer,
    tens of MiB, is 1.5-2x slower so). ``panels`` likewise gives a shared weight a panel copy
    (:class:`PanelCopyLinear`). ``pack_output``: the output layer is packed
    whatever ``kernel`` the others use (:func:`packs_output`).

    Raises:
        ValueError: an unknown kernel, or ``panels`` where the panel product cannot run (why)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown linear kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    if kernel == "panels" and (missing := panels.unavailable_reason()):
        raise ValueError(f"the panel product cannot run here: {missing}")
    restore(model)
    output = _output_layer(model)
    linears = [m for m in _plain_linears(model) if not (pack_output and m is output)]
    changed = _pack(model, [output]) if pack_output and output is not None else 0
    if kernel == "torch":
        return changed
    if kernel == "transposed":
        for module in linears:
            module.__class__ = TransposedLinear  # same object, parameters and hooks: only forward differs
        return changed + len(linears)
    if kernel == "panels":
        return changed + _to_panels(model, linears)
    one_thread_rows = ONE_THREAD_ROWS if model_width(model) < PACK_MIN_WIDTH else 0
    decoder = [m for m in linears if m is not output]
    return changed + _pack(model, decoder, one_thread_rows) + _pack(model, [m for m in linears if m is output])


def _pack(model: nn.Module, linears: list[nn.Linear], one_thread_rows: int = 0) -> int:
    shared = _shared_parameters(model)
    for module in linears:
        if id(module.weight) in shared:
            module.__class__ = PackedCopyLinear
            cast(PackedCopyLinear, module).packed_weight = pack(module.weight)  # not a parameter: no state_dict key
            continue
        trainable = module.weight.requires_grad
        module.weight = nn.Parameter(pack(module.weight), requires_grad=False)  # oneDNN has no backward for it
        module.__class__ = PackedLinear
        packed = cast(PackedLinear, module)
        packed.dense_requires_grad = trainable
        if one_thread_rows:
            packed.one_thread_rows = one_thread_rows
    return len(linears)


def _to_panels(model: nn.Module, linears: list[nn.Linear]) -> int:
    shared = _shared_parameters(model)
    for module in linears:
        if id(module.weight) in shared:
            module.__class__ = PanelCopyLinear
            cast(PanelCopyLinear, module).panel_weight = panels.to_panels(module.weight)  # no state_dict key
            continue
        trainable = module.weight.requires_grad
        module.weight = nn.Parameter(panels.to_panels(module.weight), requires_grad=False)
        module.__class__ = PanelLinear
        panel = cast(PanelLinear, module)
        panel.dense_requires_grad = trainable
    fusion.fuse(model)  # q, k, v (gate, up) as one product each where the architecture allows
    norms.use(model)  # and the RMS norms from the same library
    layer_step.use(model)  # and a decoding step of a layer as one call where those apply
    return len(linears)


def _output_layer(model: nn.Module) -> nn.Linear | None:
    get = getattr(model, "get_output_embeddings", None)
    output = get() if callable(get) else None
    ours = (nn.Linear, TransposedLinear, PackedLinear, PackedCopyLinear, PanelLinear, PanelCopyLinear)
    return cast(nn.Linear, output) if type(output) in ours else None  # not another library's Linear subclass


def packs_output(model: nn.Module) -> bool:
    """Whether the output layer gets packed weights whatever kernel the other layers use.

    An output layer many times taller than wide (the vocabulary by the hidden size) computes one
    row in 0.5-0.6x and two rows in about 0.3x torch's time when packed, on models too narrow for
    packed decoder layers too (SmolLM2: 49152 x 576; docs/performance.md), so no timing is needed."""
    output = _output_layer(model)
    return output is not None and output.out_features >= OUTPUT_MIN_ASPECT * output.in_features


def packed_copy_bytes(model: nn.Module) -> int:
    """Memory the packed or panel copies of shared weights take (:class:`PackedCopyLinear`, :class:`PanelCopyLinear`)."""
    copies = [m for m in model.modules() if type(m) in (PackedCopyLinear, PanelCopyLinear)]
    return sum(cast(nn.Linear, m).weight.numel() * cast(nn.Linear, m).weight.element_size() for m in copies)


def dense_parameter(model: nn.Module, parameter: torch.Tensor) -> torch.Tensor:
    """``parameter`` of ``model`` in torch's layout, whatever kernel its layer uses."""
    if parameter.is_mkldnn:  # a packed weight
        return parameter.to_dense()
    for module in model.modules():
        if type(module) is PanelLinear and module.weight is parameter:
            return panels.from_panels(parameter.detach(), module.out_features)
    return parameter


def restore(model: nn.Module) -> int:
    """Undo :func:`use`: every layer back to ``nn.Linear`` with its weight in torch's layout."""
    layer_step.restore(model)
    fusion.unfuse(model)
    norms.restore(model)
    changed = 0
    for module in list(model.modules()):
        if type(module) is PackedLinear:
            trainable = getattr(module, "dense_requires_grad", True)
            module.weight = nn.Parameter(module.weight.to_dense(), requires_grad=trainable)
            module.__dict__.pop("one_thread_rows", None)
        elif type(module) is PanelLinear:
            trainable = getattr(module, "dense_requires_grad", True)
            dense = panels.from_panels(module.weight.detach(), module.out_features)
            module.weight = nn.Parameter(dense, requires_grad=trainable)
        elif type(module) is PackedCopyLinear:
            del module.packed_weight
        elif type(module) is PanelCopyLinear:
            del module.panel_weight
        elif type(module) is not TransposedLinear:
            continue
        module.__class__ = nn.Linear  # type: ignore[assignment]
        changed += 1
    return changed


Samples = dict[Kernel, dict[int, list[float]]]  # kernel -> rows -> seconds of each timed pass


@dataclass
class KernelChoice:
    """What :func:`tune` chose and why: seconds of each timed pass over the sampled weights,
    per kernel and row count (pass ``i`` of every kernel ran back to back)."""

    kernel: Kernel
    reason: str
    seconds: Samples = field(default_factory=dict)
    output_packed: bool = False  # the output layer packed whatever ``kernel`` is (:func:`packs_output`)
    one_thread_rows: int = 0  # packed layers other than the output layer: products up to this many rows on one thread

    @property
    def summary(self) -> str:
        """``kernel``, and what else differs: "torch, output layer packed", "packed, one thread up to 32 rows"."""
        parts: list[str] = [self.kernel]
        if self.output_packed and self.kernel != "packed":
            parts.append("output layer packed")
        if self.one_thread_rows:
            parts.append(f"one thread up to {self.one_thread_rows} rows")
        return ", ".join(parts)


def ratios(seconds: Samples, kernel: Kernel = "transposed") -> dict[int, float]:
    """Per row count, the median over passes of ``kernel``'s time / torch's.

    The kernels of a pass ran back to back, so a burst of load from another process mostly hits one
    pass (and is outvoted by the others) or all of it (and cancels in its ratios); a best-of-n time
    per kernel does neither, which once gave "1 rows 11.69x" on a busy machine.
    """
    ours, theirs = seconds[kernel], seconds["torch"]
    return {rows: statistics.median(a / b for a, b in zip(ours[rows], theirs[rows])) for rows in theirs}


def overall_ratio(seconds: Samples, kernel: Kernel = "transposed") -> float:
    """The geometric mean over row counts of :func:`ratios`: every row count counts the same.

    A sum of times would let the prompt-sized pass, the longest and on this machine the noisiest
    (0.64-0.97x between starts for the packed kernel on Qwen 0.5B), decide alone."""
    per_rows = list(ratios(seconds, kernel).values())
    return math.exp(statistics.fmean(math.log(ratio) for ratio in per_rows))


def acceptable(seconds: Samples, kernel: Kernel, min_gain: float = MIN_GAIN) -> bool:
    """Whether ``kernel``'s overall ratio (:func:`overall_ratio`) is at most ``min_gain`` and
    no row count is more than ``MAX_ROW_RATIO`` x slower with it (medians over passes)."""
    return overall_ratio(seconds, kernel) <= min_gain and all(
        ratio <= MAX_ROW_RATIO for ratio in ratios(seconds, kernel).values()
    )


def decide(seconds: Samples, min_gain: float = MIN_GAIN) -> Kernel:
    """The kernel for a model at least ``PACK_MIN_WIDTH`` wide (or without oneDNN) timed as ``seconds``.

    ``packed`` when it was timed and is not slower overall than torch's (nor more than
    ``MAX_ROW_RATIO`` x at any row count); otherwise ``transposed`` if :func:`acceptable`, else
    ``torch``. A narrower model is packed by rule, untimed (:func:`tune`)."""
    if "packed" in seconds and acceptable(seconds, "packed", min_gain=1.0):
        return "packed"
    return "transposed" if "transposed" in seconds and acceptable(seconds, "transposed", min_gain) else "torch"


def model_width(model: nn.Module) -> int:
    """The most common input width of the model's linear layers: its hidden size."""
    widths = [m.in_features for m in _plain_linears(model)]
    return statistics.mode(widths) if widths else 0


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


def _packed_forward(packed: dict[int, torch.Tensor]) -> Callable[[nn.Linear, torch.Tensor], torch.Tensor]:
    def forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return packed_product(x, packed[id(module)], module.bias)

    return forward


def packing_available() -> bool:
    """Whether this torch has oneDNN's CPU kernels (the packed layout needs them)."""
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


@torch.inference_mode()
def time_kernels(model: nn.Module, rows: tuple[int, ...] = TUNE_ROWS, repeats: int = TUNE_PAIRS) -> Samples:
    """Seconds of ``repeats`` passes, each running every kernel back to back (the order rotating
    from pass to pass), over a sample of the model's linear layers, after one untimed warm-up pass."""
    sample = _sample_weights(model, TUNE_BYTES)
    forwards: dict[Kernel, Callable[[nn.Linear, torch.Tensor], torch.Tensor]] = {
        "torch": nn.Linear.forward,
        "transposed": TransposedLinear.forward,  # type: ignore[dict-item]  # a Linear subclass's forward
    }
    if packing_available():
        forwards["packed"] = _packed_forward({id(module): pack(module.weight) for module in sample})
    kernels = list(forwards)
    seconds: Samples = {kernel: {m: [] for m in rows} for kernel in kernels}
    for m in rows:
        inputs = {module.in_features: torch.randn(m, module.in_features) for module in sample}
        for turn in range(-1, repeats):  # turn -1 warms caches and allocators up, untimed
            shift = turn % len(kernels)
            for kernel in kernels[shift:] + kernels[:shift]:
                forward = forwards[kernel]
                started = time.perf_counter()
                for module in sample:
                    forward(module, inputs[module.in_features])
                if turn >= 0:
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
    restore(model)  # its width, and timings, in torch's layout
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    missing: str | None = None
    if forced and forced != "auto":
        if forced not in KERNELS:
            raise ValueError(f"{ENV_VAR}={forced!r} is not a linear kernel: use auto, {', '.join(KERNELS)}")
        choice = KernelChoice(forced, f"set by {ENV_VAR}")
    elif device.type != "cpu" or dtype != torch.float32:
        choice = KernelChoice("torch", f"torch's kernels are used on {device.type} with {dtype}")
    elif not _plain_linears(model):
        choice = KernelChoice("torch", "the model has no nn.Linear layers")
    elif (missing := panels.unavailable_reason()) is None:
        choice = KernelChoice(
            "panels",
            "by rule on a CPU with float32 weights, for every linear layer: each weight read once per 6 rows,"
            " on this thread and helper threads that watch for products within a step (docs/performance.md)",
        )
    elif (width := model_width(model)) < PACK_MIN_WIDTH and packing_available():
        choice = KernelChoice(
            "packed",
            f"packed by rule, untimed, for models narrower than {PACK_MIN_WIDTH} (this one: {width} wide), "
            f"with products of up to {ONE_THREAD_ROWS} rows on one thread (docs/performance.md)",
            output_packed=packs_output(model),
        )
    else:
        key = (tuple(m.weight.shape for m in _sample_weights(model, TUNE_BYTES)), torch.get_num_threads())
        started = time.perf_counter()
        when = "timed earlier in this process"
        if key not in _TIMED:
            _TIMED[key] = time_kernels(model)
            when = f"timed in {time.perf_counter() - started:.2f} s"
        seconds = _TIMED[key]
        passes = len(next(iter(seconds["torch"].values())))
        timed = "; ".join(
            f"{kernel}: "
            + ", ".join(f"{m} rows {ratio:.2f}x" for m, ratio in ratios(seconds, kernel).items())
            + f", overall {overall_ratio(seconds, kernel):.2f}x"
            for kernel in seconds
            if kernel != "torch"
        )
        choice = KernelChoice(
            decide(seconds),
            f"time / torch's, medians of {passes} back-to-back passes: {timed}; packed unless slower overall, "
            f"else transposed at <= {MIN_GAIN}x overall; none over {MAX_ROW_RATIO}x at a row count; {when}"
            f"{_spin_warning()}",
            seconds,
            output_packed=packing_available() and packs_output(model),
        )
    if missing:
        choice.reason += f"; not the panel product: {missing}"
    output = _output_layer(model) if choice.output_packed else None
    use(model, choice.kernel, pack_output=choice.output_packed)
    choice.one_thread_rows = max((m.one_thread_rows for m in model.modules() if type(m) is PackedLinear), default=0)
    if output is not None:
        copy = packed_copy_bytes(model)
        choice.reason += f"; the output layer ({output.out_features} x {output.in_features}) packed by rule" + (
            f", a packed copy of its tied weight: +{copy / 2**20:.0f} MiB" if copy else ""
        )
    log.info("linear kernel: %s (%s)", choice.kernel, choice.reason)
    return choice
