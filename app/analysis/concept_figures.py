"""Concept Creator figures: per-layer statistics of an extracted concept and its strength sweep (pure
functions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.analysis.token_figures import FONT, message_figure
from app.steering.recommend import MAX_REPEATED_SHARE

ACCURACY_COLOR = "#1f77b4"
SEPARATION_COLOR = "#e4572e"
RESIDUAL_COLOR = "#8c8c8c"
VECTOR_COLOR = "#2ca02c"


def _mark_layers(figure: go.Figure, layers: Sequence[int]) -> None:
    for layer in layers:
        figure.add_vrect(x0=layer - 0.5, x1=layer + 0.5, fillcolor="#ffd166", opacity=0.45, line_width=0)


def _title(text: str, layers: Sequence[int]) -> str:
    if not layers:
        return text
    marked = ", ".join(map(str, layers))
    return f"{text}<br><sup>shaded: recommended layer{'s' if len(layers) > 1 else ''} {marked}</sup>"


def separability_figure(stats: Mapping[str, Sequence[float]] | None, recommended: Sequence[int] = ()) -> go.Figure:
    """Held-out accuracy (left axis) and d' (right axis) of the concept direction per layer."""
    if not stats or not stats.get("accuracy"):
        return message_figure("Extract a concept to see how well each layer separates its two sides.")
    layers = list(range(len(stats["accuracy"])))
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(
        go.Scatter(
            x=layers,
            y=list(stats["accuracy"]),
            name="held-out accuracy",
            mode="lines+markers",
            line=dict(color=ACCURACY_COLOR),
            hovertemplate="layer %{x}: accuracy %{y:.0%}<extra></extra>",
        ),
        secondary_y=False,
    )
    figure.add_trace(
        go.Scatter(
            x=layers,
            y=list(stats.get("separation", [])),
            name="separation d′",
            mode="lines+markers",
            line=dict(color=SEPARATION_COLOR, dash="dot"),
            hovertemplate="layer %{x}: d′ %{y:.2f}<extra></extra>",
        ),
        secondary_y=True,
    )
    _mark_layers(figure, recommended)
    figure.update_layout(
        title=_title("How well each layer separates the two sides", recommended),
        height=380,
        font=FONT,
        plot_bgcolor="white",
        margin=dict(l=60, r=60, t=90, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
    )
    figure.update_xaxes(title_text="layer", dtick=max(1, len(layers) // 15), gridcolor="#eee")
    figure.update_yaxes(
        title_text="held-out accuracy", tickformat=".0%", range=[0, 1.05], gridcolor="#eee", secondary_y=False
    )
    figure.update_yaxes(title_text="separation d′ (higher = cleaner)", showgrid=False, secondary_y=True)
    return figure


def norms_figure(stats: Mapping[str, Sequence[float]] | None, recommended: Sequence[int] = ()) -> go.Figure:
    """The concept vector's norm next to the typical residual-stream norm, per layer (log scale)."""
    if not stats or not stats.get("residual_norm"):
        return message_figure("Extract a concept to compare its vector's size with the residual stream's.")
    layers = list(range(len(stats["residual_norm"])))
    residual, vector = list(stats["residual_norm"]), list(stats.get("vector_norm", []))
    ratio = [v / r if r else 0.0 for v, r in zip(vector, residual)]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=layers,
            y=residual,
            name="residual stream (typical token)",
            mode="lines+markers",
            line=dict(color=RESIDUAL_COLOR),
            hovertemplate="layer %{x}: %{y:.1f}<extra>residual norm</extra>",
        )
    )
    figure.add_trace(
        go.Scatter(
            x=layers,
            y=vector,
            name="concept vector",
            mode="lines+markers",
            line=dict(color=VECTOR_COLOR),
            customdata=ratio,
            hovertemplate="layer %{x}: %{y:.2f} (%{customdata:.0%} of the residual)<extra>vector norm</extra>",
        )
    )
    _mark_layers(figure, recommended)
    figure.update_layout(
        title=_title("Concept vector vs residual-stream norm", recommended),
        height=380,
        font=FONT,
        plot_bgcolor="white",
        margin=dict(l=60, r=30, t=90, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
    )
    figure.update_xaxes(title_text="layer", dtick=max(1, len(layers) // 15), gridcolor="#eee")
    figure.update_yaxes(title_text="L2 norm (log scale)", type="log", gridcolor="#eee")
    return figure


EFFECT_COLORS = ("#1f77b4", "#9467bd", "#17becf")


def strength_sweep_figure(sweep: Mapping | None) -> go.Figure:
    """Why the lab recommends its strength: the concept's Effect (top) and the replies' perplexity
    under the unsteered model (bottom) against strength, the fluency limit dashed, looping settings
    crossed out, the chosen setting starred.

    Args:
        sweep: a vector's ``metadata["strength_sweep"]`` (app/steering/recommend.py).
    """
    if not sweep or not sweep.get("strengths"):
        return message_figure("Extract a concept to see how its effect and fluency change with strength.")
    strengths = list(sweep["strengths"])
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    chosen_layers, chosen_strength = list(sweep["chosen_layers"]), float(sweep["chosen_strength"])
    for i, layers in enumerate(sweep["layers"]):
        label = f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"
        color = EFFECT_COLORS[i % len(EFFECT_COLORS)]
        loops = [r > MAX_REPEATED_SHARE for r in sweep["repetition"][i]]
        symbols = ["x" if loop else "circle" for loop in loops]
        for row, values, what in ((1, sweep["effect"][i], "Effect gain"), (2, sweep["perplexity"][i], "perplexity")):
            figure.add_trace(
                go.Scatter(
                    x=strengths,
                    y=list(values),
                    name=label,
                    legendgroup=label,
                    showlegend=row == 1,
                    mode="lines+markers",
                    marker=dict(symbol=symbols, size=9),
                    line=dict(color=color),
                    customdata=["loops" if loop else "" for loop in loops],
                    hovertemplate=f"strength %{{x:g}}: {what} %{{y:.3g}} %{{customdata}}<extra>{label}</extra>",
                ),
                row=row,
                col=1,
            )
        if list(layers) == chosen_layers and chosen_strength in strengths:
            k = strengths.index(chosen_strength)
            for row, values in ((1, sweep["effect"][i]), (2, sweep["perplexity"][i])):
                figure.add_trace(
                    go.Scatter(
                        x=[chosen_strength],
                        y=[values[k]],
                        name="recommended",
                        legendgroup="recommended",
                        showlegend=row == 1,
                        mode="markers",
                        marker=dict(symbol="star", size=18, color="#ffb000", line=dict(color="black", width=1)),
                        hovertemplate="recommended: strength %{x:g}<extra></extra>",
                    ),
                    row=row,
                    col=1,
                )
    figure.add_hline(
        y=float(sweep["perplexity_limit"]),
        line=dict(color="#e4572e", dash="dash"),
        annotation_text="fluency limit",
        annotation_position="top left",
        row=2,
        col=1,
    )
    figure.update_layout(
        title=(
            f"Recommended strength {chosen_strength:g}: the strongest setting that stays fluent"
            "<br><sup>short replies to neutral prompts; × = the reply loops</sup>"
        ),
        height=460,
        font=FONT,
        plot_bgcolor="white",
        margin=dict(l=60, r=30, t=90, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
    )
    figure.update_yaxes(title_text="Effect gain (toward concept)", gridcolor="#eee", row=1, col=1)
    figure.update_yaxes(title_text="perplexity (log)", type="log", gridcolor="#eee", row=2, col=1)
    figure.update_xaxes(title_text="strength (normalized units)", gridcolor="#eee", row=2, col=1)
    figure.update_xaxes(gridcolor="#eee", row=1, col=1)
    return figure
