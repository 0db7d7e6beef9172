"""Limits on what one request may ask of the shared model, so one user cannot stall a classroom.

Every limit has a safe default, an environment variable and a ``serve`` flag::

    STEERING_LAB_MAX_NEW_TOKENS=512 python -m app serve
    python -m app serve --max-new-tokens-limit 512

A request over a limit is refused before it reaches the model, with a message that names the
limit and how to raise it. :func:`current` holds the limits of this process (read from the
environment on first use; ``serve`` replaces them with :func:`configure`). They are settings of
the server, the same for every user, so a module-level value is the right place for them.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Attributes:
        max_new_tokens: new tokens per generation.
        max_prompt_chars: characters in a prompt (checked before tokenizing).
        max_prompt_tokens: tokens in a prompt, chat template included.
        max_upload_bytes: size of an uploaded file (concept JSON, vector).
        queue_size: requests waiting in the Gradio queue before new ones are turned away.
        max_rows: generations in one request (a sweep, a side-by-side pair).
        max_concepts: concepts steering one generation.
        max_strength: |strength| in normalized units (1 = 10% of the layer's residual norm).
        max_raw_strength: |strength| as a raw coefficient.
    """

    max_new_tokens: int = 256
    max_prompt_chars: int = 4_000
    max_prompt_tokens: int = 2_048
    max_upload_bytes: int = 1_000_000
    queue_size: int = 64
    max_rows: int = 16
    max_concepts: int = 8
    max_strength: float = 50.0
    max_raw_strength: float = 1_000.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"limit {item.name} must be a positive number, got {value!r}")
            if item.type == "int" and int(value) != value:
                raise ValueError(f"limit {item.name} must be a whole number, got {value!r}")

    def over(self, name: str, what: str, value: float) -> str:
        """The message refusing ``what`` (e.g. ``"max_new_tokens 1000"``) for going over limit ``name``."""
        limit = getattr(self, name)
        shown = f"{int(limit):,}" if float(limit).is_integer() else f"{limit:,g}"
        return f"{what} is over the limit of {shown} ({hint(name)})"


def env_name(field_name: str) -> str:
    return f"STEERING_LAB_{field_name.upper()}"


def flag_name(field_name: str) -> str:
    return f"--{field_name.replace('_', '-')}-limit"


def hint(field_name: str) -> str:
    """How a server's owner raises a limit."""
    return f"set {env_name(field_name)} or serve {flag_name(field_name)} to change it"


def _parse(field_name: str, text: str, source: str) -> int | float:
    kind = Limits.__dataclass_fields__[field_name].type
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"{source}={text!r} is not a number") from None
    if kind == "int":
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{source}={text!r} must be a whole number")
        return int(value)
    return value


def from_env(environ: Mapping[str, str] | None = None, base: Limits | None = None) -> Limits:
    """``base`` (the defaults) with every ``STEERING_LAB_<LIMIT>`` variable that is set applied."""
    environ = os.environ if environ is None else environ
    changes = {}
    for item in fields(Limits):
        text = environ.get(env_name(item.name), "").strip()
        if text:
            changes[item.name] = _parse(item.name, text, env_name(item.name))
    return replace(base or Limits(), **changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--<limit>-limit`` flag per limit (default: the environment, else the built-in default)."""
    group = parser.add_argument_group("limits per request (also set by STEERING_LAB_<LIMIT> variables)")
    defaults = Limits()
    for item in fields(Limits):
        group.add_argument(
            flag_name(item.name),
            dest=f"limit_{item.name}",
            type=int if item.type == "int" else float,
            metavar="N",
            help=f"default {getattr(defaults, item.name):g}; {env_name(item.name)}",
        )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Limits:
    """The environment's limits with any ``--<limit>-limit`` flag given on top."""
    limits = from_env(environ)
    changes = {
        item.name: getattr(args, f"limit_{item.name}")
        for item in fields(Limits)
        if getattr(args, f"limit_{item.name}", None) is not None
    }
    return replace(limits, **changes)


_current: Limits | None = None


def current() -> Limits:
    """The limits in force in this process."""
    global _current
    if _current is None:
        _current = from_env()
    return _current


def configure(limits: Limits | None) -> Limits:
    """Replace the limits in force (``None``: read the environment again on next use)."""
    global _current
    _current = limits
    return current()
