"""Figures of the experiments E1–E4 (pure functions: result rows -> plotly Figure)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = ("#1f77b4", "#e4572e", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
HINT_COLORS = {"none": "#555555", "positive": "#2ca02c", "negative": "#e4572e"}


def _error(rows: Sequence[Mapping], column: str, suffix: str = "_mean") -> dict:
    """Asymmetric error bars from ``<column>_lo/_hi`` around ``<column><suffix>`` (infinite ends cut)."""
    values = [r[f"{column}{suffix}"] for r in rows]
    plus = [r[f"{column}_hi"] - v if math.isfinite(r[f"{column}_hi"]) else 0 for r, v in zip(rows, values)]
    minus = [v - r[f"{column}_lo"] if math.isfinite(r[f"{column}_lo"]) else 0 for r, v in zip(rows, values)]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "thickness": 1}


def e1_figure(summary: Sequence[Mapping], ranges: Mapping[str, float], ppl_limit: float | None = None) -> go.Figure:
    """Effect, median perplexity and PNE against strength, one line per dimension (95% CIs).

    Args:
        summary: rows with ``dim, strength, effect_mean/_lo/_hi, ppl_median/_lo/_hi, pne_mean/_lo/_hi``.
        ranges: the functional range read for each dimension (in the legend).
        ppl_limit: the perplexity where the functional range ends (a dotted line).
    """
    figure = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=("Effect (toward the positive pole)", "median PPL under the unsteered model", "PNE"),
    )
    dims = list(dict.fromkeys(r["dim"] for r in summary))
    for i, dim in enumerate(dims):
        color = COLORS[i % len(COLORS)]
        mine = sorted((r for r in summary if r["dim"] == dim), key=lambda r: r["strength"])
        x = [r["strength"] for r in mine]
        name = f"{dim} (range ±{ranges[dim]:g})" if dim in ranges else dim
        common = {"x": x, "mode": "lines+markers", "line": {"color": color}, "legendgroup": dim}
        figure.add_trace(
            go.Scatter(y=[r["effect_mean"] for r in mine], error_y=_error(mine, "effect"), name=name, **common), 1, 1
        )
        figure.add_trace(go.Scatter(y=[r["ppl_median"] for r in mine], name=dim, showlegend=False, **common), 2, 1)
        figure.add_trace(
            go.Scatter(
                y=[r["pne_mean"] for r in mine], error_y=_error(mine, "pne"), name=dim, showlegend=False, **common
            ),
            3,
            1,
        )
    if ppl_limit is not None:  # a trace, not add_hline: shapes on a log axis take log10 values
        xs = [r["strength"] for r in summary]
        figure.add_trace(
            go.Scatter(
                x=[min(xs), max(xs)],
                y=[ppl_limit, ppl_limit],
                mode="lines",
                line={"dash": "dot", "color": "#999999"},
                name=f"end of the functional range (PPL {ppl_limit:.3g})",
            ),
            2,
            1,
        )
    figure.update_yaxes(type="log", row=2, col=1)
    figure.update_xaxes(title_text="steering strength (normalized units)", row=3, col=1)
    figure.update_layout(title="E1: strength sweep per preference dimension", height=800, template="plotly_white")
    return figure


def e2_figure(summary: Sequence[Mapping], dim: str, labels: Mapping[str, str]) -> go.Figure:
    """Mean Effect (95% CI) against steering strength, one line per prompt hint."""
    figure = go.Figure()
    for hint in ("none", "positive", "negative"):
        mine = sorted((r for r in summary if r["hint"] == hint), key=lambda r: r["strength"])
        if not mine:
            continue
        name = "no hint" if hint == "none" else f"hint: {labels.get(hint, hint)}"
        figure.add_trace(
            go.Scatter(
                x=[r["strength"] for r in mine],
                y=[r["effect_mean"] for r in mine],
                error_y=_error(mine, "effect"),
                mode="lines+markers",
                name=name,
                line={"color": HINT_COLORS[hint]},
            )
        )
    figure.update_layout(
        title=f"E2: prompting × steering on {dim} ({labels.get('negative', '−')} ◀ ▶ {labels.get('positive', '+')})",
        xaxis_title="steering strength (normalized units)",
        yaxis_title=f"Effect on {dim}",
        template="plotly_white",
    )
    return figure


def e3_figure(summary: Sequence[Mapping], first: str, second: str) -> go.Figure:
    """Heatmaps over the strength grid: Effect on each dimension and the median perplexity."""
    xs = sorted({r[f"{second}_strength"] for r in summary})
    ys = sorted({r[f"{first}_strength"] for r in summary})
    cell = {(r[f"{first}_strength"], r[f"{second}_strength"]): r for r in summary}
    columns = (f"effect_{first}_mean", f"effect_{second}_mean", "ppl_median")
    titles = (f"Effect on {first}", f"Effect on {second}", "median PPL")
    figure = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.1)
    for k, column in enumerate(columns, start=1):
        z = [[cell[(y, x)][column] if (y, x) in cell else None for x in xs] for y in ys]
        figure.add_trace(
            go.Heatmap(
                x=[f"{x:g}" for x in xs],
                y=[f"{y:g}" for y in ys],
                z=z,
                texttemplate="%{z:.3g}",
                colorscale="RdBu" if k < 3 else "Greys",
                zmid=0 if k < 3 else None,
                showscale=False,
            ),
            1,
            k,
        )
        figure.update_xaxes(title_text=f"{second} strength", row=1, col=k)
    figure.update_yaxes(title_text=f"{first} strength", row=1, col=1)
    figure.update_layout(title=f"E3: {first} and {second} steered at once", height=420, template="plotly_white")
    return figure


def e4_figure(rows: Sequence[Mapping]) -> go.Figure:
    """Learned value per round for every simulated user (green: hidden +100, red: hidden −100;
    solid: LEARN reads the direction from the feedback text, dotted: the user names the pole)."""
    figure = go.Figure()
    for user in dict.fromkeys(r["user"] for r in rows):
        mine = sorted((r for r in rows if r["user"] == user), key=lambda r: r["round"])
        hidden = mine[0]["hidden"]
        figure.add_trace(
            go.Scatter(
                x=[0] + [r["round"] for r in mine],
                y=[mine[0]["value"]] + [r["value_next"] for r in mine],
                mode="lines+markers",
                name=user,
                line={
                    "color": "#2ca02c" if hidden > 0 else "#e4572e",
                    "width": 1,
                    "dash": "dot" if mine[0].get("reader") == "oracle" else "solid",
                },
                text=[""] + [r["thumbs"] for r in mine],
                hovertemplate="%{y:.0f} (%{text})",
            )
        )
    for hidden in (-100, 100):
        figure.add_hline(y=hidden, line_dash="dot", line_color="#999999")
    figure.update_layout(
        title="E4: LEARN with a simulated user (hidden preference ±100)",
        xaxis_title="round",
        xaxis_dtick=1,
        yaxis_title="learned value (UI units)",
        yaxis_range=[-105, 105],
        template="plotly_white",
    )
    return figure
