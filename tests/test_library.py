"""The vector library: cache keys, reuse, rebuilds of corrupt or foreign files, priorities."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from app.steering.engine import SteeringEngine
from app.steering.library import Settings, VectorLibrary
from app.steering.vectors import SteeringVector
from tests.conftest import make_tiny_model
from tests.test_extraction import NEG, POS


@pytest.fixture
def concept_dir(tmp_path):
    folder = tmp_path / "concepts"
    folder.mkdir()
    for name in ("joy", "gloom"):
        (folder / f"{name}.json").write_text(
            json.dumps(
                {"name": name, "positive": POS if name == "joy" else NEG, "negative": NEG if name == "joy" else POS}
            )
        )
    return folder


@pytest.fixture
def engine():
    return SteeringEngine(make_tiny_model("llama", seed=5))


def library(engine, tokenizer, concept_dir, tmp_path, fingerprint="fp") -> VectorLibrary:
    return VectorLibrary(
        engine,
        tokenizer,
        model_id="tiny",
        fingerprint=fingerprint,
        concepts_root=concept_dir,
        root=tmp_path / "vectors",
    )


def test_build_caches_and_second_start_loads_without_building(
    engine, char_tokenizer, concept_dir, tmp_path, monkeypatch
):
    first = library(engine, char_tokenizer, concept_dir, tmp_path)
    first.build_all()
    assert first.ready_names() == ["gloom", "joy"] and first.status == "ready"
    files = sorted(p.name for p in (tmp_path / "vectors" / "fp").iterdir())
    assert len(files) == 2 and all(f.endswith(".safetensors") for f in files)
    vector = first.get("joy")
    sweep = vector.metadata["strength_sweep"]  # judged on generated replies (app/steering/recommend.py)
    assert vector.recommended_strength == sweep["chosen_strength"] in sweep["strengths"]
    assert vector.recommended_layers == sweep["chosen_layers"] in sweep["layers"]

    second = library(engine, char_tokenizer, concept_dir, tmp_path)
    monkeypatch.setattr(second, "extract", lambda *a, **k: pytest.fail("should load from cache"))
    assert second.load_cached() == 2
    assert second.missing() == []
    assert second.get("joy").layers[1].tolist() == vector.layers[1].tolist()


def test_edited_concept_or_other_settings_get_a_new_key(engine, char_tokenizer, concept_dir, tmp_path):
    lib = library(engine, char_tokenizer, concept_dir, tmp_path)
    concept = lib.concepts()["joy"]
    before = lib.path_for(concept, Settings())
    data = json.loads((concept_dir / "joy.json").read_text())
    data["positive"].append("Another happy line")
    (concept_dir / "joy.json").write_text(json.dumps(data))
    after = lib.path_for(lib.concepts()["joy"], Settings())
    assert before != after
    assert lib.path_for(concept, Settings(method="pca")) != before


def test_corrupt_and_foreign_files_are_rebuilt_with_a_warning(engine, char_tokenizer, concept_dir, tmp_path, caplog):
    lib = library(engine, char_tokenizer, concept_dir, tmp_path)
    path = lib.path_for(lib.concepts()["joy"], Settings())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage, not safetensors")
    with caplog.at_level(logging.WARNING):
        vector = lib.get("joy")
    assert "rebuilding" in caplog.text
    assert SteeringVector.load(path).name == "joy"  # the good file replaced the bad one

    other = library(engine, char_tokenizer, concept_dir, tmp_path, fingerprint="fp2")
    foreign = other.path_for(other.concepts()["joy"], Settings())
    foreign.parent.mkdir(parents=True)
    vector.save(foreign)  # a file of model "fp" under model "fp2"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rebuilt = other.get("joy")
    assert "another model" in caplog.text and rebuilt.model_fingerprint == "fp2"


def test_concurrent_requests_build_once(engine, char_tokenizer, concept_dir, tmp_path, monkeypatch):
    lib = library(engine, char_tokenizer, concept_dir, tmp_path)
    calls = []
    real_extract = lib.extract

    def counting_extract(*args, **kwargs):
        calls.append(1)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(lib, "extract", counting_extract)
    results = []
    threads = [threading.Thread(target=lambda: results.append(lib.get("joy"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1


def test_prioritized_concept_is_built_first(engine, char_tokenizer, concept_dir, tmp_path, monkeypatch):
    lib = library(engine, char_tokenizer, concept_dir, tmp_path)
    order = []
    real_extract = lib.extract
    monkeypatch.setattr(
        lib, "extract", lambda concept, *a, **k: order.append(concept.name) or real_extract(concept, *a, **k)
    )
    lib.prioritize("joy")
    lib.build_all()
    assert order == ["joy", "gloom"]


def test_unwritable_cache_still_serves(engine, char_tokenizer, concept_dir, tmp_path, caplog):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    lib = VectorLibrary(
        engine, char_tokenizer, model_id="tiny", fingerprint="fp", concepts_root=concept_dir, root=blocked
    )
    with caplog.at_level(logging.WARNING):
        assert lib.get("joy").name == "joy"
    assert "could not cache" in caplog.text


def test_an_unsaved_edit_does_not_take_over_the_saved_name(engine, char_tokenizer, concept_dir, tmp_path):
    from dataclasses import replace

    lib = library(engine, char_tokenizer, concept_dir, tmp_path)
    saved = lib.get("joy")
    edited = replace(lib.concepts()["joy"], positive=(*POS, "An extra cheerful line"))
    draft = lib.get(edited)
    assert draft is not saved
    assert lib.cached("joy") is saved and lib.get("joy") is saved
