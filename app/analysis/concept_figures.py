"""Concept Creator figures: per-layer statistics of an extracted concept (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.analysis.token_figures import FONT, message_figure

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
