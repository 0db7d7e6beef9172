"""``python -m app quality``: held-out check that default steering shows each concept and stays fluent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.commands.common import add_model_arguments, open_lab, print_json
from app.quality import HELDOUT, MAX_NEW_TOKENS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--heldout",
        type=Path,
        default=HELDOUT,
        help="folder with concepts/*.json, scorers.json and questions.json (default: tests/heldout)",
    )
    parser.add_argument(
        "--questions",
        type=Path,
        metavar="FILE",
        help="a JSON list of questions to ask instead of the folder's questions.json "
        "(e.g. tests/heldout/more_questions.json: 24 more, for a wider reading of each concept)",
    )
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="judge only this concept")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument(
        "--prompted",
        action="store_true",
        help="also ask each question unsteered with the concept's description as the system prompt "
        "(column 'told'): what telling the model reaches on the same scorer",
    )
    parser.add_argument("--out", type=Path, help="write every reply and score here (one JSON per concept)")
    parser.add_argument("--json", action="store_true", help="print JSON (every reply and score)")


def main(args: argparse.Namespace) -> int:
    from app.quality.run import load_questions, run_quality, save, save_concept, table

    questions = load_questions(args.questions) if args.questions else None  # a bad file fails before the model loads
    lab = open_lab(args)

    def report(result) -> None:  # progress on stderr; stdout stays clean for --json
        n = len(result.pairs)
        told = "" if result.prompted_moved is None else f"; told: moved {result.prompted_moved}/{n}"
        print(
            f"{result.concept}: moved {result.moved}/{n}, degenerate {result.degenerate}/{n}{told} "
            f"({result.seconds:.0f} s)",
            file=sys.stderr,
        )
        if args.out:
            save_concept(result, args.out)

    def progress(fraction: float, message: str) -> None:  # whole lines: the result lines come between
        print(f"[{fraction:6.1%}] {message}", file=sys.stderr, flush=True)

    results = run_quality(lab, args.heldout, args.only, args.max_new_tokens, report, args.prompted, questions, progress)
    if args.out:
        save(results, args.out, lab.lm.model_id)
    if args.json:
        print_json({"model": lab.lm.model_id, "concepts": [r.to_json() for r in results]})
    else:
        print(f"model: {lab.lm.model_id}")
        print(table(results))
    return 0
