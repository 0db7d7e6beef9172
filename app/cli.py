"""Command-line entry point: ``python -m app <command> ...``.

Each command lives in ``app/commands/<name>.py`` and exposes ``add_arguments(parser)`` and
``main(args) -> int``; modules are imported only when their command runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("app.commands.serve", "start the Gradio app"),
    "models": ("app.commands.models", "list known models and what auto-selection picks"),
    "concepts": ("app.commands.concepts", "list concepts with recommended layers and strength"),
    "extract": ("app.commands.extract", "extract a steering vector from a concept"),
    "generate": ("app.commands.generate", "generate text, optionally steered"),
    "export": ("app.commands.export", "export a steering vector (safetensors or llama.cpp gguf)"),
    "bench": ("app.commands.bench", "measure steering speed against the alternatives"),
    "random-model": ("app.commands.random_model", "save a model of a known shape with random weights, for bench"),
    "experiments": ("app.commands.experiments", "run the paper's experiments E1-E4"),
    "quality": ("app.commands.quality", "held-out check: does default steering show each concept, fluently?"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Steering Lab")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(module_name)  # a command that fails to import is a bug: let it show
            module.add_arguments(command_parser)
            command_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(only=chosen)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command is None:
        parser.print_help()
        return 2
    module = getattr(args, "_module", None)
    if module is None:
        parser.error(f"command {args.command!r} is not available in this build")
    from app.models.registry import ModelNotAvailable  # only now: `--help` stays fast

    try:
        return int(module.main(args) or 0)
    except ModelNotAvailable as error:  # a model that is not set up here: say how to set it up
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # input and file problems: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
