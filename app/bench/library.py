"""Benchmark of the concept library: a full build against its forward passes alone, and a load.

The floor is measured, not estimated: every top-level forward call the build makes (capture
passes over the concept texts, and the one batched pass per concept of the strength sweep in
:mod:`app.steering.recommend`) is recorded with its inputs, then replayed with no hooks at all. The build
can never be faster than that replay; the ratio says what pooling, statistics, probes and file
writes add on top.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from app.bench.common import BenchReport, Metric
from app.lab import Lab
from app.steering.engine import SteeringEngine
from app.steering.library import VectorLibrary


@dataclass
class _Call:
    kind: str  # "capture" (decoder only) or "sweep" (whole model, logits of the last token)
    kwargs: dict
    tokens: int  # real tokens (attention mask), padding excluded
    padded: int  # positions computed, padding included


@dataclass
class ForwardRecorder:
    """Records each outermost forward call on the model or its decoder during a ``with`` block."""

    engine: SteeringEngine
    calls: list[_Call] = field(default_factory=list)
    forward_s: float = 0.0  # time inside those calls, with whatever hooks were on
    _depth: int = 0
    _started: float = 0.0

    def __enter__(self) -> ForwardRecorder:
        model = self.engine.model
        base = self.engine.base_model
        targets: list[tuple[nn.Module, str]] = [(model, "sweep")] + ([(base, "capture")] if base is not model else [])
        self._handles = []
        for module, kind in targets:
            self._handles.append(module.register_forward_pre_hook(self._pre(kind), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, kind: str):
        def hook(module, args, kwargs):
            if self._depth == 0:
                mask = kwargs.get("attention_mask")
                ids = kwargs.get("input_ids", args[0] if args else None)
                tokens = int(mask.sum()) if mask is not None else ids.numel()
                self.calls.append(_Call(kind, dict(kwargs), tokens, ids.numel()))
                self._started = time.perf_counter()
            self._depth += 1

        return hook

    def _post(self, module, args, output) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.forward_s += time.perf_counter() - self._started


@torch.inference_mode()
def replay(engine: SteeringEngine, calls: list[_Call]) -> dict[str, float]:
    """Run the recorded calls again, no hooks: seconds per kind."""
    modules = {"sweep": engine.model, "capture": engine.base_model}
    if engine.hook_count():
        raise RuntimeError(f"hooks are still registered ({engine.active_hooks()}): the floor would not be bare")
    seconds = {"capture": 0.0, "sweep": 0.0}
    with engine.lock:
        for call in calls:
            started = time.perf_counter()
            modules[call.kind](**call.kwargs)
            seconds[call.kind] += time.perf_counter() - started
    return seconds


def _fresh_library(lab: Lab, root: Path) -> VectorLibrary:
    return VectorLibrary(
        lab.engine,
        lab.lm.tokenizer,
        model_id=lab.lm.model_id,
        fingerprint=lab.lm.fingerprint,
        concepts_root=lab.library.concepts_root,
        root=root,
    )


def measure_library(lab: Lab, report: BenchReport, rounds: int = 2) -> None:
    """Build the whole library ``rounds`` times (fresh caches), each followed by its bare replay.

    The first round builds ``lab.library`` itself, so the lab has every vector afterwards.
    """
    builds, floors, captures, forwards = [], [], [], []
    recorder = None
    with tempfile.TemporaryDirectory(prefix="bench-library-") as scratch:
        for round_ in range(rounds):
            library = lab.library if round_ == 0 else _fresh_library(lab, Path(scratch) / f"round{round_}")
            with ForwardRecorder(lab.engine) as recorder:
                started = time.perf_counter()
                library.build_all()
                builds.append(time.perf_counter() - started)
            seconds = replay(lab.engine, recorder.calls)
            floors.append(seconds["capture"] + seconds["sweep"])
            captures.append(seconds["capture"])
            forwards.append(recorder.forward_s)
    assert recorder is not None
    n_concepts = len(lab.library.ready_names())
    failed = lab.library.missing()
    tokens = {kind: sum(c.tokens for c in recorder.calls if c.kind == kind) for kind in ("capture", "sweep")}
    padded = sum(c.padded for c in recorder.calls)
    build, floor, capture = (statistics.median(x) for x in (builds, floors, captures))
    where = (
        f"{n_concepts} concepts x {lab.engine.n_layers} layers"
        + (f" ({len(failed)} failed: {', '.join(failed)})" if failed else "")
        + f"; median of {rounds} builds; forward passes inside the build took {statistics.median(forwards):.2f} s "
        "with the capture hooks on"
    )
    report.add(
        Metric(
            "library_build",
            build,
            "s",
            floor,
            target="<= 1.25",
            note=f"{where}; floor = replay of its {len(recorder.calls)} forward calls "
            f"(extraction + strength sweeps), no hooks",
        )
    )
    report.add(
        Metric(
            "library_build_vs_extraction_forwards",
            build,
            "s",
            capture,
            note="the same build against its extraction forward passes alone: what the strength sweeps "
            "(part of the build, in the floor above) add on top",
        )
    )
    total = tokens["capture"] + tokens["sweep"]
    report.add(
        Metric(
            "prefill_tokens_per_s",
            total / floor,
            "tok/s",
            note=f"{total} real tokens ({tokens['capture']} extraction, {tokens['sweep']} sweep; "
            f"{padded} positions with padding) / replay seconds",
        )
    )
    loads = []
    for _ in range(3):
        fresh = _fresh_library(lab, lab.library.folder.parent)
        started = time.perf_counter()
        loaded = fresh.load_cached()
        loads.append(time.perf_counter() - started)
    report.add(
        Metric(
            "library_load_cached",
            statistics.median(loads),
            "s",
            target="<= 1",
            note=f"{loaded} concepts loaded from the cache by a new library (median of 3)",
        )
    )
