"""Experiments E1–E4: the pure parts on synthetic data, and `experiments all --quick` on SmolLM2 (slow)."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from scipy import stats

from app.experiments.common import jsonable, pick_queries, read_csv, write_csv
from app.experiments.conditions import e3_findings, hinted
from app.experiments.figures import e1_figure, e2_figure, e3_figure, e4_figure
from app.experiments.learn import User, e4_summary, held_out, user_feedback, user_gain
from app.experiments.run import render_figures
from app.experiments.stats import bootstrap_ci, ks_table, ks_test, mean_ci, read_functional_range, summarize
from app.experiments.sweep import linearity
from tests.conftest import SMALL_MODEL, require_model, sandbox_cache

# --- the functional range -------------------------------------------------------------------

STRENGTHS = [-8, -4, -2, 0, 2, 4, 8]


def test_range_stops_where_perplexity_doubles():
    effects = [0.01 * s for s in STRENGTHS]  # perfectly linear
    ppls = [9.0, 5.0, 4.0, 4.0, 4.5, 7.9, 8.1]  # 2 × 4.0 = 8.0 is crossed at +8 only
    reading = read_functional_range(STRENGTHS, effects, ppls, min_yardstick=0.0)
    assert (reading.positive, reading.negative, reading.range) == (4.0, 4.0, 4.0)
    assert "perplexity" in reading.limits["positive"] and reading.yardstick_ppl == 4.0


def test_a_near_certain_baseline_does_not_make_every_steered_reply_disfluent():
    effects = [0.01 * s for s in STRENGTHS]
    ppls = [300.0, 16.0, 3.0, 1.4, 2.8, 16.0, 170.0]  # a refusal at 0; fluent text at ±4; broken at ±8
    reading = read_functional_range(STRENGTHS, effects, ppls)  # yardstick max(1.4, 10): limit 20
    assert reading.range == 4.0 and reading.yardstick_ppl == 10.0
    assert read_functional_range(STRENGTHS, effects, ppls, min_yardstick=0.0).range == 1.0  # half of 2


def test_range_stops_where_effect_turns_back():
    effects = [-0.10, -0.08, -0.03, 0.0, 0.03, 0.01, 0.06]  # +4 falls back by 0.02 > tolerance 0.01
    reading = read_functional_range(STRENGTHS, effects, [4.0] * 7)
    assert reading.positive == 2.0 and reading.negative == 8.0
    assert reading.range == 2.0  # the UI scale is symmetric: the weaker side wins
    assert "Effect" in reading.limits["positive"]


def test_range_tolerates_a_small_dip_and_reads_the_whole_sweep():
    effects = [-0.08, -0.04, -0.02, 0.0, 0.03, 0.025, 0.07]  # a 0.005 dip is noise
    reading = read_functional_range(STRENGTHS, effects, [4.0] * 7)
    assert reading.range == 8.0 and reading.limits["positive"] == "end of the sweep"


def test_range_below_the_grid_is_half_the_smallest_strength():
    reading = read_functional_range([-2, 0, 2], [-0.1, 0.0, 0.1], [50.0, 4.0, 50.0])  # limit 2 × 10
    assert reading.range == 1.0 and "note" in reading.limits


def test_range_needs_the_baseline_and_matching_lengths():
    with pytest.raises(ValueError, match="strength 0"):
        read_functional_range([-2, 2], [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="perplexities"):
        read_functional_range([0, 2], [0.0, 0.1], [1.0])


def test_range_treats_unscorable_perplexity_as_a_failure():
    reading = read_functional_range([-2, 0, 2, 4], [-0.1, 0.0, 0.1, 0.2], [4.0, 4.0, 4.0, math.nan])
    assert reading.positive == 2.0


# --- confidence intervals and KS --------------------------------------------------------------


def test_mean_ci_is_the_student_t_interval():
    x = [0.1, 0.3, 0.2, 0.5, 0.4]
    ci = mean_ci(x)
    half = stats.t.ppf(0.975, df=4) * np.std(x, ddof=1) / math.sqrt(5)
    assert ci.n == 5 and ci.value == pytest.approx(0.3)
    assert (ci.lo, ci.hi) == (pytest.approx(0.3 - half), pytest.approx(0.3 + half))


def test_mean_ci_drops_nan_and_is_honest_about_one_value():
    assert mean_ci([1.0, math.nan, 3.0]).n == 2
    one = mean_ci([2.0])
    assert one.value == 2.0 and one.lo == -math.inf and one.hi == math.inf
    assert math.isnan(mean_ci([]).value)


def test_bootstrap_ci_is_reproducible_and_brackets_the_median():
    x = np.random.default_rng(1).lognormal(size=40)
    a, b = bootstrap_ci(x), bootstrap_ci(x)
    assert a == b
    assert a.lo <= np.median(x) <= a.hi and a.hi - a.lo > 0


def test_summarize_groups_rows_with_intervals():
    rows = [{"dim": "cost", "s": s, "effect": e, "ppl": p} for s, e, p in [(0, 0.1, 3), (0, 0.3, 5), (2, 0.5, 9)]]
    summary = summarize(rows, ["dim", "s"], ["effect"], ["ppl"])
    assert [(r["s"], r["n"]) for r in summary] == [(0, 2), (2, 1)]
    assert summary[0]["effect_mean"] == pytest.approx(0.2) and summary[0]["ppl_median"] == 4


def test_ks_wiring():
    same = ks_test([1, 2, 3, 4], [1, 2, 3, 4])
    assert same["statistic"] == 0 and same["pvalue"] == 1
    apart = ks_table({"a": [1, 2, 3, 4, 5], "b": [11, 12, 13, 14, 15]}, [("a", "b")])[0]
    assert apart["a"] == "a" and apart["statistic"] == 1 and apart["pvalue"] < 0.05
    assert apart["n1"] == apart["n2"] == 5
    with pytest.raises(ValueError, match="no samples named 'c'"):
        ks_table({"a": [1]}, [("a", "c")])
    assert math.isnan(ks_test([], [1.0])["pvalue"])


# --- pieces of E1, E2, E3, E4 -------------------------------------------------------------------


def test_linearity_recovers_the_slope_and_shape():
    rows = [
        {"dim": "cost", "strength": s, "effect": 0.02 * s + noise}
        for s in (-4, -2, 0, 2, 4, 8)
        for noise in (-0.01, 0.01)
    ]
    fit = linearity(rows, "cost", 4.0)
    assert fit["slope"] == pytest.approx(0.02) and fit["r2_means"] == pytest.approx(1.0)
    assert fit["slope_lo"] < 0.02 < fit["slope_hi"] and fit["n_inside"] == 10  # 8 is outside
    assert fit["gain_at_range"] == pytest.approx(0.08)
    assert linearity(rows, "cost", 1.0)["window"] == 2  # a range below the grid still gets a slope


def test_pick_queries_spreads_and_is_deterministic():
    queries = [f"q{i}" for i in range(30)]
    assert pick_queries(queries, 3) == ["q0", "q10", "q20"]
    assert pick_queries(queries, 3, offset=1) == ["q1", "q11", "q21"]
    with pytest.raises(ValueError):
        pick_queries(queries, 31)


def test_hints_ask_for_a_pole():
    assert hinted("Where to eat?", "cost", "none", {}) == "Where to eat?"
    assert "budget" in hinted("Where to eat?", "cost", "negative", {})
    assert hinted("Q?", "custom", "positive", {"positive": "spicy"}) == "Q? I prefer spicy options."


def test_e3_findings_of_additive_steering():
    summary = []
    for a in (-1.0, 0.0, 1.0):
        for b in (-1.0, 0.0, 1.0):
            summary.append(
                {
                    "culture_strength": a,
                    "age_strength": b,
                    "effect_culture_mean": 0.1 * a,
                    "effect_age_mean": 0.2 * b,
                    "ppl_median": 4.0 + 2 * abs(a) + 2 * abs(b),
                }  # fmt: skip
            )
    found = e3_findings(summary, "culture", "age")
    assert found["culture_effect_kept"] == pytest.approx(1.0) and found["age_effect_kept"] == pytest.approx(1.0)
    assert found["ppl_two_over_worse_single"] == pytest.approx(8 / 6)
    assert found["ppl_two_over_unsteered"] == pytest.approx(2.0)


def test_simulated_user_likes_replies_that_moved_toward_its_pole():
    budget = User("cost-0", "cost", -100.0, 0)
    thumbs, text, aligned, directions = user_feedback(budget, moved=-0.06, gain=0.1, round_index=0, phrases={})
    assert (thumbs, text, directions) == ("up", "", None) and aligned == pytest.approx(0.6)
    assert user_gain(None) == user_gain(math.nan) == 0.05 and user_gain(0.001) == 0.01


def test_an_oracle_user_names_the_pole_outright():
    luxury = User("cost+0-oracle", "cost", 100.0, 3, "oracle")
    phrases = {"cost": {"positive": ["Something fancier."], "negative": ["Cheaper."]}}
    thumbs, text, aligned, directions = user_feedback(luxury, moved=-0.02, gain=0.1, round_index=5, phrases=phrases)
    assert (thumbs, text, directions) == ("down", "Something fancier.", {"cost": 1.0})
    assert aligned == pytest.approx(-0.2)


def test_feedback_text_is_held_out_from_the_phrases_learn_reads():
    phrases = {"cost": {"positive": ["more", "fancier"], "negative": ["cheaper"]}}
    table = held_out(phrases, "cost", "positive", "more")
    assert table["cost"]["positive"] == ["fancier"] and phrases["cost"]["positive"] == ["more", "fancier"]
    assert held_out(phrases, "cost", "negative", "cheaper")["cost"]["negative"] == ["cheaper"]  # never empty


def _e4_rows():
    rows = []
    for user, hidden in (("a", 100.0), ("b", -100.0)):
        value = 0.0
        for t in (1, 2, 3):
            nxt = value + 25 * np.sign(hidden)
            rows.append(
                {
                    "user": user,
                    "dim": "cost",
                    "hidden": hidden,
                    "round": t,
                    "value": value,
                    "value_next": nxt,
                    "thumbs": "down" if t < 3 else "up",
                    "feedback": "x" if t < 3 else "",
                    "direction": np.sign(hidden) * 0.9 if t < 3 else 0.0,
                    "strength": value / 10,
                }  # fmt: skip
            )
            value = nxt
    return rows


def test_e4_summary_measures_progress_toward_the_hidden_pole():
    summary = e4_summary(_e4_rows(), 3)
    assert [r["toward_mean"] for r in summary["per_round"]] == pytest.approx([0.25, 0.5, 0.75])
    assert summary["per_round"][2]["thumbs_up"] == 1.0
    assert summary["final_right_side"] == 1.0 and summary["feedback_direction_right"] == 1.0


def test_results_json_has_no_nan():
    assert jsonable({"a": math.nan, 1: (np.float64(2.0), np.int64(3), math.inf)}) == {"a": None, "1": [2.0, 3, None]}


# --- figures ----------------------------------------------------------------------------------


def test_figures_from_synthetic_results():
    e1 = [
        {
            "dim": d,
            "strength": s,
            "effect_mean": 0.01 * s,
            "effect_lo": 0.01 * s - 0.01,
            "effect_hi": math.inf,
            "ppl_median": 4 + abs(s),
            "pne_mean": 0.0,
            "pne_lo": -0.01,
            "pne_hi": 0.01,
        }  # fmt: skip
        for d in ("cost", "age")
        for s in (-2, 0, 2)
    ]
    figure = e1_figure(e1, {"cost": 2.0}, ppl_limit=20.0)
    assert isinstance(figure, go.Figure) and len(figure.data) == 7
    assert list(figure.data[1].y) == [6, 4, 6] and list(figure.data[6].y) == [20.0, 20.0]
    assert figure.data[0].name == "cost (range ±2)" and list(figure.data[0].x) == [-2, 0, 2]
    e2 = [
        {"hint": h, "strength": s, "effect_mean": 0.0, "effect_lo": -0.1, "effect_hi": 0.1}
        for h in ("none", "positive", "negative")
        for s in (-2, 0, 2)
    ]
    assert len(e2_figure(e2, "cost", {"positive": "luxury", "negative": "budget"}).data) == 3
    e3 = [
        {"culture_strength": a, "age_strength": b, "effect_culture_mean": a, "effect_age_mean": b, "ppl_median": 4}
        for a in (-1, 0, 1)
        for b in (-1, 0, 1)
    ]
    heat = e3_figure(e3, "culture", "age")
    assert len(heat.data) == 3 and heat.data[0].z[2][1] == 1  # culture +1, age 0
    trajectories = e4_figure(_e4_rows())
    assert len(trajectories.data) == 2 and list(trajectories.data[0].y) == [0, 25, 50, 75]


def test_tables_round_trip_and_figures_redraw_from_them(tmp_path):
    with pytest.raises(ValueError, match="no experiment tables"):
        render_figures(tmp_path)
    rows = [{**r, "reader": "text", "text": 'a, "quoted" reply'} for r in _e4_rows()]
    write_csv(tmp_path / "e4_rounds.csv", rows)
    back = read_csv(tmp_path / "e4_rounds.csv")
    assert back[1]["value_next"] == 50.0 and back[0]["text"] == 'a, "quoted" reply'
    assert [p.name for p in render_figures(tmp_path)] == ["e4_learning.html"]
    assert "plotly" in (tmp_path / "e4_learning.html").read_text()


# --- the whole thing on a real model (slow) ------------------------------------------------------

MODEL_ID = SMALL_MODEL
COLUMNS = {
    "e1_replies.csv": {"dim", "strength", "query", "seed", "effect", "ppl", "pne", "tokens", "text"},
    "e1_summary.csv": {"dim", "strength", "n", "effect_mean", "effect_lo", "effect_hi", "ppl_median", "ppl_ratio"},
    "e2_summary.csv": {"hint", "strength", "n", "effect_mean", "effect_lo", "effect_hi", "ppl_median"},
    "e2_ks.csv": {"a_hint", "a_strength", "b_hint", "b_strength", "statistic", "pvalue", "n1", "n2", "diff"},
    "e3_summary.csv": {"culture_strength", "age_strength", "effect_culture_mean", "effect_age_mean", "ppl_median"},
    "e4_rounds.csv": {"user", "dim", "hidden", "round", "value", "strength", "effect", "thumbs", "value_next"},
}
FINITE = {
    "e1_summary.csv": ("strength", "effect_mean", "ppl_median", "ppl_ratio", "pne_mean"),
    "e2_ks.csv": ("statistic", "pvalue"),
    "e3_summary.csv": ("effect_culture_mean", "effect_age_mean", "ppl_median"),
    "e4_rounds.csv": ("value", "strength", "effect", "value_next"),
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    require_model(MODEL_ID)
    root = tmp_path_factory.mktemp("experiments")
    sandbox_cache(root)
    saved, threads = os.environ.get("STEERING_LAB_CACHE"), torch.get_num_threads()
    os.environ["STEERING_LAB_CACHE"] = str(root / "cache")
    try:
        from app.cli import main

        argv = ["experiments", "all", "--quick", "--model", MODEL_ID, "--device", "cpu", "--out", str(root / "out")]
        assert main([*argv, "--threads", "1"]) == 0  # one thread: much faster on a busy shared CPU
    finally:
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop("STEERING_LAB_CACHE", None)
        else:
            os.environ["STEERING_LAB_CACHE"] = saved
    return root


def _read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_run_writes_every_table_with_finite_numbers(quick_run):
    out = quick_run / "out"
    for name, columns in COLUMNS.items():
        rows = _read(out / name)
        assert rows, name
        assert columns <= set(rows[0]), f"{name} lacks {columns - set(rows[0])}"
        for column in FINITE.get(name, ()):
            assert all(math.isfinite(float(r[column])) for r in rows), f"{name}: {column} not finite"
    for figure in ("e1_strength_sweep", "e2_prompting_steering", "e3_two_dimensions", "e4_learning"):
        assert (out / f"{figure}.html").stat().st_size > 1000
    e1 = _read(out / "e1_summary.csv")
    assert {r["dim"] for r in e1} == {"cost", "age", "culture"}
    assert all(float(r["ppl_ratio"]) == 1.0 for r in e1 if float(r["strength"]) == 0)
    assert len(render_figures(out)) == 4
    e4 = _read(out / "e4_rounds.csv")
    assert len(e4) == 3 * 8  # 3 rounds x 2 dims x 2 hidden poles x 2 readers (text, oracle)
    assert {r["reader"] for r in e4} == {"text", "oracle"}
    summary = json.loads((out / "e4_summary.json").read_text())
    assert set(summary["by_reader"]) == {"text", "oracle"}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_run_saves_functional_ranges_for_the_ui(quick_run):
    results = json.loads((quick_run / "out" / "results.json").read_text())
    assert results["model"] == MODEL_ID and results["sizes"]["max_new_tokens"] == 20
    assert set(results["seconds"]) == {"e1", "e2", "e3", "e4", "total"}
    saved = json.loads((quick_run / "cache" / "functional_range" / f"{results['fingerprint']}.json").read_text())
    assert set(saved) == {"cost", "age", "culture"}
    assert all(value > 0 and math.isfinite(value) for value in saved.values())
    assert saved == pytest.approx(results["functional_ranges"])
