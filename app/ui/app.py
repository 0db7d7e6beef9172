"""The Gradio app: a header (model, device, memory, model switcher) and one tab per module.

Each tab lives in its own module under ``app/ui/`` with a ``build_*_tab(holder)`` function that lays
out components and wires them to the core; this file only assembles them.
"""

from __future__ import annotations

import importlib

import gradio as gr

from app.ui.health import add_health_endpoint
from app.ui.state import LabHolder, user_error

TABS: list[tuple[str, str, str]] = [
    ("Steering Playground", "app.ui.playground", "build_playground_tab"),
    ("Concept Creator", "app.ui.creator", "build_creator_tab"),
    ("Layer Explorer", "app.ui.explorer", "build_explorer_tab"),
    ("Activation Visualizer", "app.ui.visualizer", "build_visualizer_tab"),
    ("Advanced Experiments", "app.ui.advanced", "build_advanced_tab"),
    ("SELECT", "app.ui.select", "build_select_tab"),
    ("CALIBRATE", "app.ui.calibrate", "build_calibrate_tab"),
    ("LEARN", "app.ui.learn", "build_learn_tab"),
]

CSS = """
.steer-output textarea { font-size: 15px; line-height: 1.45; }
.header-line p { margin: 0; }
"""


def available_tabs() -> list[tuple[str, object]]:
    """(label, build function) for every tab whose module is present."""
    tabs = []
    for label, module_name, function in TABS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        tabs.append((label, getattr(module, function)))
    return tabs


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
                lab.library.start_background_build()
                return holder.header_markdown(), f"Loaded `{model_id}`; the concept library builds in the background."

            switch.click(do_switch, [choice], [header, status], api_name="switch_model", concurrency_id="model")
        add_health_endpoint(holder)
        timer = gr.Timer(5.0)
        timer.tick(holder.header_markdown, None, header, show_progress="hidden", queue=False)
        with gr.Tabs() as tabs:
            built: dict[str, object] = {}  # label -> what build returned
            items: dict[str, gr.Tab] = {}
            for label, build in available_tabs():
                with gr.Tab(label, id=label) as items[label]:
                    built[label] = build(holder)
        # Cross-tab wiring (e.g. Creator -> "Try it in the Playground"): a tab's returned parts may link().
        for label, parts in built.items():
            if hasattr(parts, "link"):
                parts.link(tabs, items[label], built)
    return demo
