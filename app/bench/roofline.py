"""What the hardware allows: decode speed against the memory-bandwidth limit, and llama.cpp.

A decoding step reads every weight once (the input embedding only one row of it), so on a CPU
decoding is bound by memory bandwidth: ``limit = bandwidth / weight bytes per token``. This part
measures the bandwidth in the same run, in turn with our decoding (a plain ``torch.sum`` over a
buffer much larger than the caches, then paired decoding steps, a few rounds), counts the weight
bytes, and reports our unsteered and steered decode speed as a share of that limit. Beside it, llama.cpp's decode speed on the same model's GGUF file (quantized, so it
reads fewer bytes per token: a reference, not a like-for-like target) when ``llama-bench`` is
built; otherwise the report says why the row is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch

from app.bench.common import BenchReport, Metric, Runner, median
from app.bench.generation import paired_steps, steered_token_seconds
from app.models.embedded import EMBEDDED, kept_gguf
from app.steering.engine import Steering

BANDWIDTH_BYTES = 2**30  # 1 GiB of float32: far beyond any cache
LLAMA_BENCH_ENV = "STEERING_LAB_LLAMA_BENCH"
LLAMA_CPP_VERSION = "0.3.36"  # what /work/shared/tools/build-llama-cpp.sh (LLAMA_CPP_ROOT) builds
SHARE_TARGET = ">= 0.6"
SHARE_ROUNDS = 5  # a torch.sum, then paired decoding steps, in turn
SHARE_STEPS = 16  # paired decoding steps a round


@torch.inference_mode()
def read_seconds(buffer: torch.Tensor, repeats: int = 2) -> float:
    """Median seconds ``torch.sum`` takes over ``buffer`` (touched beforehand by the caller)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        buffer.sum()
        times.append(time.perf_counter() - started)
    return median(times)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decoding step reads: every parameter once (tied ones counted once),
    except an input embedding that is not also the output head (a step reads one row of it)."""
    embedding = model.get_input_embeddings().weight  # type: ignore[operator]
    head = getattr(model.get_output_embeddings(), "weight", None)  # type: ignore[operator]
    # parameters() yields a tied parameter once; packed weights (app.models.kernels) have no data pointer.
    total = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    if head is None or head is not embedding:
        total -= embedding.numel() * embedding.element_size()
    return total


def measure_share(
    report: BenchReport, runner: Runner, steering: Steering, rounds: int = SHARE_ROUNDS, steps: int = SHARE_STEPS
) -> dict[str, float]:
    """Our decoding speed against the bandwidth limit, unsteered and steered with ``steering``.

    The bandwidth and the decoding are timed in turn, ``rounds`` times: a ``torch.sum`` over 1 GiB,
    then ``steps`` paired decoding steps (:func:`app.bench.generation.paired_steps`). Each round's
    share is its decoding speed over its own limit and the median share is kept, because this
    machine's bandwidth swings (``torch.sum`` read 28 to 42 GB/s in one day) and a bandwidth read
    minutes away from the decoding it divides moved the share by a third. Returns the median
    tokens/s of each kind (for the llama.cpp row)."""
    weights = weight_bytes_per_token(runner.engine.model)
    buffer = torch.ones(BANDWIDTH_BYTES // 4)
    buffer.sum()  # touch every page once, untimed
    bandwidths: list[float] = []
    speeds: dict[str, list[float]] = {"unsteered": [], "steered": []}
    shares: dict[str, list[float]] = {"unsteered": [], "steered": []}
    for _ in range(rounds):
        bandwidth = BANDWIDTH_BYTES / read_seconds(buffer)
        plain, steered, setup = paired_steps(runner, steering, steps)
        per_token = {"unsteered": median(plain), "steered": steered_token_seconds(steered, setup, runner.new_tokens)}
        for kind, seconds in per_token.items():
            speeds[kind].append(1 / seconds)
            shares[kind].append(weights / seconds / bandwidth)
        bandwidths.append(bandwidth)
    del buffer
    report.machine["read_bandwidth_gb_s"] = round(median(bandwidths) / 1e9, 2)
    report.machine["weight_bytes_per_token"] = weights
    for kind in speeds:
        report.add(
            Metric(
                f"decode_{kind}_share_of_bandwidth_limit",
                median(speeds[kind]),
                "tok/s",
                median(bandwidths) / weights,
                ratio=median(shares[kind]),
                target=SHARE_TARGET,
                note=f"{kind} decoding steps (batch 1) vs the limit, read bandwidth (torch.sum over 1 GiB) / "
                f"{weights / 1e9:.3f} GB of weights per token, in {rounds} rounds of a torch.sum then {steps} "
                f"paired steps: the median of each round's share (rounds {min(shares[kind]):.3f}-"
                f"{max(shares[kind]):.3f}, bandwidth {min(bandwidths) / 1e9:.1f}-{max(bandwidths) / 1e9:.1f} GB/s)",
            )
        )
    return {kind: median(values) for kind, values in speeds.items()}


# --- llama.cpp --------------------------------------------------------------------------------


def find_llama_bench() -> Path | None:
    """``$STEERING_LAB_LLAMA_BENCH``, else where the build script puts it (``$LLAMA_CPP_ROOT``)."""
    if os.environ.get(LLAMA_BENCH_ENV):
        path = Path(os.environ[LLAMA_BENCH_ENV]).expanduser()
        return path if path.is_file() else None
    root = Path(os.environ.get("LLAMA_CPP_ROOT") or Path.home() / ".cache" / "steering-lab" / "llama.cpp")
    path = root / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" / "llama.cpp" / "build" / "bin" / "llama-bench"
    return path if path.is_file() else None


def run_llama_bench(binary: Path, gguf: Path, new_tokens: int, threads: int, repeats: int) -> float:
    """llama.cpp's decode tokens/s (``tg``: generation without prompt) on ``gguf``."""
    command = [str(binary), "-m", str(gguf), "-p", "0", "-n", str(new_tokens), "-t", str(threads)]
    command += ["-r", str(repeats), "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"llama-bench exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    rows = json.loads(done.stdout)
    return float(rows[-1]["avg_ts"])


def measure_llama_cpp(
    report: BenchReport, model_id: str, ours: float, new_tokens: int, threads: int, repeats: int
) -> None:
    """llama.cpp's decode speed beside ours (``ours``: our unsteered decode tokens/s), or a note."""
    binary = find_llama_bench()
    if binary is None:
        report.notes.append(
            f"llama.cpp reference: llama-bench not found (build it with /work/shared/tools/build-llama-cpp.sh, "
            f"or point {LLAMA_BENCH_ENV} at it)"
        )
        return
    try:
        if model_id not in EMBEDDED:
            report.notes.append(f"llama.cpp reference: {model_id} is not an embedded model, so it has no GGUF file")
            return
        gguf = kept_gguf(model_id)
        if gguf is None:  # set up before set-up kept the GGUF beside the converted model
            report.notes.append(
                f"llama.cpp reference: {model_id}'s GGUF is not kept in cache/models: "
                f"run ./setup_local_cache.sh --model {model_id} (it adds the file)"
            )
            return
        theirs = run_llama_bench(binary, gguf, new_tokens, threads, repeats)
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
        report.notes.append(f"llama.cpp reference failed: {type(error).__name__}: {error}")
        return
    report.add(
        Metric(
            "llama_cpp_decode",
            ours,
            "tok/s",
            theirs,
            note=f"our unsteered float32 decoding steps vs llama-bench tg{new_tokens} ({threads} threads) on "
            f"{gguf.name} (quantized weights: fewer bytes per token than our float32)",
        )
    )
