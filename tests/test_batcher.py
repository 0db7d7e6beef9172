"""Concurrent callers share batches and still get exactly their one-at-a-time output."""

from __future__ import annotations

import threading

import pytest

from app.steering.batcher import GenerationBatcher
from app.steering.engine import Steer, Steering
from app.steering.generation import GenerationRequest, generate, last
from tests.test_engine import random_vector


@pytest.fixture
def batcher(tiny_engine, char_tokenizer):
    return GenerationBatcher(tiny_engine, char_tokenizer, is_chat=False, window_s=0.05)


def requests_for(engine):
    vector = random_vector(engine)
    return [
        GenerationRequest(f"User {i} says hi", Steering((Steer(vector, float(i - 3)),)), max_new_tokens=6 + i,
                          temperature=0.7 if i % 2 else 0.0, seed=i)
        for i in range(8)
    ]  # fmt: skip


def collect(batcher, request, out, index):
    out[index] = last(batcher.stream([request]))[0].token_ids


def test_concurrent_callers_get_their_solo_output(batcher, tiny_engine, char_tokenizer):
    requests = requests_for(tiny_engine)
    solo = [generate(tiny_engine, char_tokenizer, [r])[0].token_ids for r in requests]
    out: dict[int, list[int]] = {}
    threads = [threading.Thread(target=collect, args=(batcher, r, out, i)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [out[i] for i in range(8)] == solo
    assert batcher.batches_run < 8  # they really shared batches
    assert tiny_engine.hook_count() == 0


def test_bad_request_is_refused_before_it_joins_a_batch(batcher, tiny_engine):
    vector = random_vector(tiny_engine)
    with pytest.raises(ValueError, match="out of range"):
        list(batcher.stream([GenerationRequest("hi", Steering((Steer(vector, 1.0, (9,)),)))]))
    with pytest.raises(ValueError, match="prompt is empty"):
        list(batcher.stream([GenerationRequest("   ")]))
    with pytest.raises(ValueError, match="temperature"):
        list(batcher.stream([GenerationRequest("hi", temperature=float("nan"))]))
    # the batcher still serves the next caller
    assert len(list(batcher.stream([GenerationRequest("hi", max_new_tokens=3)]))) == 3


def test_closing_early_stops_only_that_caller(batcher, tiny_engine):
    stream = batcher.stream([GenerationRequest("stop me", max_new_tokens=200)])
    next(stream)
    stream.close()
    results = list(batcher.stream([GenerationRequest("next one", max_new_tokens=4)]))
    assert len(results[-1][0].token_ids) == 4
    assert tiny_engine.hook_count() == 0


def test_stop_signal_ends_with_stopped(batcher):
    stop = threading.Event()
    seen = []
    for results in batcher.stream([GenerationRequest("stop soon", max_new_tokens=200)], stop):
        seen.append(results)
        if len(seen) == 3:
            stop.set()
    assert seen[-1][0].finish_reason == "stopped"
    assert len(seen) <= 5
