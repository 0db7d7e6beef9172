"""The speed benchmark: every figure is a ratio of two timings taken in the same run.

Absolute speeds depend on the machine and on whatever else runs on it; ratios taken side by side
(steered vs unsteered, interleaved and repeated, medians kept) mostly do not. ``app.bench.run.run_bench``
measures, on one loaded model with greedy decoding:

- steering overhead (one layer; every layer with three concepts mixed) in tokens/s;
- side by side (baseline + steered as one batch) and a sweep over every layer (one batch) against
  one unsteered generation;
- the concept library build against its forward passes alone, and loading it from the cache;
- eight concurrent users through the batcher against serving them one at a time;
- the memory steering adds; cold start of ``serve``; the steering-vectors and repeng libraries
  (the last two in :mod:`app.bench.external`);
- decode speed as a share of the memory-bandwidth limit, and llama.cpp on the same GGUF
  (:mod:`app.bench.roofline`).

Timed generations suppress the end-of-sequence token, so every run makes exactly the asked
number of tokens and runs compare equal work; tokens/s counts new tokens over the whole call
(prefill included).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.lab import Lab
from app.models.embedded import DEFAULT_MODEL
from app.steering.engine import NO_STEERING, Steer, Steering
from app.steering.generation import GenerationRequest, generate
from app.steering.vectors import SteeringVector

log = logging.getLogger(__name__)

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
        cold_start: time ``python -m app serve`` until its page answers, then a first comparison.
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
        log.info("bench %s: %s", metric.name, format_cell(metric.ours, metric.unit))

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


def each_layer_rows(vector: SteeringVector, n_layers: int) -> list[Steering]:
    return [Steering((Steer(vector, vector.recommended_strength, (layer,)),)) for layer in range(n_layers)]


def format_cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value / 2**20:.2f} MiB" if value >= 2**20 else f"{value / 1024:.1f} KiB"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {unit}".strip()
