"""The paper's experiments on our models (Bo et al. 2025; docs/results.md), without a browser.

- E1  strength sweep per preference dimension: Effect, perplexity (PPL) under the unsteered
      model and PNE against strength; reads and saves each dimension's functional range.
- E2  prompting × steering: {no hint, hint toward +, hint toward −} × {steer −R, 0, +R}, with a
      Kolmogorov-Smirnov test between the Effect distributions of the conditions.
- E3  culture and age steered at once (two Steers in one Steering) on a grid of strengths.
- E4  learning a hidden preference with a simulated user.

This module holds what they share; E1 is in ``app.experiments.sweep``, E2 and E3 in
``app.experiments.conditions``, E4 in ``app.experiments.learn``, and ``app.experiments.run``
runs them.

Every condition is a batch row (query × strength × seed), generated together in chunks with
the paper's sampling (temperature 0.7, top-k 50, top-p 0.95) and fixed seeds; a steered row and
its unsteered twin share query and seed, so differences are paired. Results go to ``--out`` as
CSV (one row per reply, one per condition) and JSON, with plotly HTML figures.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.analysis.metrics import effect, load_references, perplexity_from_ids
from app.progress import Progress
from app.steering.engine import NO_STEERING, Steer, Steering
from app.steering.generation import GenerationRequest, GenerationResult, encode_prompt, eos_ids, generate
from app.storage import atomic_write

log = logging.getLogger(__name__)

DIMENSIONS = ("cost", "ambiance", "age", "time", "culture")
SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 0.95}  # the paper's settings


@dataclass(frozen=True)
class Sizes:
    """How much each experiment generates; written into the results so n is on record.

    The defaults fit ``all`` on qwen2.5-coder-0.5b-instruct into about 45 minutes on two shared
    CPU cores (about 370 replies): small samples, so every number comes with its interval.
    """

    dims: tuple[str, ...] = DIMENSIONS
    strengths: tuple[float, ...] = (-6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 6.0)  # E1, normalized units
    queries: int = 3  # E1 queries per strength
    seeds: int = 1  # sampling seeds per query (E1, E2, E3)
    e2_dim: str = "cost"
    e2_queries: int = 7
    e3_queries: int = 3
    max_ppl_ratio: float = 2.0  # E1: the functional range ends where PPL passes this × the fluency yardstick
    e3_fraction: float = 1.0  # E3 steers at this fraction of each functional range
    e4_dims: tuple[str, ...] = ("cost", "age", "culture")
    e4_rounds: int = 12
    e4_users_per_pole: int = 1
    e4_readers: tuple[str, ...] = ("text", "oracle")  # how LEARN gets the direction (app.experiments.learn)
    e4_max_new_tokens: int = 64
    max_new_tokens: int = 100
    batch_size: int = 32
    seed: int = 0


FULL = Sizes()
QUICK = Sizes(
    dims=("cost", "age", "culture"),
    strengths=(-4.0, -2.0, 0.0, 2.0, 4.0),
    queries=2,
    e2_queries=2,
    e3_queries=1,
    e4_dims=("cost", "culture"),
    e4_rounds=3,
    e4_max_new_tokens=16,
    max_new_tokens=20,
)


@dataclass
class Context:
    """One run: the lab, where results go, the sizes, progress, and what earlier steps found."""

    lab: object
    out: Path
    sizes: Sizes
    progress: Progress = lambda fraction, message: None  # noqa: E731
    total_rows: int = 1
    done_rows: int = 0
    ranges: dict[str, float] = field(default_factory=dict)  # functional range per dimension
    gains: dict[str, float] = field(default_factory=dict)  # E1: |Effect(±R) − Effect(0)| per dimension
    timings: dict[str, float] = field(default_factory=dict)

    def report(self, message: str) -> None:
        self.progress(min(self.done_rows / max(self.total_rows, 1), 0.999), message)


# --- shared pieces ------------------------------------------------------------------------


def pick_queries(queries: Sequence[str], n: int, offset: int = 0) -> list[str]:
    """``n`` queries spread evenly over the list (deterministic), starting at ``offset``."""
    if not 0 < n <= len(queries):
        raise ValueError(f"asked for {n} queries; there are {len(queries)}")
    step = len(queries) / n
    return [queries[(offset + int(i * step)) % len(queries)] for i in range(n)]


def load_queries() -> list[str]:
    import json

    from app.storage import concepts_dir

    path = concepts_dir() / "questions" / "lifestyle_queries.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    queries = data.get("queries") if isinstance(data, dict) else None
    if not isinstance(queries, list) or not queries:
        raise ValueError(f"{path}: expected {{'queries': [...]}}")
    return [str(q) for q in queries]


def request(prompt: str, steering: Steering, seed: int, max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, steering=steering, max_new_tokens=max_new_tokens, seed=seed, **SAMPLING)


def steer_one(lab, dim: str, strength: float) -> Steering:
    """Steering along one preference dimension at its recommended (probe top-3) layers."""
    return Steering((Steer(lab.library.get(dim), float(strength)),)) if strength else NO_STEERING


def run_batches(ctx: Context, requests: Sequence[GenerationRequest], label: str) -> list[GenerationResult]:
    """Generate every request, ``ctx.sizes.batch_size`` rows per batch, reporting progress."""
    lab, results = ctx.lab, []
    size = max(1, ctx.sizes.batch_size)
    for start in range(0, len(requests), size):
        chunk = list(requests[start : start + size])
        ctx.report(f"{label}: generating rows {start + 1}-{start + len(chunk)} of {len(requests)}")
        results.extend(generate(lab.engine, lab.lm.tokenizer, chunk, is_chat=lab.lm.is_chat))
        ctx.done_rows += len(chunk)
    ctx.report(f"{label}: scoring")
    return results


def continuation_perplexity(lab, prompts: Sequence[str], continuations: Sequence[Sequence[int]]) -> list[float]:
    """PPL of each token list as the reply to its (chat-formatted) prompt, under the unsteered model."""
    tokenizer = lab.lm.tokenizer
    sequences, starts = [], []
    for prompt, tokens in zip(prompts, continuations, strict=True):
        ids = encode_prompt(tokenizer, prompt, True, lab.lm.is_chat)
        sequences.append(list(ids) + list(tokens))
        starts.append(len(ids))
    with lab.engine.lock:  # no steering hooks are registered outside generate's block
        return perplexity_from_ids(lab.lm.model, sequences, starts)


def reply_perplexity(lab, requests: Sequence[GenerationRequest], results: Sequence[GenerationResult]) -> list[float]:
    """PPL of each generated reply (end-of-sequence dropped) after its prompt."""
    stops = eos_ids(lab.lm.model, lab.lm.tokenizer)
    replies = [[t for t in res.token_ids if t not in stops] for res in results]
    return continuation_perplexity(lab, [req.prompt for req in requests], replies)


def reply_effects(texts: Sequence[str], dim: str) -> list[float]:
    """Effect of each reply on ``dim`` (NaN for an empty reply)."""
    refs = load_references(dim)
    values = effect([t if t.strip() else "." for t in texts], refs.positive, refs.negative)
    return [float(v) if t.strip() else math.nan for v, t in zip(values, texts)]


def write_csv(path: Path, rows: Sequence[Mapping]) -> Path:
    """Rows as CSV (columns from the first row), written atomically."""
    columns = list(rows[0]) if rows else []

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)

    return atomic_write(path, write)


def _cell(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def read_csv(path: Path) -> list[dict]:
    """Rows written by :func:`write_csv`, with numbers back as floats (``nan``/``inf`` included)."""

    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def write_figure(figure, path: Path) -> Path:
    """A standalone HTML page loading plotly.js from its CDN (keeps the file small)."""
    return atomic_write(path, lambda tmp: figure.write_html(tmp, include_plotlyjs="cdn", full_html=True))


def range_of(ctx: Context, dim: str) -> float:
    """The functional range: measured in this run, else saved or default (``app.preferences.functional_range``)."""
    if dim not in ctx.ranges:
        from app.preferences.functional_range import functional_range

        ctx.ranges[dim] = float(functional_range(ctx.lab, dim))
    return ctx.ranges[dim]


def jsonable(value):
    """NaN/inf become None (JSON has no NaN); tuples become lists; dict keys become strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
