"""CALIBRATE's session (app/ui/calibrate.py): one dimension, or several one after another."""

from __future__ import annotations

import copy

import pytest

from app.ui.calibrate import Session, apply_choice, start_session

QUESTIONS = {"cost": ["c1", "c2", "c3"], "age": ["a1", "a2"]}


def answered(session: Session, choice: str) -> Session:
    session.pair_ready = True  # the UI sets this once both replies are shown
    return apply_choice(session, choice, QUESTIONS)


def test_one_dimension_converges_and_asks_a_new_question_each_round():
    session = start_session(["cost"], QUESTIONS)
    assert (session.current, session.question) == ("cost", "c1")
    session = answered(session, "B much better")  # [50, 100]
    assert (session.state.d_a, session.state.d_b, session.question) == (50.0, 100.0, "c2")
    session = answered(session, "A slightly better")  # [50, 75]
    assert session.question == "c3" and not session.results
    session = answered(session, "about the same")
    assert session.results == {"cost": 62.5}
    assert session.current is None and session.state is None
    assert [h[2] for h in session.finished["cost"].history] == ["B much better", "A slightly better", "about the same"]


def test_all_dimensions_run_one_after_another():
    session = start_session(["cost", "age"], QUESTIONS)
    session = answered(session, "about the same")
    assert session.results == {"cost": 0.0}
    assert (session.current, session.question) == ("age", "a1")
    assert (session.state.d_a, session.state.d_b, session.state.round) == (-100.0, 100.0, 0)
    for _ in range(4):  # at most four rounds
        if session.current:
            session = answered(session, "A much better")
    assert session.current is None
    assert set(session.results) == {"cost", "age"} and session.results["age"] < -80


def test_a_choice_needs_a_shown_pair_and_leaves_the_old_session_alone():
    session = start_session(["cost"], QUESTIONS)
    with pytest.raises(ValueError, match="wait for both replies"):
        apply_choice(session, "B much better", QUESTIONS)
    session.pair_ready = True
    before = copy.deepcopy(session)
    after = apply_choice(session, "B much better", QUESTIONS)
    assert session == before and after.state.round == 1
    with pytest.raises(ValueError, match="unknown choice"):
        apply_choice(before, "B is fine", QUESTIONS)
    with pytest.raises(ValueError, match="Start"):
        apply_choice(Session(), "B much better", QUESTIONS)
