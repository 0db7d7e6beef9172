"""The Gradio app: a header (model, device, memory, model switcher) and one tab per module.

Each tab lives in its own module under ``app/ui/``: a ``build_*_tab(holder)`` function lays out
components and wires them to the core, and ``TAB`` names it; this file only assembles them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from app.serving import LabHolder
from app.ui import advanced, calibrate, creator, explorer, learn, playground, select, visualizer
from app.ui.health import add_health_endpoint
from app.ui.state import TabSpec, user_error

if TYPE_CHECKING:
    from app.lab import Lab

TABS: tuple[TabSpec, ...] = (
    playground.TAB,
    creator.TAB,
    explorer.TAB,
    visualizer.TAB,
    advanced.TAB,
    select.TAB,
    calibrate.TAB,
    learn.TAB,
)

CSS = """
.steer-output textarea { font-size: 15px; line-height: 1.45; }
.header-line p { margin: 0; }
"""


def start_library(lab: Lab) -> None:
    """Build the missing concepts in the background, the Playground's opening concept first: it is
    the one a class's first click asks for."""
    lab.library.prioritize(playground.DEFAULT_CONCEPT)
    lab.library.start_background_build()


def build_app(holder: LabHolder, switchable_models: list[str] | None = None) -> gr.Blocks:
    # Files Gradio made for users (downloads, uploads) are deleted a day later, so a class server never fills its disk.
    with gr.Blocks(title="Steering Lab", delete_cache=(3600, 86400)) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown("## Steering Lab", scale=1)
            header = gr.Markdown(holder.header_markdown(), elem_classes="header-line", scale=4)
        if switchable_models and holder.loader is not None:
            with gr.Accordion("Switch model", open=False):
                with gr.Row():
                    choice = gr.Dropdown(
                        switchable_models, value=holder.lab.lm.model_id, label="Model available here", scale=3
                    )
                    switch = gr.Button("Load model", scale=1)
                status = gr.Markdown()

            def do_switch(model_id: str, progress=gr.Progress()):
                progress(0.1, desc=f"loading {model_id}")
                try:
                    lab = holder.switch(model_id)
                except Exception as error:  # shown to the user, the app keeps serving
                    raise gr.Error(user_error(error)) from None
                lab.library.load_cached()
                start_library(lab)
                return holder.header_markdown(), f"Loaded `{model_id}`; the concept library builds in the background."

            switch.click(do_switch, [choice], [header, status], api_name="switch_model", concurrency_id="model")
        add_health_endpoint(holder)
        timer = gr.Timer(5.0)
        timer.tick(holder.header_markdown, None, header, show_progress="hidden", queue=False)
        with gr.Tabs() as tabs:
            built: dict[str, object] = {}  # label -> what build returned
            items: dict[str, gr.Tab] = {}
            for tab in TABS:
                with gr.Tab(tab.label, id=tab.label) as items[tab.label]:
                    built[tab.label] = tab.build(holder)
        # Cross-tab wiring (e.g. Creator -> "Try it in the Playground"): a tab's returned parts may link().
        for label, parts in built.items():
            if hasattr(parts, "link"):
                parts.link(tabs, items[label], built)
    return demo
