"""Concept Creator: texts in, a steering vector out, with per-layer statistics.

Type positive and negative examples (one per line) or upload a concept JSON, pick a method,
extract (with progress), read the per-layer separability and norms, then save the concept to
``concepts/custom/``, download the vector (.safetensors or llama.cpp .gguf), or try it in the
Playground.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from app.analysis.concept_figures import norms_figure, separability_figure, strength_sweep_figure
from app.serving import LabHolder
from app.steering import concepts as concept_store
from app.steering import control_vectors
from app.steering.choices import METHODS
from app.steering.concepts import Concept, concept_from_dict, lines_to_examples
from app.steering.library import Settings, default_settings
from app.steering.vectors import SteeringVector
from app.ui import playground as playground_tab
from app.ui.state import MODEL_CONCURRENCY, TabSpec, user_error

log = logging.getLogger(__name__)

METHOD_HELP = {
    "mean_diff": "difference of means (CAA): fast and robust, the default",
    "lda": "difference of means scaled by each dimension's variance, so a few huge dimensions do not swamp it",
    "pca": "first principal direction of the paired differences",
    "probe": "logistic-regression probe per layer; layers ranked by its held-out accuracy",
}
EXAMPLE_POSITIVE = """Thank you so much for your help, I really appreciate it.
Would you mind passing the salt, please?
I'm sorry to interrupt, but may I ask a question?
It was very kind of you to wait for me.
Please let me know if there is anything I can do for you.
Excuse me, could you tell me the way to the station?"""
EXAMPLE_NEGATIVE = """Whatever, I didn't need your help anyway.
Give me the salt.
Stop talking, I have a question.
You made me wait, obviously you don't care.
Don't bother me with your problems.
Hey, where's the station? Hurry up."""


@dataclass
class CreatorParts:
    """What the Creator wires to other tabs once every tab exists (see ``link``)."""

    holder: LabHolder
    try_button: gr.Button
    save_event: object  # the Save click's dependency, to chain a Playground refresh
    form: list  # name, description, positive, negative, method, try prompt

    def link(self, tabs: gr.Tabs, tab: gr.Tab, built: dict) -> None:
        playground = built.get(playground_tab.TAB.label)
        if playground is None:  # the Playground tab is not in this app
            self.try_button.click(
                lambda: gr.Warning("The Steering Playground is not part of this app."), api_name=False
            )
            return
        self.save_event.success(
            lambda: playground.choice_updates(), None, playground.concepts, api_name=False, queue=False
        )

        def try_it(name, description, positive, negative, method, prompt):
            try:
                concept = _concept(name, description, positive, negative)
                note = _ensure_saved(self.holder, concept)
                vector = self.holder.lab.library.get(concept)
            except Exception as error:
                raise gr.Error(user_error(error)) from None
            if note:
                gr.Info(note)
            steered_with = default_settings(concept).method  # what library.get built above
            if method != steered_with:
                gr.Info(f"The Playground steers saved concepts with their {steered_with} vector.")
            use_chat = bool(self.holder.lab.lm.is_chat)
            rows = playground.choice_updates(selected=concept.name, clear_others=True)
            strengths = [vector.recommended_strength] + [0.0] * (len(playground.strengths) - 1)
            text = (prompt or "").strip() or "Tell me about your weekend."
            layers = ", ".join(map(str, vector.recommended_layers))
            note = f"**{concept.name}**: recommended layer {layers}, strength {vector.recommended_strength:g}."
            return [gr.Tabs(selected=playground_tab.TAB.label), text, use_chat, "", note, *rows, *strengths]

        outputs = [
            tabs,
            playground.prompt,
            playground.chat,
            playground.layers,
            playground.note,
            *playground.concepts,
            *playground.strengths,
        ]
        self.try_button.click(
            try_it, self.form, outputs, api_name="try_in_playground", concurrency_id=MODEL_CONCURRENCY
        )


def _concept(name, description, positive, negative) -> Concept:
    return concept_from_dict(
        {
            "name": (name or "").strip(),
            "description": description or "",
            "category": "custom",
            "positive": lines_to_examples(positive or ""),
            "negative": lines_to_examples(negative or ""),
        },
        source="creator",
    )


def _ensure_saved(holder: LabHolder, concept: Concept) -> str:
    """Save ``concept`` unless the same one is already there; returns a note for the user."""
    existing = holder.lab.library.concepts().get(concept.name)
    if existing is not None:
        if existing.content_hash != concept.content_hash:
            raise ValueError(
                f"a concept named {concept.name!r} already exists with other examples: save these with "
                "'Overwrite' ticked, or choose another name"
            )
        return ""
    concept_store.save_custom(concept, holder.lab.library.concepts_root)
    return f"Saved {concept.name!r} to your custom concepts."


def _download_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="steering-lab-vector-"))


def _file_stem(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.") or "vector"


def _control_vector(vector: SteeringVector, path: Path) -> tuple[Path | None, str]:
    """The llama.cpp download: the recommended layers at the recommended strength, and a note."""
    layers = ", ".join(map(str, vector.recommended_layers))
    try:
        control_vectors.save(vector, path, vector.recommended_strength, vector.recommended_layers)
    except ValueError as error:  # e.g. layer 0, which llama.cpp cannot steer
        return None, f"No llama.cpp .gguf: {error}"
    return path, (
        f"The llama.cpp .gguf steers layer {layers} at this strength, baked in "
        "(`--control-vector FILE`; `--control-vector-scaled FILE:0.5` for half)."
    )


def build_creator_tab(holder: LabHolder) -> CreatorParts:
    gr.Markdown(
        "Describe a concept with contrasting examples: **positive** texts that have it and **negative** texts that "
        "do not (one per line, ideally in matching pairs). The lab runs them through the model, finds the direction "
        "that separates them at every layer, and recommends where and how hard to steer."
    )
    with gr.Row():
        name = gr.Textbox(
            "polite",
            label="Name",
            elem_id="cr-name",
            info="lowercase letters, digits, _ or - (e.g. my_concept)",
            max_lines=1,
        )
        description = gr.Textbox(
            "Polite and courteous vs rude", label="Description", max_lines=1, elem_id="cr-description", scale=2
        )
        upload = gr.UploadButton(
            "Upload a concept JSON…", file_types=[".json"], type="binary", scale=1, elem_id="cr-upload"
        )
    with gr.Row():
        positive = gr.Textbox(
            EXAMPLE_POSITIVE, label="Positive examples (one per line)", lines=8, max_lines=16, elem_id="cr-positive"
        )
        negative = gr.Textbox(
            EXAMPLE_NEGATIVE, label="Negative examples (one per line)", lines=8, max_lines=16, elem_id="cr-negative"
        )
    with gr.Row():
        method = gr.Radio(
            list(METHODS),
            value=Settings().method,
            label="Method",
            info=" · ".join(f"{m}: {h}" for m, h in METHOD_HELP.items()),
            scale=3,
        )
        extract = gr.Button("Extract", variant="primary", scale=1, elem_id="cr-extract")
    summary = gr.Markdown("Extract to see the recommended layer and strength.", elem_id="cr-summary")
    with gr.Row():
        separability = gr.Plot(separability_figure(None), label="Separability per layer", elem_id="cr-separability")
        norms = gr.Plot(norms_figure(None), label="Vector vs residual norm", elem_id="cr-norms")
    sweep_plot = gr.Plot(
        strength_sweep_figure(None), label="Effect and fluency against strength", elem_id="cr-strength-sweep"
    )
    with gr.Row():
        overwrite = gr.Checkbox(False, label="Overwrite a custom concept with this name", elem_id="cr-overwrite")
        save = gr.Button("Save to the library", variant="primary", elem_id="cr-save")
        try_prompt = gr.Textbox(
            "Tell me about your weekend.", label="Prompt to try it on", max_lines=1, scale=2, elem_id="cr-try-prompt"
        )
        try_button = gr.Button("Try it in the Playground →", elem_id="cr-try")
    with gr.Row():
        download_st = gr.DownloadButton("Download .safetensors", interactive=False, elem_id="cr-download-safetensors")
        download_gguf = gr.DownloadButton("Download llama.cpp .gguf", interactive=False, elem_id="cr-download-gguf")
    saved = gr.Markdown(elem_id="cr-saved")

    def load_upload(raw: bytes | None):
        if not raw:
            return [gr.skip()] * 5
        try:
            concept = concept_store.parse_concept_bytes(raw, source="the uploaded file")
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        gr.Info(
            f"Loaded {concept.name!r}: {len(concept.positive)} positive, {len(concept.negative)} negative examples."
        )
        prompt = concept.prompts[0] if concept.prompts else gr.skip()
        return concept.name, concept.description, "\n".join(concept.positive), "\n".join(concept.negative), prompt

    upload.upload(load_upload, upload, [name, description, positive, negative, try_prompt], api_name=False)

    def run_extract(name_text, description_text, positive_text, negative_text, method_name, progress=gr.Progress()):
        lab = holder.lab
        try:
            concept = _concept(name_text, description_text, positive_text, negative_text)
            progress(0.0, desc="running the examples through the model")
            settings, report = Settings(method=method_name), lambda f, m: progress(f * 0.9, desc=m)
            existing = lab.library.concepts().get(concept.name)
            if existing is not None and existing.content_hash != concept.content_hash:
                # Another concept owns this name: extract a preview without caching it under the name,
                # so the Playground keeps steering with the saved concept.
                vector = lab.library.build(concept, settings, report)
            else:
                vector = lab.library.get(concept, settings, report)
            progress(0.95, desc="writing the download files")
            folder = _download_dir()
            stem = _file_stem(f"{concept.name}-{lab.lm.model_id}")
            st_path = vector.save(folder / f"{stem}.safetensors")
            gguf_path, gguf_note = _control_vector(vector, folder / f"{stem}.gguf")
        except Exception as error:
            if not isinstance(error, ValueError):
                log.exception("extraction failed")
            raise gr.Error(user_error(error)) from None
        stats = vector.metadata.get("stats", {})
        layers = vector.recommended_layers
        accuracy = stats.get("accuracy", [])
        best = ", ".join(
            f"{layer} (accuracy {accuracy[layer]:.0%})" if layer < len(accuracy) else str(layer) for layer in layers
        )
        text = (
            f"**{concept.name}** on `{lab.lm.model_id}` with **{method_name}** "
            f"({len(concept.positive)} positive, {len(concept.negative)} negative): "
            f"recommended layer {best}, recommended strength **{vector.recommended_strength:g}**. "
            "The strength is the strongest one whose short replies to neutral prompts stayed fluent (below). "
            f"{gguf_note}"
        )
        return (
            text,
            separability_figure(stats, layers),
            norms_figure(stats, layers),
            strength_sweep_figure(vector.metadata.get("strength_sweep")),
            gr.DownloadButton(value=str(st_path), interactive=True),
            gr.DownloadButton(value=str(gguf_path) if gguf_path else None, interactive=gguf_path is not None),
        )

    extract.click(
        run_extract,
        [name, description, positive, negative, method],
        [summary, separability, norms, sweep_plot, download_st, download_gguf],
        api_name="extract_concept",
        concurrency_id=MODEL_CONCURRENCY,
    )

    def run_save(name_text, description_text, positive_text, negative_text, replace_existing):
        try:
            concept = _concept(name_text, description_text, positive_text, negative_text)
            path = concept_store.save_custom(
                concept, holder.lab.library.concepts_root, overwrite=bool(replace_existing)
            )
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        gr.Info(f"Saved {concept.name!r}: it is now in the Playground's concept list.")
        return f"Saved **{concept.name}** to `custom/{path.name}`; pick it in the Steering Playground."

    save_event = save.click(
        run_save, [name, description, positive, negative, overwrite], saved, api_name="save_concept"
    )
    return CreatorParts(
        holder=holder,
        try_button=try_button,
        save_event=save_event,
        form=[name, description, positive, negative, method, try_prompt],
    )


TAB = TabSpec("Concept Creator", build_creator_tab)
