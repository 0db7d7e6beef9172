"""Small statistics for the experiments: confidence intervals, grouped summaries, KS tests.

Our samples are small (a few queries × seeds per condition on a 2-core CPU), so every mean is
reported with its interval and its n: a t interval for means, a percentile bootstrap for
medians and ratios. NaN values (e.g. the perplexity of an empty reply) are dropped and counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval and the number of finite values behind it."""

    value: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    return array[np.isfinite(array)]


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean with a Student-t interval. One value gives an infinitely wide interval; none gives NaN."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * sem
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_ci(
    values: Iterable[float],
    statistic: Callable[[np.ndarray], float] = np.median,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    """``statistic`` of the values with a percentile-bootstrap interval (fixed seed: reproducible)."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    value = float(statistic(x))
    if n == 1:
        return Interval(value, -math.inf, math.inf, 1)
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, n, size=(n_boot, n))]  # [n_boot, n]
    boots = np.array([statistic(row) for row in samples])
    alpha = (1 - confidence) / 2
    return Interval(value, float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)), n)


def group_by(rows: Sequence[Mapping], keys: Sequence[str]) -> dict[tuple, list[Mapping]]:
    """Rows grouped by the values of ``keys``, groups in first-seen order."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def summarize(
    rows: Sequence[Mapping], keys: Sequence[str], mean_columns: Sequence[str], median_columns: Sequence[str] = ()
) -> list[dict]:
    """One row per group: the keys, ``n``, and ``<col>_mean/_lo/_hi`` or ``<col>_median/_lo/_hi``."""
    out = []
    for group_key, members in group_by(rows, keys).items():
        summary: dict = dict(zip(keys, group_key))
        summary["n"] = len(members)
        for column in mean_columns:
            ci = mean_ci(m[column] for m in members)
            summary.update({f"{column}_mean": ci.value, f"{column}_lo": ci.lo, f"{column}_hi": ci.hi})
        for column in median_columns:
            ci = bootstrap_ci(m[column] for m in members)
            summary.update({f"{column}_median": ci.value, f"{column}_lo": ci.lo, f"{column}_hi": ci.hi})
        out.append(summary)
    return out


def ks_test(a: Iterable[float], b: Iterable[float]) -> dict:
    """Two-sample Kolmogorov-Smirnov test: ``{"statistic", "pvalue", "n1", "n2"}`` (NaN if a side is empty)."""
    x, y = _finite(a), _finite(b)
    if len(x) == 0 or len(y) == 0:
        return {"statistic": math.nan, "pvalue": math.nan, "n1": len(x), "n2": len(y)}
    result = stats.ks_2samp(x, y)
    return {"statistic": float(result.statistic), "pvalue": float(result.pvalue), "n1": len(x), "n2": len(y)}


def ks_table(samples: Mapping[Hashable, Sequence[float]], pairs: Sequence[tuple[Hashable, Hashable]]) -> list[dict]:
    """A KS test for each ``(a, b)`` pair of sample names: rows ``{"a", "b", "statistic", "pvalue", ...}``."""
    missing = [name for pair in pairs for name in pair if name not in samples]
    if missing:
        raise ValueError(f"no samples named {missing[0]!r}; have {', '.join(map(str, samples))}")
    return [{"a": a, "b": b, **ks_test(samples[a], samples[b])} for a, b in pairs]


# --- the functional range, read off an E1 sweep --------------------------------------------

MAX_PPL_RATIO = 2.0
# Replies sampled at temperature 0.7 are very predictable to the model that sampled them (PPL about
# 2-3 on qwen2.5-coder-0.5b, a refusal about 1.4), while fluent steered text on a new topic reaches
# 5-20: never judge fluency against less than this.
MIN_YARDSTICK_PPL = 10.0
EFFECT_TOLERANCE = 0.01  # Effect units; the paper's effects are about 0.05–0.15


@dataclass(frozen=True)
class RangeReading:
    """The functional range read from one sweep, with what stopped each side."""

    range: float
    positive: float
    negative: float
    limits: dict[str, str]  # side -> why it stopped there
    yardstick_ppl: float  # the perplexity the ratio was taken against


def read_functional_range(
    strengths: Sequence[float],
    effects: Sequence[float],
    ppls: Sequence[float],
    max_ppl_ratio: float = MAX_PPL_RATIO,
    min_yardstick: float = MIN_YARDSTICK_PPL,
    tolerance: float = EFFECT_TOLERANCE,
) -> RangeReading:
    """The largest |strength| inside which steering stays fluent and its Effect stays monotone.

    Per side of zero, walk outward from strength 0 and accept each strength while (a) the median
    perplexity stays within ``max_ppl_ratio`` × the fluency yardstick, the higher of the
    unsteered median and ``min_yardstick`` (which matters when the unsteered replies are
    near-certain boilerplate such as refusals), and (b) the mean Effect
    keeps moving toward that side's pole (a drop of at most ``tolerance`` counts as noise). The
    range is the smaller side, so the UI's −100…100 maps symmetrically; when even the smallest
    tested strength fails it is half of that strength.

    Args:
        strengths: the tested strengths, including 0 (the unsteered baseline).
        effects: mean Effect at each strength.
        ppls: median perplexity at each strength (NaN: nothing to score, which fails).
    """
    if not len(strengths) == len(effects) == len(ppls):
        raise ValueError(f"{len(strengths)} strengths, {len(effects)} effects and {len(ppls)} perplexities")
    table = {float(s): (float(e), float(p)) for s, e, p in zip(strengths, effects, ppls)}
    if 0.0 not in table:
        raise ValueError("the sweep needs strength 0 (the unsteered baseline) to read a range")
    effect0, ppl0 = table[0.0]
    yardstick = max(ppl0, min_yardstick)
    sides: dict[str, float] = {}
    limits: dict[str, str] = {}
    for name, sign in (("positive", 1.0), ("negative", -1.0)):
        previous, accepted = effect0, 0.0
        limits[name] = "end of the sweep"
        for strength in sorted((s for s in table if s * sign > 0), key=abs):
            effect, ppl = table[strength]
            if not (math.isfinite(ppl) and ppl <= max_ppl_ratio * yardstick):
                limits[name] = f"perplexity {ppl:.3g} > {max_ppl_ratio:g} x {yardstick:.3g} at {strength:g}"
                break
            if not math.isfinite(effect) or sign * (effect - previous) < -tolerance:
                limits[name] = f"Effect stops moving toward the pole at {strength:g}"
                break
            previous, accepted = effect, abs(strength)
        sides[name] = accepted
    value = min(sides.values())
    if value == 0.0:
        smallest = min((abs(s) for s in table if s != 0), default=0.0)
        if smallest == 0.0:
            raise ValueError("the sweep has no non-zero strength to read a range from")
        value = smallest / 2
        limits["note"] = f"even the smallest tested strength failed; using half of it ({value:g})"
    return RangeReading(
        range=value, positive=sides["positive"], negative=sides["negative"], limits=limits, yardstick_ppl=yardstick
    )
