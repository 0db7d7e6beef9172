"""``python -m app generate``: generate text, steered, optionally beside the unsteered baseline."""

from __future__ import annotations

import argparse

from app.commands.common import add_model_arguments, open_lab, print_json
from app.steering.choices import POSITION_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt")
    add_model_arguments(parser)
    parser.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="NAME_OR_FILE[@L1,L2][=STRENGTH]",
        help="concept name, concept .json, or vector .safetensors/.gguf; repeatable. Layers and "
        "strength default to the concept's recommendations",
    )
    parser.add_argument("--raw", action="store_true", help="strengths are raw coefficients, not normalized units")
    parser.add_argument("--positions", choices=POSITION_MODES, default="all", help="which positions to steer")
    parser.add_argument("--compare", action="store_true", help="also generate the unsteered baseline (one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
    parser.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    from app.steering.engine import NO_STEERING, Steering
    from app.steering.generation import GenerationRequest

    lab = open_lab(args)
    unit = "raw" if args.raw else "normalized"
    steers = tuple(lab.make_steer(spec, unit=unit) for spec in args.steer)
    base = GenerationRequest(
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        chat=not args.no_chat,
    )
    steered = GenerationRequest(**{**base.__dict__, "steering": Steering(steers, args.positions)})
    requests = [GenerationRequest(**{**base.__dict__, "steering": NO_STEERING}), steered] if args.compare else [steered]
    results = lab.generate(requests)
    steering = [
        {
            "concept": s.vector.name,
            "layers": list(s.resolved_layers()),
            "strength": s.strength,
            "unit": s.unit,
        }
        for s in steers
    ]
    if args.json:
        out = {"model": lab.lm.model_id, "prompt": args.prompt, "steering": steering, "positions": args.positions}
        if args.compare:
            out["baseline"] = results[0].text
        out["steered"] = results[-1].text
        print_json(out)
        return 0
    for item in steering:
        print(f"# {item['concept']} at layers {item['layers']}, strength {item['strength']:g} ({item['unit']})")
    if args.compare:
        print("--- baseline ---")
        print(results[0].text)
        print("--- steered ---")
    print(results[-1].text)
    return 0
