"""Figures for the explorer, visualizer and advanced tabs: pure data -> plotly Figure."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from app.analysis import figures


def is_message(figure: go.Figure) -> bool:
    return not figure.data and len(figure.layout.annotations) == 1


def test_show_token_makes_whitespace_visible_and_cuts_long_tokens():
    assert figures.show_token("\n") == "↵"
    assert figures.show_token("  ") == "␣␣"
    assert figures.show_token("") == "∅"
    assert figures.show_token(" cat") == " cat"
    long = figures.show_token("x" * 40)
    assert len(long) == figures.MAX_LABEL_CHARS and long.endswith("…")


@pytest.mark.parametrize(
    "figure",
    [
        lambda: figures.residual_norm_figure(None),
        lambda: figures.concept_layers_figure(None, None),
        lambda: figures.heatmap_figure([], None, None),
        lambda: figures.concept_map_figure(None),
        lambda: figures.sweep_figure([], {}),
        lambda: figures.mix_figure([], {}),
    ],
)
def test_no_data_gives_a_message_not_empty_axes(figure):
    shown = figure()
    assert is_message(shown)
    assert shown.layout.annotations[0].text


def test_residual_norm_lines_and_log_scale():
    norms = np.array([[100.0, 1.0, 2.0], [200.0, 2.0, 3.0]])  # [layers, tokens]; first token is a sink
    figure = figures.residual_norm_figure(norms, ["<s>", "a", "b"])
    names = [trace.name for trace in figure.data]
    assert names == ["first token '<s>'", "mean of the other tokens", "last token"]
    assert list(figure.data[1].y) == [1.5, 2.5]
    assert list(figure.data[2].y) == [2.0, 3.0]
    assert figure.layout.yaxis.type == "log"  # 200 vs 1: a linear axis would flatten the others
    assert figure.layout.xaxis.title.text == "layer"
    flat = figures.residual_norm_figure(np.array([[1.0, 2.0], [2.0, 3.0]]), ["a", "b"])
    assert flat.layout.yaxis.type == "linear"


def test_heatmap_panels_shared_scale_and_readable_token_axis():
    tokens = [f"tok{i}" for i in range(10)] + ["tok0"]  # a repeated token keeps its own column
    baseline = np.zeros((4, 11))
    steered = np.zeros((4, 11))
    steered[2:] = 0.5
    figure = figures.heatmap_figure(tokens, baseline, steered, "happy", "cosine", steered_layers=[2])
    assert len(figure.data) == 3
    assert np.array_equal(np.asarray(figure.data[2].z), steered - baseline)
    assert figure.data[0].coloraxis == figure.data[1].coloraxis == "coloraxis"
    assert figure.data[2].coloraxis == "coloraxis2"
    assert figure.layout.coloraxis.cmin == -figure.layout.coloraxis.cmax
    bottom = figure.layout.xaxis3
    assert list(bottom.tickvals) == list(range(11))
    assert list(bottom.ticktext)[-1] == "tok0" and bottom.tickangle == -60
    assert figure.layout.yaxis.title.text == "layer"
    dashed = [s for s in figure.layout.shapes if s.line.dash == "dash"]
    assert len(dashed) == 3 and all(s.y0 == 2 for s in dashed)


def test_heatmap_thins_token_labels_on_long_texts():
    n = 200
    figure = figures.heatmap_figure(["t"] * n, np.zeros((2, n)), np.ones((2, n)))
    ticks = figure.layout.xaxis3.tickvals
    assert len(ticks) <= figures.MAX_TOKEN_LABELS and ticks[0] == 0


def test_heatmap_colour_range_ignores_one_outlier():
    values = np.full((3, 200), 0.1)
    values[0, 0] = 50.0  # the attention-sink token
    figure = figures.heatmap_figure(["t"] * 200, values, values)
    assert figure.layout.coloraxis.cmax < 1.0


def test_concept_map_groups_and_labels():
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    figure = figures.concept_map_figure(
        coords, ["happy", "sad", "formal"], ["emotion", "emotion", "style"], method="pca", note="PCA: 3 points"
    )
    assert [trace.name for trace in figure.data] == ["emotion", "style"]
    assert list(figure.data[0].text) == ["happy", "sad"] and figure.data[0].mode == "markers+text"
    assert figure.layout.xaxis.title.text == "PC 1"
    assert "PCA: 3 points" in figure.layout.title.text
    sentences = figures.concept_map_figure(
        coords, ["a long sentence"] * 3, ["positive"] * 3, method="umap", text_labels=False
    )
    assert sentences.data[0].mode == "markers" and list(sentences.data[0].hovertext) == ["a long sentence"] * 3
    assert sentences.layout.xaxis.title.text == "UMAP 1"


def test_sweep_figure_effect_and_perplexity_axes():
    figure = figures.sweep_figure(
        [0, 2, 4],
        {"happy": [0.1, 0.2, 0.05]},
        [5.0, 6.0, 40.0],
        "layer",
        baseline_effect={"happy": 0.0},
        baseline_perplexity=4.0,
    )
    assert [trace.name for trace in figure.data] == ["Effect (happy)", "perplexity"]
    assert figure.data[1].yaxis == "y2"
    assert figure.layout.yaxis2.type == "log"
    assert sorted(s.y0 for s in figure.layout.shapes) == [0.0, 4.0]


def test_mix_figure_bars_per_concept():
    figure = figures.mix_figure(["baseline", "happy ×4", "mix"], {"happy": [0, 0.1, 0.2], "formal": [0, 0, 0.1]})
    assert [trace.name for trace in figure.data] == ["Effect on happy", "Effect on formal"]
    assert figure.layout.barmode == "group"
