"""The speed benchmark's run: load the model, call every measuring part, format the report.

The parts (:mod:`app.bench.generation`, :mod:`app.bench.library`, :mod:`app.bench.external`) import
what they share from :mod:`app.bench.common`; only this module imports the parts.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from app.bench import external, generation, library, roofline
from app.bench.common import MIX, BenchConfig, BenchReport, Runner, format_cell
from app.lab import Lab
from app.models.loading import load_model
from app.models.registry import resolve_model
from app.steering.vectors import SteeringVector

log = logging.getLogger(__name__)


def machine_info(threads: int) -> dict:
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(libgomp default: spin)"),
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
    say = progress or (lambda message: log.info("%s", message))
    resolve_model(config.model)  # a model that is not set up stops the run here, before `serve` is timed
    threads = config.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    report = BenchReport(model=config.model, machine=machine_info(threads), settings=asdict(config))
    report.settings["concepts_root"] = str(config.concepts_root) if config.concepts_root else None
    if config.cold_start:
        say("cold start of `python -m app serve` (empty vector cache), then a first user's comparison")
        for metric in external.measure_cold_start(config.model, config.device, config.concepts_root):
            report.add(metric)
    say(f"loading {config.model}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as vectors_dir:
        lab = Lab(
            load_model(config.model, device=config.device),
            concepts_root=config.concepts_root,
            cache_root=Path(vectors_dir),
        )
        report.model = lab.lm.model_id
        report.machine["model_load_s"] = round(time.perf_counter() - started, 2)
        # app.models.kernels: chosen at load, by rule or by timing
        report.machine["linear_kernel"] = lab.lm.linear_kernel
        say("building the concept library (every concept, every layer) and its forward-pass floor")
        library.measure_library(lab, report, rounds=1 if config.quick else 2)
        vectors = pick_vectors(lab)
        runner = Runner(lab, config.new_tokens)
        say("steering overhead, side by side, layer sweep")
        ours = generation.measure_generation(runner, vectors, config, report)
        say("decode speed against the memory-bandwidth limit, and llama.cpp")
        share_rounds = 3 if config.quick else roofline.SHARE_ROUNDS
        decode = roofline.measure_share(report, runner, ours["first"], share_rounds)
        if config.device == "cpu":
            roofline.measure_llama_cpp(
                report,
                lab.lm.model_id,
                decode["unsteered"],
                config.new_tokens,
                threads,
                1 if config.quick else 3,
            )
        say(f"{config.users} concurrent users")
        generation.measure_concurrency(lab, vectors, config, report)
        say("memory")
        generation.measure_memory(runner, vectors, report)
        if config.references:
            say("steering-vectors and repeng")
            external.measure_references(runner, vectors[0], ours, config, report)
    report.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


# --- output -------------------------------------------------------------------------------------


def format_table(report: BenchReport) -> str:
    """The report as a fixed-width table, one metric a row, with its notes below."""
    rows = [("metric", "ours", "reference", "ratio", "target", "result")]
    for m in report.metrics:
        result = {True: "pass", False: "FAIL", None: ""}[m.passed]
        ratio = "-" if m.ratio is None else f"{m.ratio:.3g}"
        rows.append(
            (m.name, format_cell(m.ours, m.unit), format_cell(m.reference, m.unit), ratio, m.target or "-", result)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    machine = report.machine
    lines += [
        "",
        f"model {report.model}; {machine['cpu_count']} cores, torch threads {machine['torch_threads']}, "
        f"torch {machine['torch']}, transformers {machine['transformers']}, "
        f"linear kernel: {machine.get('linear_kernel', 'torch')}; load average "
        f"{machine['load_average_start']} -> {machine.get('load_average_end')}",
    ]
    lines += [f"- {m.name}: {m.note}" for m in report.metrics if m.note]
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines)
