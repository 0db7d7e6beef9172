"""Playground figures: pure ``data -> plotly Figure`` functions (no model, no Gradio).

Every function returns a readable figure even without data: :func:`message_figure` says what
is missing instead of drawing empty axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.analysis.figures import BASELINE_COLOR, FONT, STEERED_COLOR, message_figure, show_token

__all__ = ["message_figure", "show_token", "token_shift_figure"]

LABEL_CHARS = 24  # the shift figure's axis has room for longer token labels than a heatmap's ticks


def token_shift_figure(
    tokens: Sequence[str],
    chosen_baseline: Sequence[float],
    chosen_steered: Sequence[float],
    candidates: Sequence[Sequence[str]],
    baseline: Sequence[Sequence[float]],
    steered: Sequence[Sequence[float]],
) -> go.Figure:
    """Top: probability of each steered token with vs without steering, step by step.
    Bottom: the steered run's top-k next tokens at one step (a slider picks the step),
    each with its probability with and without steering on the same prefix.

    Args:
        tokens: the steered text's tokens (one per step, as decoded text).
        chosen_baseline / chosen_steered: each chosen token's probability without / with steering.
        candidates: per step, the steered top-k tokens (as text).
        baseline / steered: per step, those candidates' probabilities without / with steering.
    """
    n = len(tokens)
    if n == 0:
        return message_figure("Generate to see how steering shifts the next-token probabilities.")
    labels = [f"{i + 1}·{show_token(t, LABEL_CHARS)}" for i, t in enumerate(tokens)]
    figure = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.45, 0.55],
        vertical_spacing=0.26,
        subplot_titles=(
            "Each steered token (step·token): its probability with and without steering, same prefix",
            "Top next tokens at the chosen step",
        ),
    )
    figure.add_trace(
        go.Scatter(
            x=labels,
            y=list(chosen_baseline),
            name="without steering",
            mode="lines+markers",
            line=dict(color=BASELINE_COLOR),
            hovertemplate="%{x}<br>without steering: %{y:.1%}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Scatter(
            x=labels,
            y=list(chosen_steered),
            name="with steering",
            mode="lines+markers",
            line=dict(color=STEERED_COLOR),
            hovertemplate="%{x}<br>with steering: %{y:.1%}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for i in range(n):
        names = [show_token(c, LABEL_CHARS) for c in candidates[i]][::-1]  # most likely on top
        for values, name, color in (
            (baseline[i], "without steering", BASELINE_COLOR),
            (steered[i], "with steering", STEERED_COLOR),
        ):
            figure.add_trace(
                go.Bar(
                    x=list(values)[::-1],
                    y=names,
                    orientation="h",
                    name=name,
                    marker_color=color,
                    showlegend=False,
                    visible=i == 0,
                    text=[f"{v:.0%}" for v in list(values)[::-1]],
                    textposition="outside",
                    cliponaxis=False,
                    hovertemplate="%{y}: %{x:.1%}<extra>" + name + "</extra>",
                ),
                row=2,
                col=1,
            )
    slider_steps = []
    for i in range(n):
        visible = [True, True] + [j // 2 == i for j in range(2 * n)]
        slider_steps.append(
            dict(
                method="update",
                label=labels[i],
                args=[{"visible": visible}, {"annotations[1].text": f"Top next tokens at step {labels[i]}"}],
            )
        )
    figure.update_layout(
        height=640,
        barmode="group",
        font=FONT,
        margin=dict(l=80, r=40, t=60, b=40),
        legend=dict(orientation="h", yanchor="bottom", y=1.06, x=0),
        plot_bgcolor="white",
        sliders=[
            dict(
                active=0,
                currentvalue=dict(prefix="Step: "),
                pad=dict(t=30),
                steps=slider_steps,
                y=-0.02,
            )
        ]
        if n > 1
        else [],
    )
    figure.layout.annotations[1].text = f"Top next tokens at step {labels[0]}"
    figure.update_yaxes(title_text="probability", tickformat=".0%", range=[0, 1.05], gridcolor="#eee", row=1, col=1)
    figure.update_xaxes(tickangle=-45, automargin=True, row=1, col=1)
    figure.update_xaxes(
        title_text="next-token probability", tickformat=".0%", range=[0, 1.15], gridcolor="#eee", row=2, col=1
    )
    figure.update_yaxes(title_text="candidate token", automargin=True, row=2, col=1)
    return figure
