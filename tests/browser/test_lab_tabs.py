"""Layer Explorer, Activation Visualizer and Advanced Experiments in a real browser (SmolLM2).

The tests run in file order on one server: the explorer builds the ``happy`` vector, the layer
sweep builds ``formal``, so the concept map finds two library vectors to draw.
"""

from __future__ import annotations

import pytest

from tests.browser.helpers import error_toasts, fill_text, open_tab, set_number, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

SLOW_MS = 600_000  # building a vector or compiling on a busy CPU can take minutes


def assert_clean(page) -> None:
    assert not error_toasts(page), error_toasts(page)
    assert "Traceback" not in page.locator("body").inner_text()


def plot_text(page, elem_id: str, waiting_for: str = "", timeout: float = 60_000) -> str:
    """The text plotly drew inside a gr.Plot (titles, axis labels, tick labels), once it shows
    ``waiting_for`` (a figure is drawn a moment after its event finishes)."""
    page.wait_for_function(
        "([id, text]) => [...document.querySelectorAll(`#${id} svg text`)].some(t => t.textContent.includes(text))",
        arg=[elem_id, waiting_for],
        timeout=timeout,
    )
    return " ".join(page.locator(f"#{elem_id} svg text").all_text_contents())


def test_layer_explorer_shows_a_lesson_and_per_layer_views(page, artifacts):
    open_tab(page, "Layer Explorer")
    lesson = page.locator("#ex-lesson-text")
    assert "What Is a Layer?" in lesson.inner_text()
    page.locator("#ex-next").click()
    page.wait_for_function(
        "() => document.querySelector('#ex-lesson-text').innerText.includes('Activations vs. Embeddings')"
    )
    fill_text(page, "ex-prompt", "The capital of France is")
    page.locator("#ex-analyze").click()
    page.locator("#ex-status").get_by_text("tokens").wait_for(timeout=SLOW_MS)
    status = page.locator("#ex-status").inner_text()
    assert "30 layers" in status and "Paris" in status
    norm = plot_text(page, "ex-norm-plot", "Residual-stream norm")
    assert "Residual-stream norm per layer" in norm and "layer" in norm
    assert "Alignment with “happy” per layer" in plot_text(page, "ex-concept-plot", "Alignment")
    lens = page.locator("#ex-lens")
    assert "top 1" in lens.inner_text() and "top 5" in lens.inner_text()
    # the table is virtualized (rows render as they scroll in): its grid reports every row
    assert lens.locator("[role=grid]").get_attribute("aria-rowcount") == "31"  # header + 30 layers
    shot(page, artifacts, "lab_explorer")
    assert_clean(page)


def test_visualizer_draws_baseline_steered_and_difference_heatmaps(page, artifacts):
    open_tab(page, "Activation Visualizer")
    page.locator("#vz-show").click()
    page.locator("#vz-status").get_by_text("largest change").wait_for(timeout=SLOW_MS)
    assert "happy" in page.locator("#vz-status").inner_text()
    drawn = plot_text(page, "vz-heatmap", "Steered − baseline")
    for title in ("Baseline: cosine", "Steered: cosine", "Steered − baseline"):
        assert title in drawn
    assert "wonderful" in drawn  # token labels on the x axis
    assert page.locator("#vz-heatmap g.hm").count() == 3  # three heatmap traces drawn
    shot(page, artifacts, "lab_visualizer_heatmap")
    assert_clean(page)


def test_layer_sweep_produces_a_table_and_a_plot(page, artifacts):
    open_tab(page, "Advanced Experiments")
    set_number(page, "ls-tokens", 12)
    page.locator("#ls-run").click()
    page.locator("#ls-status").get_by_text("rows in one batch").wait_for(timeout=SLOW_MS)
    assert "16 rows in one batch" in page.locator("#ls-status").inner_text()
    table = page.locator("#ls-table")
    assert table.locator("[role=grid]").get_attribute("aria-rowcount") == "17"  # header + baseline + 15 layers
    assert "baseline" in table.inner_text() and "layer 0" in table.inner_text()
    header = table.locator("thead").inner_text()
    assert "Effect" in header and "perplexity" in header
    assert "Effect (toward the concept)" in plot_text(page, "ls-plot", "Effect")
    shot(page, artifacts, "lab_layer_sweep")
    assert_clean(page)


def test_strength_explorer_and_concept_mixing(page, artifacts):
    open_tab(page, "Advanced Experiments")
    page.get_by_role("tab", name="Strength explorer").click()
    set_number(page, "st-tokens", 10)
    page.locator("#st-run").click()
    page.locator("#st-status").get_by_text("rows in one batch").wait_for(timeout=SLOW_MS)
    table = page.locator("#st-table")
    assert table.locator("[role=grid]").get_attribute("aria-rowcount") == "9"  # header + baseline + 7 multiples
    assert "0.5×" in table.inner_text() and "baseline" in table.inner_text()
    assert "strength" in plot_text(page, "st-plot", "Effect")
    shot(page, artifacts, "lab_strength_explorer")
    assert_clean(page)

    page.get_by_role("tab", name="Concept mixing").click()
    set_number(page, "mx-tokens", 10)
    page.locator("#mx-run").click()
    page.locator("#mx-status").get_by_text("rows in one batch").wait_for(timeout=SLOW_MS)
    table = page.locator("#mx-table")
    assert table.locator("[role=grid]").get_attribute("aria-rowcount") == "5"  # header + baseline, 2 alone, mix
    header = table.locator("thead").inner_text()
    assert "Effect (happy)" in header and "Effect (formal)" in header
    assert "happy ×4 + formal ×4" in table.inner_text()
    assert "Effect on formal" in plot_text(page, "mx-plot", "Effect of each output")
    shot(page, artifacts, "lab_concept_mixing")
    assert_clean(page)


def test_concept_maps_of_examples_and_of_the_library(page, artifacts):
    open_tab(page, "Activation Visualizer")
    page.locator("#vz-map-kind").get_by_label("One concept's example sentences").check()
    page.locator("#vz-map-method").get_by_label("pca").check()
    page.locator("#vz-draw").click()
    page.locator("#vz-map-status").get_by_text("points").wait_for(timeout=SLOW_MS)
    assert page.locator("#vz-map-status").inner_text().startswith("PCA of")
    drawn = plot_text(page, "vz-map", "examples at layer")
    assert "“happy” examples at layer 15" in drawn and "PC 1" in drawn
    shot(page, artifacts, "lab_concept_map_examples")
    assert_clean(page)

    page.locator("#vz-map-kind").get_by_label("Concept vectors (the library)").check()
    page.locator("#vz-map-method").get_by_label("auto").check()
    page.locator("#vz-draw").click()
    drawn = plot_text(page, "vz-map", "Concept vectors at layer", timeout=SLOW_MS)
    assert "happy" in drawn and "formal" in drawn  # concept names written beside their points
    shot(page, artifacts, "lab_concept_map_library")
    assert_clean(page)
