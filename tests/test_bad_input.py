"""Bad input, table by table: the CLI, the core API and the Gradio API each refuse it with a message
that says what is wrong, and the next good request still works.

The CLI and core run in-process on a tiny random-weight model saved to disk; the Gradio API
cases run against the real ``python -m app serve`` on that model (tests/reliability_support.py).
A pickle disguised as a vector would create a file if it were ever unpickled: it never is.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app import limits
from app.steering import control_vectors
from app.steering.concepts import Concept, ConceptError, parse_concept_bytes, save_custom
from app.steering.engine import Steer, Steering
from app.steering.generation import GenerationRequest
from app.steering.vectors import SteeringVector, VectorFileError
from tests.reliability_support import (
    SERVER_MAX_NEW_TOKENS,
    generate_args,
    health,
    make_sandbox,
    save_tiny_model,
    shared_server,
)

TEN_MB = "x" * 10_000_000


@pytest.fixture(autouse=True)
def default_limits():
    limits.configure(limits.Limits())
    yield
    limits.configure(None)


class _Trap:
    """Unpickling this creates ``path``: proof that something unpickled an untrusted file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model on disk, a sandbox (concepts happy and pirate) and a folder of bad files."""
    root = make_sandbox(tmp_path_factory.mktemp("bad-input"))
    model_dir = save_tiny_model(root / "tiny-model")
    from app.lab import Lab
    from app.models.loading import load_model

    lm = load_model(str(model_dir), device="cpu")
    lab = Lab(lm, concepts_root=root / "concepts", cache_root=root / "cache" / "vectors")
    files = root / "files"
    files.mkdir()
    (files / "empty").mkdir()  # a concept folder without concepts
    trap = root / "UNPICKLED"
    payload = pickle.dumps({"layer.0": _Trap(trap)})
    good_concept = json.loads((root / "concepts" / "happy.json").read_text())

    def vector(**changes) -> SteeringVector:
        base = SteeringVector(
            name="v",
            model_id=lm.model_id,
            model_fingerprint=lm.fingerprint,
            hidden_size=lm.hidden_size,
            layers={1: torch.randn(lm.hidden_size)},
            norms={1: 1.0},
        )
        return replace(base, **changes)

    (files / "malformed.json").write_text('{"name": "broken", "positive": ["a", ')
    (files / "not-utf8.json").write_bytes(b'\xff\xfe{"name": "x"}')
    (files / "huge.json").write_text(json.dumps({**good_concept, "description": "x" * 2_000_000}))
    (files / "traversal.json").write_text(json.dumps({**good_concept, "name": "../../etc/passwd"}))
    (files / "pickle.safetensors").write_bytes(payload)
    (files / "pickle.gguf").write_bytes(payload)
    torch.save({"layer.1": torch.zeros(lm.hidden_size)}, files / "torch-save.safetensors")
    (files / "empty.safetensors").write_bytes(b"")
    save_file({"weight": torch.zeros(4)}, files / "plain.safetensors")
    vector(model_fingerprint="0123456789abcdef", model_id="another-model").save(files / "other-model.safetensors")
    vector(hidden_size=64, layers={1: torch.randn(64)}).save(files / "other-size.safetensors")
    vector(layers={1: torch.full((lm.hidden_size,), float("nan"))}).save(files / "nan.safetensors")
    control_vectors.save(vector(name="small"), files / "ok.gguf", 1.0, [1], unit="raw")
    other_size = replace(vector(), hidden_size=16, layers={1: torch.randn(16)})
    control_vectors.save(other_size, files / "other-size.gguf", 1.0, [1], "raw")
    lab.library.get("happy")  # build once; every case below reuses it
    yield {"root": root, "model": str(model_dir), "lab": lab, "files": files, "trap": trap, "vector": vector}
    assert not trap.exists(), "an untrusted pickle was unpickled"


# --- the CLI ---------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from app.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses with exit status 2
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@dataclass(frozen=True)
class CliCase:
    id: str
    argv: Callable[[dict], list[str]]
    code: int
    message: str


def _gen(*extra: str, prompt: str = "Hello") -> Callable[[dict], list[str]]:
    return lambda w: ["generate", prompt, "--model", w["model"], "--no-chat", "--max-new-tokens", "3", *extra]


def _steer(spec: str, *extra: str) -> Callable[[dict], list[str]]:
    """``--steer`` with ``{files}`` replaced by the bad-files folder."""
    return lambda w: _gen("--steer", spec.format(files=w["files"]), *extra)(w)


CLI_CASES = [
    CliCase("empty prompt", _gen(prompt=""), 1, "the prompt is empty"),
    CliCase("blank prompt", _gen(prompt=" \n\t "), 1, "the prompt is empty"),
    CliCase("10 MB prompt", _gen(prompt=TEN_MB), 1, "is over the limit of 4,000"),
    CliCase(
        "too many new tokens", _gen("--max-new-tokens", "100000"), 1, "max_new_tokens 100,000 is over the limit of 256"
    ),
    CliCase("zero new tokens", _gen("--max-new-tokens", "0"), 1, "at least 1"),
    CliCase("new tokens not a number", _gen("--max-new-tokens", "lots"), 2, "invalid int value: 'lots'"),
    CliCase("NaN temperature", _gen("--temperature", "nan"), 1, "temperature must be 0 (greedy) or between"),
    CliCase("negative temperature", _gen("--temperature", "-1"), 1, "temperature must be 0 (greedy) or between"),
    CliCase("underflowing temperature", _gen("--temperature", "1e-40"), 1, "temperature must be 0 (greedy) or between"),
    CliCase("top_p zero", _gen("--top-p", "0"), 1, "top_p must be in (0, 1]"),
    CliCase("seed out of range", _gen("--seed", str(2**70)), 1, "seed must be a whole number"),
    CliCase("unknown position mode", _gen("--positions", "sideways"), 2, "invalid choice: 'sideways'"),
    CliCase("huge strength", _steer("happy=1e9"), 1, "is over the limit of 50"),
    CliCase("huge raw strength", _steer("happy=5000", "--raw"), 1, "(raw) for 'happy' is over the limit of 1,000"),
    CliCase("strength not a number", _steer("happy=inf"), 1, "must be a finite number, got 'inf'"),
    CliCase("strength not numeric", _steer("happy=lots"), 1, "strength 'lots' in 'happy=lots' is not a number"),
    CliCase("layer out of range", _steer("happy@99=4"), 1, "layer 99 is out of range"),
    CliCase("unknown concept", _steer("nonexistent"), 1, "unknown concept 'nonexistent'"),
    CliCase("path traversal name", _steer("../../../../../../etc/shadow-not-here"), 1, "no concept file at"),
    CliCase("malformed concept JSON", _steer("{files}/malformed.json"), 1, "is not valid JSON"),
    CliCase("non-UTF-8 concept file", _steer("{files}/not-utf8.json"), 1, "is not UTF-8 text"),
    CliCase("oversized concept file", _steer("{files}/huge.json"), 1, "concept files are limited to 1,000,000"),
    CliCase(
        "concept named ../../etc/passwd", _steer("{files}/traversal.json"), 1, "bad concept name '../../etc/passwd'"
    ),
    CliCase("pickle as .safetensors", _steer("{files}/pickle.safetensors"), 1, "is not a readable safetensors file"),
    CliCase("pickle as .gguf", _steer("{files}/pickle.gguf"), 1, "is not a readable GGUF file"),
    CliCase(
        "torch.save file as .safetensors", _steer("{files}/torch-save.safetensors"), 1, "not a readable safetensors"
    ),
    CliCase("plain safetensors", _steer("{files}/plain.safetensors"), 1, "not a Steering Lab vector"),
    CliCase("vector of another model", _steer("{files}/other-model.safetensors"), 1, "extracted from another model"),
    CliCase("vector of another size", _steer("{files}/other-size.safetensors"), 1, "hidden size 64"),
    CliCase("gguf of another size", _steer("{files}/other-size.gguf"), 1, "has hidden size 16; the model has 32"),
    CliCase("NaN vector", _steer("{files}/nan.safetensors"), 1, "NaN or infinite"),
    CliCase(
        "missing model", lambda w: ["generate", "hi", "--model", "/no/such/model"], 1, "unknown model '/no/such/model'"
    ),
    CliCase(
        "bench concepts not a folder",
        lambda w: ["bench", "--model", w["model"], "--quick", "--concepts", "/no/such/folder"],
        1,
        "--concepts /no/such/folder is not a folder",
    ),
    CliCase(
        "bench concepts folder empty",
        lambda w: ["bench", "--model", w["model"], "--quick", "--concepts", str(w["files"] / "empty")],
        1,
        "empty has no concept files (*.json)",
    ),
    CliCase("bench zero threads", lambda w: ["bench", "--model", w["model"], "--threads", "0"], 1, "at least 1, got 0"),
    CliCase(
        "extract unknown method",
        lambda w: ["extract", "happy", "--model", w["model"], "--method", "magic"],
        2,
        "invalid choice: 'magic'",
    ),
]


@pytest.fixture
def cli_env(world, monkeypatch):
    monkeypatch.setenv("STEERING_LAB_CACHE", str(world["root"] / "cache"))
    monkeypatch.setenv("STEERING_LAB_CONCEPTS", str(world["root"] / "concepts"))
    return world


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_refuses_bad_input(case: CliCase, cli_env, capsys):
    code, out, err = run_cli(case.argv(cli_env), capsys)
    assert code == case.code, err
    assert case.message in err, err
    assert "Traceback" not in err and out == ""
    # the next good request works
    code, out, err = run_cli(_gen("--steer", "happy@1=2", "--json")(cli_env), capsys)
    assert code == 0, err
    assert json.loads(out)["steering"][0]["concept"] == "happy"


# --- the core API --------------------------------------------------------------------------


@dataclass(frozen=True)
class CoreCase:
    id: str
    run: Callable[[dict], object]
    error: type[Exception]
    message: str


def _request(w: dict, prompt: str = "Hello", strength: float = 2.0, **changes) -> None:
    lab = w["lab"]
    steer = Steer(lab.library.get("happy"), strength, changes.pop("layers", (1,)), changes.pop("unit", "normalized"))
    positions = changes.pop("positions", "all")
    request = GenerationRequest(prompt, Steering((steer,), positions), **{"max_new_tokens": 3, **changes})
    lab.generate([request])


def _steers(w: dict, n: int) -> None:
    vector = w["lab"].library.get("happy")
    w["lab"].generate(
        [GenerationRequest("Hi", Steering(tuple(Steer(vector, 1.0) for _ in range(n))), max_new_tokens=2)]
    )


def _with_limits(run: Callable[[dict], object], **changes) -> Callable[[dict], object]:
    def wrapped(w: dict) -> object:
        limits.configure(limits.Limits(**changes))
        return run(w)

    return wrapped


def _concept(**changes) -> Concept:
    return replace(Concept(name="ok", positive=("a b", "c d"), negative=("e f", "g h")), **changes)


def _concept_bytes(**changes) -> bytes:
    data = {"name": "ok", "positive": ["a b", "c d"], "negative": ["e f", "g h"], **changes}
    return json.dumps(data).encode()


CORE_CASES = [
    CoreCase("empty prompt", lambda w: _request(w, ""), ValueError, "the prompt is empty"),
    CoreCase(
        "prompt over the character limit",
        lambda w: _request(w, "a" * 4_001),
        ValueError,
        "(4,001 characters) is over the limit of 4,000",
    ),
    CoreCase("10 MB prompt", lambda w: _request(w, TEN_MB), ValueError, "is over the limit of 4,000"),
    CoreCase(
        "prompt over the token limit",
        _with_limits(lambda w: _request(w, "b" * 60), max_prompt_tokens=50),
        ValueError,
        "(60 tokens) is over the limit of 50",
    ),
    CoreCase(
        "NaN strength", lambda w: _request(w, strength=float("nan")), ValueError, "must be a finite number, got nan"
    ),
    CoreCase("infinite strength", lambda w: _request(w, strength=float("inf")), ValueError, "must be a finite number"),
    CoreCase(
        "huge strength",
        lambda w: _request(w, strength=1e6),
        ValueError,
        "strength 1e+06 (normalized) for 'happy' is over the limit of 50",
    ),
    CoreCase(
        "huge raw strength", lambda w: _request(w, strength=1e9, unit="raw"), ValueError, "over the limit of 1,000"
    ),
    CoreCase(
        "unknown strength unit", lambda w: _request(w, unit="furlongs"), ValueError, "unknown strength unit 'furlongs'"
    ),
    CoreCase("layer out of range", lambda w: _request(w, layers=(99,)), ValueError, "layer 99 is out of range"),
    CoreCase("negative layer", lambda w: _request(w, layers=(-1,)), ValueError, "layer -1 is out of range"),
    CoreCase(
        "unknown position mode",
        lambda w: _request(w, positions="sideways"),
        ValueError,
        "unknown position mode 'sideways'",
    ),
    CoreCase(
        "too many concepts", lambda w: _steers(w, 9), ValueError, "steering with 9 concepts is over the limit of 8"
    ),
    CoreCase(
        "too many rows", lambda w: w["lab"].generate([GenerationRequest("hi", max_new_tokens=1)] * 17), ValueError, "17"
    ),
    CoreCase(
        "too many new tokens",
        lambda w: _request(w, max_new_tokens=10**6),
        ValueError,
        "max_new_tokens 1,000,000 is over the limit of 256",
    ),
    CoreCase("zero new tokens", lambda w: _request(w, max_new_tokens=0), ValueError, "at least 1"),
    CoreCase("boolean new tokens", lambda w: _request(w, max_new_tokens=True), ValueError, "whole number"),
    CoreCase(
        "underflowing temperature",
        lambda w: _request(w, temperature=1e-40),
        ValueError,
        "temperature must be 0 (greedy) or between 0.001 and 100",
    ),
    CoreCase("top_p zero", lambda w: _request(w, top_p=0.0), ValueError, "top_p must be in (0, 1]"),
    CoreCase("negative top_k", lambda w: _request(w, top_k=-1), ValueError, "top_k must be 0 (off)"),
    CoreCase(
        "seed out of range",
        lambda w: _request(w, seed=2**70, temperature=0.5),
        ValueError,
        "seed must be a whole number",
    ),
    CoreCase(
        "record_top_k over the vocabulary",
        lambda w: _request(w, record_top_k=10**6),
        ValueError,
        "record_top_k must be 0 to 100",
    ),
    CoreCase(
        "unknown concept", lambda w: w["lab"].vector("nonexistent"), ConceptError, "unknown concept 'nonexistent'"
    ),
    CoreCase(
        "path traversal to a concept",
        lambda w: w["lab"].vector("../../../../etc/passwd"),
        ConceptError,
        "passwd is not valid JSON",
    ),
    CoreCase(
        "save a concept named ../../etc/passwd",
        lambda w: save_custom(_concept(name="../../etc/passwd"), w["root"] / "concepts"),
        ConceptError,
        "bad concept name '../../etc/passwd'",
    ),
    CoreCase(
        "save a name with a newline",
        lambda w: save_custom(_concept(name="ok\n"), w["root"] / "concepts"),
        ConceptError,
        "bad concept name 'ok\\n'",
    ),
    CoreCase(
        "save over a built-in concept",
        lambda w: save_custom(_concept(name="happy"), w["root"] / "concepts"),
        ConceptError,
        "'happy' is a built-in concept",
    ),
    CoreCase(
        "a Windows device name",
        lambda w: save_custom(_concept(name="con"), w["root"] / "concepts"),
        ConceptError,
        "reserved file name",
    ),
    CoreCase(
        "non-UTF-8 upload",
        lambda w: parse_concept_bytes(b"\x80\x81 not text"),
        ConceptError,
        "is not UTF-8 text (byte 0)",
    ),
    CoreCase(
        "oversized upload",
        lambda w: parse_concept_bytes(b" " * 1_000_001),
        ConceptError,
        "1,000,001 bytes; concept files are limited to 1,000,000",
    ),
    CoreCase(
        "JSON nested 100,000 deep",
        lambda w: parse_concept_bytes(b"[" * 100_000 + b"]" * 100_000),
        ConceptError,
        "not a usable JSON file",
    ),
    CoreCase(
        "a 10,000-digit number", lambda w: parse_concept_bytes(b"1" * 10_000), ConceptError, "not a usable JSON file"
    ),
    CoreCase(
        "a lone surrogate",
        lambda w: parse_concept_bytes(_concept_bytes(positive=["\ud800 x", "y z"])),
        ConceptError,
        "invalid character",
    ),
    CoreCase("JSON that is a list", lambda w: parse_concept_bytes(b"[1, 2]"), ConceptError, "must be a JSON object"),
    CoreCase(
        "examples that are not text",
        lambda w: parse_concept_bytes(_concept_bytes(positive=[1, 2])),
        ConceptError,
        "positive example 1 is not text (int)",
    ),
    CoreCase(
        "too few examples",
        lambda w: parse_concept_bytes(_concept_bytes(negative=["only one"])),
        ConceptError,
        "give at least 2",
    ),
    CoreCase(
        "same sentence on both sides",
        lambda w: parse_concept_bytes(_concept_bytes(negative=["a b", "x y"])),
        ConceptError,
        "appear on both sides",
    ),
    CoreCase(
        "a 2,001-character example",
        lambda w: parse_concept_bytes(_concept_bytes(positive=["a" * 2001, "b"])),
        ConceptError,
        "2,001 characters; the limit is 2000",
    ),
    CoreCase(
        "pickle as .safetensors",
        lambda w: SteeringVector.load(w["files"] / "pickle.safetensors"),
        VectorFileError,
        "not a readable safetensors file",
    ),
    CoreCase(
        "pickle as .gguf",
        lambda w: w["lab"].vector(str(w["files"] / "pickle.gguf")),
        VectorFileError,
        "not a readable GGUF file",
    ),
    CoreCase(
        "empty .safetensors",
        lambda w: SteeringVector.load(w["files"] / "empty.safetensors"),
        VectorFileError,
        "not a readable safetensors file",
    ),
    CoreCase(
        "vector of another model",
        lambda w: w["lab"].vector(str(w["files"] / "other-model.safetensors")),
        VectorFileError,
        "was extracted from another model (another-model",
    ),
    CoreCase(
        "vector of another hidden size",
        lambda w: w["lab"].vector(str(w["files"] / "other-size.safetensors")),
        VectorFileError,
        "hidden size 64); the loaded model has hidden size 32",
    ),
    CoreCase(
        "vector holding NaN",
        lambda w: SteeringVector.load(w["files"] / "nan.safetensors"),
        VectorFileError,
        "layer 1 holds NaN or infinite values",
    ),
    CoreCase(
        "vector from another model in a request",
        lambda w: _steer_with(w, w["vector"](hidden_size=8, layers={1: torch.ones(8)})),
        ValueError,
        "has hidden size 8; the model has 32",
    ),
]


def _steer_with(w: dict, vector: SteeringVector) -> None:
    w["lab"].generate([GenerationRequest("Hi", Steering((Steer(vector, 1.0, (1,)),)), max_new_tokens=2)])


@pytest.mark.parametrize("case", CORE_CASES, ids=[c.id for c in CORE_CASES])
def test_core_refuses_bad_input(case: CoreCase, world):
    lab = world["lab"]
    with pytest.raises(case.error) as raised:
        case.run(world)
    assert case.message in str(raised.value)
    limits.configure(limits.Limits())
    assert lab.engine.hook_count() == 0
    # the next good request works, steered as asked
    good = GenerationRequest("Hello", Steering((Steer(lab.library.get("happy"), 2.0, (1,)),)), max_new_tokens=3)
    (result,) = lab.generate([good])
    assert len(result.token_ids) == 3 and lab.engine.hook_count() == 0


# --- the Gradio API --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    return shared_server()


@pytest.fixture(scope="module")
def client(served):
    return served.client()


@dataclass(frozen=True)
class ApiCase:
    id: str
    api_name: str
    args: dict
    message: str


def _save(**changes) -> dict:
    args = {"name_text": "fine_name", "description_text": "d", "positive_text": "a b\nc d", "negative_text": "e f\ng h"}
    return {**args, "replace_existing": True, **changes}


API_CASES = [
    ApiCase("empty prompt", "/generate", generate_args(""), "type a prompt first"),
    ApiCase("blank prompt", "/generate", generate_args(" \n "), "type a prompt first"),
    ApiCase("10 MB text box", "/generate", generate_args(TEN_MB), "(10,000,000 characters) is over the limit of 4,000"),
    ApiCase("huge strength", "/generate", generate_args(strength=1e6), "greater than maximum value"),
    ApiCase("layer out of range", "/generate", generate_args(layer_text="99"), "layer 99 is out of range"),
    ApiCase("layers not numbers", "/generate", generate_args(layer_text="1; rm -rf /"), "cannot read layers"),
    ApiCase("unknown concept", "/generate", generate_args(concept="nonexistent"), "not in the list of choices"),
    ApiCase("path as a concept", "/generate", generate_args(concept="../../etc/passwd"), "not in the list of choices"),
    ApiCase(
        "over the server's token limit",
        "/generate",
        generate_args(max_tokens=SERVER_MAX_NEW_TOKENS + 50),
        f"max_new_tokens 150 is over the limit of {SERVER_MAX_NEW_TOKENS}",
    ),
    ApiCase("over the slider's range", "/generate", generate_args(max_tokens=10_000), "greater than maximum value"),
    ApiCase(
        "underflowing temperature", "/generate", generate_args(temp=1e-9), "temperature must be 0 (greedy) or between"
    ),
    ApiCase("seed out of range", "/generate", generate_args(seed_value=1e30), "seed must be a whole number"),
    ApiCase("unknown position mode", "/generate", generate_args(position="sideways"), "not in the list of choices"),
    ApiCase(
        "save as ../../etc/passwd",
        "/save_concept",
        _save(name_text="../../etc/passwd"),
        "bad concept name '../../etc/passwd'",
    ),
    ApiCase("save over a built-in", "/save_concept", _save(name_text="happy"), "'happy' is a built-in concept"),
    ApiCase(
        "save a 10 MB example",
        "/save_concept",
        _save(positive_text=TEN_MB),
        "10,000,000 characters; the limit is 2000",
    ),
    ApiCase("save one example", "/save_concept", _save(negative_text="just one"), "give at least 2"),
    ApiCase(
        "extract a nameless concept",
        "/extract_concept",
        {"name_text": "", "method_name": "mean_diff"},
        "bad concept name ''",
    ),
    ApiCase(
        "extract with an unknown method",
        "/extract_concept",
        {"name_text": "ok", "method_name": "magic"},
        "not in the list of choices",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_gradio_api_refuses_bad_input(case: ApiCase, client, served):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as raised:
        client.predict(api_name=case.api_name, **case.args)
    assert case.message in str(raised.value)
    assert "Traceback" not in str(raised.value)
    # the app keeps serving: a good request right after gets its steered text, and no hook is left
    baseline, steered, status, *_ = client.predict(api_name="/generate", **generate_args())
    assert steered and status.startswith("Done"), status
    assert health(client)["hooks"] == 0
    assert served.alive()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("NaN", "strength for 'happy' must be a finite number, got nan"),  # NaN passes the slider's bounds check
        ("Infinity", "Value inf is greater than maximum value 10"),
        ("-Infinity", "Value -inf is less than minimum value -10"),
    ],
)
def test_a_non_finite_strength_in_raw_json_is_refused(value, message, client, served):
    """gradio_client will not send NaN, but a hand-written request can."""
    body = json.dumps({"data": list(generate_args().values())}).replace("4.0", value, 1)
    assert value in body
    event, data = served.call_raw("generate", body)
    assert event == "error" and message in data, data
    baseline, steered, status, *_ = client.predict(api_name="/generate", **generate_args())
    assert status.startswith("Done") and health(client)["hooks"] == 0


@pytest.mark.slow
def test_an_upload_over_the_size_limit_is_refused(served):
    with served.http() as http:
        too_big = http.post("/gradio_api/upload", files={"files": ("big.json", b"{" + b" " * 1_100_000)})
        small = http.post("/gradio_api/upload", files={"files": ("ok.json", b"{}")})
    assert too_big.status_code == 413 and "maximum allowed size" in too_big.text
    assert small.status_code == 200
