"""A classroom through the Gradio API: concurrent users with different steering each get exactly
what they would get alone, no hook outlives a request, and a full queue turns users away cleanly.

Runs against the real ``python -m app serve`` on a tiny model (tests/reliability_support.py),
one client (one browser session) per simulated student.
"""

from __future__ import annotations

import threading

import pytest

from tests.reliability_support import SERVER_QUEUE_SIZE, generate_args, health, shared_server

pytestmark = pytest.mark.slow
CONCEPTS = ("happy", "pirate")
POSITIONS = ("all", "prompt", "generated", "last")
LAYERS = ("", "0", "1", "2", "0,2", "1-2")


def student_request(i: int, max_tokens: int = 10) -> dict:
    """Student ``i``'s settings: their own prompt, concept, strength, layers and position mode."""
    return generate_args(
        f"Student {i} writes that the day",
        concept=CONCEPTS[i % 2],
        strength=float((i % 9) * 2 - 8),  # -8 .. 8, zero included
        layer_text=LAYERS[i % len(LAYERS)],
        position=POSITIONS[i % len(POSITIONS)],
        max_tokens=max_tokens,
        temp=0.0,
    )


def texts(outputs) -> tuple[str, str]:
    """The baseline and steered texts of a /generate result (the status line has timings)."""
    return outputs[0], outputs[1]


@pytest.fixture(scope="module")
def served():
    return shared_server()


@pytest.fixture(scope="module")
def clients(served):
    """Sixteen students, each with their own session."""
    return [served.client() for _ in range(16)]


def run_concurrently(clients, requests) -> dict[int, object]:
    """Each client sends its request at the same moment; returns index -> outputs or the error."""
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(len(requests))

    def send(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = clients[i % len(clients)].predict(api_name="/generate", **requests[i])
        except Exception as error:  # a refusal is an outcome to check, not a crash of the test
            outcomes[i] = error

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return outcomes


def test_sixteen_concurrent_students_each_get_their_solo_output(clients):
    requests = [student_request(i) for i in range(16)]
    solo = [texts(clients[0].predict(api_name="/generate", **r)) for r in requests]  # one at a time
    assert len({s[1] for s in solo}) > 8, "the settings should give different steered texts"
    before = health(clients[0])["batches_run"]

    outcomes = run_concurrently(clients, requests)

    errors = {i: o for i, o in outcomes.items() if isinstance(o, Exception)}
    assert not errors, errors
    assert [texts(outcomes[i]) for i in range(16)] == solo
    after = health(clients[0])
    assert after["hooks"] == 0 and after["active_steering"] == []
    shared = after["batches_run"] - before
    assert shared < 16, f"{shared} batches for 16 requests: they did not share batches"
    print(f"16 concurrent students: {shared} shared batches, every output equal to its solo run, 0 hooks after")


def test_a_full_classroom_is_turned_away_cleanly_and_the_rest_are_exact(served, clients):
    """More requests than running slots plus queue places: the extra ones get 'queue is full',
    every admitted one gets its exact solo output, and the app serves on."""
    n = 16 + SERVER_QUEUE_SIZE + 24  # 16 run at once, SERVER_QUEUE_SIZE wait, the rest find it full
    kinds = [student_request(i, max_tokens=40) for i in range(4)]
    solo = [texts(clients[0].predict(api_name="/generate", **r)) for r in kinds]

    outcomes = run_concurrently(clients, [kinds[i % 4] for i in range(n)])

    served_ok = [i for i, o in outcomes.items() if not isinstance(o, Exception)]
    refused = {i: str(o) for i, o in outcomes.items() if isinstance(o, Exception)}
    assert len(outcomes) == n
    assert all(texts(outcomes[i]) == solo[i % 4] for i in served_ok)
    assert all("queue is full" in message.lower() for message in refused.values()), refused
    assert len(served_ok) >= 16 + SERVER_QUEUE_SIZE // 2
    info = health(clients[0])
    assert info["hooks"] == 0 and served.alive()
    assert texts(clients[0].predict(api_name="/generate", **kinds[0])) == solo[0]
    print(f"full classroom: {n} at once, {len(served_ok)} served exactly, {len(refused)} told the queue is full")
