"""``python -m app experiments e1|e2|e3|e4|all --out DIR``: the paper's experiments on one model."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from app.commands.common import add_model_arguments, open_lab, stderr_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "which",
        choices=("e1", "e2", "e3", "e4", "all", "figures"),
        help="which experiment (all: E1 to E4; figures: redraw the figures from the tables in --out)",
    )
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for the CSV/JSON results and HTML figures")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a few minutes on SmolLM2): a smoke test")
    parser.add_argument("--queries", type=int, help="queries per condition in E1 and E3 (E2 gets twice as many)")
    parser.add_argument("--seeds", type=int, help="sampling seeds per query")
    parser.add_argument("--max-new-tokens", type=int, help="reply length in E1-E3 (paper: 100)")
    parser.add_argument("--batch-size", type=int, help="rows generated together (default 32)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy shared machine)")


def main(args: argparse.Namespace) -> int:
    from app.experiments.common import FULL, QUICK
    from app.experiments.run import render_figures, run

    if args.which == "figures":
        for path in render_figures(args.out):
            print(path)
        return 0
    sizes = QUICK if args.quick else FULL
    if args.queries is not None:
        sizes = replace(sizes, queries=args.queries, e2_queries=2 * args.queries, e3_queries=args.queries)
    overrides = {"seeds": args.seeds, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    for name, value in (
        ("--queries", sizes.queries),
        ("--seeds", sizes.seeds),
        ("--max-new-tokens", sizes.max_new_tokens),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    lab = open_lab(args)
    which = ("e1", "e2", "e3", "e4") if args.which == "all" else (args.which,)
    results = run(lab, which, args.out, sizes, progress=stderr_progress)
    ranges = ", ".join(f"{dim} ±{value:.3g}" for dim, value in results["functional_ranges"].items())
    print(f"{lab.lm.model_id}: {', '.join(which)} in {time.perf_counter() - started:.0f} s (model load included)")
    print(f"functional ranges: {ranges or 'none measured'}")
    print(f"results in {args.out}")
    return 0
