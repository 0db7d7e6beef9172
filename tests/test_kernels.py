"""The linear kernels (transposed, packed, panels): same results, same modules, chosen only when faster.

The panel product's own build and rule: tests/test_panels.py."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from app.models import kernels, panels
from app.models.kernels import PackedCopyLinear, PackedLinear, PanelLinear, TransposedLinear
from app.models.loading import fingerprint
from app.steering.engine import Steer, Steering, SteeringEngine
from app.steering.generation import GenerationRequest, generate
from tests.conftest import TINY_CONFIGS, make_tiny_model
from tests.test_engine import random_vector

KERNEL_CLASSES = {"transposed": TransposedLinear, "packed": PackedLinear}
if panels.unavailable_reason() is None:  # a machine without a C compiler runs the others (tests/test_panels.py skips)
    KERNEL_CLASSES["panels"] = PanelLinear


@pytest.fixture
def no_panels(monkeypatch):
    """A machine where the panel product cannot run (no C compiler, say): the older rules choose."""
    monkeypatch.setattr(panels, "unavailable_reason", lambda: "no C compiler ('cc' is not on PATH)")


@pytest.mark.parametrize("kernel", sorted(KERNEL_CLASSES))
@pytest.mark.parametrize("shape", [(7,), (1, 7), (2, 7), (3, 5, 7), (2, 1, 7), (0, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_each_kernel_computes_what_linear_computes(kernel, shape, bias):
    torch.manual_seed(0)
    layer = nn.Linear(7, 11, bias=bias)
    x = torch.randn(shape)
    expected = layer(x)
    kernels.use(layer, kernel)
    got = layer(x)
    assert type(layer) is KERNEL_CLASSES[kernel]
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_one_row_equals_that_row_in_a_batch_of_two():
    # A single row is computed as a 2-row product, so it matches the same row computed beside another.
    torch.manual_seed(0)
    layer = kernels.TransposedLinear(64, 96)
    x = torch.randn(2, 64)
    assert torch.equal(layer(x[:1]), layer(torch.cat([x[:1], x[:1]]))[:1])


@pytest.mark.parametrize("width", [896, 576])  # 576: narrower than PACK_MIN_WIDTH, up to 32 rows on one thread
def test_a_packed_rows_result_does_not_depend_on_the_other_rows(width, two_threads):
    # What makes batched generation equal one-at-a-time: row i's product is the same bits in any batch,
    # on one thread or two.
    torch.manual_seed(0)
    layer = nn.Linear(width, 1024)
    kernels.use(layer, "packed")
    assert layer.one_thread_rows == (kernels.ONE_THREAD_ROWS if width < kernels.PACK_MIN_WIDTH else 0)
    x = torch.randn(40, width)
    with torch.inference_mode():
        full = layer(x)
        for rows in (1, 2, 3, 8, 24, 32, 33):
            assert torch.equal(layer(x[:rows]), full[:rows])


def test_one_thread_sets_the_calling_thread_only(two_threads):
    seen = {}
    with kernels.one_thread():
        seen["inside"] = torch.get_num_threads()
        started = threading.Thread(target=lambda: seen.update(started=torch.get_num_threads()))
        started.start()
        started.join(timeout=60)
    assert seen == {"inside": 1, "started": 2}  # a thread started meanwhile keeps the process's count
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), kernels.one_thread():
        raise RuntimeError("the count comes back whatever happens in the block")
    assert torch.get_num_threads() == 2


def test_a_narrow_model_is_packed_by_rule_with_small_products_on_one_thread(no_panels, monkeypatch, two_threads):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    model = make_tiny_model("llama")  # 32 wide
    threads_seen: list[tuple[int, int]] = []
    product = kernels.packed_product

    def recording(x, packed, bias):
        threads_seen.append((x.numel() // x.shape[-1], torch.get_num_threads()))
        return product(x, packed, bias)

    choice = kernels.tune(model, torch.device("cpu"), torch.float32)
    assert (choice.kernel, choice.seconds, choice.one_thread_rows) == ("packed", {}, kernels.ONE_THREAD_ROWS)
    assert choice.summary == "packed, one thread up to 32 rows"
    assert "packed by rule, untimed, for models narrower than 768 (this one: 32 wide)" in choice.reason
    assert choice.reason.endswith("; not the panel product: no C compiler ('cc' is not on PATH)")
    decoder = model.model.layers[0].mlp.down_proj
    assert type(decoder) is PackedLinear and decoder.one_thread_rows == kernels.ONE_THREAD_ROWS
    assert type(model.lm_head) is PackedLinear and model.lm_head.one_thread_rows == 0  # tens of MiB in a real model
    monkeypatch.setattr(kernels, "packed_product", recording)
    with torch.inference_mode():
        decoder(torch.randn(1, 2, decoder.in_features))
        decoder(torch.randn(4, 8, decoder.in_features))
        decoder(torch.randn(3, 11, decoder.in_features))
        model.lm_head(torch.randn(1, model.lm_head.in_features))
    assert threads_seen == [(2, 1), (32, 1), (33, 2), (1, 2)]
    kernels.restore(model)
    assert "one_thread_rows" not in vars(decoder)


def test_packing_keeps_the_values_and_gives_a_tied_output_layer_a_packed_copy():
    model = make_tiny_model("llama")
    model.lm_head.weight = model.get_input_embeddings().weight  # tie them, as small models do
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[3, 9, 27, 4]])
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
    calls = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda *args: calls.append(1))
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    print_before = fingerprint("tiny", model)

    assert kernels.use(model, "packed") == n_linear
    assert fingerprint("tiny", model) == print_before  # the vector cache's key reads packed weights too
    embedding = model.get_input_embeddings().weight
    assert type(model.lm_head) is PackedCopyLinear and model.lm_head.weight is embedding  # the tie holds
    assert model.lm_head.packed_weight.is_mkldnn and not embedding.is_mkldnn  # the embedding reads it dense
    assert kernels.packed_copy_bytes(model) == embedding.numel() * 4
    assert set(model.state_dict()) == set(state)  # the copy is no parameter
    down = model.model.layers[0].mlp.down_proj
    assert (
        type(down) is PackedLinear
        and down.weight.is_mkldnn
        and down.weight.shape == state["model.layers.0.mlp.down_proj.weight"].shape
    )
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert calls == [1]

    assert kernels.restore(model) == n_linear
    assert not any(type(m) in (PackedLinear, PackedCopyLinear) for m in model.modules())
    assert not hasattr(model.lm_head, "packed_weight") and model.lm_head.weight is embedding
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the same values, dense again
    kernels.use(model, "transposed")  # switching kernels unpacks first
    assert kernels.use(model, "packed") == n_linear and not any(type(m) is TransposedLinear for m in model.modules())


@pytest.mark.parametrize(("vocab", "packed"), [(128, False), (256, True)])  # hidden size 32
def test_a_tall_output_layer_is_packed_whatever_the_other_layers_use(no_panels, monkeypatch, vocab, packed):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setitem(TINY_CONFIGS, "llama", {**TINY_CONFIGS["llama"], "vocab_size": vocab})
    model = make_tiny_model("llama")
    model.lm_head.weight = model.get_input_embeddings().weight
    ids = torch.tensor([[3, 9, 27, 4]])
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
    monkeypatch.setattr(kernels, "PACK_MIN_WIDTH", 16)  # timed, not packed by rule
    monkeypatch.setattr(kernels, "decide", lambda seconds: "torch")  # the decoder layers keep torch's
    choice = kernels.tune(model, torch.device("cpu"), torch.float32)
    assert choice.kernel == "torch" and choice.output_packed is packed
    assert choice.summary == ("torch, output layer packed" if packed else "torch")  # the load log and /v1/health
    assert kernels.packs_output(model) is packed  # the rule: at least 8x taller than wide
    assert type(model.lm_head) is (PackedCopyLinear if packed else nn.Linear)
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear
    assert (
        "output layer (256 x 32) packed by rule, a packed copy of its tied weight: +0 MiB" in choice.reason
    ) is packed
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    monkeypatch.setenv(kernels.ENV_VAR, "torch")  # a forced kernel is used for every layer
    assert not kernels.tune(model, torch.device("cpu"), torch.float32).output_packed
    assert type(model.lm_head) is nn.Linear and not hasattr(model.lm_head, "packed_weight")


def test_use_and_restore_change_only_the_kernel():
    model = make_tiny_model("llama")
    parameters = {name: p for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    calls = []
    model.lm_head.register_forward_hook(lambda *args: calls.append(1))
    ids = torch.tensor([[3, 9, 27, 4]])

    assert kernels.use(model, "transposed") == n_linear > 0
    assert all(isinstance(m, nn.Linear) for m in model.modules() if type(m) is TransposedLinear)
    assert {name: p for name, p in model.named_parameters()} == parameters  # the very same tensors
    with torch.inference_mode():
        fast = model(input_ids=ids).logits
    assert calls == [1]  # hooks on the layers still fire

    assert kernels.restore(model) == n_linear
    assert not any(type(m) is TransposedLinear for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, fast, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown linear kernel 'fast'"):
        kernels.use(model, "fast")


@pytest.mark.parametrize("kernel", sorted(KERNEL_CLASSES))
@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_batched_generation_equals_one_at_a_time_with_each_kernel(model_type, kernel, char_tokenizer):
    engine = SteeringEngine(make_tiny_model(model_type))
    kernels.use(engine.model, kernel)
    vector = random_vector(engine)
    requests = [
        GenerationRequest("The cat", max_new_tokens=8),
        GenerationRequest("The cat", Steering((Steer(vector, 6.0),)), max_new_tokens=8),
        GenerationRequest("A much longer prompt", Steering((Steer(-vector, 3.0),), "generated"), max_new_tokens=6),
    ]
    batched = generate(engine, char_tokenizer, requests)
    alone = [generate(engine, char_tokenizer, [r])[0] for r in requests]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert batched[0].token_ids != batched[1].token_ids
    assert engine.hook_count() == 0


def times(transposed: dict[int, float], torch_: dict[int, float], pairs: int = 5, packed=None) -> dict:
    """Steady timings: every pass the same."""
    seconds = {
        "transposed": {m: [t] * pairs for m, t in transposed.items()},
        "torch": {m: [t] * pairs for m, t in torch_.items()},
    }
    if packed is not None:
        seconds["packed"] = {m: [t] * pairs for m, t in packed.items()}
    return seconds


@pytest.mark.parametrize(
    ("transposed", "torch_", "expected"),
    [
        ({1: 0.6, 4: 0.5, 64: 1.0}, {1: 1.0, 4: 1.0, 64: 1.0}, "transposed"),  # 70% of the time overall
        ({1: 0.95, 4: 0.95, 64: 0.95}, {1: 1.0, 4: 1.0, 64: 1.0}, "torch"),  # 5% is not worth a switch
        ({1: 0.2, 4: 0.2, 64: 1.7}, {1: 1.0, 4: 1.0, 64: 1.0}, "torch"),  # prompts 70% slower
        ({1: 0.5, 4: 0.5, 64: 1.2}, {1: 1.0, 4: 1.0, 64: 1.0}, "transposed"),  # 20% slower is tolerated
    ],
)
def test_decide(transposed, torch_, expected):
    assert kernels.decide(times(transposed, torch_)) == expected


ONE = {1: 1.0, 4: 1.0, 64: 1.0}


@pytest.mark.parametrize(
    ("transposed", "packed", "expected"),
    [
        ({1: 0.6, 4: 0.5, 64: 1.0}, {1: 0.9, 4: 0.3, 64: 0.8}, "packed"),
        ({1: 0.6, 4: 0.5, 64: 1.0}, {1: 1.7, 4: 0.2, 64: 0.5}, "transposed"),  # packed: one row 70% slower
        ({1: 1.3, 4: 0.5, 64: 1.0}, {1: 1.3, 4: 0.4, 64: 0.6}, "packed"),  # one row 30% slower, less overall
        ({1: 1.0, 4: 1.0, 64: 1.0}, {1: 1.1, 4: 1.0, 64: 1.05}, "torch"),  # packed slower overall
    ],
)
def test_decide_among_three_kernels(transposed, packed, expected):
    assert kernels.decide(times(transposed, ONE, packed=packed)) == expected


def test_the_model_width_is_its_hidden_size():
    assert kernels.model_width(make_tiny_model("llama")) == 32
    assert kernels.model_width(nn.Sequential()) == 0


def busy(seconds: dict, bursts: list[tuple[str, int, int, float]]) -> dict:
    """``seconds`` with load bursts: (kernel, rows, pair, factor) multiplies that pass's time."""
    disturbed = {kernel: {m: list(ts) for m, ts in by_rows.items()} for kernel, by_rows in seconds.items()}
    for kernel, rows, pair, factor in bursts:
        disturbed[kernel][rows][pair] *= factor
    return disturbed


# A quiet machine where the transposed kernel is clearly faster.
QUIET = times({1: 0.5, 4: 0.45, 64: 0.85}, {1: 1.0, 4: 1.0, 64: 1.0})


@pytest.mark.parametrize(
    "bursts",
    [
        [("transposed", 1, 0, 11.7)],  # the reported case: one row looked 11.69x slower
        [("transposed", 1, 0, 20.0), ("transposed", 1, 3, 20.0)],  # two bursts on the same row count
        [("transposed", 64, 2, 3.0), ("torch", 4, 1, 0.5), ("transposed", 4, 4, 5.0)],  # scattered bursts
        [("torch", rows, pair, 4.0) for rows in (1, 4, 64) for pair in (1, 2)]  # bursts on torch's passes
        + [("transposed", rows, pair, 4.0) for rows in (1, 4, 64) for pair in (3, 4)],
    ],
)
def test_a_busy_machine_chooses_what_a_quiet_one_chooses(bursts):
    assert kernels.decide(QUIET) == "transposed"
    assert kernels.decide(busy(QUIET, bursts)) == "transposed"
    steady_torch = times({1: 1.0, 4: 1.0, 64: 1.0}, {1: 0.75, 4: 0.75, 64: 0.75})
    assert kernels.decide(busy(steady_torch, [(k, m, p, 1 / f) for k, m, p, f in bursts])) == "torch"


def test_ratios_are_medians_of_pairs():
    seconds = busy(QUIET, [("transposed", 1, 0, 11.7)])
    assert kernels.ratios(seconds) == pytest.approx({1: 0.5, 4: 0.45, 64: 0.85})
    assert kernels.overall_ratio(seconds) == pytest.approx((0.5 * 0.45 * 0.85) ** (1 / 3))


def test_tune_times_every_kernel_on_a_model_at_least_pack_min_width_wide(no_panels, monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(kernels, "_TIMED", {})
    monkeypatch.setattr(kernels, "PACK_MIN_WIDTH", 32)  # the tiny model is 32 wide
    model = make_tiny_model("llama")
    choice = kernels.tune(model, torch.device("cpu"), torch.float32)
    assert kernels.packing_available()  # torch's CPU wheels ship oneDNN
    assert set(choice.seconds) == {"torch", "transposed", "packed"}
    for by_rows in choice.seconds.values():
        assert set(by_rows) == set(kernels.TUNE_ROWS)
        assert all(len(ts) == kernels.TUNE_PAIRS and min(ts) > 0 for ts in by_rows.values())
    assert choice.kernel == kernels.decide(choice.seconds) and choice.one_thread_rows == 0
    in_use = {type(m) for m in model.modules()} & {nn.Linear, TransposedLinear, PackedLinear}
    assert in_use == {KERNEL_CLASSES.get(choice.kernel, nn.Linear)}


def test_tune_times_weights_of_the_same_shapes_once_per_process(no_panels, monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(kernels, "_TIMED", {})
    monkeypatch.setattr(kernels, "PACK_MIN_WIDTH", 32)
    first = kernels.tune(make_tiny_model("llama"), torch.device("cpu"), torch.float32)
    again = kernels.tune(make_tiny_model("llama", seed=1), torch.device("cpu"), torch.float32)
    assert again.seconds is first.seconds and again.kernel == first.kernel
    assert "timed in" in first.reason and "timed earlier in this process" in again.reason
    assert f"medians of {kernels.TUNE_PAIRS} back-to-back passes" in first.reason
    other = kernels.tune(make_tiny_model("phi3"), torch.device("cpu"), torch.float32)  # other shapes
    assert other.seconds is not first.seconds and len(kernels._TIMED) == 2


def test_tune_keeps_torch_off_cpu_float32_and_obeys_the_environment(monkeypatch):
    model = make_tiny_model("llama")
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    assert kernels.tune(model, torch.device("cpu"), torch.bfloat16).kernel == "torch"
    assert kernels.tune(model, torch.device("cuda"), torch.float32).seconds == {}
    monkeypatch.setenv(kernels.ENV_VAR, "transposed")
    assert kernels.tune(model, torch.device("cpu"), torch.bfloat16).kernel == "transposed"
    assert any(type(m) is TransposedLinear for m in model.modules())
    monkeypatch.setenv(kernels.ENV_VAR, "packed")
    assert kernels.tune(model, torch.device("cpu"), torch.float32).kernel == "packed"
    assert any(type(m) is PackedLinear for m in model.modules()) and not any(
        type(m) is TransposedLinear for m in model.modules()
    )
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert kernels.tune(model, torch.device("cpu"), torch.float32).kernel == "torch"
    assert not any(type(m) in (TransposedLinear, PackedLinear) for m in model.modules())
    monkeypatch.setenv(kernels.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="STEERING_LAB_LINEAR='fastest' is not a linear kernel"):
        kernels.tune(model, torch.device("cpu"), torch.float32)


def test_the_reason_warns_when_openmp_threads_spin(no_panels, monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(kernels, "_TIMED", {})
    monkeypatch.setattr(kernels, "PACK_MIN_WIDTH", 32)  # timed: the warning is about timings
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert "OMP_WAIT_POLICY" not in kernels.tune(make_tiny_model("llama"), torch.device("cpu"), torch.float32).reason
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert (
        "OMP_WAIT_POLICY is not PASSIVE"
        in kernels.tune(make_tiny_model("llama"), torch.device("cpu"), torch.float32).reason
    )
