"""Figures for the Layer Explorer, Activation Visualizer and Advanced Experiments tabs.

Pure functions ``data -> plotly Figure``: no model, no Gradio. Every function draws something
readable without data: :func:`message_figure` says what is missing instead of empty axes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

FONT = dict(size=13)
BASELINE_COLOR = "#8c8c8c"
STEERED_COLOR = "#e4572e"
LINE_COLORS = ("#1f77b4", "#e4572e", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
MAX_TOKEN_LABELS = 80  # more tick labels than this overlap at any readable size
MAX_LABEL_CHARS = 12


def show_token(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """A token as a readable label: newlines, tabs and bare spaces made visible, long ones cut."""
    if text == "":
        return "∅"
    shown = text.replace("\n", "↵").replace("\t", "⇥")
    if not shown.strip():
        return "␣" * min(len(shown), 4)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def message_figure(message: str, height: int = 260) -> go.Figure:
    """A figure with no axes that only says ``message`` (instead of an empty plot)."""
    figure = go.Figure()
    figure.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=15, color="#555")
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_layout(
        height=height, margin=dict(l=20, r=20, t=20, b=20), plot_bgcolor="white", paper_bgcolor="white"
    )
    return figure


def _layout(figure: go.Figure, title: str, height: int) -> go.Figure:
    figure.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=15)),
        height=height,
        margin=dict(l=60, r=30, t=60, b=50),
        font=FONT,
        plot_bgcolor="white",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        hovermode="x unified",
    )
    figure.update_xaxes(showgrid=True, gridcolor="#eee", zeroline=False)
    figure.update_yaxes(showgrid=True, gridcolor="#eee", zerolinecolor="#bbb")
    return figure


def _token_ticks(tokens: Sequence[str]) -> dict:
    """Tick settings for a token axis: one label per position (never merged), thinned when long."""
    step = max(1, -(-len(tokens) // MAX_TOKEN_LABELS))
    positions = list(range(0, len(tokens), step))
    return dict(
        tickmode="array",
        tickvals=positions,
        ticktext=[show_token(tokens[i]) for i in positions],
        tickangle=-60 if len(tokens) > 8 else 0,
        tickfont=dict(size=11),
    )


# --- Layer Explorer -----------------------------------------------------------------------


def residual_norm_figure(norms: np.ndarray | None, tokens: Sequence[str] = ()) -> go.Figure:
    """Residual-stream norm per layer ``norms [n_layers, n_tokens]``: the first token (often an
    attention sink with a huge norm), the mean of the others, and the last token."""
    if norms is None or np.size(norms) == 0:
        return message_figure("Analyze a prompt to see the residual norm per layer.")
    norms = np.asarray(norms, dtype=float)
    layers = list(range(norms.shape[0]))
    figure = go.Figure()
    lines = [("last token", norms[:, -1], LINE_COLORS[1])]
    if norms.shape[1] > 1:
        first = show_token(tokens[0]) if tokens else ""
        lines = [
            (f"first token {first!r}".strip(), norms[:, 0], BASELINE_COLOR),
            ("mean of the other tokens", norms[:, 1:].mean(axis=1), LINE_COLORS[0]),
            *lines,
        ]
    for name, values, color in lines:
        figure.add_trace(go.Scatter(x=layers, y=values, name=name, mode="lines+markers", line=dict(color=color)))
    _layout(figure, "Residual-stream norm per layer", 340)
    figure.update_xaxes(title_text="layer", dtick=max(1, len(layers) // 15))
    spread = norms.max() / max(float(norms[norms > 0].min()) if (norms > 0).any() else 1.0, 1e-9)
    if spread > 50:  # the attention-sink token can be 100× the others: a linear axis would flatten them
        figure.update_yaxes(title_text="‖residual‖ (log scale)", type="log", dtick=1, tickformat="~s")
    else:
        figure.update_yaxes(title_text="‖residual‖", type="linear")
    return figure


def concept_layers_figure(
    concept: str | None,
    cosine: np.ndarray | None,
    mean_cosine: np.ndarray | None = None,
    projection: np.ndarray | None = None,
) -> go.Figure:
    """Cosine of each layer's residual with the concept's direction at that layer (last token,
    and the mean over the prompt's tokens); the projection is in the hover."""
    if concept is None or cosine is None:
        return message_figure("Pick a concept to see how each layer's residual lines up with it.")
    layers = list(range(len(cosine)))
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=layers,
            y=cosine,
            name="last token",
            mode="lines+markers",
            line=dict(color=LINE_COLORS[1]),
            customdata=projection if projection is not None else None,
            hovertemplate="cos %{y:.3f}" + (" · projection %{customdata:.2f}" if projection is not None else ""),
        )
    )
    if mean_cosine is not None:
        figure.add_trace(
            go.Scatter(
                x=layers, y=mean_cosine, name="mean over tokens", mode="lines+markers", line=dict(color=LINE_COLORS[0])
            )
        )
    _layout(figure, f"Alignment with “{concept}” per layer", 340)
    figure.update_xaxes(title_text="layer", dtick=max(1, len(layers) // 15))
    figure.update_yaxes(title_text=f"cosine with {concept} direction")
    figure.add_hline(y=0, line=dict(color="#999", width=1))
    return figure


# --- Activation Visualizer ----------------------------------------------------------------


def _symmetric_range(values: np.ndarray) -> float:
    """A colour range ±r that a single outlier (the attention-sink token) does not wash out."""
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return 1.0
    return float(max(np.percentile(finite, 99), 1e-6))


def heatmap_figure(
    tokens: Sequence[str],
    baseline: np.ndarray | None,
    steered: np.ndarray | None,
    concept: str = "",
    metric: str = "cosine",
    steered_layers: Sequence[int] = (),
) -> go.Figure:
    """Tokens × layers: baseline, steered (one shared colour scale) and steered − baseline.

    Args:
        tokens: the text's tokens (x axis).
        baseline / steered: ``[n_layers, n_tokens]`` scores on the concept's direction.
        steered_layers: marked with a dashed line in every panel.
    """
    if baseline is None or steered is None or np.size(baseline) == 0:
        return message_figure("Run the visualizer to see the heatmaps.")
    baseline, steered = np.asarray(baseline, float), np.asarray(steered, float)
    difference = steered - baseline
    n_layers, n_tokens = baseline.shape
    what = "cosine" if metric == "cosine" else "projection"
    titles = (
        f"Baseline: {what} with “{concept}”",
        f"Steered: {what} with “{concept}”",
        "Steered − baseline (zero below the first steered layer)",
    )
    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=titles)
    hover = "token %{customdata}<br>layer %{y}<br>" + what + " %{z:.3f}<extra></extra>"
    labels = np.array([[f"{i}: {show_token(t, 30)}" for i, t in enumerate(tokens)]] * n_layers)
    for row, (values, axis) in enumerate(
        [(baseline, "coloraxis"), (steered, "coloraxis"), (difference, "coloraxis2")], 1
    ):
        figure.add_trace(
            go.Heatmap(
                z=values,
                x=list(range(n_tokens)),
                y=list(range(n_layers)),
                coloraxis=axis,
                customdata=labels,
                hovertemplate=hover,
            ),
            row=row,
            col=1,
        )
        for layer in steered_layers:
            figure.add_hline(y=layer, line=dict(color="black", width=1, dash="dash"), row=row, col=1)
        figure.update_yaxes(title_text="layer", row=row, col=1, dtick=max(1, n_layers // 8))
    shared = _symmetric_range(np.concatenate([baseline, steered]))
    change = max(_symmetric_range(difference), 1e-3)  # all zeros: a plain scale, not ±1µ
    panel = max(220, 10 * n_layers)
    figure.update_layout(
        height=3 * panel + 170,
        margin=dict(l=60, r=30, t=50, b=110),
        font=FONT,
        plot_bgcolor="white",
        coloraxis=dict(colorscale="RdBu_r", cmin=-shared, cmax=shared, colorbar=dict(title=what, y=0.68, len=0.62)),
        coloraxis2=dict(colorscale="PuOr_r", cmin=-change, cmax=change, colorbar=dict(title="change", y=0.15, len=0.3)),
    )
    figure.update_xaxes(**_token_ticks(tokens), row=3, col=1)
    figure.update_xaxes(title_text="token", row=3, col=1)
    if steered_layers:
        figure.add_annotation(
            text="dashed line: steered layer",
            x=1,
            y=1.04,
            xref="paper",
            yref="paper",
            showarrow=False,
            xanchor="right",
            font=dict(size=11, color="#555"),
        )
    return figure


def concept_map_figure(
    coords: np.ndarray | None,
    labels: Sequence[str] = (),
    groups: Sequence[str] = (),
    title: str = "Concept map",
    method: str = "",
    note: str = "",
    text_labels: bool = True,
) -> go.Figure:
    """A 2-D scatter of concepts or example activations, coloured by group.

    ``text_labels`` writes each label next to its point (concept names); long labels (example
    sentences) go in the hover only.
    """
    if coords is None or len(coords) == 0:
        return message_figure("Draw a map to see the concepts side by side.")
    coords = np.asarray(coords, float)
    figure = go.Figure()
    for index, group in enumerate(dict.fromkeys(groups)):
        members = [i for i, g in enumerate(groups) if g == group]
        figure.add_trace(
            go.Scatter(
                x=coords[members, 0],
                y=coords[members, 1],
                mode="markers+text" if text_labels else "markers",
                name=group,
                text=[labels[i] if text_labels else "" for i in members],
                hovertext=[labels[i] for i in members],
                hoverinfo="text",
                textposition="top center",
                marker=dict(size=11, color=LINE_COLORS[index % len(LINE_COLORS)], line=dict(width=1, color="white")),
            )
        )
    axis = "UMAP" if method == "umap" else "PC"
    _layout(figure, title + (f"<br><sup>{note}</sup>" if note else ""), 520)
    figure.update_layout(hovermode="closest", margin=dict(l=60, r=30, t=80, b=50))
    figure.update_xaxes(title_text=f"{axis} 1", zeroline=False)
    figure.update_yaxes(title_text=f"{axis} 2", zeroline=False)
    return figure


# --- Advanced Experiments -----------------------------------------------------------------


def sweep_figure(
    x: Sequence[float],
    effect: Mapping[str, Sequence[float]],
    perplexity: Sequence[float] = (),
    x_title: str = "layer",
    baseline_effect: Mapping[str, float] | None = None,
    baseline_perplexity: float | None = None,
    title: str = "",
) -> go.Figure:
    """Effect (left axis) and perplexity under the unsteered model (right axis, log) against
    the swept value; the baseline's values are dotted horizontal lines."""
    if not len(x) or (not effect and not len(perplexity)):
        return message_figure("Run the experiment to see effect and fluency.")
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    for index, (name, values) in enumerate(effect.items()):
        color = LINE_COLORS[index % len(LINE_COLORS)]
        figure.add_trace(
            go.Scatter(
                x=list(x), y=list(values), name=f"Effect ({name})", mode="lines+markers", line=dict(color=color)
            ),
            secondary_y=False,
        )
        if baseline_effect and name in baseline_effect:
            figure.add_hline(y=baseline_effect[name], line=dict(color=color, dash="dot", width=1), secondary_y=False)
    if len(perplexity):
        figure.add_trace(
            go.Scatter(
                x=list(x),
                y=list(perplexity),
                name="perplexity",
                mode="lines+markers",
                line=dict(color=BASELINE_COLOR, dash="dash"),
            ),
            secondary_y=True,
        )
        if baseline_perplexity is not None and np.isfinite(baseline_perplexity):
            figure.add_hline(
                y=baseline_perplexity, line=dict(color=BASELINE_COLOR, dash="dot", width=1), secondary_y=True
            )
    _layout(figure, title or f"Effect and fluency by {x_title}", 380)
    figure.update_layout(
        margin=dict(l=60, r=70, t=60, b=70), legend=dict(x=0.0, xanchor="left")
    )  # the legend clear of the right axis
    figure.update_xaxes(title_text=x_title)
    figure.update_yaxes(title_text="Effect (toward the concept)", secondary_y=False)
    figure.update_yaxes(
        title_text="perplexity (log; lower = more fluent)",
        type="log",
        dtick="D2",  # labels at 1, 2 and 5 per decade, not at every digit
        tickformat="~s",  # 2k, not 2e+3
        secondary_y=True,
        showgrid=False,
    )
    figure.add_annotation(
        text="dotted: unsteered baseline",
        x=0,
        y=-0.22,
        xref="paper",
        yref="paper",
        showarrow=False,
        xanchor="left",
        font=dict(size=11, color="#555"),
    )
    return figure


def mix_figure(labels: Sequence[str], effect: Mapping[str, Sequence[float]]) -> go.Figure:
    """Grouped bars: each output's Effect on each mixed concept."""
    if not labels or not effect:
        return message_figure("Mix concepts to compare the outputs' effects.")
    figure = go.Figure()
    for index, (name, values) in enumerate(effect.items()):
        figure.add_trace(
            go.Bar(
                x=list(labels),
                y=list(values),
                name=f"Effect on {name}",
                marker_color=LINE_COLORS[index % len(LINE_COLORS)],
            )
        )
    _layout(figure, "Effect of each output on each concept", 380)
    figure.update_layout(barmode="group", hovermode="closest")
    figure.update_xaxes(tickangle=-20 if max(map(len, labels)) > 14 else 0)
    figure.update_yaxes(title_text="Effect")
    figure.add_hline(y=0, line=dict(color="#999", width=1))
    return figure
