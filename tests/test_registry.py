"""The model table, resolution of --model, auto-selection and the hub check, all offline."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from app.models import registry
from app.models.embedded import EMBEDDED
from app.models.registry import MODELS, Availability, DeviceInfo

DESIGN_IDS = {
    "mistral-7b-instruct-v0.2",
    "phi-3-mini-4k-instruct",
    "stablelm-2-1.6b-chat",
    "gemma-2-2b-it",
    "gemma-2-9b-it",
    "mistral-7b-instruct-v0.3",
    "qwen2.5-7b-instruct",
    "qwen2.5-coder-1.5b-instruct",
    "qwen2.5-coder-0.5b-instruct",
    "smollm2-135m-instruct",
    "gemma-3-270m",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache and HF cache, and no hub: nothing here may see the real machine's models."""
    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry.hub_check.cache_clear()
    yield tmp_path
    registry.hub_check.cache_clear()


def fake_model_dir(path: Path, manifest: bool = False) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(b"\0" * 8)
    if manifest:
        (path / "manifest.json").write_text("{}")
    return path


# --- the table ------------------------------------------------------------------------------


def test_table_has_every_design_row_with_all_fields():
    assert set(MODELS) == DESIGN_IDS
    for row in MODELS.values():
        assert row.source == "embedded" or (row.repo and row.repo.count("/") == 1), row
        assert row.model_type and row.params_b > 0 and row.memory_gb > row.params_b * 2


def test_embedded_rows_match_the_embedded_table():
    assert {r.id for r in MODELS.values() if r.embedded} == set(EMBEDDED)
    assert [r.id for r in MODELS.values() if not r.chat] == ["gemma-3-270m"]


def test_memory_needed_doubles_in_float32():
    row = MODELS["phi-3-mini-4k-instruct"]
    assert row.memory_needed_gb(4) == pytest.approx(2 * row.memory_needed_gb(2))


# --- resolving --model ------------------------------------------------------------------------


def test_unknown_id_lists_the_valid_ids():
    with pytest.raises(ValueError, match="unknown model 'llama-9000'") as error:
        registry.resolve_model("llama-9000")
    for model_id in MODELS:
        assert model_id in str(error.value)


def test_local_path_without_config_is_not_a_model(tmp_path: Path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="is not a model: expected a directory with a config.json"):
        registry.resolve_model(str(tmp_path / "notes"))


def test_local_path_without_weights_is_not_a_model(tmp_path: Path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no \\*.safetensors or \\*.bin weights"):
        registry.resolve_model(str(tmp_path / "m"))


def test_local_model_path_resolves_to_itself(tmp_path: Path):
    path = fake_model_dir(tmp_path / "mine")
    resolved = registry.resolve_model(str(path))
    assert resolved.source == str(path.resolve()) and resolved.row is None


def test_embedded_id_not_set_up_says_how_to_set_it_up():
    with pytest.raises(FileNotFoundError, match="setup_local_cache.sh --model smollm2-135m-instruct"):
        registry.resolve_model("smollm2-135m-instruct")


def test_embedded_id_set_up_resolves_to_cache(isolated: Path):
    path = fake_model_dir(isolated / "cache" / "models" / "smollm2-135m-instruct", manifest=True)
    assert registry.resolve_model("smollm2-135m-instruct").source == str(path)


def test_half_converted_dir_without_manifest_does_not_count(isolated: Path):
    fake_model_dir(isolated / "cache" / "models" / "smollm2-135m-instruct", manifest=False)
    assert registry.availability("smollm2-135m-instruct").status == "unavailable"


# --- auto-selection -------------------------------------------------------------------------

CUDA_24 = DeviceInfo("cuda", "test GPU", 24.0, 2)
CUDA_12 = DeviceInfo("cuda", "test GPU", 12.0, 2)
CPU_22 = DeviceInfo("cpu", "CPU", 22.0, 4)


def avail(**status: str) -> dict[str, Availability]:
    """Everything unavailable except the ids given (dashes as underscores, dots dropped)."""
    out = {i: Availability("unavailable", "not in any local cache; HF_HUB_OFFLINE is set") for i in MODELS}
    for key, value in status.items():
        model_id = next(i for i in MODELS if i.replace("-", "_").replace(".", "") == key)
        out[model_id] = Availability(value, "somewhere")
    return out


def test_mistral_when_it_fits_and_is_cached():
    model_id, reason = registry.auto_select(CUDA_24, avail(mistral_7b_instruct_v02="cached"))
    assert model_id == "mistral-7b-instruct-v0.2"
    assert "cuda" in reason and "24.0 GB free" in reason


def test_phi3_when_mistral_does_not_fit():
    a = avail(mistral_7b_instruct_v02="downloadable", phi_3_mini_4k_instruct="downloadable")
    model_id, reason = registry.auto_select(CUDA_12, a)
    assert model_id == "phi-3-mini-4k-instruct"
    assert "downloadable" in reason


def test_embedded_when_hub_models_are_unavailable_says_why():
    a = avail(qwen25_coder_05b_instruct="embedded-set-up", smollm2_135m_instruct="embedded-set-up")
    model_id, reason = registry.auto_select(CPU_22, a)
    assert model_id == "qwen2.5-coder-0.5b-instruct"
    assert "mistral-7b-instruct-v0.2 needs 35 GB" in reason  # float32 on the CPU
    assert "phi-3-mini-4k-instruct HF_HUB_OFFLINE is set" in reason
    assert "\n" not in reason


def test_the_default_embedded_model_wins_over_a_larger_one_that_steers_no_better():
    a = avail(qwen25_coder_15b_instruct="embedded-set-up", qwen25_coder_05b_instruct="embedded-set-up")
    model_id, reason = registry.auto_select(CPU_22, a)
    assert model_id == "qwen2.5-coder-0.5b-instruct"
    assert "qwen2.5-coder-1.5b-instruct set up but not preferred" in reason


def test_the_largest_other_embedded_model_when_the_default_is_not_set_up():
    a = avail(qwen25_coder_15b_instruct="embedded-set-up", smollm2_135m_instruct="embedded-set-up")
    model_id, reason = registry.auto_select(CPU_22, a)
    assert model_id == "qwen2.5-coder-1.5b-instruct" and "not preferred" not in reason


def test_chat_model_preferred_over_a_bigger_base_model():
    a = avail(gemma_3_270m="embedded-set-up", smollm2_135m_instruct="embedded-set-up")
    assert registry.auto_select(CPU_22, a)[0] == "smollm2-135m-instruct"


def test_embedded_model_that_does_not_fit_is_passed_over():
    a = avail(qwen25_coder_05b_instruct="embedded-set-up", smollm2_135m_instruct="embedded-set-up")
    small = DeviceInfo("cpu", "CPU", 2.0, 4)
    assert registry.auto_select(small, a)[0] == "smollm2-135m-instruct"


def test_nothing_available_says_what_to_do():
    with pytest.raises(FileNotFoundError, match="setup_local_cache.sh"):
        registry.auto_select(CPU_22, avail())


def test_detect_device_falls_back_to_cpu_with_system_ram(monkeypatch: pytest.MonkeyPatch):
    import psutil
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 6 * 2**30})())
    assert registry.detect_device() == DeviceInfo("cpu", "CPU", 6.0, 4)


def test_detect_device_prefers_cuda_and_sums_free_gpu_memory(monkeypatch: pytest.MonkeyPatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (10 * 2**30, 16 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake GPU")
    info = registry.detect_device()
    assert (info.kind, info.free_gb, info.dtype_bytes, info.name) == (
        "cuda",
        20.0,
        2,
        "Fake GPU x2",
    )


# --- the hub check --------------------------------------------------------------------------


def test_hub_check_respects_hf_hub_offline(monkeypatch: pytest.MonkeyPatch):
    def no_network(url, timeout):
        raise AssertionError("the hub was contacted although HF_HUB_OFFLINE=1")

    monkeypatch.setattr(registry, "_head", no_network)
    assert registry.hub_check("mistralai/Mistral-7B-Instruct-v0.2") == (
        False,
        "HF_HUB_OFFLINE is set",
    )
    assert registry.availability("phi-3-mini-4k-instruct").status == "unavailable"


HANG_S = 60.0  # a hub request that hangs far longer than any check may wait, on any machine


def test_hub_check_never_hangs(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    release = threading.Event()
    monkeypatch.setattr(registry, "_head", lambda url, timeout: release.wait(HANG_S))
    started = time.monotonic()
    try:
        ok, why = registry.hub_check("org/slow", timeout=0.3)
        assert time.monotonic() - started < HANG_S / 2  # it gave up; it did not wait for the request
        assert not release.is_set()
    finally:
        release.set()
    assert not ok and "did not answer" in why


def test_hub_checks_run_in_parallel(monkeypatch: pytest.MonkeyPatch):
    """Each request answers only once all four are in flight: checks made one after another fail."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    all_in_flight = threading.Barrier(4)

    def head(url: str, timeout: float) -> int:
        all_in_flight.wait(HANG_S)
        return 200

    monkeypatch.setattr(registry, "_head", head)
    results = registry.hub_checks(["a/1", "b/2", "c/3", "d/4"], timeout=HANG_S)
    assert results == {repo: (True, "") for repo in ("a/1", "b/2", "c/3", "d/4")}


def test_hub_checks_end_within_one_timeout(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    release = threading.Event()
    monkeypatch.setattr(registry, "_head", lambda url, timeout: release.wait(HANG_S))
    started = time.monotonic()
    try:
        results = registry.hub_checks(["a/1", "b/2", "c/3", "d/4"], timeout=0.3)
        assert time.monotonic() - started < HANG_S / 2
    finally:
        release.set()
    assert all(not ok and "did not answer" in why for ok, why in results.values()) and len(results) == 4


@pytest.mark.parametrize(
    ("status", "ok", "why"),
    [
        (200, True, ""),
        (401, False, "gated"),
        (404, False, "unreachable (404)"),
        ("timed out", False, "timed out"),
    ],
)
def test_hub_check_reads_the_answer(monkeypatch: pytest.MonkeyPatch, status, ok, why):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(registry, "_head", lambda url, timeout: status)
    result = registry.hub_check(f"org/model-{status}")
    assert result[0] is ok and why in result[1]


def test_downloadable_when_the_hub_answers(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(registry, "_head", lambda url, timeout: 200)
    assert registry.availability("phi-3-mini-4k-instruct").status == "downloadable"
    assert registry.resolve_model("phi-3-mini-4k-instruct").source == "microsoft/Phi-3-mini-4k-instruct"


# --- an existing Hugging Face cache -----------------------------------------------------------


def make_hf_snapshot(hf: Path, repo: str) -> Path:
    base = hf / ("models--" + repo.replace("/", "--"))
    snapshot = fake_model_dir(base / "snapshots" / "abc123")
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("abc123")
    return snapshot


def test_model_in_hf_cache_is_cached_and_gets_linked(isolated: Path):
    snapshot = make_hf_snapshot(isolated / "hf", "microsoft/Phi-3-mini-4k-instruct")
    assert registry.availability("phi-3-mini-4k-instruct") == Availability("cached", str(snapshot))

    linked = registry.link_hf_models(say=lambda message: None)
    link = isolated / "cache" / "models" / "phi-3-mini-4k-instruct"
    assert linked == ["phi-3-mini-4k-instruct"]
    assert link.is_symlink() and link.resolve() == snapshot.resolve()
    assert registry.resolve_model("phi-3-mini-4k-instruct").source == str(link)
    assert registry.link_hf_models(say=lambda message: None) == linked  # again: nothing changes


def test_incomplete_hf_snapshot_is_ignored(isolated: Path):
    snapshot = make_hf_snapshot(isolated / "hf", "microsoft/Phi-3-mini-4k-instruct")
    (snapshot / "model.safetensors").unlink()
    assert registry.hf_snapshot("microsoft/Phi-3-mini-4k-instruct") is None


def test_detect_device_reports_on_the_device_asked_for(monkeypatch: pytest.MonkeyPatch):
    import psutil
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ((4 + i) * 2**30, 16 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU{i}")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 6 * 2**30})())
    assert registry.detect_device("cpu") == DeviceInfo("cpu", "CPU", 6.0, 4)
    assert registry.detect_device("cuda:1") == DeviceInfo("cuda", "GPU1", 5.0, 2)


def test_sharded_snapshot_missing_a_shard_is_ignored(isolated: Path):
    snapshot = make_hf_snapshot(isolated / "hf", "microsoft/Phi-3-mini-4k-instruct")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (snapshot / "model-00001-of-00002.safetensors").write_bytes(b"\0")
    assert registry.hf_snapshot("microsoft/Phi-3-mini-4k-instruct") is None
    (snapshot / "model-00002-of-00002.safetensors").write_bytes(b"\0")
    assert registry.hf_snapshot("microsoft/Phi-3-mini-4k-instruct") == snapshot
