"""The REST API on the real ``python -m app serve`` with SmolLM2: the official OpenAI client
(streaming and not, with and without steering), raw HTTP to every endpoint under ``--auth``, and
REST and Gradio users at once, each getting what it gets alone.

Skipped when SmolLM2 is not set up, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import SMALL_MODEL, require_model, sandbox_cache
from tests.reliability_support import AUTH, generate_args, start_server

MODEL_ID = SMALL_MODEL
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ASK = [{"role": "user", "content": "Tell me about the sea in one sentence."}]
PIRATE = {"steering": [{"concept": "pirate", "strength": 6}]}


@pytest.fixture(scope="module")
def server():
    require_model(MODEL_ID)
    root = Path(tempfile.mkdtemp(prefix="steering-lab-api-"))
    sandbox_cache(root)
    served = start_server(root, "--model", MODEL_ID)  # the last --model wins
    yield served
    served.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=AUTH[1], timeout=600, max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server.url, auth=AUTH, timeout=600) as client:
        yield client


def reply(openai_client, **extra) -> str:
    answer = openai_client.chat.completions.create(
        model="anything", messages=ASK, max_tokens=24, temperature=0, extra_body=extra or None
    )
    assert answer.model == MODEL_ID
    return answer.choices[0].message.content


def test_the_openai_client_lists_the_model(openai_client):
    assert [m.id for m in openai_client.models.list()] == [MODEL_ID]


def test_the_openai_client_chats_with_and_without_steering(openai_client):
    plain, steered = reply(openai_client), reply(openai_client, **PIRATE)
    assert plain.strip() and steered.strip() and plain != steered
    assert reply(openai_client) == plain  # greedy: the same again


def test_the_openai_client_streams_the_same_text(openai_client):
    for extra in ({}, PIRATE):
        whole = reply(openai_client, **extra)
        stream = openai_client.chat.completions.create(
            model=MODEL_ID, messages=ASK, max_tokens=24, temperature=0, stream=True, extra_body=extra or None
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_the_openai_client_completes_text_and_streams_it(openai_client):
    kwargs = {"model": MODEL_ID, "prompt": "The ship sailed", "max_tokens": 12, "temperature": 0}
    plain = openai_client.completions.create(**kwargs)
    steered = openai_client.completions.create(**kwargs, extra_body={**PIRATE, "positions": "generated"})
    assert plain.choices[0].text != steered.choices[0].text
    assert plain.usage.completion_tokens == 12
    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(**kwargs, stream=True))
    assert streamed == plain.choices[0].text


def test_the_openai_client_sees_our_errors(openai_client, server):
    import openai

    with pytest.raises(openai.BadRequestError, match="unknown concept 'kraken'"):
        reply(openai_client, steering=[{"concept": "kraken", "strength": 3}])
    with pytest.raises(openai.BadRequestError, match="over the limit of 100"):
        openai_client.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=1000)
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_every_endpoint_over_raw_http(http, server):
    import httpx

    assert httpx.get(f"{server.url}/v1/concepts").status_code == 401  # the login is needed
    headers = {"Authorization": f"Bearer {AUTH[1]}"}
    assert httpx.get(f"{server.url}/v1/health", headers=headers).json()["model"] == MODEL_ID
    assert "pirate" in {c["name"] for c in http.get("/v1/concepts").json()["concepts"]}
    made = http.post(
        "/v1/concepts",
        json={
            "name": "sunny",
            "positive": ["What a bright, sunny day!", "The sun warms my face."],
            "negative": ["What a dark, rainy day.", "The rain soaks my coat."],
        },  # fmt: skip
    )
    assert made.status_code == 200 and made.json()["concept"]["recommended_layers"]
    assert (server.root / "concepts" / "custom" / "sunny.json").is_file()
    vector = http.get("/v1/vectors/sunny", params={"format": "gguf"})
    assert vector.status_code == 200 and vector.content[:4] == b"GGUF"
    assert http.post("/v1/vectors", files={"file": ("sun-cv.gguf", vector.content)}).status_code == 200
    body = {"prompt": "The weather today", "max_tokens": 12, "steering": [{"concept": "sun-cv"}]}
    compared = http.post("/v1/compare", json=body).json()
    assert compared["baseline"]["text"] != compared["steered"]["text"]
    chat = http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 8, "temperature": 0})
    assert chat.json()["choices"][0]["message"]["content"].strip()
    assert http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).json()["usage"]["completion_tokens"]
    assert http.get("/v1/models").json()["data"][0]["id"] == MODEL_ID
    assert "/v1/chat/completions" in http.get("/openapi.json").json()["paths"]
    assert http.get("/docs").status_code == 200
    assert http.get("/docs/assets/swagger-ui-bundle.js").status_code == 200  # served here, not from a CDN
    assert http.get("/v1/health").json()["hooks"] == 0
    assert httpx.get(server.url).status_code == 200  # the UI on the same port


def test_rest_and_gradio_users_at_once_get_what_they_get_alone(openai_client, server):
    client = server.client()
    jobs = {
        "rest-plain": lambda: reply(openai_client),
        "rest-pirate": lambda: reply(openai_client, **PIRATE),
        "gradio-happy": lambda: client.predict(
            **generate_args("The meeting went", "happy", 6.0, max_tokens=10), api_name="/generate"
        )[:2],  # fmt: skip
        "gradio-pirate": lambda: client.predict(
            **generate_args("Tell me a story", "pirate", 5.0, max_tokens=10), api_name="/generate"
        )[:2],  # fmt: skip
    }
    alone = {name: job() for name, job in jobs.items()}
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = dict(zip(jobs, pool.map(lambda job: job(), jobs.values())))
    assert together == alone


def test_a_client_that_hangs_up_mid_stream_leaves_no_hooks_and_the_next_request_runs(http):
    import time

    body = {"messages": ASK, "max_tokens": 100, "temperature": 0, "stream": True, **PIRATE}
    with http.stream("POST", "/v1/chat/completions", json=body) as answer:
        lines = answer.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # it started; now hang up
    deadline = time.monotonic() + 300
    while http.get("/v1/health").json()["hooks"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert http.get("/v1/health").json()["hooks"] == 0
    done = http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 4, "temperature": 0})
    assert done.json()["choices"][0]["finish_reason"] == "length"
