"""E1: the strength sweep per preference dimension, and the functional range read off it.

For every dimension and strength, replies to the same queries with the same seeds as the
unsteered baseline: Effect toward the dimension's positive pole, perplexity (PPL) of the reply
under the unsteered model, and PNE = (Effect_d − Effect_0) / (PPL_d / PPL_0), paired with the
baseline row of the same query and seed. The functional range (``read_functional_range``) is
saved for the preference UI with ``app.preferences.functional_range.save_ranges``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import numpy as np
from scipy import stats

from app.experiments.common import (
    Context,
    load_queries,
    pick_queries,
    reply_effects,
    reply_perplexity,
    request,
    run_batches,
    steer_one,
    write_csv,
    write_figure,
)
from app.experiments.stats import read_functional_range, summarize
from app.steering.engine import NO_STEERING
from app.storage import atomic_write_json


def e1_rows(ctx: Context) -> int:
    s = ctx.sizes
    nonzero = [x for x in s.strengths if x != 0]
    return (len(s.dims) * len(nonzero) + 1) * s.queries * s.seeds


def run_e1(ctx: Context) -> dict:
    """Strength sweep per dimension; saves the functional ranges for the preference UI."""
    from app.experiments.figures import e1_figure
    from app.preferences.functional_range import save_ranges

    s, lab = ctx.sizes, ctx.lab
    if 0.0 not in s.strengths:
        raise ValueError("E1 needs strength 0 in the sweep: it is the unsteered baseline")
    queries = pick_queries(load_queries(), s.queries)
    cells = [("none", 0.0)] + [(dim, x) for dim in s.dims for x in s.strengths if x != 0]
    meta, requests = [], []
    for dim, strength in cells:
        ctx.report(f"E1: preparing {dim}")
        steering = steer_one(lab, dim, strength) if dim != "none" else NO_STEERING
        for qi, query in enumerate(queries):
            for j in range(s.seeds):
                meta.append({"dim": dim, "strength": strength, "query": qi, "seed": s.seed + j})
                requests.append(request(query, steering, s.seed + j, s.max_new_tokens))
    results = run_batches(ctx, requests, "E1")
    ppls = reply_perplexity(lab, requests, results)
    texts = [r.text for r in results]
    base = {(m["query"], m["seed"]): i for i, m in enumerate(meta) if m["dim"] == "none"}
    rows = []
    for dim in s.dims:
        effects = reply_effects(texts, dim)
        for i, m in enumerate(meta):
            if m["dim"] not in ("none", dim):
                continue
            b = base[(m["query"], m["seed"])]
            pne = (effects[i] - effects[b]) / (ppls[i] / ppls[b]) if ppls[i] > 0 and ppls[b] > 0 else math.nan
            rows.append(
                {
                    **m,
                    "dim": dim,
                    "effect": effects[i],
                    "ppl": ppls[i],
                    "pne": pne,
                    "tokens": len(results[i].token_ids),
                    "text": texts[i],
                }
            )
    summary = summarize(rows, ["dim", "strength"], ["effect", "pne"], ["ppl"])
    summary.sort(key=lambda r: (r["dim"], r["strength"]))
    ranges, details = {}, {}
    for dim in s.dims:
        mine = [r for r in summary if r["dim"] == dim]
        reading = read_functional_range(
            [r["strength"] for r in mine],
            [r["effect_mean"] for r in mine],
            [r["ppl_median"] for r in mine],
            max_ppl_ratio=s.max_ppl_ratio,
        )
        ranges[dim] = reading.range
        details[dim] = {**asdict(reading), **linearity(rows, dim, reading.range)}
        ppl0 = next(r["ppl_median"] for r in mine if r["strength"] == 0)
        for r in mine:
            r["ppl_ratio"] = r["ppl_median"] / ppl0 if ppl0 > 0 else math.nan
        ctx.gains[dim] = details[dim]["gain_at_range"]
    ctx.ranges.update(ranges)
    saved = save_ranges(lab.lm.fingerprint, ranges)
    write_csv(ctx.out / "e1_replies.csv", rows)
    write_csv(ctx.out / "e1_summary.csv", summary)
    atomic_write_json(ctx.out / "e1_ranges.json", {"saved_to": str(saved), "ranges": ranges, "details": details})
    limit = s.max_ppl_ratio * reading.yardstick_ppl  # the baseline, and so the yardstick, is shared
    write_figure(e1_figure(summary, ranges, limit), ctx.out / "e1_strength_sweep.html")
    return {"ranges": ranges, "details": details}


def linearity(rows: Sequence[Mapping], dim: str, limit: float) -> dict:
    """Least-squares line of Effect on strength inside the range, fitted to every reply.

    The window is ±``limit``, widened to the smallest tested strength when the range lies below
    it, so there is always a slope. Returns the slope with its 95% t interval, R² of the line on
    the replies (sampling noise keeps it low) and on the per-strength means (the curve's shape),
    and ``gain_at_range`` = |slope| · limit, the typical Effect change at the edge of the range.
    """
    mine = [r for r in rows if r["dim"] == dim and math.isfinite(r["effect"])]
    nonzero = [abs(r["strength"]) for r in mine if r["strength"] != 0]
    window = max(limit, min(nonzero, default=limit))
    inside = [r for r in mine if abs(r["strength"]) <= window + 1e-9]
    x = np.array([r["strength"] for r in inside], dtype=float)
    y = np.array([r["effect"] for r in inside], dtype=float)
    out = {"slope": math.nan, "slope_lo": math.nan, "slope_hi": math.nan, "r2_replies": math.nan}
    out.update(r2_means=math.nan, gain_at_range=math.nan, window=window, n_inside=len(inside))
    if len(set(x.tolist())) < 2:
        return out
    fit = stats.linregress(x, y)
    half = float(stats.t.ppf(0.975, df=len(x) - 2)) * fit.stderr if len(x) > 2 else math.inf
    levels = sorted(set(x.tolist()))
    means = np.array([y[x == level].mean() for level in levels])
    predicted = fit.slope * np.array(levels) + fit.intercept
    spread = float(((means - means.mean()) ** 2).sum())
    out.update(
        slope=float(fit.slope),
        slope_lo=float(fit.slope - half),
        slope_hi=float(fit.slope + half),
        r2_replies=float(fit.rvalue**2),
        r2_means=1 - float(((means - predicted) ** 2).sum()) / spread if spread > 0 else math.nan,
        gain_at_range=abs(float(fit.slope)) * limit,
    )
    return out
