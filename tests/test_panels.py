"""The panel product (app/models/panels.c): built once per machine, exact per row, chosen by rule."""

from __future__ import annotations

import stat

import pytest
import torch
from torch import nn

from app.models import kernels, panels
from app.models.kernels import PanelCopyLinear, PanelLinear
from app.models.loading import fingerprint
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
    assert not hasattr(model.lm_head, "panel_weight") and "one_thread_rows" not in vars(down)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_tune_chooses_panels_by_rule_with_small_products_on_one_thread(monkeypatch, two_threads):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(kernels, "PANEL_ONE_THREAD_BYTES", 8192)
    model = make_tiny_model("llama")
    small, large = model.model.layers[0].self_attn.q_proj, model.lm_head  # 32 x 32 and 128 x 32 float32: 4 and 16 KiB
    choice = kernels.tune(model, torch.device("cpu"), torch.float32)
    assert (choice.kernel, choice.summary, choice.seconds, choice.output_packed) == ("panels", "panels", {}, False)
    assert choice.reason.startswith("by rule on a CPU with float32 weights, for every linear layer")
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert (small.one_thread_rows, large.one_thread_rows) == (kernels.PANEL_ONE_THREAD_ROWS, 0)
    seen: list[tuple[int, int]] = []
    product = panels.product

    def recording(x, weight, bias, out_features, threads):
        seen.append((x.numel() // x.shape[-1], threads))
        return product(x, weight, bias, out_features, threads)

    monkeypatch.setattr(panels, "product", recording)
    with torch.inference_mode():
        for module in (small, large):
            module(torch.randn(1, 4, module.in_features))
            module(torch.randn(5, module.in_features))
    assert seen == [(4, 1), (5, 2), (4, 2), (5, 2)]


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
    assert panels.unavailable_reason() == "compiling panels.c failed: error: no vectors here"
    assert [p.name for p in fresh_build.glob("build/panels-*/*")] == []


def test_another_librarys_openmp_runtime_in_the_process_does_not_matter(fresh_build):
    # scikit-learn (under umap, for the concept map) maps its own libgomp; ours still binds to torch's.
    import sklearn.utils._openmp_helpers  # noqa: F401

    assert panels.unavailable_reason() is None


def test_a_library_bound_to_another_openmp_runtime_is_refused(two_threads):
    other_runtime = type("Library", (), {"panel_max_threads": staticmethod(lambda: 2)})()  # ignores torch's count
    with pytest.raises(panels.Unavailable, match="would not share torch's OpenMP runtime"):
        panels._check_shared_runtime(other_runtime)
