"""A read-only ``health`` API endpoint: is the app serving, which model, any hook left over?

Monitoring and the tests call it (``Client(url).predict(api_name="/health")``); it runs outside
the queue so it answers while generations are running. It shows nothing a user could not see in
the header, plus the hook count that proves no steering outlived its request.
"""

from __future__ import annotations

import gradio as gr

from app.serving import LabHolder, health_info


def add_health_endpoint(holder: LabHolder) -> None:
    """Register ``/health`` on the Blocks being built (call inside ``with gr.Blocks()``)."""

    def health() -> dict:
        """Model id, hook count (0 when idle), library status and the request limits."""
        return health_info(holder)

    gr.api(health, api_name="health", queue=False)
