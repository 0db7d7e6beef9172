"""``python -m app random-model``: save a model of a known shape with random weights, for benchmarks.

Speed depends on a model's shape, not on what its weights learned, so a Mistral-7B-shaped model
with random weights measures steering overhead on a GPU without downloading anything::

    python -m app random-model --shape mistral-7b --out /tmp/mistral-7b-random
    python -m app bench --model /tmp/mistral-7b-random --device cuda --no-cold-start

The tokenizer is copied from an embedded model (its vocabulary sets the embedding size), so the
concept library builds and generation runs as with a real model; the text is noise.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Mistral-7B-Instruct's shape (its config.json), and a tiny one of the same kind for tests.
SHAPES: dict[str, dict] = {
    "mistral-7b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0,
    },
    "mistral-tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    },
}
DTYPES = ("bfloat16", "float16", "float32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="mistral-7b", help="model shape (default mistral-7b)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must not exist or be empty)")
    parser.add_argument(
        "--tokenizer-from",
        default="smollm2-135m-instruct",
        help="embedded model id or model folder whose tokenizer to copy (default smollm2-135m-instruct)",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="weight dtype saved (default bfloat16)")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

    from app.models import registry

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder: pick a new --out")
    source = registry.resolve_model(args.tokenizer_from).source
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = MistralConfig(
        **SHAPES[args.shape],
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    started = time.monotonic()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    n_params = sum(p.numel() for p in model.parameters())
    # Written beside --out, then renamed: a crash (14 GiB to write) leaves no half-made model there.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(out)  # onto a missing or empty folder
    log.info(
        "saved a %s-shaped model with random weights (%.2fB parameters, %s, tokenizer of %s) to %s in %.0f s",
        args.shape,
        n_params / 1e9,
        args.dtype,
        args.tokenizer_from,
        out,
        time.monotonic() - started,
    )
    return 0
