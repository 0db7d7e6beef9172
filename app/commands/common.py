"""Arguments and set-up shared by the commands that load a model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="registry id or local model directory (default: auto-select)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best present)")


def open_lab(args: argparse.Namespace):
    """Load the model named by ``--model``/``--device`` and wrap it in a Lab."""
    from app.lab import Lab
    from app.models.loading import load_model

    return Lab(load_model(args.model, device=args.device))


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def stderr_progress(fraction: float, message: str) -> None:
    """A one-line progress display on stderr (stdout stays clean for --json)."""
    sys.stderr.write(f"\r[{fraction:6.1%}] {message:<60}")
    if fraction >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()
