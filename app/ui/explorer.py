"""Layer Explorer: the lessons beside a live per-layer view of the user's prompt.

The view runs one unsteered forward pass and shows the residual-stream norm per layer, the
logit lens (what the model would predict if it stopped at each layer) and, for a chosen
concept, how each layer's residual lines up with that concept's direction.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from app.analysis.figures import concept_layers_figure, message_figure, residual_norm_figure
from app.analysis.residuals import LayerView, encode, layer_view
from app.serving import LabHolder
from app.storage import REPO_ROOT
from app.ui.analysis_helpers import NONE, concept_choices, show_token, vector_for
from app.ui.state import MODEL_CONCURRENCY, TabSpec, user_error

log = logging.getLogger(__name__)

LESSONS_DIR = REPO_ROOT / "lessons"
TOP_K = 5
EXAMPLE_PROMPTS = [
    "The weather today is",
    "I sat by the river bank",
    "I deposited money at the bank",
    "The capital of France is",
    "What a wonderful surprise!",
]


@dataclass(frozen=True)
class Lesson:
    number: str
    title: str
    text: str


def load_lessons(folder: Path = LESSONS_DIR) -> list[Lesson]:
    """Every ``NN-name.md`` in ``folder``, in order; the title is its first ``# `` heading."""
    lessons = []
    for path in sorted(folder.glob("[0-9][0-9]-*.md")):
        text = path.read_text(encoding="utf-8")
        heading = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE)
        lessons.append(Lesson(path.name[:2], heading.group(1).strip() if heading else path.stem, text))
    return lessons


def lens_table(view: LayerView) -> pd.DataFrame:
    """One row per layer: the logit lens's top tokens at the last position, with probabilities."""
    rows = []
    for layer, (tokens, probs) in enumerate(zip(view.lens_tokens, view.lens_probs)):
        rows.append([layer, *(f"{show_token(t)}  {p:.0%}" for t, p in zip(tokens, probs))])
    return pd.DataFrame(rows, columns=["layer", *(f"top {i + 1}" for i in range(len(view.lens_tokens[0])))])


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame([], columns=["layer", *(f"top {i + 1}" for i in range(TOP_K))])


def build_explorer_tab(holder: LabHolder) -> None:
    lessons = load_lessons()
    choices = [(f"{lesson.number}. {lesson.title}", lesson.number) for lesson in lessons]
    by_number = {lesson.number: lesson for lesson in lessons}
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=340):
            lesson = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Lesson", elem_id="ex-lesson")
            lesson_text = gr.Markdown(
                lessons[0].text if lessons else "No lessons found in `lessons/`.",
                max_height=760,
                container=True,
                padding=True,
                elem_id="ex-lesson-text",
            )
            with gr.Row():
                previous = gr.Button("← Previous", size="sm", elem_id="ex-previous")
                following = gr.Button("Next →", size="sm", elem_id="ex-next")
        with gr.Column(scale=3, min_width=480):
            gr.Markdown(
                "**Look inside the model.** Type a prompt: one forward pass, no steering, and every layer's view of it."
            )
            with gr.Row():
                prompt = gr.Textbox(EXAMPLE_PROMPTS[0], label="Prompt", lines=2, scale=4, elem_id="ex-prompt")
                chat = gr.Checkbox(
                    value=False, label="Chat template", info="Off: the model continues your text.", scale=1
                )
            gr.Examples([[p] for p in EXAMPLE_PROMPTS], [prompt], label="Examples")
            with gr.Row():
                concept = gr.Dropdown(
                    concept_choices(holder, with_none=True),
                    value="happy" if "happy" in holder.lab.library.concepts() else NONE,
                    label="Concept to project on",
                    info="Optional: how each layer lines up with this concept's direction.",
                    scale=3,
                    elem_id="ex-concept",
                )
                analyze = gr.Button("Analyze", variant="primary", scale=1, elem_id="ex-analyze")
            status = gr.Markdown(elem_id="ex-status")
            norm_plot = gr.Plot(
                message_figure("Analyze a prompt to see the residual norm per layer."),
                label="Residual norm per layer",
                elem_id="ex-norm-plot",
            )
            gr.Markdown(
                "**Logit lens**: the model's final norm and unembedding applied to each layer's residual "
                "at the last token: what it would predict next if it stopped at that layer "
                "(␣ is a space)."
            )
            lens = gr.Dataframe(
                _empty_table(), label="Logit lens: top next tokens per layer", max_height=420, elem_id="ex-lens"
            )
            concept_plot = gr.Plot(
                message_figure("Pick a concept to see how each layer's residual lines up with it."),
                label="Concept alignment per layer",
                elem_id="ex-concept-plot",
            )

    def show_lesson(number: str):
        return by_number[number].text if number in by_number else gr.skip()

    def step(number: str, delta: int):
        numbers = [n for _, n in choices]
        if number not in numbers:
            return gr.skip()
        return numbers[max(0, min(len(numbers) - 1, numbers.index(number) + delta))]

    lesson.change(show_lesson, lesson, lesson_text, api_name=False, queue=False)
    previous.click(lambda n: step(n, -1), lesson, lesson, api_name=False, queue=False)
    following.click(lambda n: step(n, 1), lesson, lesson, api_name=False, queue=False)

    def run(text: str, use_chat: bool, name: str, progress=gr.Progress()):
        lab = holder.lab
        try:
            ids = encode(lab.lm.tokenizer, text, chat=bool(use_chat), is_chat=lab.lm.is_chat)
            vector = vector_for(holder, name, progress) if name else None
            progress(0.9, desc="one forward pass with every layer recorded")
            view = layer_view(lab.engine, lab.lm.tokenizer, ids, vector=vector, top_k=TOP_K)
        except Exception as error:
            log.warning("layer explorer failed: %s", error)
            raise gr.Error(user_error(error)) from None
        final = view.lens_tokens[-1][0]
        first = next((i for i, row in enumerate(view.lens_tokens) if row[0] == final), len(view.lens_tokens) - 1)
        summary = (
            f"{len(ids)} tokens · {lab.lm.n_layers} layers · the model predicts **{show_token(final)}** "
            f"({view.lens_probs[-1][0]:.0%}); the logit lens first puts it on top at **layer {first}**."
        )
        figure = concept_layers_figure(view.concept, view.cosine, view.mean_cosine, view.projection)
        return summary, residual_norm_figure(view.norms, view.tokens), lens_table(view), figure

    analyze.click(
        run,
        [prompt, chat, concept],
        [status, norm_plot, lens, concept_plot],
        api_name="explore_layers",
        concurrency_id=MODEL_CONCURRENCY,
    )


TAB = TabSpec("Layer Explorer", build_explorer_tab)
