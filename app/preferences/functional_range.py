"""The functional range of a preference dimension on a model: the strength that −100…100 maps to.

Bo et al. found each model has a range of strengths inside which the effect grows about linearly
and the text stays fluent (±10 for stablelm-2-1.6b, ±30 for gemma-2 and Mistral in their units).
The E1 experiment measures it per model and dimension and stores it in
``cache/functional_range/<model fingerprint>.json``; until then a default derived from the
dimension's recommended strength is used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from app.storage import atomic_write_json, cache_dir

if TYPE_CHECKING:
    from app.lab import Lab

log = logging.getLogger(__name__)

DEFAULT_FACTOR = 1.0  # ±100 ↦ ± the recommended strength: clear but still coherent


def range_file(fingerprint: str, root: Path | None = None) -> Path:
    return Path(root or cache_dir()) / "functional_range" / f"{fingerprint}.json"


def measured_ranges(fingerprint: str, root: Path | None = None) -> dict[str, float]:
    """Ranges E1 measured for this model (empty when none, or the file is unreadable)."""
    path = range_file(fingerprint, root)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): float(v) for k, v in data.items() if float(v) > 0}
    except (ValueError, TypeError, AttributeError) as error:
        log.warning("ignoring unreadable %s: %s", path, error)
        return {}


def save_ranges(fingerprint: str, ranges: dict[str, float], root: Path | None = None) -> Path:
    """Merge ``ranges`` into the model's file (atomic write)."""
    merged = {**measured_ranges(fingerprint, root), **{k: float(v) for k, v in ranges.items()}}
    return atomic_write_json(range_file(fingerprint, root), merged)


def functional_range(lab: Lab, dimension: str, root: Path | None = None) -> float:
    """Strength (normalized units) that the UI's ±100 maps to for ``dimension`` on ``lab``'s model."""
    measured = measured_ranges(lab.lm.fingerprint, root).get(dimension)
    if measured is not None:
        return measured
    return DEFAULT_FACTOR * lab.library.get(dimension).recommended_strength
