"""What a server holds for its users: the loaded lab (a teacher may switch the model) and its health.

The UI (``app/ui``) and the REST API (``app/api``) both serve a :class:`LabHolder`; neither
imports the other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from app import limits
from app.lab import Lab


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


def health_info(holder: LabHolder) -> dict:
    """What the ``health`` endpoint returns (a JSON object)."""
    lab = holder.lab
    library = lab.library
    done, total = library.progress
    return {
        "status": "ok",
        "model": lab.lm.model_id,
        "fingerprint": lab.lm.fingerprint,
        "device": str(lab.lm.device),
        "linear_kernel": lab.lm.linear_kernel,
        "hooks": lab.engine.hook_count(),
        "active_steering": lab.engine.active_hooks(),
        "batches_run": lab.batcher.batches_run,
        "library": {"status": library.status, "ready": len(library.ready_names()), "building": [done, total]},
        "limits": asdict(limits.current()),
    }
