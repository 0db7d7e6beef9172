"""A user never waits behind the background library build for more than one forward pass.

Shown without timing: a pre-hook on the decoder stack records which thread ran each forward pass
and holds the build's first pass open until the test lets it go, so the order of passes is fixed
by events, not by speed.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable

import pytest
import torch

from app.steering.batcher import GenerationBatcher
from app.steering.engine import SteeringEngine
from app.steering.generation import GenerationRequest, last
from app.steering.generation import stream_generate as generate_stream
from app.steering.library import VectorLibrary
from app.steering.model_lock import ModelLock
from tests.conftest import make_tiny_model
from tests.test_extraction import NEG, POS

WAIT = 120  # seconds: generous, only a hang reaches it

BUILD = "library-build"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.005)


def start(target: Callable[[], object], name: str) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = target()
        except BaseException as error:
            out["error"] = error

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, out


# --- the lock on its own ------------------------------------------------------------------


def test_lock_is_reentrant_and_owned():
    lock = ModelLock()
    with lock, lock:
        assert lock.held_by_me()
    assert not lock.held_by_me()
    with pytest.raises(RuntimeError, match="does not hold it"):
        lock.release()


def test_background_waits_while_a_claim_is_held_and_foreground_does_not():
    lock = ModelLock()
    release = lock.claim()
    got = threading.Event()

    def background() -> None:
        with lock.background(), lock:
            got.set()

    thread, _ = start(background, "bg")
    wait_until(lambda: lock.background_waiting() == 1, "the background thread to wait")
    assert not got.is_set()
    with lock:  # foreground work passes straight through
        assert lock.held_by_me()
    assert not got.is_set()  # the claim still holds the background back
    release()
    release()  # a second call changes nothing
    thread.join(WAIT)
    assert got.is_set() and lock.pending() == 0 and lock.background_yields == 1


def test_a_waiting_foreground_thread_goes_before_a_background_one():
    lock = ModelLock()
    order: list[str] = []
    lock.acquire()  # the test holds the model; both others queue behind it

    def background() -> None:
        with lock.background(), lock:
            order.append("background")

    def foreground() -> None:
        with lock:
            order.append("foreground")

    bg, _ = start(background, "bg")
    wait_until(lambda: lock.background_waiting() == 1, "the background thread to wait")
    fg, _ = start(foreground, "fg")
    wait_until(lambda: lock.pending() == 1, "the foreground thread to wait")
    lock.release()
    bg.join(WAIT)
    fg.join(WAIT)
    assert order == ["foreground", "background"]


def test_claims_of_a_background_thread_count_for_nothing():
    lock = ModelLock()
    with lock.background(), lock.foreground():
        assert lock.pending() == 0
        with lock:  # no self-deadlock
            pass


# --- the library build and a user ---------------------------------------------------------


class PassRecorder:
    """Records the thread of every forward pass of the decoder stack; holds one of the build's open."""

    def __init__(self, engine: SteeringEngine, hold_at: int = 1) -> None:
        self.hold_at = hold_at  # which of the build's passes to hold open (1: its first)
        self.threads: list[str] = []
        self.build_in_pass = threading.Event()
        self.let_build_go = threading.Event()
        self.handle = engine.base_model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        name = threading.current_thread().name
        self.threads.append(name)
        if name == BUILD and self.threads.count(BUILD) == self.hold_at:
            self.build_in_pass.set()
            if not self.let_build_go.wait(WAIT):
                raise RuntimeError("the test never let the build go on")

    def runs(self) -> list[tuple[str, int]]:
        """Consecutive passes of one thread: ``[(thread, count), ...]``."""
        out: list[tuple[str, int]] = []
        for name in self.threads:
            if out and out[-1][0] == name:
                out[-1] = (name, out[-1][1] + 1)
            else:
                out.append((name, 1))
        return out


@pytest.fixture
def lab_parts(tmp_path, char_tokenizer):
    folder = tmp_path / "concepts"
    folder.mkdir()
    for name in ("alpha", "beta", "gamma"):
        (folder / f"{name}.json").write_text(json.dumps({"name": name, "positive": POS, "negative": NEG}))
    engine = SteeringEngine(make_tiny_model("llama", seed=3))
    library = VectorLibrary(
        engine, char_tokenizer, model_id="tiny", fingerprint="fp", concepts_root=folder, root=tmp_path / "vectors"
    )
    library.prioritize("alpha")  # the build starts with alpha
    recorder = PassRecorder(engine)
    yield engine, library, recorder
    recorder.handle.remove()


def test_a_concept_asked_for_is_built_at_once_while_the_build_pauses(lab_parts):
    engine, library, recorder = lab_parts
    build = library.start_background_build()
    assert recorder.build_in_pass.wait(WAIT)  # the build is inside alpha's first forward pass
    user, out = start(lambda: library.get("gamma"), "user")
    wait_until(lambda: engine.lock.pending() > 0, "the user's request to be pending")
    recorder.let_build_go.set()
    user.join(WAIT)
    assert "error" not in out and out["value"].name == "gamma"
    assert library.cached("alpha") is None  # the user did not wait for the concept the build was on
    build.join(WAIT)
    runs = recorder.runs()
    # the build's first pass, then every pass of the user's build in one run, then the build again
    assert runs[0] == (BUILD, 1) and runs[1][0] == "user" and runs[1][1] >= 2
    assert [name for name, _ in runs[2:]] == [BUILD]
    assert library.ready_names() == ["alpha", "beta", "gamma"] and library.status == "ready"
    assert engine.lock.background_yields >= 1 and engine.hook_count() == 1  # only the recorder's


def test_a_generation_runs_between_two_forward_passes_of_the_build(lab_parts, char_tokenizer):
    engine, library, recorder = lab_parts
    batcher = GenerationBatcher(engine, char_tokenizer, is_chat=False)
    build = library.start_background_build()
    assert recorder.build_in_pass.wait(WAIT)
    request = GenerationRequest("Hello there", max_new_tokens=5, temperature=0.0)
    user, out = start(lambda: last(batcher.stream([request])), "user")
    wait_until(lambda: engine.lock.pending() > 0, "the generation to be pending")
    recorder.let_build_go.set()
    user.join(WAIT)
    assert "error" not in out and out["value"][0].token_ids
    build.join(WAIT)
    runs = recorder.runs()
    assert runs[0] == (BUILD, 1)
    assert runs[1][0] == "generation-batcher"  # prefill and every decoding step, none of the build's between
    assert [name for name, _ in runs[2:]] == [BUILD]
    assert library.status == "ready" and engine.active_hooks() == []


def test_asking_for_the_concept_being_built_takes_the_builds_result(lab_parts):
    engine, library, recorder = lab_parts
    build = library.start_background_build()
    assert recorder.build_in_pass.wait(WAIT)
    user, out = start(lambda: library.get("alpha"), "user")
    recorder.let_build_go.set()
    user.join(WAIT)
    build.join(WAIT)
    assert "error" not in out and out["value"] is library.cached("alpha")
    assert "user" not in recorder.threads  # built once, by the build


def test_a_background_generation_lets_a_user_in_between_two_of_its_steps(char_tokenizer):
    # The library's strength sweep generates in the background: a user must not wait for all of it.
    engine = SteeringEngine(make_tiny_model("llama", seed=3))
    recorder = PassRecorder(engine, hold_at=3)  # the sweep's prefill and first step are done, the next runs
    sweep = GenerationRequest("Hello there", max_new_tokens=8, temperature=0.0)
    alone = last(generate_stream(engine, char_tokenizer, [sweep]))
    recorder.threads.clear()

    def background() -> list:
        with engine.lock.background():
            return last(generate_stream(engine, char_tokenizer, [sweep]))

    build, built = start(background, BUILD)
    assert recorder.build_in_pass.wait(WAIT)
    request = GenerationRequest("Hi", max_new_tokens=4, temperature=0.0)
    user, out = start(lambda: last(generate_stream(engine, char_tokenizer, [request])), "user")
    wait_until(lambda: engine.lock.pending() > 0, "the user's generation to wait for the model")
    recorder.let_build_go.set()
    user.join(WAIT)
    build.join(WAIT)
    assert "error" not in out and "error" not in built
    runs = recorder.runs()
    assert runs[0] == (BUILD, 3) and runs[1][0] == "user" and runs[2][0] == BUILD and len(runs) == 3
    assert built["value"][0].token_ids == alone[0].token_ids  # the paused generation went on where it was
    assert engine.hook_count() == 1  # only the recorder's


# --- a user who sets the strength does not wait for a strength sweep ----------------------


def test_a_user_who_sets_the_strength_steers_once_extracted_and_the_build_sweeps_after(lab_parts, monkeypatch):
    engine, library, recorder = lab_parts
    sweeps: list[tuple[str, str]] = []
    real_recommend = library.recommend

    def recording_recommend(concept, extracted):
        sweeps.append((concept.name, threading.current_thread().name))
        return real_recommend(concept, extracted)

    monkeypatch.setattr(library, "recommend", recording_recommend)
    build = library.start_background_build()
    assert recorder.build_in_pass.wait(WAIT)  # the build is inside alpha's first forward pass
    user, out = start(lambda: library.get("gamma", recommended=False), "user")
    wait_until(lambda: engine.lock.pending() > 0, "the user's request to be pending")
    recorder.let_build_go.set()
    user.join(WAIT)
    assert "error" not in out
    vector = out["value"]
    assert vector.metadata["recommendation"] == "pending" and "strength_sweep" not in vector.metadata
    assert vector.recommended_layers  # extraction's best layer: enough to steer with the user's strength
    build.join(WAIT)
    assert ("gamma", BUILD) in sweeps and ("gamma", "user") not in sweeps  # the build swept it for the user
    assert sweeps[:2] == [("alpha", BUILD), ("gamma", BUILD)]  # next in line after the concept it was on
    done = library.cached("gamma")
    assert done is not None and "strength_sweep" in done.metadata and "recommendation" not in done.metadata
    assert torch.equal(done.layers[1], vector.layers[1])  # the same directions, now with a recommendation
    assert library.ready_names() == ["alpha", "beta", "gamma"]


def test_a_concept_being_swept_in_the_background_can_steer_at_once(lab_parts, char_tokenizer):
    engine, library, recorder = lab_parts
    extraction_passes = math.ceil((len(POS) + len(NEG)) / 16)  # capture's batches (app/steering/extraction.py)
    recorder.hold_at = extraction_passes + 1  # alpha is extracted; hold the first pass of its sweep
    build = library.start_background_build()
    assert recorder.build_in_pass.wait(WAIT)
    vector = library.get("alpha", recommended=False)  # returns while the build's sweep pass is held
    assert vector.metadata["recommendation"] == "pending" and library.cached("alpha") is None
    recorder.let_build_go.set()
    build.join(WAIT)
    assert library.cached("alpha") is not None and "strength_sweep" in library.cached("alpha").metadata


def test_without_a_background_build_the_sweep_runs_in_the_call(lab_parts):
    _, library, _ = lab_parts
    vector = library.get("beta", recommended=False)
    assert "strength_sweep" in vector.metadata and library.cached("beta") is vector
