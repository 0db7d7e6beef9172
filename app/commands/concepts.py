"""``python -m app concepts``: every concept, with its recommended layers and strength on a model."""

from __future__ import annotations

import argparse

from app.commands.common import add_model_arguments, open_lab, print_json, stderr_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    lab = open_lab(args)
    lab.library.load_cached()
    lab.library.build_all(progress=None if args.json else stderr_progress)
    rows = []
    for name, concept in sorted(lab.library.concepts().items()):
        vector = lab.library.cached(name)
        rows.append(
            {
                "name": name,
                "category": concept.category,
                "description": concept.description,
                "examples": [len(concept.positive), len(concept.negative)],
                "method": vector.method if vector else None,
                "recommended_layers": vector.recommended_layers if vector else None,
                "recommended_strength": vector.recommended_strength if vector else None,
                "custom": concept.source.startswith("custom/"),
            }
        )
    if args.json:
        print_json({"model": lab.lm.model_id, "concepts": rows})
        return 0
    print(f"concepts on {lab.lm.model_id}:")
    for row in rows:
        layers = ",".join(str(x) for x in row["recommended_layers"] or [])
        strength = f"{row['recommended_strength']:g}" if row["recommended_strength"] is not None else "-"
        print(
            f"  {row['name']:16s} {row['category']:11s} layers {layers:10s} strength {strength:5s} {row['description']}"
        )
    return 0
