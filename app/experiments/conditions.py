"""E2 (prompting × steering) and E3 (two dimensions at once).

E2 asks the same questions with no hint, a hint toward the positive pole or one toward the
negative pole, each steered at −R, 0 and +R (R: the dimension's functional range), and compares
the Effect distributions of the conditions with two-sample Kolmogorov-Smirnov tests.
E3 steers culture and age together (two Steers in one Steering) on a 3×3 grid of strengths and
reports how much of each single-dimension effect survives and what the second steer costs in PPL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from app.experiments.common import (
    Context,
    load_queries,
    pick_queries,
    range_of,
    reply_effects,
    reply_perplexity,
    request,
    run_batches,
    steer_one,
    write_csv,
    write_figure,
)
from app.experiments.stats import ks_table, summarize
from app.steering.engine import Steer, Steering

# E2's hints: a sentence added to the question that asks for one pole.
HINTS: dict[str, dict[str, str]] = {
    "cost": {"positive": "Money is no object; I love luxury.", "negative": "I'm on a tight budget."},
    "ambiance": {
        "positive": "I like hip, local, off-the-beaten-path places.",
        "negative": "I like the famous tourist spots.",
    },
    "age": {"positive": "It's for a group of adults.", "negative": "I'll have my young kids with me."},
    "time": {"positive": "I'm an early-morning person.", "negative": "I prefer evenings and nights."},
    "culture": {"positive": "I love American culture.", "negative": "I love Asian culture."},
}


def e2_rows(ctx: Context) -> int:
    return 9 * ctx.sizes.e2_queries * ctx.sizes.seeds


def hinted(query: str, dim: str, pole: str, labels: Mapping[str, str]) -> str:
    if pole == "none":
        return query
    hint = HINTS.get(dim, {}).get(pole) or f"I prefer {labels.get(pole, pole)} options."
    return f"{query} {hint}"


def run_e2(ctx: Context) -> dict:
    """Prompting × steering on one dimension, with KS tests between the conditions."""
    from app.experiments.figures import e2_figure

    s, lab, dim = ctx.sizes, ctx.lab, ctx.sizes.e2_dim
    limit = range_of(ctx, dim)
    labels = lab.library.concepts()[dim].labels
    queries = pick_queries(load_queries(), s.e2_queries, offset=1)
    meta, requests = [], []
    for pole in ("none", "positive", "negative"):
        for strength in (-limit, 0.0, limit):
            steering = steer_one(lab, dim, strength)
            for qi, query in enumerate(queries):
                for j in range(s.seeds):
                    meta.append({"hint": pole, "strength": strength, "query": qi, "seed": s.seed + j})
                    requests.append(request(hinted(query, dim, pole, labels), steering, s.seed + j, s.max_new_tokens))
    results = run_batches(ctx, requests, "E2")
    ppls = reply_perplexity(lab, requests, results)
    effects = reply_effects([r.text for r in results], dim)
    rows = [
        {**m, "dim": dim, "effect": e, "ppl": p, "text": r.text} for m, e, p, r in zip(meta, effects, ppls, results)
    ]
    summary = summarize(rows, ["hint", "strength"], ["effect"], ["ppl"])
    samples = {(r["hint"], r["strength"]): [] for r in summary}
    for r in rows:
        samples[(r["hint"], r["strength"])].append(r["effect"])
    pairs = [
        ((h, a), (h, b))
        for h in ("none", "positive", "negative")
        for a, b in ((-limit, 0.0), (limit, 0.0), (-limit, limit))
    ]
    pairs += [((h, x), ("none", x)) for x in (-limit, 0.0, limit) for h in ("positive", "negative")]
    tests = []
    for t in ks_table(samples, pairs):
        (hint_a, steer_a), (hint_b, steer_b) = t.pop("a"), t.pop("b")
        mean_a, mean_b = np.nanmean(samples[(hint_a, steer_a)]), np.nanmean(samples[(hint_b, steer_b)])
        tests.append(
            {
                "a_hint": hint_a,
                "a_strength": steer_a,
                "b_hint": hint_b,
                "b_strength": steer_b,
                "mean_a": float(mean_a),
                "mean_b": float(mean_b),
                "diff": float(mean_a - mean_b),
                **t,
            }
        )
    write_csv(ctx.out / "e2_replies.csv", rows)
    write_csv(ctx.out / "e2_summary.csv", summary)
    write_csv(ctx.out / "e2_ks.csv", tests)
    write_figure(e2_figure(summary, dim, labels), ctx.out / "e2_prompting_steering.html")
    return {"dim": dim, "strength": limit, "summary": summary, "ks": tests}


# --- E3 -------------------------------------------------------------------------------------

E3_DIMS = ("culture", "age")


def e3_rows(ctx: Context) -> int:
    return 9 * ctx.sizes.e3_queries * ctx.sizes.seeds


def run_e3(ctx: Context) -> dict:
    """Culture and age at once: a 3×3 grid of strengths, each cell one Steering with two Steers."""
    from app.experiments.figures import e3_figure

    s, lab = ctx.sizes, ctx.lab
    first, second = E3_DIMS
    levels = {dim: (-s.e3_fraction * range_of(ctx, dim), 0.0, s.e3_fraction * range_of(ctx, dim)) for dim in E3_DIMS}
    vectors = {dim: lab.library.get(dim) for dim in E3_DIMS}
    queries = pick_queries(load_queries(), s.e3_queries, offset=2)
    meta, requests = [], []
    for a in levels[first]:
        for b in levels[second]:
            steers = tuple(Steer(vectors[d], x) for d, x in ((first, a), (second, b)) if x)
            for qi, query in enumerate(queries):
                for j in range(s.seeds):
                    meta.append({f"{first}_strength": a, f"{second}_strength": b, "query": qi, "seed": s.seed + j})
                    requests.append(request(query, Steering(steers), s.seed + j, s.max_new_tokens))
    results = run_batches(ctx, requests, "E3")
    ppls = reply_perplexity(lab, requests, results)
    texts = [r.text for r in results]
    effects = {dim: reply_effects(texts, dim) for dim in E3_DIMS}
    rows = [
        {
            **m,
            f"effect_{first}": effects[first][i],
            f"effect_{second}": effects[second][i],
            "ppl": ppls[i],
            "text": texts[i],
        }
        for i, m in enumerate(meta)
    ]
    keys = [f"{first}_strength", f"{second}_strength"]
    summary = summarize(rows, keys, [f"effect_{first}", f"effect_{second}"], ["ppl"])
    findings = e3_findings(summary, first, second)
    write_csv(ctx.out / "e3_replies.csv", rows)
    write_csv(ctx.out / "e3_summary.csv", summary)
    write_figure(e3_figure(summary, first, second), ctx.out / "e3_two_dimensions.html")
    return {"levels": levels, "summary": summary, "findings": findings}


def e3_findings(summary: Sequence[Mapping], first: str, second: str) -> dict:
    """What steering both dimensions at once keeps and costs, over the four corners of the grid.

    ``<dim>_effect_kept``: the mean shift of the dimension's Effect (from the unsteered cell,
    signed toward the steered pole) when both are steered, over the mean shift when only it is
    (1: nothing lost). ``ppl_two_over_worse_single``: the median PPL with two steers over the
    worse of the two single steers; ``ppl_two_over_unsteered``: over the unsteered median.
    """
    cell = {(r[f"{first}_strength"], r[f"{second}_strength"]): r for r in summary}
    base = cell[(0.0, 0.0)]
    together = {first: [], second: []}
    alone = {first: [], second: []}
    ppl_combined, ppl_single = [], []
    for (a, b), r in cell.items():
        if not (a and b):
            continue
        for dim, level, single in ((first, a, cell[(a, 0.0)]), (second, b, cell[(0.0, b)])):
            column = f"effect_{dim}_mean"
            together[dim].append(math.copysign(1.0, level) * (r[column] - base[column]))
            alone[dim].append(math.copysign(1.0, level) * (single[column] - base[column]))
        ppl_combined.append(r["ppl_median"])
        ppl_single.append(max(cell[(a, 0.0)]["ppl_median"], cell[(0.0, b)]["ppl_median"]))
    if not ppl_combined:
        raise ValueError("E3 needs steered corners (both strengths non-zero) to compare")
    kept = {}
    for dim in (first, second):
        moved = float(np.mean(alone[dim]))
        kept[f"{dim}_effect_kept"] = float(np.mean(together[dim])) / moved if abs(moved) > 1e-9 else math.nan
        kept[f"{dim}_shift_alone"] = moved
        kept[f"{dim}_shift_together"] = float(np.mean(together[dim]))
    return {
        **kept,
        "ppl_two_over_worse_single": float(np.mean(np.divide(ppl_combined, ppl_single))),
        "ppl_two_over_unsteered": float(np.mean(ppl_combined) / base["ppl_median"]),
    }
