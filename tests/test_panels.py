"""The panel product (app/models/panels.c): built once per machine, exact per row, chosen by rule."""

from __future__ import annotations

import os
import select
import signal
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from app.models import kernels, panels
from app.models.kernels import PanelCopyLinear, PanelLinear
from app.models.loading import fingerprint
from app.models.threads import one_thread
from tests.conftest import make_tiny_model

pytestmark = pytest.mark.skipif(
    panels.unavailable_reason() is not None, reason=f"the panel product cannot run here: {panels.unavailable_reason()}"
)


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """The panel library looked for (and built) again, in an empty cache; the process's own afterwards."""
    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path))
    panels._load.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    panels._load.cache_clear()


@pytest.mark.parametrize("shape", [(37, 29), (16, 8), (1, 5), (48, 1)])
def test_panels_hold_the_weight_exactly(shape):
    weight = torch.randn(shape)
    laid_out = panels.to_panels(weight)
    assert laid_out.shape == (-(-shape[0] // 16), shape[1], 16) and laid_out.is_contiguous()
    assert torch.equal(panels.from_panels(laid_out, shape[0]), weight)
    assert torch.equal(laid_out[0, :, 0], weight[0])  # panel p, column k, lane j holds W[16p + j, k]
    assert int((laid_out != 0).sum()) == int((weight != 0).sum())  # the padding is zeros


@pytest.mark.parametrize("shape", [(5,), (1, 5), (3, 2, 5), (13, 5), (0, 5)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_product_is_x_times_w_transposed_plus_bias(shape, bias, threads):
    torch.manual_seed(0)
    weight, b, x = torch.randn(21, 5), torch.randn(21), torch.randn(shape)
    got = panels.product(x, panels.to_panels(weight), b if bias else None, 21, threads)
    assert got.shape == (*shape[:-1], 21) and got.dtype == torch.float32
    torch.testing.assert_close(got, x @ weight.T + (b if bias else 0), rtol=1e-5, atol=1e-5)


def test_a_rows_result_is_the_same_bits_in_any_batch_on_any_thread_count(two_threads):
    # What keeps batched generation equal to one-at-a-time: rows go in blocks of 6, threads take whole panels.
    torch.manual_seed(0)
    weight, bias, x = torch.randn(200, 96), torch.randn(200), torch.randn(20, 96)
    laid_out = panels.to_panels(weight)
    full = panels.product(x, laid_out, bias, 200, 2)
    for rows in (1, 2, 5, 6, 7, 12, 13, 20):
        for threads in (1, 2):
            assert torch.equal(panels.product(x[:rows], laid_out, bias, 200, threads), full[:rows])
    assert torch.equal(panels.product(x[7:8], laid_out, bias, 200, 1)[0], full[7])  # 2nd block, 2nd place


def test_the_product_refuses_what_it_cannot_read():
    laid_out = panels.to_panels(torch.randn(16, 4))
    with pytest.raises(TypeError, match="float32 on the CPU, not torch.float64"):
        panels.product(torch.randn(2, 4, dtype=torch.float64), laid_out, None, 16, 1)


def test_use_panels_keeps_modules_hooks_values_and_the_tie():
    model = make_tiny_model("llama")
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as small models are
    state = {k: v.clone() for k, v in model.state_dict().items()}
    print_before = fingerprint("tiny", model)
    ids = torch.tensor([[3, 9, 27, 4]])
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
    calls = []
    down = model.model.layers[0].mlp.down_proj
    down.register_forward_hook(lambda *args: calls.append(1))
    n_linear = sum(type(m) is nn.Linear for m in model.modules())

    assert kernels.use(model, "panels") == n_linear
    embedding = model.get_input_embeddings().weight
    assert type(down) is PanelLinear and down.weight.shape == (-(-down.out_features // 16), down.in_features, 16)
    assert type(model.lm_head) is PanelCopyLinear and model.lm_head.weight is embedding  # the tie holds
    assert kernels.packed_copy_bytes(model) == embedding.numel() * 4
    assert set(model.state_dict()) == set(state)  # the copy is no parameter
    assert fingerprint("tiny", model) == print_before  # the vector cache's key reads panel weights in torch's layout
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert calls == [1]

    assert kernels.restore(model) == n_linear
    assert not any(type(m) in (PanelLinear, PanelCopyLinear) for m in model.modules())
    assert not hasattr(model.lm_head, "panel_weight")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_tune_chooses_panels_by_rule_on_torchs_thread_count(monkeypatch, two_threads):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    model = make_tiny_model("llama")
    small, large = model.model.layers[0].self_attn.q_proj, model.lm_head
    choice = kernels.tune(model, torch.device("cpu"), torch.float32)
    assert (choice.kernel, choice.summary, choice.seconds, choice.output_packed) == ("panels", "panels", {}, False)
    assert choice.reason.startswith("by rule on a CPU with float32 weights, for every linear layer")
    assert all(type(m) is not nn.Linear for m in model.modules())
    seen: list[tuple[int, int]] = []
    product = panels.product

    def recording(x, weight, bias, out_features, threads):
        seen.append((x.numel() // x.shape[-1], threads))
        return product(x, weight, bias, out_features, threads)

    monkeypatch.setattr(panels, "product", recording)
    with torch.inference_mode():
        for module in (small, large):
            module(torch.randn(1, 4, module.in_features))
            with one_thread():
                module(torch.randn(5, module.in_features))
    assert seen == [(4, 2), (5, 1), (4, 2), (5, 1)]


def test_tune_uses_panels_only_on_a_cpu_with_float32(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    model = make_tiny_model("llama")
    assert kernels.tune(model, torch.device("cpu"), torch.bfloat16).kernel == "torch"
    assert kernels.tune(model, torch.device("cuda"), torch.float32).kernel == "torch"
    monkeypatch.setenv(kernels.ENV_VAR, "packed")
    assert kernels.tune(model, torch.device("cpu"), torch.float32).kernel == "packed"
    assert not any(type(m) is PanelLinear for m in model.modules())


def test_the_library_is_built_once_into_the_cache(fresh_build):
    assert panels.unavailable_reason() is None
    built = list(fresh_build.glob("build/panels-*/libpanels.so"))
    assert len(built) == 1 and not list(fresh_build.glob("build/panels-*/.libpanels.*"))  # no temp file left
    stamp = built[0].stat().st_mtime_ns
    panels._load.cache_clear()  # another process on the same machine
    assert panels.unavailable_reason() is None and built[0].stat().st_mtime_ns == stamp


def test_a_damaged_cached_library_is_built_again(fresh_build, caplog):
    built = fresh_build / "build" / f"panels-{panels._build_key(panels._compiler())}" / "libpanels.so"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"not a shared library")  # left by an earlier process: a disk fault, a copy cut short
    assert panels.unavailable_reason() is None
    assert built.read_bytes()[:4] == b"\x7fELF" and "does not load" in caplog.text


def test_without_a_compiler_the_older_rules_choose_and_say_why(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    assert panels.unavailable_reason() == "no C compiler ('no-such-compiler' is not on PATH)"
    model = make_tiny_model("llama")
    choice = kernels.tune(model, torch.device("cpu"), torch.float32)
    assert choice.kernel == "packed"  # 32 wide: packed by rule
    assert choice.reason.endswith("; not the panel product: no C compiler ('no-such-compiler' is not on PATH)")
    with pytest.raises(ValueError, match=r"^the panel product cannot run here: no C compiler"):
        kernels.use(model, "panels")
    monkeypatch.setenv(kernels.ENV_VAR, "panels")
    with pytest.raises(ValueError, match=r"^the panel product cannot run here: no C compiler"):
        kernels.tune(model, torch.device("cpu"), torch.float32)
    assert not list(fresh_build.glob("build/*"))


def test_a_failed_compile_is_one_line_and_leaves_nothing(fresh_build, monkeypatch):
    compiler = fresh_build / "cc"
    compiler.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'fake 1.0'; exit 0; }\necho 'error: no vectors here' >&2\nexit 1\n"
    )
    compiler.chmod(compiler.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(compiler))
    assert panels.unavailable_reason() == "compiling panels.c, layer_step.c failed: error: no vectors here"
    assert [p.name for p in fresh_build.glob("build/panels-*/*")] == []


def _helpers_join_within(seconds: float, product: Callable[[], object]) -> bool:
    """Repeat ``product`` until a helper thread has computed a panel of it: an event, not a timing."""
    before, deadline = panels.panels_by_helpers(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        product()
        if panels.panels_by_helpers() > before:
            return True
    return False


def _wide_product(threads: int) -> torch.Tensor:
    torch.manual_seed(1)
    weight, x = torch.randn(1024, 512), torch.randn(3, 512)
    return panels.product(x, panels.to_panels(weight), None, 1024, threads)


def test_helpers_share_the_work_and_give_the_same_bits(two_threads):
    alone = _wide_product(1)
    assert _helpers_join_within(120, lambda: _wide_product(2))
    assert 1 <= panels.helpers_started() <= 63  # one per thread beyond the caller's, started once
    started = panels.helpers_started()
    for _ in range(5):
        assert torch.equal(_wide_product(2), alone)
    assert panels.helpers_started() == started


def test_sleeping_helpers_wake_for_a_product(two_threads):
    panels.set_helper_spin_us(0)  # every helper sleeps the moment it is idle
    try:
        assert _helpers_join_within(120, lambda: _wide_product(2))
        assert torch.equal(_wide_product(2), _wide_product(1))
    finally:
        panels.set_helper_spin_us(panels.HELPER_SPIN_US)


def test_subnormals_are_zeros_on_every_thread_and_torch_keeps_its_own(two_threads):
    # The library flushes subnormal floats (its arithmetic on them is slow); the caller's floating
    # point mode is given back after each call, so torch's own ops still see and make subnormals.
    tiny = 1e-39  # under FLT_MIN (1.18e-38): a subnormal float
    x = torch.full((2, 256), tiny)
    x[1] = 1.0
    laid_out = panels.to_panels(torch.ones(1024, 256))
    expected = torch.stack([torch.zeros(1024), torch.full((1024,), 256.0)])  # not 2.56e-37: read as zeros
    results = []
    assert _helpers_join_within(120, lambda: results.append(panels.product(x, laid_out, None, 1024, 2)))
    assert all(torch.equal(got, expected) for got in results)  # the helper's panels too
    assert torch.equal(panels.product(x, laid_out, None, 1024, 1), expected)
    assert float(torch.tensor([tiny]) * 2) == pytest.approx(2e-39, rel=1e-3)
    normed = panels.rms_norm(torch.full((1, 8), tiny), torch.ones(8), 1e-6)
    assert torch.equal(normed, torch.zeros(1, 8))  # not 1e-39 * 1000: read as zeros


def test_products_from_several_threads_at_once_are_exact(two_threads):
    # One product at a time has the helpers; the others run on their own calling thread.
    torch.manual_seed(0)
    weight, bias = torch.randn(300, 64), torch.randn(300)
    laid_out = panels.to_panels(weight)
    inputs = [torch.randn(rows, 64) for rows in (1, 2, 3, 7, 13)]
    expected = [panels.product(x, laid_out, bias, 300, 1) for x in inputs]

    def worker(_: int) -> bool:
        return all(
            torch.equal(panels.product(x, laid_out, bias, 300, 2), want)
            for _ in range(40)
            for x, want in zip(inputs, expected)
        )

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(worker, range(4))) == [True] * 4


def _in_a_forked_child() -> bytes:
    torch.set_num_threads(1)  # torch's own OpenMP threads do not survive a fork; ours are started again
    joined = _helpers_join_within(120, lambda: _wide_product(2))
    return b"%d%d" % (joined, torch.equal(_wide_product(2), _wide_product(1)))


def test_a_forked_child_starts_helpers_of_its_own(two_threads):
    assert _helpers_join_within(120, lambda: _wide_product(2))  # the parent's helpers run; a child has none
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.write(write, _in_a_forked_child())
        finally:
            os._exit(0)
    os.close(write)
    answered: list[int] = []
    try:
        answered, _, _ = select.select([read], [], [], 300)
        answer = os.read(read, 2) if answered else b"no answer within 300 s"
    finally:
        os.close(read)
        if not answered:
            os.kill(child, signal.SIGKILL)  # a stuck child fails the test instead of hanging the suite
        os.waitpid(child, 0)
    assert answer == b"11"  # a helper joined the child's products, and they were exact
