"""Steering Lab: activation steering for teaching and research.

The public API (docs/architecture.md names the parts behind it)::

    from app import Lab, load_model, Steer, Steering, SteeringVector, GenerationRequest, extract

Names load on first use, so ``python -m app models`` and ``--help`` start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "Lab": "app.lab",
    "SteerSpec": "app.lab",
    "parse_steer_spec": "app.lab",
    "load_model": "app.models.loading",
    "LoadedModel": "app.models.loading",
    "SteeringEngine": "app.steering.engine",
    "Steer": "app.steering.engine",
    "Steering": "app.steering.engine",
    "NO_STEERING": "app.steering.engine",
    "SteeringVector": "app.steering.vectors",
    "GenerationRequest": "app.steering.generation",
    "GenerationResult": "app.steering.generation",
    "extract": "app.steering.extraction",
    "Concept": "app.steering.concepts",
    "find_concept": "app.steering.concepts",
}

__all__ = [
    "Concept",
    "GenerationRequest",
    "GenerationResult",
    "Lab",
    "LoadedModel",
    "NO_STEERING",
    "Steer",
    "SteerSpec",
    "Steering",
    "SteeringEngine",
    "SteeringVector",
    "extract",
    "find_concept",
    "load_model",
    "parse_steer_spec",
]

if TYPE_CHECKING:
    from app.lab import Lab, SteerSpec, parse_steer_spec
    from app.models.loading import LoadedModel, load_model
    from app.steering.concepts import Concept, find_concept
    from app.steering.engine import NO_STEERING, Steer, Steering, SteeringEngine
    from app.steering.extraction import extract
    from app.steering.generation import GenerationRequest, GenerationResult
    from app.steering.vectors import SteeringVector


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
