"""The benchmark command runs end to end and reports every metric with finite numbers.

Speed is what the command measures, not what tests assert: this runs ``bench --quick`` on a tiny
random-weight model saved to a folder (no download), with two small concepts, and checks the
shape of the JSON. Targets may pass or fail here; the numbers only have to exist.
"""

from __future__ import annotations

import json
import math

import pytest

from app.bench.common import Metric, interleaved
from tests.reliability_support import save_tiny_model
from tests.test_extraction import NEG, POS

EXPECTED = {
    "cold_start_serve",
    "first_comparison_after_page",
    "library_build",
    "library_build_vs_extraction_forwards",
    "prefill_tokens_per_s",
    "library_load_cached",
    "steering_overhead_one_layer",
    "steering_overhead_all_layers_3_concepts",
    "side_by_side_batched",
    "side_by_side_sequential",
    "layer_sweep_batched",
    "decode_unsteered_share_of_bandwidth_limit",
    "decode_steered_share_of_bandwidth_limit",
    "concurrent_users_8",
    "concurrent_outputs_identical",
    "steering_memory_one_layer",
    "steering_memory_all_layers_3_concepts",
    "steering_memory_layer_sweep",
    "rss",
    *(
        f"{lib}_{what}"
        for lib in ("steering_vectors", "repeng")
        for what in ("steered_tokens_per_s", "side_by_side", "layer_sweep")
    ),
}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concepts")
    for name, positive, negative in (("happy", POS, NEG), ("sad", NEG, POS)):
        concept = {"name": name, "description": name, "category": "emotion", "positive": positive, "negative": negative}
        (folder / f"{name}.json").write_text(json.dumps(concept))
    return folder


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow  # starts `serve` in a subprocess and runs every measurement: about a minute
def test_quick_bench_reports_every_metric_with_finite_numbers(
    tiny_model_dir, concept_dir, capsys, monkeypatch, tmp_path
):
    from app.cli import main

    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path / "cache"))  # nothing written to the real cache
    argv = [
        "bench",
        "--model",
        str(tiny_model_dir),
        "--concepts",
        str(concept_dir),
        "--quick",
        "--json",
        "--new-tokens",
        "4",
        "--save",
        str(tmp_path / "report.json"),
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "report.json").read_text()) == report

    metrics = report["metrics"]
    assert set(metrics) == EXPECTED
    for name, metric in metrics.items():
        assert _finite(metric["ours"]), f"{name}: ours is {metric['ours']!r}"
        assert metric["ours"] >= 0, name
        if metric["reference"] is None:
            # only a reference library that cannot run here may leave its figure out, and it says why
            assert name.startswith(
                ("steering_vectors_", "repeng_", "prefill_", "library_load", "cold_start", "first_comparison", "rss")
            ), name
            if name.startswith(("steering_vectors_", "repeng_")):
                assert "usable" in metric["note"] or "failed" in metric["note"], metric["note"]
        else:
            assert _finite(metric["reference"]) and metric["reference"] > 0, name
            assert _finite(metric["ratio"]), name
        if metric["target"]:
            assert metric["passed"] in (True, False), name
    assert metrics["concurrent_outputs_identical"]["reference"] == 8
    assert report["machine"]["torch_threads"] >= 1 and report["settings"]["new_tokens"] == 4
    assert report["machine"]["read_bandwidth_gb_s"] > 0 and report["machine"]["weight_bytes_per_token"] > 0
    assert any(note.startswith("llama.cpp reference") for note in report["notes"])  # not an embedded model


def test_weight_bytes_per_token_count_tied_weights_once_and_skip_an_untied_embedding():
    from app.bench.roofline import weight_bytes_per_token
    from tests.conftest import make_tiny_model

    model = make_tiny_model("llama")
    everything = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()
    expected = everything if tied else everything - embedding.numel() * embedding.element_size()
    assert weight_bytes_per_token(model) == expected
    model.lm_head.weight = embedding  # tie them: the head reads the whole matrix, counted once
    assert weight_bytes_per_token(model) == sum(p.numel() * p.element_size() for p in model.parameters())


def test_llama_bench_is_looked_for_where_the_environment_says(monkeypatch, tmp_path):
    from app.bench import roofline

    binary = tmp_path / "llama-bench"
    monkeypatch.setenv(roofline.LLAMA_BENCH_ENV, str(binary))
    assert roofline.find_llama_bench() is None
    binary.write_text("")
    assert roofline.find_llama_bench() == binary


def test_metric_checks_its_target_on_the_ratio_or_the_value():
    assert Metric("a", 0.98, "tok/s", 1.0, target=">= 0.97").check().passed is True
    assert Metric("b", 2.0, "s", 1.0, target="<= 1.3").check().passed is False
    assert Metric("c", 0.5, "s", target="<= 1").check().passed is True  # no reference: the value itself
    assert Metric("d", 3.0, "s").check().passed is None


def test_interleaved_rotates_the_order_each_round():
    calls: list[str] = []
    interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": lambda: calls.append("c")}, 3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_the_llama_cpp_row_reads_the_gguf_that_set_up_kept(monkeypatch, tmp_path):
    from app.bench import roofline
    from app.bench.common import BenchReport

    binary = tmp_path / "llama-bench"
    binary.write_text("")
    monkeypatch.setenv(roofline.LLAMA_BENCH_ENV, str(binary))
    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path / "cache"))  # no model kept there
    report = BenchReport(model="smollm2-135m-instruct", machine={}, settings={})
    roofline.measure_llama_cpp(report, "smollm2-135m-instruct", 10.0, 16, 2, 1)
    assert report.metrics == []
    assert report.notes == [
        "llama.cpp reference: smollm2-135m-instruct's GGUF is not kept in cache/models: "
        "run ./setup_local_cache.sh --model smollm2-135m-instruct (it adds the file)"
    ]
    seen = []
    (tmp_path / "cache" / "models" / "smollm2-135m-instruct").mkdir(parents=True)
    kept = tmp_path / "cache" / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    kept.write_bytes(b"GGUF")
    monkeypatch.setattr(roofline, "run_llama_bench", lambda binary, gguf, *rest: seen.append(gguf) or 40.0)
    roofline.measure_llama_cpp(report, "smollm2-135m-instruct", 10.0, 16, 2, 1)
    assert seen == [kept] and report.metrics[0].name == "llama_cpp_decode"


def test_the_share_is_the_median_of_each_rounds_share(monkeypatch):
    """Bandwidth and decoding are timed in turn; a round's decoding is divided by that round's bandwidth."""
    from types import SimpleNamespace

    from app.bench import roofline
    from app.bench.common import BenchReport
    from tests.conftest import make_tiny_model

    model = make_tiny_model("llama")
    runner = SimpleNamespace(engine=SimpleNamespace(model=model), new_tokens=8)
    sums = iter([1.0, 0.5, 0.25])  # seconds per 1 GiB read: 1, 2, 4 GiB/s
    steps = iter([1.0, 1.0, 0.1])  # seconds per decoding step in the same rounds
    monkeypatch.setattr(roofline, "BANDWIDTH_BYTES", 2**12)  # the buffer is not what is timed here
    monkeypatch.setattr(roofline, "read_seconds", lambda buffer: next(sums) * 2**12 / 2**30)
    monkeypatch.setattr(roofline, "paired_steps", lambda runner, steering, count: ([t := next(steps)], [t], 0.0))
    report = BenchReport(model="tiny", machine={}, settings={})
    decode = roofline.measure_share(report, runner, None, rounds=3, steps=4)
    per_gib = roofline.weight_bytes_per_token(model) / 2**30  # a round's share: per_gib / step seconds / GiB/s
    unsteered = report.metrics[0]
    assert unsteered.name == "decode_unsteered_share_of_bandwidth_limit"
    assert unsteered.ratio == pytest.approx(per_gib * 1.0)  # shares 1, 0.5 and 2.5 x per_gib: the median
    assert unsteered.ours == pytest.approx(1.0) and decode == {"unsteered": 1.0, "steered": 1.0}
    assert unsteered.reference == pytest.approx(2 / per_gib)  # the median limit, shown beside it
    assert report.machine["read_bandwidth_gb_s"] == round(2 * 2**30 / 1e9, 2)


def test_paired_steps_time_the_steered_forward_pass_and_count_the_set_up_once(monkeypatch):
    """The hooks' set-up is timed apart and spread over a generation, not paid by every step."""
    import threading
    from contextlib import contextmanager
    from types import SimpleNamespace

    from app.bench import generation
    from tests.conftest import make_tiny_model

    clock = SimpleNamespace(now=0.0)

    def perf_counter() -> float:
        clock.now += 1.0  # every reading of the clock moves it one second
        return clock.now

    @contextmanager
    def steer(steering):
        clock.now += 100.0  # setting up the hooks takes 100 s
        yield
        clock.now += 50.0  # removing them 50 s

    monkeypatch.setattr(generation.time, "perf_counter", perf_counter)
    engine = SimpleNamespace(model=make_tiny_model("llama"), device="cpu", lock=threading.Lock(), steer=steer)
    tokenizer = lambda text: {"input_ids": [1, 2, 3]}  # noqa: E731
    runner = SimpleNamespace(engine=engine, lab=SimpleNamespace(lm=SimpleNamespace(tokenizer=tokenizer, is_chat=False)))
    plain, steered, setup = generation.paired_steps(runner, None, steps=4)
    assert plain == steered == [1.0] * 4  # the forward pass alone, set-up left out
    assert setup == 151.0  # an empty block: set-up, removal and the clock's own step
    assert generation.steered_token_seconds(steered, setup, new_tokens=151) == 2.0
