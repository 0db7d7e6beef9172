"""``python -m app export``: write a concept's vector as safetensors or a llama.cpp control vector."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.common import add_model_arguments, open_lab, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("concept", help="concept name, concept .json or vector .safetensors")
    add_model_arguments(parser)
    parser.add_argument("--format", choices=("gguf", "safetensors"), default="gguf")
    parser.add_argument("--out", type=Path, required=True, help="output file")
    parser.add_argument(
        "--strength", type=float, help="gguf only: strength baked into the directions (default: recommended)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    lab = open_lab(args)
    vector = lab.vector(args.concept)
    strength = args.strength if args.strength is not None else vector.recommended_strength
    if args.format == "gguf":
        vector.to_gguf(args.out, strength)
    else:
        vector.save(args.out)
    info = {"concept": vector.name, "format": args.format, "out": str(args.out), "model": lab.lm.model_id}
    if args.format == "gguf":
        info["strength"] = strength
    if args.json:
        print_json(info)
    else:
        extra = f" at strength {strength:g} (use with llama.cpp --control-vector)" if args.format == "gguf" else ""
        print(f"wrote {args.out}{extra}")
    return 0
