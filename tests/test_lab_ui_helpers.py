"""The pure parts of the explorer, visualizer and advanced tabs: lessons, tables, input parsing."""

from __future__ import annotations

import numpy as np
import pytest

from app.analysis.residuals import LayerView
from app.ui.advanced import _every, _widths
from app.ui.analysis_helpers import parse_layers, parse_strength, show_token
from app.ui.explorer import LESSONS_DIR, lens_table, load_lessons


def test_every_lesson_loads_in_order_with_its_title():
    lessons = load_lessons()
    files = sorted(LESSONS_DIR.glob("[0-9][0-9]-*.md"))
    assert [lesson.number for lesson in lessons] == [f.name[:2] for f in files]
    assert lessons[0].title == "What Is a Layer?"
    assert all(lesson.text.startswith("# ") for lesson in lessons)


def test_lessons_without_a_heading_use_the_file_name(tmp_path):
    (tmp_path / "02-second.md").write_text("no heading here")
    (tmp_path / "01-first.md").write_text("# First\n\ntext")
    (tmp_path / "README.md").write_text("# not a lesson")
    lessons = load_lessons(tmp_path)
    assert [(lesson.number, lesson.title) for lesson in lessons] == [("01", "First"), ("02", "02-second")]


def test_lens_table_one_row_per_layer_with_visible_spaces():
    view = LayerView(
        tokens=["a"],
        norms=np.ones((2, 1)),
        lens_tokens=[[" Paris", "\n"], ["x", ""]],
        lens_probs=np.array([[0.5, 0.25], [0.9, 0.01]]),
    )
    table = lens_table(view)
    assert list(table.columns) == ["layer", "top 1", "top 2"]
    assert table.values.tolist() == [[0, "␣Paris  50%", "↵  25%"], [1, "x  90%", "∅  1%"]]
    assert show_token("a b") == "a␣b"
    assert show_token("\xa0") == "\\u00a0"  # an invisible character is named, not left blank


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("  ", None), ("12", (12,)), ("10, 12", (10, 12)), ("10-12", (10, 11, 12)), ("middle", (15,))],
)
def test_parse_layers(text, expected):
    assert parse_layers(text, 30) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("30", "out of range"), ("a", "cannot read"), ("3-", "cannot read"), ("0-10000000000", "out of range")],
)
def test_parse_layers_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_layers(text, 30)


def test_parse_strength():
    assert parse_strength("") is None and parse_strength(None) is None
    assert parse_strength(" -2.5 ") == -2.5 and parse_strength("0") == 0.0
    with pytest.raises(ValueError, match="cannot read strength"):
        parse_strength("strong")
    with pytest.raises(ValueError, match="finite"):
        parse_strength("inf")


def test_sweep_wording_and_table_widths():
    assert [_every(k) for k in (1, 2, 3, 4, 11, 21)] == [
        "every layer",
        "every 2nd layer",
        "every 3rd layer",
        "every 4th layer",
        "every 11th layer",
        "every 21st layer",
    ]
    for n_scores in (1, 2, 3):
        widths = _widths(n_scores)
        assert sum(int(w.rstrip("%")) for w in widths) == 100 and len(widths) == n_scores + 2


def test_stop_reaches_a_sessions_queued_and_running_generations_only():
    import threading

    from app.ui.playground import StopSignals

    stops = StopSignals()
    assert not stops.stop("a")  # nothing to stop
    stops.arm("a")  # Generate pressed: armed before its run is queued
    stops.arm("a")  # pressed again while the first still runs
    with stops.claimed("a") as first, stops.claimed("a") as second, stops.claimed("b") as api:
        # a call that was never armed ("b") gets a signal of its own
        assert isinstance(first, threading.Event) and first is not second
        assert stops.stop("a") and first.is_set() and second.is_set()
        assert not api.is_set()  # another session's run goes on
    assert not stops.stop("a")  # released: nothing left to stop
    stops.arm("a")
    with stops.claimed("a") as fresh:
        assert not fresh.is_set()  # a new Generate starts with a fresh signal


class _Library:
    """What settle_opening_strength reads of a library: finished vectors by name and the build's status."""

    def __init__(self, status: str, vectors: dict | None = None) -> None:
        self.status, self.vectors = status, vectors or {}

    def cached(self, name: str):
        return self.vectors.get(name)


def _swept(strength: float):
    from types import SimpleNamespace

    return SimpleNamespace(recommended_strength=strength)


def test_an_untouched_opening_form_moves_to_the_recommendation_once_swept():
    from app.steering.vectors import DEFAULT_STRENGTH
    from app.ui.playground import DEFAULT_CONCEPT, settle_opening_strength

    building = _Library("building")
    assert settle_opening_strength(building, DEFAULT_CONCEPT, DEFAULT_STRENGTH) == (None, True)  # ask again
    swept = _swept(DEFAULT_STRENGTH + 4)
    built = _Library("building", {DEFAULT_CONCEPT: swept})
    assert settle_opening_strength(built, DEFAULT_CONCEPT, DEFAULT_STRENGTH) == (swept, False)
    # the user moved the strength, or picked another concept: the form stays as it is
    assert settle_opening_strength(built, DEFAULT_CONCEPT, DEFAULT_STRENGTH + 1) == (None, False)
    assert settle_opening_strength(built, "sad", DEFAULT_STRENGTH) == (None, False)
    # the page was made with the recommendation, which happens to be the fallback: nothing to move
    same = _Library("ready", {DEFAULT_CONCEPT: _swept(DEFAULT_STRENGTH)})
    assert settle_opening_strength(same, DEFAULT_CONCEPT, DEFAULT_STRENGTH) == (None, False)
    # the build ended without the concept (it failed): stop asking
    assert settle_opening_strength(_Library("ready"), DEFAULT_CONCEPT, DEFAULT_STRENGTH) == (None, False)
