"""Preference figures (app/figures_preferences.py): what they draw, and a message when empty."""

from __future__ import annotations

from app.preferences.figures import calibration_figure, learn_figure


def _trace(figure, name):
    return next(t for t in figure.data if t.name == name)


def test_calibration_figure_draws_both_ends_per_round_and_the_result():
    history = [(-100.0, 100.0, "A slightly better"), (-100.0, 0.0, "B slightly better")]
    figure = calibration_figure(history, current=(-50.0, 0.0), result=-25.0, labels=("budget", "luxury"), title="cost")
    assert list(_trace(figure, "d_A").y) == [-100.0, -100.0, -50.0]
    assert list(_trace(figure, "d_B").y) == [100.0, 0.0, 0.0]
    assert list(_trace(figure, "d_A").x) == [1, 2, 3]
    assert any(shape.y0 == -25.0 for shape in figure.layout.shapes)  # the result line
    ticks = list(figure.layout.yaxis.ticktext)
    assert ticks[0].startswith("budget") and ticks[-1].startswith("luxury")


def test_calibration_figure_before_any_answer_shows_the_first_pair():
    figure = calibration_figure([], current=(-100.0, 100.0))
    assert list(_trace(figure, "d_A").y) == [-100.0]
    assert not figure.layout.shapes


def test_empty_figures_say_what_to_do():
    for figure in (calibration_figure([]), learn_figure([]), learn_figure([{}])):
        assert not figure.data
        assert figure.layout.annotations and figure.layout.annotations[0].text


def test_learn_figure_has_one_line_per_dimension():
    trajectory = [{"cost": 0.0, "age": 0.0}, {"cost": -25.0, "age": 0.0}, {"cost": -37.5}]
    figure = learn_figure(trajectory, {"cost": ("budget", "luxury"), "age": ("kids", "adults")})
    assert list(_trace(figure, "cost").y) == [0.0, -25.0, -37.5]
    assert list(_trace(figure, "age").x) == [0, 1]
    assert "25% budget" in _trace(figure, "cost").text[1]


def test_the_last_calibration_point_is_the_final_interval():
    figure = calibration_figure([(-100.0, 100.0, "about the same")], current=(-100.0, 100.0), result=0.0)
    assert list(figure.layout.xaxis.ticktext) == ["1", "end"]
