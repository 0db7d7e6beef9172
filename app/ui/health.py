"""A read-only ``health`` API endpoint: is the app serving, which model, any hook left over?

Monitoring and the tests call it (``Client(url).predict(api_name="/health")``); it runs outside
the queue so it answers while generations are running. It shows nothing a user could not see in
the header, plus the hook count that proves no steering outlived its request.
"""

from __future__ import annotations

from dataclasses import asdict

import gradio as gr

from app import limits
from app.ui.state import LabHolder


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


def add_health_endpoint(holder: LabHolder) -> None:
    """Register ``/health`` on the Blocks being built (call inside ``with gr.Blocks()``)."""

    def health() -> dict:
        """Model id, hook count (0 when idle), library status and the request limits."""
        return health_info(holder)

    gr.api(health, api_name="health", queue=False)
