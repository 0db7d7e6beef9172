"""What the Layer Explorer, Activation Visualizer and Advanced Experiments tabs share.

Concept lists, layer parsing, building a vector with progress, running a batch of generation
requests with progress, and finding reference texts for the Effect metric. No layout here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import gradio as gr

from app.limits import current as current_limits
from app.serving import LabHolder
from app.steering.generation import GenerationRequest, GenerationResult
from app.steering.layers import parse_layer_list
from app.steering.vectors import SteeringVector

log = logging.getLogger(__name__)

NONE = ""  # the "no concept" choice


def concept_choices(holder: LabHolder, with_none: bool = False) -> list[tuple[str, str]]:
    """(label, name) for every concept the library knows, teaching ones first."""
    concepts = holder.lab.library.concepts()
    choices = sorted(
        ((f"{name} ({c.category})", name) for name, c in concepts.items()),
        key=lambda item: (item[0].endswith("(custom)"), item[1]),
    )
    return [("— none —", NONE), *choices] if with_none else choices


def default_concept(choices: Sequence[tuple[str, str]], preferred: str = "happy") -> str | None:
    names = [name for _, name in choices if name]
    return preferred if preferred in names else (names[0] if names else None)


def parse_layers(text: str | None, n_layers: int) -> tuple[int, ...] | None:
    """``""`` -> None (the concept's recommended layers); ``"12"``, ``"10,12"``, ``"10-14"``, ``"middle"``."""
    return parse_layer_list(text, n_layers)


def parse_strength(text: str | float | None) -> float | None:
    """``""`` -> None (the concept's recommended strength), else a finite number."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"cannot read strength {text!r}: write a number such as 4 or -2.5, or leave it blank"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"strength must be a finite number, got {text!r}")
    return value


def vector_for(holder: LabHolder, name: str | None, progress: gr.Progress) -> SteeringVector:
    """The concept's vector, built now (with progress) if the library does not have it yet."""
    if not name:
        raise ValueError("pick a concept first")
    label = f"building the {name} vector"
    return holder.lab.library.get(name, progress=lambda f, m: progress(f, desc=f"{label}: {m}"))


def max_rows(holder: LabHolder) -> int:
    """How many generations one request may run as a batch on this server."""
    return min(holder.lab.batcher.max_rows, current_limits().max_rows)


def generate_rows(
    holder: LabHolder, requests: Sequence[GenerationRequest], progress: gr.Progress, what: str
) -> list[GenerationResult]:
    """Generate all rows as one batch, reporting progress token by token."""
    total = max(r.max_new_tokens for r in requests)
    results: list[GenerationResult] = []
    stream = holder.lab.stream(requests)
    try:
        for results in stream:
            step = max(len(r.token_ids) for r in results)
            progress(step / total, desc=f"{what}: token {step}/{total}")
    finally:
        stream.close()
    return results


def references_for(holder: LabHolder, name: str) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], str]:
    """Reference texts for the Effect metric: the concept's reference set, or (custom concepts)
    its own examples. Returns ``((positive, negative), note)``."""
    from app.analysis.metrics import load_references

    try:
        references = load_references(name)
        return (references.positive, references.negative), ""
    except ValueError:
        concept = holder.lab.library.concepts().get(name)
        if concept is None:
            raise ValueError(f"unknown concept {name!r}") from None
        note = f"`{name}` has no reference set: its Effect is measured against its own examples."
        return (tuple(concept.positive), tuple(concept.negative)), note


_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def show_token(text: str) -> str:
    """A token for a table cell: spaces, newlines and other invisible characters made visible."""
    if not text:
        return "∅"
    return "".join(_VISIBLE.get(c) or (c if c.isprintable() and not c.isspace() else f"\\u{ord(c):04x}") for c in text)
