"""Concept packs: one JSON file per concept, validated with errors a person can act on.

Schema (docs/architecture.md, "Concepts")::

    {"name": "happy", "description": "...", "category": "emotion",
     "positive": ["...", ...], "negative": ["...", ...],
     "labels": {"positive": "luxury", "negative": "budget"},   # optional pole names
     "prompts": ["The meeting went", ...]}                      # optional demo prompts

Built-in packs live in ``concepts/``, users' in ``concepts/custom/``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app import limits
from app.storage import atomic_write_json, concepts_dir

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")  # used with fullmatch: no trailing newline
# Names that are devices on Windows: a file called con.json cannot be created there.
RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
MAX_FILE_BYTES = 1_000_000  # the default; the limit in force is limits.current().max_upload_bytes
MAX_EXAMPLES = 500
MAX_EXAMPLE_CHARS = 2_000
MIN_EXAMPLES = 2
MAX_DESCRIPTION_CHARS = 1_000
MAX_LABEL_CHARS = 100
MAX_PROMPTS = 50


class ConceptError(ValueError):
    """A concept that cannot be used, with the reason."""


@dataclass(frozen=True)
class Concept:
    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    description: str = ""
    category: str = "custom"
    labels: dict[str, str] = field(default_factory=dict)
    prompts: tuple[str, ...] = ()
    source: str = ""  # file it came from ("" when typed in)

    @property
    def content_hash(self) -> str:
        """Changes when anything that shapes the vector changes (the examples), nothing else."""
        payload = json.dumps([self.positive, self.negative], ensure_ascii=False).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    @property
    def positive_label(self) -> str:
        return self.labels.get("positive", self.name)

    @property
    def negative_label(self) -> str:
        return self.labels.get("negative", f"not {self.name}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "positive": list(self.positive),
            "negative": list(self.negative),
        }
        if self.labels:
            data["labels"] = dict(self.labels)
        if self.prompts:
            data["prompts"] = list(self.prompts)
        return data


def validate_name(name: object) -> str:
    """A concept name: lowercase letters, digits, ``_`` and ``-``; no paths."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise ConceptError(
            f"bad concept name {shown}: use 1-48 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit (e.g. 'my_concept')"
        )
    if name in RESERVED_NAMES:
        raise ConceptError(f"{name!r} is a reserved file name on Windows; choose another name")
    return name


def _text(value: str, what: str) -> str:
    """``value`` if it can be written as UTF-8 (JSON escapes like \\ud800 can make text that cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConceptError(f"{what} holds an invalid character (a lone surrogate)") from None
    return value


def _examples(data: dict, side: str) -> tuple[str, ...]:
    if side not in data:
        raise ConceptError(f"missing {side!r} examples: give a list of sentences")
    values = data[side]
    if not isinstance(values, list):
        raise ConceptError(f"{side!r} must be a list of sentences, got {type(values).__name__}")
    cleaned = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ConceptError(f"{side} example {i + 1} is not text ({type(value).__name__})")
        value = _text(value.strip(), f"{side} example {i + 1}")
        if not value:
            raise ConceptError(f"{side} example {i + 1} is empty")
        if len(value) > MAX_EXAMPLE_CHARS:
            raise ConceptError(f"{side} example {i + 1} is {len(value):,} characters; the limit is {MAX_EXAMPLE_CHARS}")
        cleaned.append(value)
    if len(cleaned) < MIN_EXAMPLES:
        raise ConceptError(f"{side!r} has {len(cleaned)} example(s); give at least {MIN_EXAMPLES}")
    if len(cleaned) > MAX_EXAMPLES:
        raise ConceptError(f"{side!r} has {len(cleaned)} examples; the limit is {MAX_EXAMPLES}")
    return tuple(cleaned)


def concept_from_dict(data: object, source: str = "") -> Concept:
    """Validate parsed JSON (or a form's fields) into a :class:`Concept`."""
    if not isinstance(data, dict):
        raise ConceptError("a concept must be a JSON object with name, positive and negative")
    name = validate_name(data.get("name"))
    positive, negative = _examples(data, "positive"), _examples(data, "negative")
    overlap = set(positive) & set(negative)
    if overlap:
        raise ConceptError(f"{len(overlap)} sentence(s) appear on both sides, e.g. {min(overlap)!r}")
    labels = data.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(v, str) and len(v) <= MAX_LABEL_CHARS for v in labels.values()
    ):
        raise ConceptError(
            '\'labels\' must be an object like {"positive": "luxury", "negative": "budget"} '
            f"(each at most {MAX_LABEL_CHARS} characters)"
        )
    prompts = data.get("prompts") or []
    if not isinstance(prompts, list) or not all(
        isinstance(p, str) and p.strip() and len(p) <= MAX_EXAMPLE_CHARS for p in prompts
    ):
        raise ConceptError(f"'prompts' must be a list of non-empty strings of at most {MAX_EXAMPLE_CHARS} characters")
    if len(prompts) > MAX_PROMPTS:
        raise ConceptError(f"'prompts' has {len(prompts)} entries; the limit is {MAX_PROMPTS}")
    description = data.get("description", "")
    category = data.get("category", "custom")
    if not isinstance(description, str) or not isinstance(category, str):
        raise ConceptError("'description' and 'category' must be text")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise ConceptError(
            f"the description is {len(description):,} characters; the limit is {MAX_DESCRIPTION_CHARS:,}"
        )
    if len(category) > 48:
        raise ConceptError(f"the category is {len(category):,} characters; the limit is 48")
    for what, value in (("the description", description), ("the category", category), *(
        (f"label {k!r}", v) for k, v in labels.items()), *((f"prompt {i + 1}", p) for i, p in enumerate(prompts))
    ):  # fmt: skip
        _text(value, what)
    return Concept(
        name=name,
        positive=positive,
        negative=negative,
        description=description.strip(),
        category=category.strip() or "custom",
        labels={k: v for k, v in labels.items() if k in ("positive", "negative")},
        prompts=tuple(p.strip() for p in prompts),
        source=source,
    )


def parse_concept_bytes(raw: bytes, source: str = "upload") -> Concept:
    """Parse an uploaded or read file's bytes (size-checked, UTF-8, JSON).

    Raises:
        ConceptError: for anything wrong with the bytes, never another error type.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ConceptError(f"{source} is not a file's contents ({type(raw).__name__})")
    raw = bytes(raw)
    limit = limits.current().max_upload_bytes
    if len(raw) > limit:
        raise ConceptError(
            f"{source} is {len(raw):,} bytes; concept files are limited to {limit:,} ({limits.hint('max_upload_bytes')})"
        )
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows Notepad) is fine
    except UnicodeDecodeError as error:
        raise ConceptError(f"{source} is not UTF-8 text (byte {error.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConceptError(f"{source} is not valid JSON: {error.msg} at line {error.lineno}") from None
    except (ValueError, RecursionError) as error:  # a 5,000-digit number, nesting thousands deep
        raise ConceptError(f"{source} is not a usable JSON file: {str(error)[:200]}") from None
    return concept_from_dict(data, source=source)


def load_concept_file(path: str | Path) -> Concept:
    path = Path(path)
    try:
        if not path.is_file():
            raise ConceptError(f"no concept file at {path}")
        size = path.stat().st_size
        if size > limits.current().max_upload_bytes:  # refuse before reading it into memory
            raise ConceptError(
                f"{path.name} is {size:,} bytes; concept files are limited to {limits.current().max_upload_bytes:,}"
            )
        raw = path.read_bytes()
    except OSError as error:
        raise ConceptError(f"cannot read {path.name}: {error.strerror or error}") from None
    concept = parse_concept_bytes(raw, source=path.name)
    if path.suffix == ".json" and path.stem != concept.name:
        raise ConceptError(f"{path.name}: the file name must match its name field {concept.name!r}")
    return concept


def load_all(root: Path | None = None) -> dict[str, Concept]:
    """Every concept in ``concepts/`` and ``concepts/custom/``; names must be unique.

    A bad custom file is skipped with a warning (one student's upload must not break the class);
    a bad built-in file is an error.
    """
    import logging

    root = Path(root or concepts_dir())
    found: dict[str, Concept] = {}
    for folder, strict in ((root, True), (root / "custom", False)):
        for path in sorted(folder.glob("*.json")):
            try:
                concept = load_concept_file(path)
                if not strict:
                    concept = replace(concept, source=f"custom/{path.name}")
            except ConceptError as error:
                if strict:
                    raise
                logging.getLogger(__name__).warning("skipping custom concept %s: %s", path.name, error)
                continue
            if concept.name in found:
                message = f"duplicate concept name {concept.name!r} in {path} and {found[concept.name].source}"
                if strict:
                    raise ConceptError(message)
                logging.getLogger(__name__).warning("skipping %s", message)
                continue
            found[concept.name] = concept
    return found


def find_concept(name_or_path: str, root: Path | None = None) -> Concept:
    """A concept by name, or from a JSON file path."""
    if name_or_path.endswith(".json") or "/" in name_or_path or "\\" in name_or_path:
        return load_concept_file(name_or_path)
    concepts = load_all(root)
    if name_or_path not in concepts:
        known = ", ".join(sorted(concepts)) or "none"
        raise ConceptError(f"unknown concept {name_or_path!r}. Known concepts: {known}")
    return concepts[name_or_path]


def save_custom(concept: Concept, root: Path | None = None, overwrite: bool = False) -> Path:
    """Write a user's concept to ``concepts/custom/<name>.json`` atomically."""
    root = Path(root or concepts_dir())
    validate_name(concept.name)
    builtin = root / f"{concept.name}.json"
    if builtin.exists():
        raise ConceptError(f"{concept.name!r} is a built-in concept; choose another name")
    path = root / "custom" / f"{concept.name}.json"
    exists = f"a custom concept named {concept.name!r} exists; choose another name or overwrite it"
    if path.exists() and not overwrite:
        raise ConceptError(exists)
    data = concept_from_dict(concept.to_json()).to_json()  # a Concept built by hand is checked too
    try:
        # Without overwrite, two students saving one new name at once: the second is refused.
        return atomic_write_json(path, data, exclusive=not overwrite)
    except FileExistsError:
        raise ConceptError(exists) from None


def lines_to_examples(text: str) -> list[str]:
    """One example per non-empty line (the Concept Creator's text boxes)."""
    return [line.strip() for line in text.splitlines() if line.strip()]
