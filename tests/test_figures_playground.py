"""Playground and Creator figures: pure functions, readable labels, a message instead of empty axes."""

from __future__ import annotations

from app.analysis.concept_figures import norms_figure, separability_figure
from app.analysis.token_figures import message_figure, show_token, token_shift_figure


def _texts(figure) -> str:
    return " ".join(a.text for a in figure.layout.annotations)


def test_message_figure_has_no_axes_and_says_why():
    figure = message_figure("nothing yet")
    assert figure.data == ()
    assert "nothing yet" in _texts(figure)
    assert figure.layout.xaxis.visible is False and figure.layout.yaxis.visible is False


def test_empty_inputs_give_messages_not_empty_plots():
    assert token_shift_figure([], [], [], [], [], []).data == ()
    assert "Generate" in _texts(token_shift_figure([], [], [], [], [], []))
    for empty in (None, {}, {"accuracy": []}):
        assert separability_figure(empty).data == ()
        assert norms_figure(empty).data == ()


def test_show_token_makes_whitespace_visible():
    assert show_token(" great") == " great"
    assert show_token("\n") == "↵"
    assert show_token("  ") == "␣␣"
    assert show_token("") == "∅"


def test_token_shift_figure_has_one_bar_pair_per_step_and_a_slider():
    figure = token_shift_figure(
        tokens=[" great", "!"],
        chosen_baseline=[0.1, 0.5],
        chosen_steered=[0.6, 0.7],
        candidates=[[" great", " fine"], ["!", "."]],
        baseline=[[0.1, 0.4], [0.5, 0.3]],
        steered=[[0.6, 0.2], [0.7, 0.1]],
    )
    lines, bars = figure.data[:2], figure.data[2:]
    assert [t.name for t in lines] == ["without steering", "with steering"]
    assert list(lines[1].y) == [0.6, 0.7]
    assert len(bars) == 4
    assert [b.visible for b in bars] == [True, True, False, False]  # step 1 shown first
    assert list(bars[1].x) == [0.2, 0.6] and list(bars[1].y) == [" fine", " great"]  # most likely on top
    steps = figure.layout.sliders[0].steps
    assert len(steps) == 2 and steps[1].args[0]["visible"] == [True, True, False, False, True, True]
    assert figure.layout.yaxis.title.text == "probability"
    assert figure.layout.xaxis2.title.text == "next-token probability"


def test_creator_figures_plot_every_layer_and_mark_the_recommended_one():
    stats = {
        "accuracy": [0.5, 0.8, 1.0],
        "separation": [0.1, 1.5, 3.0],
        "residual_norm": [10.0, 20.0, 40.0],
        "vector_norm": [1.0, 2.0, 8.0],
    }
    figure = separability_figure(stats, [2])
    assert [list(t.y) for t in figure.data] == [[0.5, 0.8, 1.0], [0.1, 1.5, 3.0]]
    assert figure.layout.xaxis.title.text == "layer"
    assert "recommended layer 2" in figure.layout.title.text
    assert [(shape.x0, shape.x1) for shape in figure.layout.shapes] == [(1.5, 2.5)]
    norms = norms_figure(stats, [2])
    assert [list(t.y) for t in norms.data] == [[10.0, 20.0, 40.0], [1.0, 2.0, 8.0]]
    assert list(norms.data[1].customdata) == [0.1, 0.1, 0.2]
    assert norms.layout.yaxis.type == "log"
