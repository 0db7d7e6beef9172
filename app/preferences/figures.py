"""Figures of the preference tabs: pure ``data -> plotly Figure`` functions (no model, no Gradio).

Both use the UI scale (−100…100) on the y axis with the pole names at its ends, and say in
words what is missing instead of drawing empty axes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

A_COLOR = "#3b75af"
B_COLOR = "#e4572e"
RESULT_COLOR = "#2a9d55"
PALETTE = ("#3b75af", "#e4572e", "#2a9d55", "#9b59b6", "#d4a017", "#555555")
HEIGHT = 280


def empty_figure(message: str, height: int = HEIGHT) -> go.Figure:
    """A figure that only says ``message``."""
    figure = go.Figure()
    figure.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=14, color="#555")
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_layout(height=height, margin=dict(l=20, r=20, t=20, b=20), plot_bgcolor="white")
    return figure


def _scale_axis(figure: go.Figure, labels: tuple[str, str] | None) -> None:
    """y from −100 to 100, the ends named after the poles (``−100 budget``, ``100 luxury``)."""
    ticks = [-100, -50, 0, 50, 100]
    text = [str(t) for t in ticks]
    if labels:
        text[0], text[-1] = f"{labels[0]} −100", f"{labels[1]} 100"
    figure.update_yaxes(range=[-108, 108], tickvals=ticks, ticktext=text, zeroline=True, zerolinecolor="#bbb")


def calibration_figure(
    history: Sequence[tuple[float, float, str]],
    current: tuple[float, float] | None = None,
    result: float | None = None,
    labels: tuple[str, str] | None = None,
    title: str = "",
) -> go.Figure:
    """The calibration's trajectory: d_A and d_B per round, closing in on the preference.

    Args:
        history: per answered round, ``(d_A, d_B, choice)`` as shown in that round.
        current: the pair shown now (not yet answered), or after the last round.
        result: the calibrated value once finished (a dashed line).
        labels: pole names ``(negative, positive)`` for the axis ends.
    """
    points = [(a, b, choice) for a, b, choice in history]
    if current is not None:
        points.append((current[0], current[1], "now" if result is None else "final interval"))
    if not points:
        return empty_figure("Start a calibration to see d_A and d_B close in.")
    rounds = list(range(1, len(points) + 1))
    d_a = [p[0] for p in points]
    d_b = [p[1] for p in points]
    hover = [f"round {r}: A={a:.0f}, B={b:.0f} · {c}" for r, (a, b, c) in zip(rounds, points)]
    figure = go.Figure()
    # the interval that still holds the preference, shaded between the two lines
    figure.add_trace(go.Scatter(x=rounds, y=d_a, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"))
    figure.add_trace(
        go.Scatter(
            x=rounds,
            y=d_b,
            mode="lines",
            line=dict(width=0),
            fill="tonexty",
            fillcolor="rgba(120,120,120,0.12)",
            showlegend=False,
            hoverinfo="skip",
        )
    )
    figure.add_trace(
        go.Scatter(
            x=rounds, y=d_a, mode="lines+markers", name="d_A", line=dict(color=A_COLOR), text=hover, hoverinfo="text"
        )
    )
    figure.add_trace(
        go.Scatter(
            x=rounds, y=d_b, mode="lines+markers", name="d_B", line=dict(color=B_COLOR), text=hover, hoverinfo="text"
        )
    )
    if result is not None:
        figure.add_hline(
            y=result,
            line=dict(color=RESULT_COLOR, dash="dash"),
            annotation_text=f"result {result:.0f}",
            annotation_position="top left",
        )
    _scale_axis(figure, labels)
    ticks = [str(r) for r in rounds]
    if result is not None and current is not None:
        ticks[-1] = "end"  # the interval left after the last answer, not a round of its own
    figure.update_xaxes(title="round", tickvals=rounds, ticktext=ticks, range=[0.7, max(len(rounds), 2) + 0.3])
    figure.update_layout(
        title=dict(text=title, font=dict(size=14)) if title else None,
        height=HEIGHT,
        margin=dict(l=10, r=10, t=36 if title else 12, b=40),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        plot_bgcolor="white",
        hovermode="closest",
    )
    figure.update_xaxes(showgrid=True, gridcolor="#eee")
    figure.update_yaxes(showgrid=True, gridcolor="#eee")
    return figure


def learn_figure(
    trajectory: Sequence[Mapping[str, float]],
    labels: Mapping[str, tuple[str, str]] | None = None,
) -> go.Figure:
    """Learned values per dimension, one line each, from the start (round 0) to the latest feedback.

    Args:
        trajectory: per round, dimension -> UI value; round 0 is the starting point.
        labels: dimension -> pole names, for the hover text.
    """
    dims = list(dict.fromkeys(dim for values in trajectory for dim in values))
    if not dims:
        return empty_figure("Pick a dimension and rate a reply to see the learned values.")
    labels = labels or {}
    figure = go.Figure()
    for i, dim in enumerate(dims):
        rounds = [r for r, values in enumerate(trajectory) if dim in values]
        ys = [trajectory[r][dim] for r in rounds]
        poles = labels.get(dim)
        hover = [
            f"{dim} after round {r}: {y:.0f}"
            + (f" ({round(abs(y))}% {poles[1] if y > 0 else poles[0]})" if poles and y else "")
            for r, y in zip(rounds, ys)
        ]
        figure.add_trace(
            go.Scatter(
                x=rounds,
                y=ys,
                mode="lines+markers",
                name=dim,
                line=dict(color=PALETTE[i % len(PALETTE)]),
                text=hover,
                hoverinfo="text",
            )
        )
    _scale_axis(figure, labels.get(dims[0]) if len(dims) == 1 else None)
    last = max(len(trajectory) - 1, 1)
    figure.update_xaxes(title="feedback round", range=[-0.3, last + 0.3], dtick=1, showgrid=True, gridcolor="#eee")
    figure.update_yaxes(showgrid=True, gridcolor="#eee")
    figure.update_layout(
        height=HEIGHT + 30,
        margin=dict(l=10, r=10, t=30, b=40),
        # above the plot, right-aligned: Gradio's label sits at the top left
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0),
        plot_bgcolor="white",
    )
    return figure
