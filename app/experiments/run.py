"""Run the paper's experiments E1-E4 in order and redraw their figures from saved tables.

Each experiment's module imports what they share from :mod:`app.experiments.common`; only this
module imports the experiments.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from app.experiments import figures
from app.experiments.common import SAMPLING, Context, Progress, Sizes, jsonable, read_csv, write_figure
from app.experiments.conditions import E3_DIMS, e2_rows, e3_rows, run_e2, run_e3
from app.experiments.learn import e4_rows, run_e4
from app.experiments.sweep import e1_rows, run_e1
from app.steering.concepts import find_concept
from app.storage import atomic_write_json

log = logging.getLogger(__name__)


EXPERIMENTS = ("e1", "e2", "e3", "e4")


def run(lab, which: Sequence[str], out: str | Path, sizes: Sizes, progress: Progress | None = None) -> dict:
    """Run the chosen experiments in order and write ``results.json`` beside their files."""
    unknown = [w for w in which if w not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}: use {', '.join(EXPERIMENTS)} or all")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(lab=lab, out=out, sizes=sizes, progress=progress or (lambda f, m: None))
    runners = {"e1": (e1_rows, run_e1), "e2": (e2_rows, run_e2), "e3": (e3_rows, run_e3), "e4": (e4_rows, run_e4)}
    ctx.total_rows = sum(runners[w][0](ctx) for w in which)
    results: dict = {
        "model": lab.lm.model_id,
        "fingerprint": lab.lm.fingerprint,
        "device": str(lab.lm.device),
        "sampling": {**SAMPLING, "max_new_tokens": sizes.max_new_tokens},
        "sizes": asdict(sizes),
        "experiments": {},
    }
    started = time.perf_counter()
    for name in which:
        began = time.perf_counter()
        results["experiments"][name] = runners[name][1](ctx)
        ctx.timings[name] = round(time.perf_counter() - began, 1)
        log.info("%s finished in %.0f s", name.upper(), ctx.timings[name])
    results["seconds"] = {**ctx.timings, "total": round(time.perf_counter() - started, 1)}
    results["functional_ranges"] = dict(ctx.ranges)
    atomic_write_json(out / "results.json", jsonable(results))
    ctx.progress(1.0, f"done in {results['seconds']['total']:.0f} s: {out}")
    return results


def render_figures(out: str | Path) -> list[Path]:
    """Redraw the HTML figures of every experiment whose tables are in ``out`` (no model needed)."""
    out = Path(out)
    written = []
    if (out / "e1_summary.csv").is_file():
        ranges = json.loads((out / "e1_ranges.json").read_text(encoding="utf-8"))
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        ratio = results["sizes"].get("max_ppl_ratio", 2.0)
        yardstick = next(iter(ranges["details"].values()), {}).get("yardstick_ppl")
        limit = ratio * yardstick if yardstick else None
        figure = figures.e1_figure(read_csv(out / "e1_summary.csv"), ranges["ranges"], limit)
        written.append(write_figure(figure, out / "e1_strength_sweep.html"))
    if (out / "e2_summary.csv").is_file():
        summary = read_csv(out / "e2_summary.csv")
        dim = read_csv(out / "e2_replies.csv")[0]["dim"]
        figure = figures.e2_figure(summary, dim, find_concept(dim).labels)
        written.append(write_figure(figure, out / "e2_prompting_steering.html"))
    if (out / "e3_summary.csv").is_file():
        figure = figures.e3_figure(read_csv(out / "e3_summary.csv"), *E3_DIMS)
        written.append(write_figure(figure, out / "e3_two_dimensions.html"))
    if (out / "e4_rounds.csv").is_file():
        written.append(write_figure(figures.e4_figure(read_csv(out / "e4_rounds.csv")), out / "e4_learning.html"))
    if not written:
        raise ValueError(f"no experiment tables in {out}: run `python -m app experiments all --out {out}` first")
    return written
