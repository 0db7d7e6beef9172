"""Benchmark of generation: steering overhead, side by side, layer sweep, concurrent users, memory.

Every timing here is interleaved with the unsteered run it is compared with (see
:func:`app.bench.common.interleaved`), and generations make exactly ``new_tokens`` tokens (end of
sequence suppressed) except for the concurrent users, who go through the app's own path.

Steering overhead is a few percent at most, less than whole generations vary from one run to
the next on a shared machine (several percent here), so it is measured step by step instead:
each decoding step's forward pass runs twice back to back, unsteered and steered, in alternating
order (:func:`paired_steps`). The end-to-end ratio over whole generations is reported beside it.
"""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import nullcontext

import torch
from transformers import DynamicCache

from app.bench.common import (
    PROMPT,
    USER_PROMPTS,
    BenchConfig,
    BenchReport,
    Metric,
    Runner,
    all_layers_mix,
    each_layer_rows,
    interleaved,
    median,
    no_eos,
    one_layer,
)
from app.lab import Lab
from app.steering.engine import NO_STEERING, Steer, Steering, SteeringEngine
from app.steering.generation import GenerationRequest, encode_prompt
from app.steering.vectors import SteeringVector


@torch.inference_mode()
def paired_steps(runner: Runner, steering: Steering, steps: int) -> tuple[list[float], list[float], float]:
    """Seconds of each decoding step's forward pass unsteered and steered, back to back.

    Greedy decoding of :data:`PROMPT` (batch 1, KV cache). At every step the same forward pass
    runs twice, in alternating order; the first pass's token is taken out of the cache again
    (``crop(-1)``), so both see the same cache. The steered pass enters ``engine.steer`` for that
    one pass, but only the forward pass inside the block is timed: a real generation sets the
    hooks up once, not at every step. The third value is that set-up (median seconds of an empty
    ``steer`` block), for the caller to count once per generation (:func:`steered_token_seconds`).
    """
    engine, model = runner.engine, runner.engine.model
    device = engine.device
    ids = encode_prompt(runner.lab.lm.tokenizer, PROMPT, True, runner.lab.lm.is_chat)
    cache = DynamicCache(config=model.config)

    def step(token: torch.Tensor) -> tuple[torch.Tensor, float]:
        started = time.perf_counter()
        output = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return output.logits, time.perf_counter() - started

    with engine.lock:
        output = model(input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
        token = output.logits[:, -1:].argmax(-1)  # [1, 1]
        plain: list[float] = []
        steered: list[float] = []
        for index in range(steps):
            for order, steer in enumerate((False, True) if index % 2 == 0 else (True, False)):
                if order == 1:
                    cache.crop(-1)  # drop the first pass's entry: the second pass sees the same cache
                with engine.steer(steering) if steer else nullcontext():
                    logits, seconds = step(token)
                (steered if steer else plain).append(seconds)
            token = logits[:, -1:].argmax(-1)
        setups = []
        for _ in range(20):
            started = time.perf_counter()
            with engine.steer(steering):
                pass
            setups.append(time.perf_counter() - started)
    return plain, steered, median(setups)


def steered_token_seconds(steered_s: list[float], setup_s: float, new_tokens: int) -> float:
    """A steered token's seconds from :func:`paired_steps`: its forward pass, plus its share of the
    hooks' set-up, which a generation of ``new_tokens`` pays once."""
    return median(steered_s) + setup_s / new_tokens


def _spread(times: list[float]) -> float:
    """Coefficient of variation: how much the same generation's time varies from run to run."""
    return statistics.stdev(times) / statistics.mean(times) if len(times) > 1 else 0.0


def measure_generation(runner: Runner, vectors: list[SteeringVector], config: BenchConfig, report: BenchReport) -> dict:
    """Steering overhead, side by side, and the layer sweep; returns the medians for later sections."""
    n_layers = runner.engine.n_layers
    first, mix = one_layer(vectors[0]), all_layers_mix(vectors[:3], n_layers)
    sweep = each_layer_rows(vectors[0], n_layers)
    n = runner.new_tokens
    with no_eos(runner.engine.model):
        runner.run(NO_STEERING)  # warm-up: first-call allocations and kernel choices
        times = interleaved(
            {
                "plain": lambda: runner.run(NO_STEERING),
                "one": lambda: runner.run(first),
                "mix": lambda: runner.run(mix),
            },
            2 * config.repeats,
        )
        batched = interleaved(
            {
                "single": lambda: runner.run(NO_STEERING),
                "pair": lambda: runner.run(NO_STEERING, first),
                "sweep": lambda: runner.run(*sweep),
            },
            config.repeats,
        )
    plain, one, mixed = (median(times[k]) for k in ("plain", "one", "mix"))
    steps = 2 * n
    spread = _spread(times["plain"])
    for name, steering, whole, what in (
        ("steering_overhead_one_layer", first, one, f"one concept at layer {first.steers[0].resolved_layers()[0]}"),
        (
            "steering_overhead_all_layers_3_concepts",
            mix,
            mixed,
            f"{', '.join(v.name for v in vectors[:3])} at all {n_layers} layers",
        ),
    ):
        unsteered_s, steered_s, setup_s = paired_steps(runner, steering, steps)
        per_token = steered_token_seconds(steered_s, setup_s, n)
        report.add(
            Metric(
                name,
                1 / per_token,
                "tok/s",
                1 / median(unsteered_s),
                target=">= 0.97" if name.endswith("one_layer") else ">= 0.95",
                note=f"{what}: {steps} decoding steps, each run unsteered and steered back to back (medians), "
                f"hook set-up ({setup_s * 1e3:.2f} ms) counted once per {n}-token generation "
                f"({median(unsteered_s) / (median(steered_s) + setup_s):.3f} if counted every step); over whole generations "
                f"{plain / whole:.3f} (median of {len(times['plain'])} each; unsteered generations alone vary "
                f"by {spread:.1%} from run to run)",
            )
        )
    single, pair = median(batched["single"]), median(batched["pair"])
    sequential = median([a + b for a, b in zip(times["plain"], times["one"])])
    report.add(
        Metric(
            "side_by_side_batched",
            pair,
            "s",
            single,
            target="<= 1.3",
            note="baseline + steered in one batched call vs one unsteered generation",
        )
    )
    report.add(
        Metric(
            "side_by_side_sequential",
            sequential,
            "s",
            plain,
            note="baseline then steered, one after the other (per-round sum) vs one generation",
        )
    )
    report.add(
        Metric(
            "layer_sweep_batched",
            median(batched["sweep"]),
            "s",
            single,
            target=f"<= {0.25 * n_layers:g}",
            note=f"all {n_layers} layers as one {n_layers}-row batch vs one generation (target 0.25 x N)",
        )
    )
    return {
        "plain_s": plain,
        "one_layer_s": one,
        "pair_s": pair,
        "sweep_s": median(batched["sweep"]),
        "first": first,
    }


def measure_concurrency(lab: Lab, vectors: list[SteeringVector], config: BenchConfig, report: BenchReport) -> None:
    """``config.users`` callers with different steering through ``lab.generate`` from threads."""
    requests = []
    for i in range(config.users):
        vector = vectors[i % len(vectors)]
        steering = (
            NO_STEERING
            if i == 0
            else Steering(
                (Steer(vector, vector.recommended_strength * (0.5 + 0.25 * (i % 3))),),
                positions=("all", "last", "generated")[i % 3],
            )
        )
        prompt = USER_PROMPTS[i % len(USER_PROMPTS)]
        requests.append(GenerationRequest(prompt=prompt, steering=steering, max_new_tokens=config.new_tokens))

    def one_at_a_time() -> list:
        return [lab.generate([request])[0] for request in requests]

    def together() -> list:
        results: list = [None] * len(requests)
        barrier = threading.Barrier(len(requests))

        def user(i: int) -> None:
            barrier.wait()
            results[i] = lab.generate([requests[i]])[0]

        threads = [threading.Thread(target=user, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    outputs: dict[str, list] = {}
    batches_before = lab.batcher.batches_run
    rounds = 1 if config.quick else 2
    times = interleaved(
        {"solo": lambda: outputs.update(solo=one_at_a_time()), "together": lambda: outputs.update(together=together())},
        rounds,
    )
    batches = (lab.batcher.batches_run - batches_before - rounds * len(requests)) / rounds
    tokens = sum(len(r.token_ids) for r in outputs["solo"])
    solo_tps, together_tps = tokens / median(times["solo"]), tokens / median(times["together"])
    report.add(
        Metric(
            f"concurrent_users_{len(requests)}",
            together_tps,
            "tok/s",
            solo_tps,
            target=">= 3",
            note=f"total throughput, {len(requests)} threads via lab.generate ({batches:g} shared "
            f"batches per round) vs one at a time; {tokens} tokens, end-of-sequence allowed",
        )
    )
    same = sum(a.token_ids == b.token_ids for a, b in zip(outputs["solo"], outputs["together"]))
    report.add(
        Metric(
            "concurrent_outputs_identical",
            same,
            "rows",
            len(requests),
            target=">= 1",
            note="rows whose tokens equal the one-at-a-time run (last round)",
        )
    )


def steering_state_bytes(engine: SteeringEngine) -> int:
    """Bytes of the tensors our hooks hold right now (deltas, position masks), counted once each."""
    seen: dict[int, int] = {}
    modules = [*engine.layers, engine.base_model]
    for module in modules:
        for hook in [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]:
            for cell in hook.__closure__ or ():
                for value in (cell.cell_contents, getattr(cell.cell_contents, "mask", None)):
                    if isinstance(value, torch.Tensor):
                        seen[value.data_ptr()] = value.numel() * value.element_size()
    return sum(seen.values())


def measure_memory(runner: Runner, vectors: list[SteeringVector], report: BenchReport) -> None:
    import psutil

    engine, model = runner.engine, runner.engine.model
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    n_layers = engine.n_layers
    cases = {
        "one_layer": [one_layer(vectors[0])],
        "all_layers_3_concepts": [all_layers_mix(vectors[:3], n_layers)],
        "layer_sweep": each_layer_rows(vectors[0], n_layers),
    }
    ids = runner.lab.lm.tokenizer("Hello there", return_tensors="pt")["input_ids"].to(engine.device)
    for name, rows in cases.items():
        with engine.steer(rows), torch.inference_mode():
            model(input_ids=ids.expand(len(rows), -1), logits_to_keep=1)
            held = steering_state_bytes(engine)
        report.add(
            Metric(
                f"steering_memory_{name}",
                held,
                "bytes",
                params,
                target="<= 0.01",
                note=f"delta tensors and hook state ({len(rows)} rows) vs parameter bytes",
            )
        )
    process = psutil.Process()
    with no_eos(model):
        runner.run(NO_STEERING)
        before = process.memory_info().rss
        runner.run(*cases["layer_sweep"])
        after_sweep = process.memory_info().rss
    report.add(
        Metric(
            "rss",
            before / 2**20,
            "MiB",
            note=f"resident memory after an unsteered generation; +{(after_sweep - before) / 2**20:.1f} MiB "
            f"after the {n_layers}-row layer sweep (KV cache and activations of the batch, not steering)",
        )
    )
