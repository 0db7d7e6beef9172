"""Benchmark parts outside our own loop: cold start of ``serve``, and the other steering libraries.

steering-vectors (forward hooks, ``with vector.apply(model)``) and repeng (wraps the decoder
layers in ``ControlModel``) steer one vector for the whole batch, so a side-by-side comparison or
a layer sweep is one ``model.generate`` after another there; ours are one batched call. Both are
optional (``pip install --no-deps -r requirements-bench.txt``): a library that is missing or
cannot run here is reported as such, with the reason, instead of failing the run.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch

from app.bench.common import PROMPT, BenchConfig, BenchReport, Metric, Runner, interleaved, median, no_eos
from app.steering.generation import encode_prompt
from app.steering.vectors import SteeringVector
from app.storage import REPO_ROOT

# --- cold start ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_cold_start(
    model: str, device: str, concepts_root: Path | None = None, timeout_s: float = 240
) -> list[Metric]:
    """Seconds from launching ``python -m app serve`` until its page answers HTTP 200, then from
    there until a first user's comparison comes back.

    The model cache is the one set up here (linked in); the vector cache is empty, as on a first
    launch, so the library build starts behind the page and the concept the first user asks for is
    not built yet. The first user submits the Playground's default form unchanged (gradio_client
    fills in each field's default, as the page shows it). Hub checks are off (HF_HUB_OFFLINE=1):
    they measure the network, not the app.
    """
    from app.models.embedded import models_dir

    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        cache = Path(scratch) / "cache"
        cache.mkdir()
        if models_dir().is_dir():
            (cache / "models").symlink_to(models_dir().resolve())
        env = {
            **os.environ,
            "STEERING_LAB_CACHE": str(cache),
            "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
        }
        if concepts_root is not None:
            env["STEERING_LAB_CONCEPTS"] = str(Path(concepts_root).resolve())
        port = free_port()
        log_path = Path(scratch) / "serve.log"
        command = [sys.executable, "-m", "app", "serve", "--model", model, "--device", device, "--port", str(port)]
        with open(log_path, "w") as log_file:
            started = time.perf_counter()
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                elapsed = _wait_for_page(opener, port, process, started, timeout_s, log_path)
                vectors = cache / "vectors"
                built = len(list(vectors.rglob("*.safetensors"))) if vectors.exists() else 0
                first = _first_comparison(f"http://127.0.0.1:{port}/", timeout_s)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    return [
        Metric(
            "cold_start_serve",
            elapsed,
            "s",
            target="<= 20",
            note=f"launch to HTTP 200 with an empty vector cache; {built} concept files already built "
            "by the background build when the page answered",
        ),
        first,
    ]


def _first_comparison(url: str, timeout_s: float) -> Metric:
    """A first user's click: connect, submit the Playground's default form, wait for the whole result."""
    from gradio_client import Client

    started = time.perf_counter()
    client = Client(
        url, verbose=False, download_files=False, analytics_enabled=False, httpx_kwargs={"timeout": timeout_s}
    )
    library_before = client.predict(api_name="/health")["library"]
    outputs = client.predict(*_default_inputs(client.config, "generate"), api_name="/generate")
    elapsed = time.perf_counter() - started
    library_after = client.predict(api_name="/health")["library"]
    status = str(outputs[2])
    if not status.startswith("Done"):
        raise RuntimeError(f"the first comparison did not finish: {status!r}")
    return Metric(
        "first_comparison_after_page",
        elapsed,
        "s",
        target="<= 30",
        note=f"the Playground's default form, submitted once the page answers, until its last output; "
        f"library {library_before['status']} {library_before['ready']} ready before, "
        f"{library_after['status']} {library_after['ready']} ready after ({status})",
    )


def _default_inputs(config: dict, api_name: str) -> list:
    """The values an event's inputs show when the page opens (an empty text box sends "")."""
    event = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
    components = {c["id"]: c for c in config["components"]}
    values = []
    for component_id in event["inputs"]:
        component = components[component_id]
        value = component.get("props", {}).get("value")
        values.append("" if value is None and component.get("type") == "textbox" else value)
    return values


def _wait_for_page(
    opener, port: int, process: subprocess.Popen, started: float, timeout_s: float, log_path: Path
) -> float:
    url = f"http://127.0.0.1:{port}/"
    while True:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"`serve` exited with code {process.returncode} before answering:\n{tail}")
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"`serve` did not answer {url} within {timeout_s:.0f} s (log: {log_path})")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)


# --- the other libraries --------------------------------------------------------------------------

Steerer = Callable[[torch.nn.Module, dict[int, torch.Tensor]], AbstractContextManager]


@contextmanager
def _steering_vectors(model: torch.nn.Module, deltas: dict[int, torch.Tensor]) -> Iterator[None]:
    from steering_vectors import SteeringVector as TheirVector

    vector = TheirVector(
        layer_activations={k: v.to(model.dtype) for k, v in deltas.items()}, layer_type="decoder_block"
    )
    with vector.apply(model):
        yield


@contextmanager
def _repeng(model: torch.nn.Module, deltas: dict[int, torch.Tensor]) -> Iterator[None]:
    from repeng import ControlModel, ControlVector

    control = ControlVector(model_type=model.config.model_type, directions={k: v.numpy() for k, v in deltas.items()})
    wrapped = ControlModel(model, list(deltas))  # replaces those layers with wrappers
    try:
        wrapped.set_control(control, coeff=1.0)
        yield
    finally:
        wrapped.unwrap()  # puts the original layers back


def _import(name: str) -> None:
    if name == "repeng":
        import numpy as np

        # repeng 0.4.0 annotates with np.float_, which NumPy 2 removed; the alias is harmless.
        if not hasattr(np, "float_"):
            np.float_ = np.float64  # type: ignore[attr-defined]
    importlib.import_module(name)


LIBRARIES: dict[str, tuple[str, Steerer]] = {
    "steering_vectors": ("steering-vectors==0.12.2", _steering_vectors),
    "repeng": ("repeng==0.4.0", _repeng),
}


def measure_references(
    runner: Runner, vector: SteeringVector, ours: dict, config: BenchConfig, report: BenchReport
) -> None:
    """Their steered tokens/s, side by side and layer sweep (sequential) against ours (batched)."""
    model, tokenizer = runner.engine.model, runner.lab.lm.tokenizer
    n_layers, n = runner.engine.n_layers, runner.new_tokens
    layer, strength = vector.recommended_layers[0], vector.recommended_strength
    device = runner.engine.device
    ids = torch.tensor([encode_prompt(tokenizer, PROMPT, True, runner.lab.lm.is_chat)], device=device)

    def hf_generate() -> list[int]:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        return out[0, ids.shape[1] :].tolist()

    for module_name, (package, steer) in LIBRARIES.items():
        label = package.split("==")[0]
        try:
            _import(module_name)
        except Exception as error:  # missing, or broken in this environment
            _unavailable(
                report,
                module_name,
                f"{label} is not usable here ({type(error).__name__}: {error}); "
                "install with: pip install --no-deps -r requirements-bench.txt",
                ours,
                n,
            )
            continue
        try:
            with no_eos(model):
                mine = runner.run(ours["first"])[0].token_ids

                def theirs(steer: Steerer = steer) -> list[int]:
                    with steer(model, {layer: vector.delta(layer, strength)}):
                        return hf_generate()

                same = theirs() == mine
                times = interleaved(
                    {"ours": lambda: runner.run(ours["first"]), "plain": hf_generate, "theirs": theirs}, config.repeats
                )
                started = time.perf_counter()
                for sweep_layer in range(n_layers):
                    with steer(model, {sweep_layer: vector.delta(sweep_layer, strength)}):
                        hf_generate()
                sweep_s = time.perf_counter() - started
        except Exception as error:
            _unavailable(
                report,
                module_name,
                f"{label} failed on this model with transformers "
                f"{_transformers_version()}: {type(error).__name__}: {error}",
                ours,
                n,
            )
            continue
        finally:
            if runner.engine.hook_count():
                raise RuntimeError(f"{label} left hooks on the model")
        mine_s, plain_s, theirs_s = median(times["ours"]), median(times["plain"]), median(times["theirs"])
        report.add(
            Metric(
                f"{module_name}_steered_tokens_per_s",
                n / mine_s,
                "tok/s",
                n / theirs_s,
                note=f"ours vs {label} + HF generate, same vector at layer {layer}; their overhead "
                f"{plain_s / theirs_s:.3f}x of HF generate unsteered ({n / plain_s:.3g} tok/s); "
                f"same greedy tokens as ours: {'yes' if same else 'no'}",
            )
        )
        report.add(
            Metric(
                f"{module_name}_side_by_side",
                ours["pair_s"],
                "s",
                plain_s + theirs_s,
                note=f"ours batched vs {label}: HF generate unsteered then steered (sum of medians)",
            )
        )
        report.add(
            Metric(
                f"{module_name}_layer_sweep",
                ours["sweep_s"],
                "s",
                sweep_s,
                note=f"ours one {n_layers}-row batch vs {label}: {n_layers} generations one after another",
            )
        )


def _unavailable(report: BenchReport, module_name: str, why: str, ours: dict, n: int) -> None:
    report.notes.append(why)
    report.add(Metric(f"{module_name}_steered_tokens_per_s", n / ours["one_layer_s"], "tok/s", note=why))
    report.add(Metric(f"{module_name}_side_by_side", ours["pair_s"], "s", note=why))
    report.add(Metric(f"{module_name}_layer_sweep", ours["sweep_s"], "s", note=why))


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
