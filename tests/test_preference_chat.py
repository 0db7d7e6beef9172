"""The preference tabs' core (app/preference_chat.py): dimensions, steering from slider values,
chat requests, calibration questions, feedback phrases and profile merges. No model needed."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from app.preferences import chat as pc
from app.preferences.functional_range import DEFAULT_FACTOR
from app.preferences.profiles import Profile, load_profile, save_profile
from app.steering.concepts import Concept
from app.steering.engine import row_deltas
from app.steering.vectors import SteeringVector

HIDDEN = 4


def vector(name: str, strength: float = 4.0, layers=(1, 2)) -> SteeringVector:
    directions = {layer: torch.eye(HIDDEN)[layer % HIDDEN] for layer in range(4)}
    return SteeringVector(
        name,
        "m",
        "fp",
        HIDDEN,
        directions,
        norms={layer: 10.0 for layer in range(4)},
        method="probe",
        metadata={"recommended_layers": list(layers), "recommended_strength": strength},
    )


def concept(name: str, category: str = "preference", labels=None) -> Concept:
    return Concept(
        name=name,
        description="",
        positive=("a",),
        negative=("b",),
        category=category,
        labels=labels or {},
    )


def test_dimensions_are_the_preference_concepts_in_the_papers_order():
    concepts = {
        "zeta": concept("zeta", labels={"positive": "up", "negative": "down"}),
        "happy": concept("happy", category="emotion"),
        "culture": concept("culture", labels={"positive": "American", "negative": "Asian"}),
        "cost": concept("cost", labels={"positive": "luxury", "negative": "budget"}),
    }
    dims = pc.preference_dimensions(concepts)
    assert [d.name for d in dims] == ["cost", "culture", "zeta"]
    cost = dims[0]
    assert cost.labels == ("budget", "luxury")
    assert cost.slider_label == "budget ◀ cost ▶ luxury"
    assert cost.share(-35) == "35% budget"


def test_steering_has_one_steer_per_nonzero_slider_scaled_to_the_functional_range():
    vectors = {"cost": vector("cost"), "age": vector("age"), "time": vector("time")}
    ranges = {"cost": 6.0, "age": 30.0, "time": 10.0}
    steering = pc.steering_from_values({"cost": -50, "age": 100, "time": 0}, vectors, ranges)
    assert [(s.vector.name, s.strength, s.layers) for s in steering.steers] == [
        ("cost", -3.0, None),
        ("age", 30.0, None),
    ]
    # both land in the residual stream at the recommended layers, summed
    deltas = row_deltas(steering, n_layers=4, hidden_size=HIDDEN)
    expected = vectors["cost"].delta(1, -3.0, "normalized") + vectors["age"].delta(1, 30.0, "normalized")
    assert torch.equal(deltas[1], expected)
    assert set(deltas) == {1, 2}


def test_all_sliders_at_zero_means_no_steering():
    steering = pc.steering_from_values({"cost": 0, "age": 0.0}, {}, {})
    assert steering.steers == () and not steering.is_active


def test_a_nonzero_slider_without_a_vector_is_an_error():
    with pytest.raises(ValueError, match="cost"):
        pc.steering_from_values({"cost": 20}, {}, {})


class FakeLibrary:
    def __init__(self, vectors):
        self.vectors, self.built = vectors, []

    def cached(self, name):
        return None

    def get(self, name, progress=None):
        self.built.append(name)
        if progress is not None:
            progress(1.0, "done")
        return self.vectors[name]


def test_preference_steering_builds_only_the_dimensions_it_uses(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path))
    library = FakeLibrary({"cost": vector("cost", strength=4.0), "age": vector("age")})
    lab = SimpleNamespace(library=library, lm=SimpleNamespace(fingerprint="fp"))
    messages = []
    steering = pc.preference_steering(lab, {"cost": 100, "age": 0}, progress=lambda f, m: messages.append(m))
    assert library.built == ["cost", "cost"]  # the vector, then its functional range (default: its strength)
    assert [s.strength for s in steering.steers] == [DEFAULT_FACTOR * 4.0]
    assert any("building the cost vector" in m for m in messages)


def test_gradio_6_message_content_becomes_text():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello!"},
        {"role": "assistant", "content": [{"type": "file", "file": {"path": "x.png"}}]},
    ]
    assert pc.plain_history(history) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_chat_request_sends_the_whole_conversation(char_tokenizer):
    lab = SimpleNamespace(lm=SimpleNamespace(tokenizer=char_tokenizer))
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Yo"}]
    steering = pc.steering_from_values({}, {}, {})
    request = pc.chat_request(lab, history, " More? ", steering, max_new_tokens=9, temperature=0.0, seed=3)
    assert request.chat is False  # the template is already applied
    assert request.prompt == "User: Hi\nAssistant: Yo\nUser: More?\nAssistant:"
    assert (request.max_new_tokens, request.seed) == (9, 3)
    with pytest.raises(ValueError, match="type a message"):
        pc.chat_request(lab, history, "  ", steering, max_new_tokens=9, temperature=0.0, seed=3)


def test_calibration_questions_rotate_and_fall_back(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"cost": ["Q1", " ", "Q2"], "bad": "x"}))
    questions = pc.load_calibration_questions(path)
    assert questions == {"cost": ["Q1", "Q2"]}
    assert [pc.calibration_question(questions, "cost", r) for r in range(3)] == ["Q1", "Q2", "Q1"]
    assert pc.calibration_question(questions, "age", 0) == pc.FALLBACK_QUESTIONS[0]
    assert pc.load_calibration_questions(tmp_path / "missing.json") == {}


def test_feedback_phrases_fill_missing_dimensions_from_the_pole_names(tmp_path):
    path = tmp_path / "phrases.json"
    path.write_text(json.dumps({"cost": {"positive": ["fancier"], "negative": ["cheaper"]}}))
    dims = [pc.Dimension("cost", "budget", "luxury"), pc.Dimension("age", "kids", "adults")]
    phrases = pc.feedback_phrases(dims, path)
    assert phrases["cost"] == {"positive": ["fancier"], "negative": ["cheaper"]}
    assert any("adults" in p for p in phrases["age"]["positive"])
    assert any("kids" in p for p in phrases["age"]["negative"])
    assert set(pc.feedback_phrases(dims, tmp_path / "missing.json")) == {"cost", "age"}


def test_saving_into_a_profile_keeps_its_other_dimensions(tmp_path):
    old = Profile("alice")
    old.set("age", 40, "learn")
    old.set("cost", 10, "select")
    save_profile(old, tmp_path)
    pc.merge_into_profile("alice", {"cost": -37.5}, "calibrate", "smollm2", directory=tmp_path)
    profile = load_profile("alice", tmp_path)
    assert profile.dimensions == {
        "age": {"value": 40.0, "method": "learn"},
        "cost": {"value": -37.5, "method": "calibrate"},
    }
    assert profile.model_id == "smollm2"
    pc.merge_into_profile("bob", {"time": 5}, "select", directory=tmp_path)
    assert load_profile("bob", tmp_path).dimensions == {"time": {"value": 5.0, "method": "select"}}
    with pytest.raises(ValueError, match="bad profile name"):
        pc.merge_into_profile("no spaces", {"time": 5}, "select", directory=tmp_path)


def test_describe_values():
    dims = [pc.Dimension("cost", "budget", "luxury"), pc.Dimension("age", "kids", "adults")]
    assert pc.describe_values({"cost": -35, "age": 0}, dims) == "cost: 35% budget"
    assert pc.describe_values({"cost": 0}, dims) == "all neutral (no steering)"
