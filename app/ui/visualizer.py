"""Activation Visualizer: steering heatmaps (tokens × layers) and concept maps.

The heatmap scores every token at every layer on a concept's direction, for the same text
without and with steering, and shows their difference: zero below the steered layer, then the
change steering makes. The concept map puts the library's vectors, or one concept's example
sentences, on a plane (UMAP, or PCA when there are too few points).
"""

from __future__ import annotations

import logging

import gradio as gr

from app.analysis.figures import concept_map_figure, heatmap_figure, message_figure
from app.analysis.heatmaps import steering_heatmap
from app.analysis.maps import MIN_UMAP_POINTS, examples_map, library_map
from app.analysis.residuals import encode
from app.serving import LabHolder
from app.steering.engine import Steering
from app.ui.analysis_helpers import concept_choices, default_concept, parse_layers, parse_strength, vector_for
from app.ui.state import MODEL_CONCURRENCY, TabSpec, user_error

log = logging.getLogger(__name__)

MAP_LIBRARY = "Concept vectors (the library)"
MAP_EXAMPLES = "One concept's example sentences"
METHODS = ["auto", "umap", "pca"]


def build_visualizer_tab(holder: LabHolder) -> None:
    choices = concept_choices(holder)
    start = default_concept(choices)
    n_layers = holder.lab.lm.n_layers
    gr.Markdown(
        "### Heatmap: where the concept lives, and what steering changes\n"
        "Each cell is one token at one layer: the cosine between the residual stream and the concept's "
        "direction at that layer. Top: the text as the model reads it. Middle: the same text with steering. "
        "Bottom: the difference, zero below the steered layer."
    )
    with gr.Row():
        prompt = gr.Textbox(
            "What a wonderful surprise! I did not expect to see you here.",
            label="Text",
            lines=2,
            scale=4,
            elem_id="vz-prompt",
        )
        chat = gr.Checkbox(value=False, label="Chat template", scale=1)
    with gr.Row():
        concept = gr.Dropdown(choices, value=start, label="Concept", scale=2, elem_id="vz-concept")
        strength = gr.Textbox(
            label="Steering strength", placeholder="blank = recommended", scale=1, elem_id="vz-strength"
        )
        layers = gr.Textbox(
            label="Steer at layers",
            placeholder="blank = recommended; e.g. 12 or 10-14",
            scale=1,
            elem_id="vz-layers",
        )
        metric = gr.Radio(
            ["cosine", "projection"],
            value="cosine",
            label="Score",
            info="projection: length along the unit direction",
            scale=1,
        )
    show = gr.Button("Show heatmaps", variant="primary", elem_id="vz-show")
    heat_status = gr.Markdown(elem_id="vz-status")
    heat_plot = gr.Plot(
        message_figure("Pick a concept and a text, then Show heatmaps."), label="Heatmaps", elem_id="vz-heatmap"
    )

    gr.Markdown(
        "### Concept map\nConcepts (or example sentences) that point the same way land close together. "
        f"With fewer than {MIN_UMAP_POINTS} points the map uses PCA, since UMAP needs more neighbours. "
        "The first UMAP map after a start takes a while: its code is compiled on first use."
    )
    with gr.Row():
        kind = gr.Radio([MAP_LIBRARY, MAP_EXAMPLES], value=MAP_LIBRARY, label="Map", scale=2, elem_id="vz-map-kind")
        map_concept = gr.Dropdown(
            choices, value=start, label="Concept (for its examples)", scale=2, elem_id="vz-map-concept"
        )
        layer = gr.Slider(0, n_layers - 1, value=n_layers // 2, step=1, label="Layer", scale=2, elem_id="vz-map-layer")
        method = gr.Radio(METHODS, value="auto", label="Method", scale=1, elem_id="vz-map-method")
    draw = gr.Button("Draw map", variant="primary", elem_id="vz-draw")
    map_status = gr.Markdown(elem_id="vz-map-status")
    map_plot = gr.Plot(
        message_figure("Draw a map to see the concepts side by side."), label="Concept map", elem_id="vz-map"
    )

    def run_heatmap(text, use_chat, name, value, layer_text, score, progress=gr.Progress()):
        lab = holder.lab
        try:
            ids = encode(lab.lm.tokenizer, text, chat=bool(use_chat), is_chat=lab.lm.is_chat)
            vector = vector_for(holder, name, progress)
            steer = lab.make_steer(name, parse_strength(value), parse_layers(layer_text, lab.lm.n_layers))
            progress(0.9, desc="two forward passes: without and with steering")
            heat = steering_heatmap(lab.engine, lab.lm.tokenizer, ids, vector, Steering((steer,)), score)
        except Exception as error:
            log.warning("heatmap failed: %s", error)
            raise gr.Error(user_error(error)) from None
        where = ", ".join(map(str, heat.steered_layers)) or "none"
        status = (
            f"**{name}** ×{steer.strength:g} at layer {where} · {len(ids)} tokens × {lab.lm.n_layers} layers · "
            f"largest change {abs(heat.difference).max():.3f} ({score})"
        )
        figure = heatmap_figure(heat.tokens, heat.baseline, heat.steered, name, score, heat.steered_layers)
        return status, figure

    show.click(
        run_heatmap,
        [prompt, chat, concept, strength, layers, metric],
        [heat_status, heat_plot],
        api_name="visualize_heatmap",
        concurrency_id=MODEL_CONCURRENCY,
    )

    def run_map(which, name, at_layer, how, progress=gr.Progress()):
        lab = holder.lab
        at_layer = int(at_layer)
        try:
            if not 0 <= at_layer < lab.lm.n_layers:
                raise ValueError(f"layer {at_layer} is out of range: this model has {lab.lm.n_layers} layers")
            if which == MAP_EXAMPLES:
                concept_spec = lab.library.concepts().get(name)
                if concept_spec is None:
                    raise ValueError(f"unknown concept {name!r}: pick one from the list")
                progress(0.1, desc=f"reading {name}'s examples at layer {at_layer}")
                cmap = examples_map(
                    lab.engine,
                    lab.lm.tokenizer,
                    concept_spec.positive,
                    concept_spec.negative,
                    at_layer,
                    labels=(concept_spec.positive_label, concept_spec.negative_label),
                    method=how,
                    progress=lambda f, m: progress(0.1 + 0.5 * f, desc=m),
                )
                progress(0.7, desc="projecting to 2-D")
                title = f"“{name}” examples at layer {at_layer} ({len(cmap.labels)} sentences)"
                text_labels = False
            else:
                ready = {n: lab.library.cached(n) for n in lab.library.ready_names()}
                vectors = {n: v for n, v in ready.items() if v is not None}
                total = len(lab.library.concepts())
                if len(vectors) < 2:
                    raise ValueError(
                        f"{len(vectors)} of {total} concept vectors are built so far; the library builds in the "
                        "background (see the header). Try the examples map meanwhile."
                    )
                groups = {n: c.category for n, c in lab.library.concepts().items()}
                progress(0.5, desc=f"projecting {len(vectors)} vectors to 2-D")
                cmap = library_map(vectors, at_layer, groups, method=how)
                title = f"Concept vectors at layer {at_layer} ({len(cmap.labels)} of {total} built)"
                text_labels = True
        except Exception as error:
            log.warning("concept map failed: %s", error)
            raise gr.Error(user_error(error)) from None
        status = f"{cmap.method.upper()} of {len(cmap.labels)} points at layer {at_layer}."  # the note is on the map
        figure = concept_map_figure(cmap.coords, cmap.labels, cmap.groups, title, cmap.method, cmap.note, text_labels)
        return status, figure

    draw.click(
        run_map,
        [kind, map_concept, layer, method],
        [map_status, map_plot],
        api_name="concept_map",
        concurrency_id=MODEL_CONCURRENCY,
    )


TAB = TabSpec("Activation Visualizer", build_visualizer_tab)
