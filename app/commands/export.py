"""``python -m app export``: write a concept's vector as safetensors or a llama.cpp control vector.

The control vector holds what the lab steers with (the concept's recommended layers and strength,
or ``--layers`` / ``--strength``), so ``llama-completion --control-vector FILE`` steers like
``python -m app generate --steer`` (README, "llama.cpp").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.common import add_model_arguments, open_lab, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("concept", help="concept name, concept .json, or vector .safetensors/.gguf")
    add_model_arguments(parser)
    parser.add_argument("--format", choices=("gguf", "safetensors"), default="gguf")
    parser.add_argument("--out", type=Path, required=True, help="output file")
    parser.add_argument("--layers", help="gguf only: layers to steer, e.g. 10,12 (default: recommended)")
    parser.add_argument(
        "--strength", type=float, help="gguf only: strength baked into the directions (default: recommended)"
    )
    parser.add_argument("--raw", action="store_true", help="gguf only: --strength is a raw coefficient")
    parser.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    from app.lab import parse_layer_numbers
    from app.models import embedded
    from app.steering import control_vectors

    lab = open_lab(args)
    if args.format == "safetensors":
        vector = lab.vector(args.concept)
        vector.save(args.out)
        if args.json:
            print_json(
                {"concept": vector.name, "format": "safetensors", "out": str(args.out), "model": lab.lm.model_id}
            )
        else:
            print(f"wrote {args.out}")
        return 0
    layers = parse_layer_numbers(args.layers, " (--layers)") if args.layers else None
    steer = lab.make_steer(args.concept, args.strength, layers, "raw" if args.raw else "normalized")
    chosen = steer.resolved_layers()
    control_vectors.save(steer.vector, args.out, steer.strength, chosen, steer.unit)
    model_gguf = embedded.kept_gguf(lab.lm.model_id)
    info = {
        "concept": steer.vector.name,
        "format": "gguf",
        "out": str(args.out),
        "model": lab.lm.model_id,
        "layers": list(chosen),
        "strength": steer.strength,
        "unit": steer.unit,
        "model_gguf": str(model_gguf) if model_gguf else None,
    }
    if args.json:
        print_json(info)
        return 0
    layer_text = ",".join(map(str, chosen))
    print(f"wrote {args.out}: {steer.vector.name} at layer {layer_text}, strength {steer.strength:g} ({steer.unit})")
    model_arg = str(model_gguf) if model_gguf else f"<{lab.lm.model_id} GGUF>"
    print(f"use: llama-completion -m {model_arg} --control-vector {args.out} -p 'The meeting went' -n 40 --temp 0")
    return 0
