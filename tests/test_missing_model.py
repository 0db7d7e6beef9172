"""Every command that needs a model ends with one line and exit code 1 when it is not set up."""

from __future__ import annotations

import pytest

from app import cli
from app.models.registry import ModelNotAvailable, resolve_model

MODEL = "smollm2-135m-instruct"

COMMANDS: dict[str, list[str]] = {
    "serve": ["serve", "--port", "1"],
    "generate": ["generate", "Hello", "--steer", "happy"],
    "extract": ["extract", "happy"],
    "export": ["export", "happy"],
    "concepts": ["concepts"],
    "experiments": ["experiments", "e1"],
    "quality": ["quality"],
}


OWN_TESTS = {"bench", "random-model"}  # tested below, with their own arguments
NEEDS_NO_MODEL = {"models"}  # lists the table; a missing model is a row, not an error


def test_every_command_is_covered():
    """A new command must say here how it behaves without its model."""
    assert set(cli.COMMANDS) == set(COMMANDS) | OWN_TESTS | NEEDS_NO_MODEL


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # auto-selection must not ask the hub
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nor find a model in this machine's HF cache
    return tmp_path


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = cli.main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


def with_out(argv: list[str], tmp_path) -> list[str]:
    """Commands that write somewhere get a place that would be fine."""
    if argv[0] == "export":
        return [*argv, "--out", str(tmp_path / "happy.safetensors")]
    if argv[0] == "experiments":
        return [*argv, "--out", str(tmp_path / "results")]
    return argv


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_with_a_model_that_is_not_set_up(name, empty_cache, capsys):
    code, lines = run([*with_out(COMMANDS[name], empty_cache), "--model", MODEL], capsys)
    assert code == 1
    assert lines == [f"error: {MODEL} is not set up: run ./setup_local_cache.sh --model {MODEL}"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_when_no_model_is_set_up(name, empty_cache, capsys):
    code, lines = run(with_out(COMMANDS[name], empty_cache), capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("error: no model fits and is available"), lines
    assert "./setup_local_cache.sh" in lines[0]


def test_bench_stops_before_timing_serve(empty_cache, capsys):
    code, lines = run(["bench", "--model", MODEL, "--quick"], capsys)
    assert code == 1
    assert lines == [f"error: {MODEL} is not set up: run ./setup_local_cache.sh --model {MODEL}"]


def test_random_model_without_its_tokenizer_model(empty_cache, capsys):
    out = empty_cache / "random"
    code, lines = run(["random-model", "--shape", "mistral-tiny", "--out", str(out), "--tokenizer-from", MODEL], capsys)
    assert code == 1
    assert lines == [f"error: {MODEL} is not set up: run ./setup_local_cache.sh --model {MODEL}"]
    assert not out.exists()


def test_the_error_is_its_own_type(empty_cache):
    with pytest.raises(ModelNotAvailable, match="is not set up"):
        resolve_model(MODEL)
