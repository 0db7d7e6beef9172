"""``python -m app extract``: extract a concept's vector on a model and save it."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.common import add_model_arguments, open_lab, print_json, stderr_progress
from app.steering import concepts as concept_store
from app.steering.choices import METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("concept", help="concept name or concept .json file")
    add_model_arguments(parser)
    parser.add_argument("--method", choices=METHODS, help="default: mean_diff (probe for preference dimensions)")
    parser.add_argument("--top-k-layers", type=int, help="how many layers to recommend")
    parser.add_argument("--out", type=Path, help="write the vector here (.safetensors); default: only the cache")
    parser.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    lab = open_lab(args)
    concept = concept_store.find_concept(args.concept, lab.library.concepts_root)
    from app.steering.library import Settings, default_settings

    default = default_settings(concept)
    settings = Settings(method=args.method or default.method, top_k_layers=args.top_k_layers or default.top_k_layers)
    vector = lab.library.get(concept, settings, progress=None if args.json else stderr_progress)
    if args.out:
        vector.save(args.out)
    stats = vector.metadata.get("stats", {})
    summary = {
        "model": lab.lm.model_id,
        "concept": concept.name,
        "method": vector.method,
        "layers": len(vector.layers),
        "recommended_layers": vector.recommended_layers,
        "recommended_strength": vector.recommended_strength,
        "accuracy": stats.get("accuracy"),
        "separation": stats.get("separation"),
        "saved": str(args.out) if args.out else None,
    }
    if args.json:
        print_json(summary)
        return 0
    print(
        f"{concept.name} on {lab.lm.model_id} ({vector.method}): recommended layers "
        f"{vector.recommended_layers}, strength {vector.recommended_strength:g}"
    )
    print(f"{'layer':>5} {'accuracy':>8} {'separation':>10} {'residual norm':>13} {'vector norm':>11}")
    for layer in sorted(vector.layers):
        print(
            f"{layer:>5} {stats['accuracy'][layer]:>8.2f} {stats['separation'][layer]:>10.2f} "
            f"{stats['residual_norm'][layer]:>13.1f} {stats['vector_norm'][layer]:>11.2f}"
        )
    if args.out:
        print(f"saved {args.out}")
    return 0
