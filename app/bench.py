"""The speed benchmark: every figure is a ratio of two timings taken in the same run.

Absolute speeds depend on the machine and on whatever else runs on it; ratios taken side by side
(steered vs unsteered, interleaved and repeated, medians kept) mostly do not. ``run_bench``
measures, on one loaded model with greedy decoding:

- steering overhead (one layer; every layer with three concepts mixed) in tokens/s;
- side by side (baseline + steered as one batch) and a sweep over every layer (one batch) against
  one unsteered generation;
- the concept library build against its forward passes alone, and loading it from the cache;
- eight concurrent users through the batcher against serving them one at a time;
- the memory steering adds; cold start of ``serve``; the steering-vectors and repeng libraries
  (the last two in :mod:`app.bench_external`).

Timed generations suppress the end-of-sequence token, so every run makes exactly the asked
number of tokens and runs compare equal work; tokens/s counts new tokens over the whole call
(prefill included).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from app.engine import NO_STEERING, Steer, Steering
from app.generation import GenerationRequest, generate
from app.lab import Lab
from app.vectors import SteeringVector

log = logging.getLogger(__name__)

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
USER_PROMPTS = (
    "Describe your ideal weekend.",
    "Explain how a bicycle works.",
    "Write a letter to a friend who moved away.",
    "What makes a good cup of coffee?",
    "Tell me about the ocean at night.",
    "Give me advice for a job interview.",
    "Describe a busy market in the morning.",
    "What is your favourite season and why?",
)
MIX = ("happy", "pirate", "formal")  # the concepts steered together (first three built, if absent)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how hard.

    Attributes:
        model: registry id or local model directory.
        new_tokens: new tokens per generation (greedy).
        repeats: repetitions of each timed generation (medians are kept); overhead gets twice as many.
        quick: a smoke run (the CLI lowers tokens and repetitions).
        references: compare with steering-vectors and repeng when installed.
        cold_start: time ``python -m app serve`` until its page answers.
    """

    model: str = DEFAULT_MODEL
    device: str = "cpu"
    new_tokens: int = 64
    repeats: int = 5
    quick: bool = False
    threads: int | None = None
    concepts_root: Path | None = None
    references: bool = True
    cold_start: bool = True
    users: int = 8


@dataclass
class Metric:
    """One row of the table: ``ratio`` = ``ours`` / ``reference`` unless stated in ``note``."""

    name: str
    ours: float | None
    unit: str
    reference: float | None = None
    ratio: float | None = None
    target: str = ""  # e.g. ">= 0.97" (on the ratio, or on ``ours`` when there is no reference)
    passed: bool | None = None
    note: str = ""

    def check(self) -> Metric:
        if self.ratio is None and self.ours is not None and self.reference:
            self.ratio = self.ours / self.reference
        if self.target and self.passed is None:
            op, value = self.target.split()
            checked = self.ratio if self.ratio is not None else self.ours
            if checked is not None and math.isfinite(checked):
                self.passed = checked >= float(value) if op == ">=" else checked <= float(value)
        return self


@dataclass
class BenchReport:
    model: str
    machine: dict
    settings: dict
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: Metric) -> None:
        self.metrics.append(metric.check())
        log.info("bench %s: %s", metric.name, _cell(metric.ours, metric.unit))

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "machine": self.machine,
            "settings": self.settings,
            "metrics": {m.name: {k: v for k, v in asdict(m).items() if k != "name"} for m in self.metrics},
            "notes": self.notes,
        }


# --- timing helpers -------------------------------------------------------------------------


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, rotating the order every round so drift cancels."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class NoEosTokenizer:
    """A tokenizer without an end-of-sequence id, so greedy runs always make ``max_new_tokens``."""

    eos_token_id = None

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)


@contextmanager
def no_eos(model) -> Iterator[None]:
    """Hide the model's end-of-sequence ids (our loop and HF ``generate`` both read them here)."""
    config = model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = None
    try:
        yield
    finally:
        config.eos_token_id = saved


class Runner:
    """Timed generations on one lab, end-of-sequence suppressed."""

    def __init__(self, lab: Lab, new_tokens: int) -> None:
        self.lab = lab
        self.engine = lab.engine
        self.tokenizer = NoEosTokenizer(lab.lm.tokenizer)
        self.new_tokens = new_tokens

    def request(self, steering: Steering = NO_STEERING, prompt: str = PROMPT) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, steering=steering, max_new_tokens=self.new_tokens)

    def run(self, *rows: Steering) -> list:
        requests = [self.request(row) for row in rows]
        return generate(self.engine, self.tokenizer, requests, is_chat=self.lab.lm.is_chat)


def one_layer(vector: SteeringVector) -> Steering:
    return Steering((Steer(vector, vector.recommended_strength, tuple(vector.recommended_layers[:1])),))


def all_layers_mix(vectors: list[SteeringVector], n_layers: int) -> Steering:
    return Steering(tuple(Steer(v, 1.0, tuple(range(n_layers))) for v in vectors))


def layer_sweep(vector: SteeringVector, n_layers: int) -> list[Steering]:
    return [Steering((Steer(vector, vector.recommended_strength, (layer,)),)) for layer in range(n_layers)]


# --- the run ------------------------------------------------------------------------------------


def machine_info(threads: int) -> dict:
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def pick_vectors(lab: Lab) -> list[SteeringVector]:
    names = lab.library.ready_names()
    if not names:
        raise ValueError("the concept library is empty: no concept could be built, so nothing can be steered")
    chosen = [n for n in MIX if n in names] + [n for n in names if n not in MIX]
    vectors = [lab.library.get(n) for n in chosen[:3]]
    return (vectors * 3)[:3]  # three vectors, repeated when fewer concepts were built


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Load the model, run every measurement, return the report (targets checked, not enforced)."""
    from app import bench_external, bench_generation, bench_library
    from app.loading import load_model

    say = progress or (lambda message: log.info("%s", message))
    threads = config.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    report = BenchReport(model=config.model, machine=machine_info(threads), settings=asdict(config))
    report.settings["concepts_root"] = str(config.concepts_root) if config.concepts_root else None
    if config.cold_start:
        say("cold start of `python -m app serve` (empty vector cache)")
        report.add(bench_external.measure_cold_start(config.model, config.device, config.concepts_root))
    say(f"loading {config.model}")
    started = time.perf_counter()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as vectors_dir:
        lab = Lab(
            load_model(config.model, device=config.device),
            concepts_root=config.concepts_root,
            cache_root=Path(vectors_dir),
        )
        report.model = lab.lm.model_id
        report.machine["model_load_s"] = round(time.perf_counter() - started, 2)
        report.machine["linear_kernel"] = lab.lm.linear_kernel  # app.kernels: chosen by timing at load
        say("building the concept library (every concept, every layer) and its forward-pass floor")
        bench_library.measure_library(lab, report, rounds=1 if config.quick else 2)
        vectors = pick_vectors(lab)
        runner = Runner(lab, config.new_tokens)
        say("steering overhead, side by side, layer sweep")
        ours = bench_generation.measure_generation(runner, vectors, config, report)
        say(f"{config.users} concurrent users")
        bench_generation.measure_concurrency(lab, vectors, config, report)
        say("memory")
        bench_generation.measure_memory(runner, vectors, report)
        if config.references:
            say("steering-vectors and repeng")
            bench_external.measure_references(runner, vectors[0], ours, config, report)
    report.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


# --- output -------------------------------------------------------------------------------------


def _cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value / 2**20:.2f} MiB" if value >= 2**20 else f"{value / 1024:.1f} KiB"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def format_table(report: BenchReport) -> str:
    """The report as a fixed-width table, one metric a row, with its notes below."""
    rows = [("metric", "ours", "reference", "ratio", "target", "result")]
    for m in report.metrics:
        result = {True: "pass", False: "FAIL", None: ""}[m.passed]
        ratio = "-" if m.ratio is None else f"{m.ratio:.3g}"
        rows.append((m.name, _cell(m.ours, m.unit), _cell(m.reference, m.unit), ratio, m.target or "-", result))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    machine = report.machine
    lines += [
        "",
        f"model {report.model}; {machine['cpu_count']} cores, torch threads {machine['torch_threads']}, "
        f"torch {machine['torch']}, transformers {machine['transformers']}, "
        f"{machine.get('linear_kernel', 'torch')} linear kernel; load average "
        f"{machine['load_average_start']} -> {machine.get('load_average_end')}",
    ]
    lines += [f"- {m.name}: {m.note}" for m in report.metrics if m.note]
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines)
