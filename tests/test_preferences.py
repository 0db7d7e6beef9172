"""CALIBRATE, LEARN and profiles (app/preferences.py), against simulated users."""

from __future__ import annotations

import copy
import json
import os
import random
import re

import numpy as np
import pytest

from app.preferences import learn, profiles, select
from app.preferences.calibrate import CalibrationState, calibrate_step
from app.preferences.learn import LearnState, learn_step
from app.preferences.profiles import Profile

# --- UI scale -------------------------------------------------------------------------


def test_ui_value_maps_linearly_to_the_functional_range():
    assert select.ui_to_strength(100, 10.0) == 10.0
    assert select.ui_to_strength(-50, 30.0) == -15.0
    assert select.ui_to_strength(0, 30.0) == 0.0
    assert select.strength_to_ui(-15.0, 30.0) == -50.0
    with pytest.raises(ValueError, match="outside"):
        select.ui_to_strength(101, 10.0)
    with pytest.raises(ValueError, match="positive"):
        select.ui_to_strength(50, 0.0)


def test_share_label():
    labels = ("budget", "luxury")
    assert select.share_label(-35, labels) == "35% budget"
    assert select.share_label(60.4, labels) == "60% luxury"
    assert select.share_label(3, labels) == "neutral"


# --- CALIBRATE ------------------------------------------------------------------------


def simulated_chooser(target: float, d_a: float, d_b: float, same_within: float = 5.0) -> str:
    """Prefers the end closer to the hidden target; "much" when the gap is over half the span."""
    diff = abs(d_a - target) - abs(d_b - target)  # > 0: B is closer
    if abs(diff) < same_within:
        return "about the same"
    grade = "much" if abs(diff) > 0.5 * (d_b - d_a) else "slightly"
    return f"{'B' if diff > 0 else 'A'} {grade} better"


def run_calibration(target: float) -> CalibrationState:
    state = CalibrationState()
    while not state.done:
        state = calibrate_step(state, simulated_chooser(target, state.d_a, state.d_b))
    return state


def test_calibration_update_rules():
    state = CalibrationState()
    assert calibrate_step(state, "B slightly better").d_a == 0.0  # loser to the midpoint
    assert calibrate_step(state, "B much better").d_a == 50.0  # 3/4 of the way
    assert calibrate_step(state, "A slightly better").d_b == 0.0
    assert calibrate_step(state, "A much better").d_b == -50.0
    same = calibrate_step(state, "about the same")
    assert same.done and same.result == 0.0 and (same.d_a, same.d_b) == (-100, 100)
    assert state.round == 0 and state.history == []  # the input state is not changed
    with pytest.raises(ValueError, match="unknown choice"):
        calibrate_step(state, "B")
    with pytest.raises(ValueError, match="finished"):
        calibrate_step(same, "B much better")


def test_calibration_state_is_deep_copyable():
    state = calibrate_step(CalibrationState(), "B slightly better")
    assert copy.deepcopy(state) == state


# Documented bound: a consistent chooser ends within 200 / 2**4 / 2 = 6.25 UI units.
CALIBRATION_TOLERANCE = 6.25


def test_calibration_finds_hidden_targets_within_four_rounds():
    targets = np.linspace(-100, 100, 41)
    errors, rounds = [], []
    for target in targets:
        state = run_calibration(target)
        errors.append(abs(state.result - target))
        rounds.append(state.round)
    errors = np.array(errors)
    assert max(rounds) <= 4
    assert errors.max() <= CALIBRATION_TOLERANCE
    assert np.median(errors) <= 2.5  # measured: max 6.25, mean 2.41, median 1.88
    assert run_calibration(0.0).round == 1  # A and B equally far: stops at once


# --- LEARN ----------------------------------------------------------------------------

EFFECT_SCALE = 0.15  # Effect-like reply position at full strength (the paper's ~±0.15)


class SimulatedUser:
    """E4-style user with a hidden preference; satisfaction from an Effect-like score."""

    def __init__(self, hidden: float, seed: int = 0, text_rate: float = 1.0):
        self.hidden, self.rng, self.text_rate = hidden, random.Random(seed), text_rate

    def reply_position(self, value: float) -> float:
        """Where a reply steered at ``value`` lands, like Effect_d − Effect_0 (noisy)."""
        return EFFECT_SCALE * value / 100 + self.rng.gauss(0, 0.01)

    def feedback(self, value: float) -> tuple[str, float | None]:
        position = self.reply_position(value)
        satisfaction = 1 - abs(position - EFFECT_SCALE * self.hidden / 100) / (2 * EFFECT_SCALE)
        if satisfaction >= 0.9:
            return "up", None
        if self.rng.random() >= self.text_rate:
            return "down", None
        # what a text classifier reads from "more luxury" / "cheaper please", imperfectly
        return "down", float(np.sign(self.hidden - value)) * self.rng.uniform(0.4, 1.0)


def run_learning(hidden: float, step: float, start: float = 0.0, text_rate: float = 1.0):
    state = LearnState(values={"cost": start}, step=step)
    user = SimulatedUser(hidden, seed=int(step), text_rate=text_rate)
    for _ in range(12):
        thumbs, direction = user.feedback(state.values["cost"])
        directions = None if direction is None else {"cost": direction}
        position = user.reply_position(state.values["cost"]) / EFFECT_SCALE
        state = learn_step(state, thumbs, directions, reply_positions={"cost": position})
    return state


@pytest.mark.parametrize("hidden", [-100.0, 100.0])
@pytest.mark.parametrize("step", [10.0, 25.0])
def test_learning_moves_toward_the_hidden_preference(hidden, step):
    final = run_learning(hidden, step).values["cost"]
    assert np.sign(final) == np.sign(hidden)
    assert abs(final - hidden) < abs(0.0 - hidden) - 50  # more than halfway there
    assert -100 <= final <= 100


@pytest.mark.parametrize("hidden", [-100.0, 100.0])
def test_learning_with_occasional_silent_thumbs_down(hidden):
    # half the rounds have no text: momentum keeps the direction the text gave before
    final = run_learning(hidden, 25.0, text_rate=0.5).values["cost"]
    assert np.sign(final) == np.sign(hidden) and abs(final - hidden) < 50


def test_thumbs_only_moves_away_from_the_disliked_side_then_keeps_going():
    # starts on the wrong side; no text ever: step back, then continue past neutral
    state = run_learning(-100.0, 25.0, start=60.0, text_rate=0.0)
    assert state.values["cost"] < -50
    moves = [record["moves"]["cost"] for record in state.history]
    assert moves[0] < 0 and all(m <= 0 for m in moves)


def test_thumbs_only_at_neutral_has_no_direction():
    # A disliked neutral reply says nothing about which way to go (the UI asks for text).
    state = learn_step(LearnState(values={"cost": 0.0}), "down")
    assert state.values == {"cost": 0.0} and state.last_move == {"cost": 0.0}


def test_thumbs_only_moves_away_relative_to_the_last_liked_reply():
    state = learn_step(LearnState(values={"cost": -80.0}, step=20.0), "up")
    assert state.liked == {"cost": -0.8}
    # disliked at the liked spot: no direction; a bit further out: back toward the liked spot
    assert learn_step(state, "down").values == {"cost": -80.0}
    further = learn_step(state, "down", reply_positions={"cost": -1.0})
    assert further.values["cost"] == pytest.approx(-80.0 + 20.0 * 0.2)


def test_eq1_step_and_clipping_for_several_dimensions():
    state = LearnState(values={"cost": 90.0, "age": -20.0, "time": 0.0}, step=20.0)
    new = learn_step(state, "down", {"cost": 1.0, "age": -0.5, "time": 0.05})
    assert new.values == {
        "cost": 100.0,
        "age": -30.0,
        "time": 0.0,
    }  # clipped; time ignored
    assert learn_step(state, "up", {"cost": 1.0}).values == state.values  # satisfied: no move
    assert state.values["cost"] == 90.0  # the input state is not changed


def test_dissatisfaction_blends_thumbs_and_sentiment():
    assert learn.dissatisfaction("down") == 1.0 and learn.dissatisfaction("up") == 0.0
    assert learn.dissatisfaction(None) == 0.0
    assert learn.dissatisfaction("down", sentiment=1.0) == pytest.approx(0.75)
    assert learn.dissatisfaction("up", sentiment=-1.0) == pytest.approx(0.25)
    assert learn.dissatisfaction(None, sentiment=-1.0) == 1.0
    with pytest.raises(ValueError, match="thumbs"):
        learn.dissatisfaction("sideways")


PHRASES = {
    "cost": {
        "positive": [
            "I want more luxury.",
            "Suggest something more upscale and high-end.",
            "I don't mind spending more for a premium experience.",
            "Make it fancier and more exclusive.",
        ],
        "negative": [
            "I want lower cost.",
            "Suggest something cheaper.",
            "That is too expensive for me.",
            "I'm on a tight budget.",
        ],
    },
    "age": {
        "positive": [
            "Make it more suitable for adults.",
            "I want something for grown-ups, not kids.",
            "Suggest a place for an adults-only night out.",
        ],
        "negative": [
            "Make it more kid-friendly.",
            "I'm going with my children.",
            "Suggest something for families with young kids.",
        ],
    },
}


def test_text_directions_read_the_pole_and_the_dimension():
    cheaper = learn.text_directions("Too pricey, something budget-friendly?", PHRASES)
    assert cheaper["cost"] < -0.5 and abs(cheaper["age"]) < 0.1
    grown_up = learn.text_directions("Somewhere with cocktails for grown-ups.", PHRASES)
    assert grown_up["age"] > 0.5 and abs(grown_up["cost"]) < 0.1
    vague = learn.text_directions("ok", PHRASES)
    assert all(abs(v) < learn.MIN_TEXT_DIRECTION for v in vague.values())


NEGATION = re.compile(r"\b(not|no|nothing|don't|won't|can't|avoid|skip)\b", re.IGNORECASE)


def feedback_cases(kind: str) -> list:
    from app.storage import REPO_ROOT

    return json.loads((REPO_ROOT / "tests" / kind / "feedback.json").read_text())["cases"]


def read_right(text: str, dim: str, sign: int, phrases) -> bool:
    directions = learn.text_directions(text, phrases)
    return max(directions, key=lambda d: abs(directions[d])) == dim and directions[dim] * sign > 0


def test_held_out_feedback_is_read_plain_and_through_negations():
    """tests/heldout/feedback.json, measured once after the negation rule was chosen on
    tests/tuning/feedback.json: plain 10 of 10, through a negation 15 of 20 (5 of 20 before the
    rule, docs/quality.md). The five misses are negations of a phrase the pole lists hold as a
    complaint ("too obscure", "the tourist traps"), which the rule turns the wrong way."""
    cases, phrases = feedback_cases("heldout"), learn.load_feedback_phrases()
    shipped = {text for poles in phrases.values() for side in poles.values() for text in side}
    tuning = {text for text, _, _ in feedback_cases("tuning")}
    assert not {text for text, _, _ in cases} & (shipped | tuning)  # held out: none seen before
    negated = [c for c in cases if NEGATION.search(c[0])]
    plain = [c for c in cases if c not in negated]
    assert (len(plain), len(negated)) == (10, 20)
    assert sum(read_right(*c, phrases) for c in plain) == 10
    assert sum(read_right(*c, phrases) for c in negated) == 15


def test_tuning_feedback_shares_no_text_with_the_shipped_phrases():
    phrases = learn.load_feedback_phrases()
    shipped = {text for poles in phrases.values() for side in poles.values() for text in side}
    cases = feedback_cases("tuning")
    assert len(cases) == 40 and not {text for text, _, _ in cases} & shipped


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Nothing fancy, please.", [("fancy", -1), ("please", 1)]),
        ("No burgers, I want sushi.", [("burgers", -1), ("I want sushi", 1)]),
        ("I don't want to wake up early.", [("I", 1), ("want to wake up early", -1)]),
        ("I don’t want to wake up early.", [("I", 1), ("want to wake up early", -1)]),  # typographic apostrophe
        ("Not the museum but the bar", [("the museum", -1), ("the bar", 1)]),
        ("Please avoid the crowds; skip lunch", [("Please", 1), ("the crowds", -1), ("lunch", -1)]),
        ("Without kids, never noisy", [("kids", -1), ("noisy", -1)]),
        ("No.", []),
        ("Can't we go somewhere cheaper?", [("Can't we go somewhere cheaper", 1)]),  # a question asks
        ("Why not somewhere famous? No burgers!", [("Why not somewhere famous", 1), ("burgers", -1)]),
        ("Can you skip the museum, or not?", [("Can you", 1), ("the museum", -1), ("or not", 1)]),
        ("Somewhere cheap, near the sea!", [("Somewhere cheap", 1), ("near the sea", 1)]),
        ("Nowhere notable, another nod", [("Nowhere notable", 1), ("another nod", 1)]),  # words that begin with a cue
    ],
)
def test_negation_scopes(text, pieces):
    assert learn.negation_scopes(text) == pieces


def test_a_negation_turns_the_direction_around_and_plain_text_reads_as_before():
    fancy, not_fancy = (learn.text_directions(t, PHRASES)["cost"] for t in ("Fancy, please.", "Nothing fancy, please."))
    assert fancy > learn.MIN_TEXT_DIRECTION and not_fancy < -learn.MIN_TEXT_DIRECTION
    assert learn.text_directions("No.", PHRASES) == dict.fromkeys(PHRASES, 0.0)
    from app.analysis.embeddings import embed

    text = "Something more affordable, near the sea."  # no cue: one piece, the whole text
    assert learn.text_directions(text, PHRASES) == learn._pole_directions(embed([text])[0], PHRASES)


USER_SAYS = {
    -1: ["Those prices are way out of my league.", "Anything more affordable around?"],
    +1: ["Can we go somewhere really elegant?", "Something more luxurious, please."],
}


@pytest.mark.parametrize("hidden", [-100.0, 100.0])
def test_learning_from_feedback_text_end_to_end(hidden):
    """E4 with real sentence embeddings for direction (no LLM): text -> Eq. 1."""
    state, user = (
        LearnState(values={"cost": 0.0, "age": 0.0}, step=25.0),
        SimulatedUser(hidden),
    )
    for round_ in range(12):
        thumbs, _ = user.feedback(state.values["cost"])
        text = "" if thumbs == "up" else USER_SAYS[int(np.sign(hidden))][round_ % 2]
        state = learn_step(state, thumbs, learn.text_directions(text, PHRASES))
    assert np.sign(state.values["cost"]) == np.sign(hidden)
    assert abs(state.values["cost"] - hidden) < 50
    assert abs(state.values["age"]) < 15  # the other dimension barely moves


def test_learn_from_feedback_text_without_thumbs():
    state = LearnState(values={"cost": 0.0, "age": 0.0}, step=20.0)
    new = learn.learn_from_feedback(state, None, "Anything more affordable around?", PHRASES)
    assert new.values["cost"] < -5 and new.values["age"] == pytest.approx(0.0, abs=1.0)
    silent = learn.learn_from_feedback(state, "down", "  ", PHRASES)
    assert silent.values == state.values  # thumbs down at neutral, no text: no direction


def test_load_feedback_phrases(tmp_path):
    path = tmp_path / "feedback_phrases.json"
    path.write_text(json.dumps(PHRASES), encoding="utf-8")
    assert learn.load_feedback_phrases(path) == PHRASES
    path.write_text(json.dumps({"cost": {"positive": ["more"]}}), encoding="utf-8")
    with pytest.raises(ValueError, match="'cost' needs"):
        learn.load_feedback_phrases(path)


# --- profiles -------------------------------------------------------------------------


@pytest.fixture
def profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path))
    return tmp_path / "profiles"


def make_profile(name: str = "date-night") -> Profile:
    profile = Profile(name=name, model_id="smollm2-360m")
    profile.set("cost", 62.5, "calibrate")
    profile.set("age", -35.0, "learn")
    return profile


def test_profile_round_trip_under_the_cache_dir(profile_dir):
    path = profiles.save_profile(make_profile())
    assert path == profile_dir / "date-night.json"
    assert profiles.load_profile("date-night") == make_profile()
    assert profiles.list_profiles() == ["date-night"]
    text = profiles.export_profile(make_profile())
    assert profiles.profile_from_json(text) == make_profile()
    assert json.loads(text)["dimensions"]["cost"] == {
        "value": 62.5,
        "method": "calibrate",
    }
    assert profiles.delete_profile("date-night") is True
    assert profiles.delete_profile("date-night") is False
    assert profiles.list_profiles() == []


@pytest.mark.parametrize(
    "name",
    ["", "../evil", "a/b", "a b", "dot.json", "x" * 65, "..", "naïve", "name\n", None],
)
def test_bad_profile_names_are_rejected(profile_dir, name):
    with pytest.raises(ValueError, match="bad profile name"):
        profiles.save_profile(make_profile(name))
    with pytest.raises(ValueError, match="bad profile name"):
        profiles.load_profile(name)
    with pytest.raises(ValueError, match="bad profile name"):
        profiles.delete_profile(name)
    assert not profile_dir.exists() or list(profile_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "invalid JSON"),
        ({"name": "p"}, "dimensions"),
        (
            {"name": "p", "dimensions": {"cost": {"value": 150, "method": "learn"}}},
            "value",
        ),
        (
            {"name": "p", "dimensions": {"cost": {"value": 10, "method": "guess"}}},
            "method",
        ),
        (
            {
                "name": "p",
                "dimensions": {"cost": {"value": float("nan"), "method": "learn"}},
            },
            "value",
        ),
    ],
)
def test_bad_profiles_are_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        profiles.profile_from_json(data)


def test_a_failed_write_keeps_the_old_profile(profile_dir, monkeypatch):
    profiles.save_profile(make_profile())
    before = (profile_dir / "date-night.json").read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    changed = make_profile()
    changed.set("cost", -100.0, "select")
    with pytest.raises(OSError, match="disk full"):
        profiles.save_profile(changed)
    assert (profile_dir / "date-night.json").read_bytes() == before
    assert [p.name for p in profile_dir.iterdir()] == ["date-night.json"]  # no temp left


def test_load_missing_profile(profile_dir):
    with pytest.raises(ValueError, match="no profile named 'nobody'"):
        profiles.load_profile("nobody")
