"""Concept packs: the shipped ones are valid; bad input gets a message naming the problem."""

from __future__ import annotations

import json

import pytest

from app.steering import concepts as store
from app.steering.concepts import ConceptError, concept_from_dict, parse_concept_bytes

TEACHING = {
    "happy", "sad", "angry", "fearful", "excited", "calm", "formal", "casual", "poetic",
    "technical", "pirate", "shakespeare", "enthusiastic", "pessimistic", "brief", "verbose",
}  # fmt: skip


def good(**changes):
    data = {"name": "my_concept", "positive": ["a b c", "d e f"], "negative": ["g h i", "j k l"]}
    data.update(changes)
    return data


def test_shipped_concepts_are_valid_and_complete():
    concepts = store.load_all()
    assert TEACHING <= set(concepts)
    teaching = [c for c in concepts.values() if c.category != "preference"]
    assert len(teaching) >= 17
    for concept in teaching:
        assert len(concept.positive) >= 20 and len(concept.negative) >= 20, concept.name
        assert len(set(concept.positive)) == len(concept.positive), concept.name


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not a dict", "JSON object"),
        (good(name="../../etc/passwd"), "bad concept name"),
        (good(name="Upper"), "bad concept name"),
        (good(name=""), "bad concept name"),
        (good(name=None), "bad concept name"),
        ({"name": "x", "positive": ["a", "b"]}, "missing 'negative'"),
        (good(positive="one string"), "must be a list"),
        (good(positive=["only one"]), "at least 2"),
        (good(positive=["ok", "   "]), "positive example 2 is empty"),
        (good(negative=["ok", 5]), "negative example 2 is not text"),
        (good(positive=["same", "x"], negative=["same", "y"]), "both sides"),
        (good(positive=["x" * 2001, "y"]), "limit is 2000"),
        (good(positive=["p"] * 501), "limit is 500"),
        (good(labels=["a"]), "'labels' must be"),
        (good(prompts=[""]), "'prompts' must be"),
    ],
)
def test_bad_concepts_are_refused_with_a_reason(data, message):
    with pytest.raises(ConceptError, match=message):
        concept_from_dict(data)


def test_bytes_checks_size_encoding_and_json():
    with pytest.raises(ConceptError, match="not UTF-8"):
        parse_concept_bytes(b"\xff\xfe{", "up.json")
    with pytest.raises(ConceptError, match="not valid JSON"):
        parse_concept_bytes(b"{nope", "up.json")
    with pytest.raises(ConceptError, match="limited to"):
        parse_concept_bytes(b" " * 1_000_001, "big.json")
    assert parse_concept_bytes(json.dumps(good()).encode()).name == "my_concept"


def test_content_hash_follows_examples_only():
    a = concept_from_dict(good())
    assert a.content_hash == concept_from_dict(good(description="other words")).content_hash
    assert a.content_hash != concept_from_dict(good(positive=["a b c", "d e g"])).content_hash


def test_custom_save_load_and_conflicts(tmp_path):
    (tmp_path / "happy.json").write_text(json.dumps(good(name="happy")))
    concept = concept_from_dict(good())
    path = store.save_custom(concept, tmp_path)
    assert path == tmp_path / "custom" / "my_concept.json"
    loaded = store.load_all(tmp_path)
    assert loaded["my_concept"].positive == concept.positive
    assert loaded["my_concept"].source == "custom/my_concept.json"
    with pytest.raises(ConceptError, match="exists"):
        store.save_custom(concept, tmp_path)
    with pytest.raises(ConceptError, match="built-in"):
        store.save_custom(concept_from_dict(good(name="happy")), tmp_path)


def test_bad_custom_file_is_skipped_but_bad_builtin_fails(tmp_path):
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "broken.json").write_text("{")
    (tmp_path / "fine.json").write_text(json.dumps(good(name="fine")))
    assert list(store.load_all(tmp_path)) == ["fine"]
    (tmp_path / "bad.json").write_text(json.dumps(good(name="other")))
    with pytest.raises(ConceptError, match="must match its name"):
        store.load_all(tmp_path)


def test_resolve_unknown_lists_known(tmp_path):
    (tmp_path / "fine.json").write_text(json.dumps(good(name="fine")))
    with pytest.raises(ConceptError, match="unknown concept 'nope'. Known concepts: fine"):
        store.find_concept("nope", tmp_path)
    assert store.find_concept(str(tmp_path / "fine.json")).name == "fine"
