"""The Concept Creator's strength-sweep figure, and the tab that shows it builds without a model."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from app.analysis.concept_figures import strength_sweep_figure
from app.ui.creator import build_creator_tab

SWEEP = {
    "layers": [[10], [12]],
    "strengths": [2.0, 4.0, 6.0],
    "effect": [[0.02, 0.08, 0.11], [0.01, 0.03, 0.05]],
    "perplexity": [[2.0, 5.0, 40.0], [2.0, 3.0, 4.0]],
    "repetition": [[0.0, 0.1, 0.6], [0.0, 0.0, 0.0]],
    "baseline_effect": 0.01,
    "baseline_perplexity": 1.8,
    "perplexity_limit": 12.0,
    "chosen_layers": [10],
    "chosen_strength": 4.0,
}


def test_the_sweep_figure_plots_effect_and_fluency_and_stars_the_choice():
    figure = strength_sweep_figure(SWEEP)
    lines = [t for t in figure.data if t.mode == "lines+markers"]
    assert [list(t.y) for t in lines] == [[0.02, 0.08, 0.11], [2.0, 5.0, 40.0], [0.01, 0.03, 0.05], [2.0, 3.0, 4.0]]
    assert list(lines[0].marker.symbol) == ["circle", "circle", "x"]  # the looping setting is crossed out
    stars = [t for t in figure.data if t.name == "recommended"]
    assert [(list(t.x), list(t.y)) for t in stars] == [([4.0], [0.08]), ([4.0], [5.0])]
    assert [shape.y0 for shape in figure.layout.shapes] == [12.0]  # the fluency limit
    assert "Recommended strength 4" in figure.layout.title.text
    assert figure.layout.yaxis2.type == "log"


def test_without_a_sweep_the_figure_says_what_to_do():
    for empty in (None, {}, {"strengths": []}):
        figure = strength_sweep_figure(empty)
        assert not figure.data and "Extract a concept" in figure.layout.annotations[0].text


def test_the_creator_tab_builds_with_the_sweep_plot():
    holder = SimpleNamespace(lab=SimpleNamespace(library=SimpleNamespace(concepts=lambda: {})))
    with gr.Blocks() as demo:
        build_creator_tab(holder)
    plots = {b.elem_id for b in demo.blocks.values() if isinstance(b, gr.Plot)}
    assert "cr-strength-sweep" in plots
    extract = next(d for d in demo.fns.values() if d.api_name == "extract_concept")
    assert "cr-strength-sweep" in {o.elem_id for o in extract.outputs}
