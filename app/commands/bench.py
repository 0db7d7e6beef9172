"""``python -m app bench``: steering speed, memory and start-up, as ratios measured in one run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.commands.common import print_json
from app.models.embedded import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registry id or local model directory (default {DEFAULT_MODEL}; smollm2-135m-instruct for a fast run)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--new-tokens", type=int, help="new tokens per generation (default 64; 8 with --quick)")
    parser.add_argument("--repeats", type=int, help="repetitions per timing, medians kept (default 5; 1 with --quick)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    parser.add_argument("--concepts", type=Path, help="concept folder to build (default: concepts/)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: few tokens, few repetitions")
    parser.add_argument("--no-references", action="store_true", help="skip steering-vectors and repeng")
    parser.add_argument("--no-cold-start", action="store_true", help="skip timing `serve` start-up")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also write the JSON report to FILE")


def check_concept_folder(folder: Path) -> None:
    """Refuse, before any model loads, a ``--concepts`` folder the library cannot build from."""
    from app.steering.concepts import load_all

    if not folder.is_dir():
        raise ValueError(f"--concepts {folder} is not a folder")
    if not load_all(folder):
        raise ValueError(f"--concepts {folder} has no concept files (*.json)")


def main(args: argparse.Namespace) -> int:
    from app.bench.common import BenchConfig
    from app.bench.run import format_table, run_bench

    if args.new_tokens is not None and args.new_tokens < 1:
        raise ValueError(f"--new-tokens must be at least 1, got {args.new_tokens}")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.concepts is not None:
        check_concept_folder(args.concepts)
    config = BenchConfig(
        model=args.model,
        device=args.device,
        new_tokens=args.new_tokens or (8 if args.quick else 64),
        repeats=args.repeats or (1 if args.quick else 5),
        quick=args.quick,
        threads=args.threads,
        concepts_root=args.concepts,
        references=not args.no_references,
        cold_start=not args.no_cold_start,
    )

    def say(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    report = run_bench(config, progress=say)
    if args.save:
        from app.storage import atomic_write_json

        atomic_write_json(args.save, report.as_dict())
        say(f"report saved to {args.save}")
    if args.json:
        print_json(report.as_dict())
    else:
        print(format_table(report))
    return 0
