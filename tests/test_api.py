"""The REST API (app/api) in-process on a tiny random model: every endpoint, the login, JSON
errors with the right status for bad input in every field, and requests parsed without a model.

The app here is a plain FastAPI app with the same ``app_kwargs`` that ``serve`` hands to Gradio;
tests/test_api_served.py drives the real ``serve`` on SmolLM2 with the official OpenAI client.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import limits
from app.api import parsing
from app.api.auth import credentials_ok
from app.api.context import ApiContext
from app.api.errors import ApiError
from app.api.openai_routes import new_text
from app.api.schemas import ChatCompletionRequest, CompletionRequest, SteeringItem
from app.api.server import app_kwargs
from app.steering.chat import chat_prompt
from app.steering.generation import GenerationRequest
from app.steering.vectors import SteeringVector
from app.storage import REPO_ROOT
from tests.reliability_support import make_sandbox, save_tiny_model

AUTH = ("teacher", "pa:ss")
BEARER = {"Authorization": f"Bearer {AUTH[1]}"}
HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    limits.configure(limits.Limits(max_new_tokens=32, max_upload_bytes=200_000))
    root = make_sandbox(tmp_path_factory.mktemp("api"))
    shutil.copy(REPO_ROOT / "concepts" / "cost.json", root / "concepts")
    from app.lab import Lab
    from app.models.loading import load_model
    from app.serving import LabHolder

    lab = Lab(
        load_model(str(save_tiny_model(root / "tiny-model")), device="cpu"),
        concepts_root=root / "concepts",
        cache_root=root / "cache" / "vectors",
    )
    context = ApiContext(LabHolder(lab=lab))
    with TestClient(FastAPI(**app_kwargs(context.holder, AUTH, context))) as client:
        client.headers.update(BEARER)
        yield client, context, root
    limits.configure(None)


@pytest.fixture
def client(world):
    return world[0]


@pytest.fixture
def lab(world):
    return world[1].lab


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 6, "temperature": 0, **body})


def alone(lab, prompt: str, **changes) -> str:
    """The same request run directly on the lab (what the API must match)."""
    request = GenerationRequest(prompt=prompt, max_new_tokens=6, temperature=0.0, top_k=0, chat=False, **changes)
    return lab.generate([request])[0].text


# --- the login ------------------------------------------------------------------------------


def test_every_route_needs_the_login(world):
    client = TestClient(world[0].app)  # no credentials
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/v1/concepts"),
                         ("GET", "/v1/vectors/happy"), ("POST", "/v1/compare"), ("GET", "/v1/health"),
                         ("GET", "/docs"), ("GET", "/openapi.json")]:  # fmt: skip
        answer = client.request(method, path, json={})
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Basic")
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        "wrong user name or password" in client.get("/v1/models", auth=("teacher", "nope")).json()["error"]["message"]
    )
    assert client.get("/v1/models", auth=AUTH).status_code == 200
    assert client.get("/v1/models", headers=BEARER).status_code == 200


def test_credentials_are_read_strictly():
    basic = "Basic " + base64.b64encode(b"teacher:pa:ss").decode()
    assert credentials_ok(basic, AUTH) and credentials_ok("bearer pa:ss", AUTH)
    for header in (None, "", "Bearer", "Bearer pa", "Basic !!!", "Basic " + base64.b64encode(b"teacher").decode(),
                   "Token pa:ss", "Basic " + base64.b64encode(b"other:pa:ss").decode()):  # fmt: skip
        assert not credentials_ok(header, AUTH), header


# --- OpenAI-compatible routes ------------------------------------------------------------------


def test_models_lists_the_loaded_model(client, lab):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [lab.lm.model_id]


def test_chat_completion_equals_the_same_request_run_alone(client, lab):
    answer = chat(client, model="whatever-the-client-says").json()
    assert answer["model"] == lab.lm.model_id and answer["object"] == "chat.completion"
    prompt = chat_prompt(lab.lm.tokenizer, [{"role": "user", "content": "Hi there"}], budget=1 << 20)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": alone(lab, prompt)}
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert usage["completion_tokens"] == 6 and usage["total_tokens"] == usage["prompt_tokens"] + 6


def test_steering_changes_the_text_and_matches_the_core(client, lab):
    plain = chat(client).json()["choices"][0]["message"]["content"]
    item = {"concept": "happy", "strength": 40, "layers": [0, 1]}
    steered = chat(client, steering=[item]).json()
    text = steered["choices"][0]["message"]["content"]
    assert text != plain
    assert steered["steering"] == ["happy ×40 @ 0,1"]
    prompt = chat_prompt(lab.lm.tokenizer, [{"role": "user", "content": "Hi there"}], budget=1 << 20)
    expected = alone(lab, prompt, steering=parsing.steering(lab, parsing.UploadedVectors(), _fields([item])))
    assert text == expected
    assert client.get("/v1/health").json()["hooks"] == 0


def _fields(items: list[dict]) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=HI, steering=[SteeringItem(**i) for i in items])


def test_streamed_chat_sends_the_same_text_in_pieces(client):
    whole = chat(client, steering=[{"concept": "pirate", "strength": 8}]).json()["choices"][0]["message"]["content"]
    body = {"messages": HI, "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "steering": [{"concept": "pirate", "strength": 8}]}  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json=body) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in answer.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_completions_batch_prompts_and_choices(client, lab):
    body = {"prompt": ["The cat", "A dog"], "n": 2, "max_tokens": 5, "temperature": 0.8, "seed": 3}
    answer = client.post("/v1/completions", json=body).json()
    assert answer["object"] == "text_completion" and len(answer["choices"]) == 4
    texts = [c["text"] for c in answer["choices"]]
    request = GenerationRequest("A dog", max_new_tokens=5, temperature=0.8, top_k=0, seed=4, chat=False)
    assert texts[3] == lab.generate([request])[0].text  # prompt 2, choice 2: seed 3 + 1
    assert answer["usage"]["completion_tokens"] == 20
    again = client.post("/v1/completions", json=body).json()
    assert [c["text"] for c in again["choices"]] == texts  # same seed, same samples


def test_streamed_completion(client):
    whole = client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 5, "temperature": 0}).json()
    with client.stream("POST", "/v1/completions", json={"prompt": "Once", "max_tokens": 5, "temperature": 0,
                                                         "stream": True}) as answer:  # fmt: skip
        events = [line.removeprefix("data: ") for line in answer.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == whole["choices"][0]["text"]


def test_preferences_steer_like_the_select_tab(client, lab):
    from app.preferences.chat import preference_steering

    answer = chat(client, preferences={"cost": -100, "age": 0}).json()
    assert answer["steering"][0].startswith("cost ×-")
    prompt = chat_prompt(lab.lm.tokenizer, [{"role": "user", "content": "Hi there"}], budget=1 << 20)
    expected = alone(lab, prompt, steering=preference_steering(lab, {"cost": -100}))
    assert answer["choices"][0]["message"]["content"] == expected


# --- bad input: one case per field, each a 400 naming the problem ---------------------------------

BAD_CHAT = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "last message must be the user's"),
    ({"messages": [{"role": "user", "content": "   "}]}, "empty"),
    ({"messages": [{"role": "user", "content": "x" * 5000}]}, "over the limit of 4,000"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 33}, "over the limit of 32"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": 0.0001}, "temperature must be 0"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"seed": 2**70}, "seed"),
    ({"n": 0}, "n"),
    ({"n": 17}, "a request of 17 generations is over the limit of 16"),
    ({"stream": "yes please"}, "stream"),
    ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
    ({"stop": ["\n"]}, "stop: unknown field"),
    ({"steering": "happy"}, "steering"),
    ({"steering": [{"concept": "no_such_concept", "strength": 2}]}, "unknown concept"),
    ({"steering": [{"concept": "../../etc/passwd"}]}, "bad concept name"),
    ({"steering": [{"concept": "happy", "strength": 51}]}, "over the limit of 50"),
    ({"steering": [{"concept": "happy", "strength": 5, "layers": [99]}]}, "out of range"),
    ({"steering": [{"concept": "happy", "layers": []}]}, "steering.0.layers"),
    ({"steering": [{"concept": "happy", "unit": "volts"}]}, "steering.0.unit"),
    ({"steering": [{"concept": "happy", "power": 3}]}, "steering.0.power"),
    ({"steering": [{"concept": "happy", "strength": 1}] * 9}, "steering with 9 concepts is over the limit of 8"),
    ({"positions": "middle"}, "positions"),
    ({"preferences": {"cost": 101}}, "-100 to 100"),
    ({"preferences": {"colour": 50}}, "unknown preference dimension 'colour'"),
    ({"preferences": "cheap"}, "preferences"),
]


@pytest.mark.parametrize(("change", "expected"), BAD_CHAT, ids=[str(c)[:40] for c, _ in BAD_CHAT])
def test_bad_chat_fields_are_refused_with_a_message(client, change, expected):
    answer = client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 4, **change})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert expected in error["message"] or expected == error["param"], error
    assert "Traceback" not in answer.text


@pytest.mark.parametrize(
    ("body", "expected"),
    [({}, "prompt"), ({"prompt": []}, "non-empty list"), ({"prompt": 5}, "prompt"), ({"prompt": ""}, "empty")],
)
def test_bad_completion_prompts(client, body, expected):
    answer = client.post("/v1/completions", json={"max_tokens": 3, **body})
    assert answer.status_code == 400
    assert expected in answer.json()["error"]["message"] or expected == answer.json()["error"]["param"]


def test_a_body_that_is_not_json_is_a_400(client):
    answer = client.post("/v1/chat/completions", content=b"{nope", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "JSON" in answer.json()["error"]["message"]
    nan = client.post("/v1/chat/completions", content=b'{"messages": [{"role": "user", "content": "x"}], '
                      b'"temperature": NaN}', headers={"Content-Type": "application/json"})  # fmt: skip
    assert nan.status_code == 400


def test_a_body_over_the_upload_limit_is_a_413(client):
    answer = client.post("/v1/completions", json={"prompt": "x" * 300_000})
    assert answer.status_code == 413 and answer.json()["error"]["type"] == "request_too_large"


def test_a_full_queue_is_a_429_and_the_next_request_gets_through(world):
    client, context, _ = world
    taken = 0
    try:
        while True:
            context.admission.enter()
            taken += 1
    except ApiError as error:
        assert error.status == 429
    try:
        answer = chat(client)
        assert answer.status_code == 429 and answer.headers["retry-after"]
        assert "STEERING_LAB_QUEUE_SIZE" in answer.json()["error"]["message"]
    finally:
        for _ in range(taken):
            context.admission.leave()
    assert chat(client).status_code == 200


def test_unknown_paths_answer_json(client):
    answer = client.get("/v1/nothing-here")
    assert answer.status_code == 404 and "no such endpoint" in answer.json()["error"]["message"]


# --- the lab's routes --------------------------------------------------------------------------


def test_concepts_list_with_recommendations(client):
    client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 1, "steering": [{"concept": "happy"}]})
    rows = {row["name"]: row for row in client.get("/v1/concepts").json()["concepts"]}
    assert {"happy", "pirate", "cost"} <= set(rows)
    assert rows["happy"]["built"] and rows["happy"]["recommended_layers"] and rows["happy"]["recommended_strength"]


def test_create_a_concept_from_examples(world):
    client, context, root = world
    body = {"name": "sunny", "description": "bright", "positive": ["I love sun.", "What a bright day!"],
            "negative": ["I hate rain.", "What a grey day."], "method": "pca"}  # fmt: skip
    made = client.post("/v1/concepts", json=body).json()
    assert made["saved"] == "custom/sunny.json" and (root / "concepts" / "custom" / "sunny.json").is_file()
    assert made["concept"]["method"] == "pca" and made["concept"]["recommended_layers"]
    n_layers = context.lab.engine.n_layers
    assert len(made["layers"]["accuracy"]) == len(made["layers"]["separation"]) == n_layers
    assert "sunny" in {row["name"] for row in client.get("/v1/concepts").json()["concepts"]}
    other = {**body, "positive": ["Sun!", "Bright!"]}
    assert client.post("/v1/concepts", json=other).status_code == 409
    assert client.post("/v1/concepts", json={**other, "overwrite": True}).status_code == 200
    assert client.post("/v1/concepts", json={**body, "name": "happy"}).status_code == 409
    for bad in ({"positive": ["only one"]}, {"name": "Bad Name"}, {"method": "magic"}, {"colour": 1}):
        assert client.post("/v1/concepts", json={**body, **bad}).status_code == 400, bad


def test_download_upload_and_steer_with_a_vector(world, tmp_path):
    client, context, _ = world
    raw = client.get("/v1/vectors/happy")
    assert raw.status_code == 200 and "attachment" in raw.headers["content-disposition"]
    (tmp_path / "mine.safetensors").write_bytes(raw.content)
    assert SteeringVector.load(tmp_path / "mine.safetensors").name == "happy"
    up = client.post("/v1/vectors", files={"file": ("mine.safetensors", raw.content)}, data={"name": "myhappy"})
    assert up.status_code == 200 and up.json()["name"] == "myhappy"
    item = {"strength": 30, "layers": [1]}
    same = [chat(client, steering=[{"concept": c, **item}]).json()["choices"][0]["message"]["content"]
            for c in ("happy", "myhappy")]  # fmt: skip
    assert same[0] == same[1]
    assert "myhappy" in client.get("/v1/concepts").json()["uploaded_vectors"]
    # After a restart (a new process: nothing in memory), the upload is read back from the cache.
    restarted = parsing.steering(context.lab, parsing.UploadedVectors(), _fields([{"concept": "myhappy", **item}]))
    assert torch.equal(restarted.steers[0].vector.layers[1], context.uploads.get(context.lab, "myhappy").layers[1])

    gguf = client.get("/v1/vectors/happy", params={"format": "gguf", "strength": 30, "layers": "1,2"})
    assert gguf.status_code == 200 and gguf.content[:4] == b"GGUF"
    up = client.post("/v1/vectors", files={"file": ("happy-cv.gguf", gguf.content)})
    assert up.status_code == 200 and up.json() == {**up.json(), "name": "happy-cv", "format": "gguf"}
    assert chat(client, steering=[{"concept": "happy-cv"}]).status_code == 200
    assert client.get("/v1/vectors/happy-cv", params={"format": "gguf"}).status_code == 400
    layer_zero = client.get("/v1/vectors/happy", params={"format": "gguf", "layers": "0"})
    assert layer_zero.status_code == 400 and "layer 0" in layer_zero.json()["error"]["message"]
    bad_layers = client.get("/v1/vectors/happy", params={"format": "gguf", "layers": "1,x"})
    assert bad_layers.status_code == 400 and bad_layers.json()["error"]["param"] == "layers"


@pytest.mark.parametrize(
    ("filename", "content", "data", "status", "expected"),
    [
        ("v.pt", b"abc", {}, 400, ".safetensors"),
        ("v.safetensors", b"\x80\x04pickle", {}, 400, "not a readable safetensors"),
        ("v.gguf", b"GGUF" + b"\0" * 20, {}, 400, "not a readable GGUF"),
        ("v.safetensors", b"x" * 200_001, {}, 413, "over the limit of 200,000"),
        ("happy.safetensors", b"x", {}, 409, "concept's name"),
        ("v.safetensors", b"x", {"name": "../x"}, 400, "bad concept name"),
    ],
)
def test_bad_uploads(client, filename, content, data, status, expected):
    answer = client.post("/v1/vectors", files={"file": (filename, content)}, data=data)
    assert answer.status_code == status, answer.text
    assert expected in answer.json()["error"]["message"]


def test_downloading_an_unknown_vector_is_refused(client):
    assert client.get("/v1/vectors/nope").status_code == 404
    assert client.get("/v1/vectors/happy", params={"format": "pickle"}).status_code == 400
    assert client.get("/v1/vectors/..%2Fhappy").status_code in (400, 404)
    for strength in ("nan", "inf", "51"):
        answer = client.get("/v1/vectors/happy", params={"format": "gguf", "strength": strength})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "strength"


def test_compare_is_baseline_and_steered_with_one_seed(client, lab):
    body = {"prompt": "The day", "chat": False, "max_tokens": 6, "steering": [{"concept": "happy", "strength": 40}]}
    answer = client.post("/v1/compare", json=body).json()
    plain = client.post("/v1/completions", json={"prompt": "The day", "max_tokens": 6, "temperature": 0}).json()
    assert answer["baseline"]["text"] == plain["choices"][0]["text"]
    assert answer["steered"]["text"] != answer["baseline"]["text"]
    assert answer["steering"][0].startswith("happy ×40")
    assert client.post("/v1/compare", json={"prompt": "x"}).status_code == 400  # nothing to compare


def test_health_and_docs(client, lab):
    health = client.get("/v1/health").json()
    assert health["model"] == lab.lm.model_id and health["hooks"] == 0
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/concepts", "/v1/vectors",
            "/v1/vectors/{name}", "/v1/compare", "/v1/health"} == set(paths)  # fmt: skip
    assert "steering" in json.dumps(paths["/v1/chat/completions"])
    assert "swagger" in client.get("/docs").text.lower()


def test_the_docs_page_needs_no_network(client):
    import re

    page = client.get("/docs").text
    linked = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
    assert sorted(linked) == [
        "/docs/assets/favicon.png",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
    ]
    assert "https://" not in page and "http://" not in page  # no CDN
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text[:2000]
    assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    for name in ("index.html", "..%2Fcore.py", "../../../../etc/passwd"):
        assert client.get(f"/docs/assets/{name}").status_code == 404


# --- parsing, without a model ----------------------------------------------------------------


def test_parsing_defaults_follow_openai():
    body = CompletionRequest(prompt="x")
    assert (body.temperature, body.top_p, body.top_k, body.n, body.stream) == (1.0, 1.0, 0, 1, False)
    assert parsing.max_new_tokens(body) == min(128, limits.current().max_new_tokens)
    assert parsing.max_new_tokens(CompletionRequest(prompt="x", max_tokens=7, max_completion_tokens=9)) == 9
    assert parsing.seed(CompletionRequest(prompt="x", seed=5)) == 5
    assert isinstance(parsing.seed(body), int)
    text = ChatCompletionRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                         {"type": "text", "text": "b"}]}])  # fmt: skip
    assert text.messages[0].text == "ab"


def test_streamed_text_waits_for_whole_characters():
    assert new_text("", "Hel", False) == ("Hel", "Hel")
    assert new_text("Hel", "Hello", False) == ("lo", "Hello")
    assert new_text("Hello", "Hello \ufffd", False) == (" ", "Hello ")
    assert new_text("Hello ", "Hello é", False) == ("é", "Hello é")
    assert new_text("ab", "ab\ufffd", True) == ("\ufffd", "ab\ufffd")


def test_the_package_is_wired_into_serve():
    source = Path(REPO_ROOT / "app" / "commands" / "serve.py").read_text()
    assert "app_kwargs=app_kwargs(holder" in source


def test_a_body_without_a_length_is_cut_off_too(client):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    answer = client.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413


def test_a_client_that_hangs_up_stops_its_generation():
    from concurrent.futures import ThreadPoolExecutor

    import anyio

    from app.api.work import Admission

    class Request:
        def __init__(self, gone: bool) -> None:
            self.gone = gone

        async def is_disconnected(self) -> bool:
            return self.gone

    def run(*args: object) -> object:
        # A fresh thread: a browser test earlier in the session may leave an event loop running in this one.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(anyio.run, admission.run_while_connected, *args).result(timeout=300)

    admission = Admission()
    assert run(lambda stop: stop.wait(120), Request(gone=True)) is True
    assert run(lambda stop: stop.is_set(), Request(gone=False)) is False
    with pytest.raises(ValueError, match="boom"):
        run(lambda stop: (_ for _ in ()).throw(ValueError("boom")), Request(False))
    assert admission.active == 0
