"""Preference profiles: a user's value per dimension and how it was found, saved as JSON."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from app.preferences.select import UI_MAX
from app.storage import atomic_write_json, cache_dir

PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Interface = Literal["select", "calibrate", "learn"]
INTERFACES: tuple[Interface, ...] = ("select", "calibrate", "learn")
PROFILE_VERSION = 1


@dataclass
class Profile:
    """A named set of preference values: dimension -> {"value": u, "method": how it was set}."""

    name: str
    dimensions: dict[str, dict] = field(default_factory=dict)
    model_id: str | None = None
    version: int = PROFILE_VERSION

    def set(self, dimension: str, value: float, method: Interface) -> None:
        self.dimensions[dimension] = {"value": float(value), "method": method}


def profiles_dir() -> Path:
    return cache_dir() / "profiles"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not PROFILE_NAME.fullmatch(name):
        raise ValueError(f"bad profile name {name!r}: use 1–64 letters, digits, '_' or '-' (no spaces or dots)")
    return name


def profile_from_json(data: dict | str) -> Profile:
    """Validate a profile given as a dict or a JSON string (e.g. one pasted in by a user)."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a profile: invalid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError("not a profile: expected {'name': ..., 'dimensions': {...}}")  # noqa: TRY004 (user input)
    dimensions = data.get("dimensions")
    if not isinstance(dimensions, dict):
        raise ValueError("not a profile: expected {'name': ..., 'dimensions': {...}}")  # noqa: TRY004 (user input)
    model_id = data.get("model_id")
    if model_id is not None and not isinstance(model_id, str):
        raise ValueError("not a profile: 'model_id' must be a string or null")
    profile = Profile(name=_check_name(str(data.get("name", ""))), model_id=model_id)
    for dim, entry in dimensions.items():
        value = entry.get("value") if isinstance(entry, dict) else None
        method = entry.get("method") if isinstance(entry, dict) else None
        if not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > UI_MAX:
            raise ValueError(f"profile {profile.name!r}: {dim!r} needs a value in [−100, 100]")
        if method not in INTERFACES:
            raise ValueError(f"profile {profile.name!r}: {dim!r} method must be one of {INTERFACES}")
        profile.set(dim, value, method)
    return profile


def export_profile(profile: Profile) -> str:
    """The profile as a JSON string (what ``save_profile`` writes)."""
    _check_name(profile.name)
    return json.dumps(asdict(profile), indent=2, ensure_ascii=False)


def save_profile(profile: Profile, directory: str | Path | None = None) -> Path:
    """Write ``<cache>/profiles/<name>.json`` atomically (a failed write keeps the old file)."""
    profile = profile_from_json(json.loads(export_profile(profile)))  # validate before writing
    path = Path(directory or profiles_dir()) / f"{profile.name}.json"
    return atomic_write_json(path, asdict(profile))


def load_profile(name: str, directory: str | Path | None = None) -> Profile:
    path = Path(directory or profiles_dir()) / f"{_check_name(name)}.json"
    if not path.is_file():
        raise ValueError(f"no profile named {name!r} in {path.parent}")
    return profile_from_json(path.read_text(encoding="utf-8"))


def list_profiles(directory: str | Path | None = None) -> list[str]:
    root = Path(directory or profiles_dir())
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob("*.json") if PROFILE_NAME.fullmatch(p.stem))


def delete_profile(name: str, directory: str | Path | None = None) -> bool:
    """Remove a profile; False when there was none."""
    path = Path(directory or profiles_dir()) / f"{_check_name(name)}.json"
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True
