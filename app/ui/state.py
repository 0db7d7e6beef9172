"""What every tab shares: how a tab is declared and how it reports errors.

The model is one per process and hooks are global, so every event that uses it goes through
``LabHolder.lab`` (app/serving.py) and the engine's lock. Per-user settings live in ``gr.State``, never here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.serving import LabHolder

MODEL_CONCURRENCY = "model"  # concurrency_id shared by events that run the model


def user_error(error: Exception) -> str:
    """One readable line for an error shown in the UI (never a traceback)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:500]


@dataclass(frozen=True)
class TabSpec:
    """A tab of the app: its label (also its ``gr.Tab`` id) and the function that lays it out.

    ``build(holder)`` may return parts with a ``link(tabs, tab, built)`` method, called once every
    tab exists, to wire events across tabs (``built`` maps each label to what its build returned).
    """

    label: str
    build: Callable[[LabHolder], object]
