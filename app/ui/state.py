"""What every tab shares: the loaded lab (switchable) and how a tab reports errors.

The model is one per process and hooks are global, so every event that uses it goes through
``LabHolder.lab`` and the engine's lock. Per-user settings live in ``gr.State``, never here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from app.lab import Lab

log = logging.getLogger(__name__)

MODEL_CONCURRENCY = "model"  # concurrency_id shared by events that run the model


@dataclass
class LabHolder:
    """The lab the app serves; a teacher can switch the model without restarting."""

    lab: Lab
    loader: Callable[[str], Lab] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def switch(self, model_id: str) -> Lab:
        """Load ``model_id`` and make it current; the old lab is dropped once loaded."""
        if self.loader is None:
            raise ValueError("this app was started without a model loader; restart with --model")
        with self._lock:
            if model_id == self.lab.lm.model_id:
                return self.lab
            new_lab = self.loader(model_id)
            with self.lab.engine.lock:  # wait for running generations on the old model
                self.lab = new_lab
            return new_lab

    def header_markdown(self) -> str:
        lm = self.lab.lm
        library = self.lab.library
        ready, total = len(library.ready_names()), len(library.concepts())
        if ready >= total:
            state = "ready"
        elif library.status == "building":
            state = f"building {ready}/{total}"
        else:
            state = f"{ready}/{total} ready, others built on first use"
        return (
            f"**Model** `{lm.model_id}` · **device** {device_text(lm)} · "
            f"**{lm.n_layers} layers**, d_model {lm.hidden_size} · **concept library** {state}"
        )


def device_text(lm) -> str:
    import torch

    dtype = str(lm.dtype).removeprefix("torch.")
    params = sum(p.numel() for p in lm.model.parameters())
    weights_gb = params * lm.model.dtype.itemsize / 1e9
    where = lm.device.type
    if where == "cuda":
        free, total = torch.cuda.mem_get_info(lm.device)
        return f"{torch.cuda.get_device_name(lm.device)} ({dtype}, {weights_gb:.1f} GB weights, {free / 1e9:.0f}/{total / 1e9:.0f} GB free)"
    import psutil

    memory = psutil.virtual_memory()
    return f"{where} ({dtype}, {weights_gb:.1f} GB weights, {memory.available / 1e9:.0f}/{memory.total / 1e9:.0f} GB RAM free)"


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
