"""Advanced Experiments: layer sweep, strength explorer and concept mixing.

Each experiment is one batched generation: every row has the same prompt, seed and settings
and differs only in its steering (row 0 is the unsteered baseline). Outputs are scored with the
Effect metric (sentence embeddings against the concept's reference texts) and with perplexity
under the unsteered model (fluency).
"""

from __future__ import annotations

import logging
import math
import time

import gradio as gr
import pandas as pd

from app.analysis.figures import message_figure, mix_figure, sweep_figure
from app.analysis.sweeps import (
    STRENGTH_MULTIPLES,
    Sweep,
    concept_mix,
    layer_sweep,
    run_sweep,
    score_sweep,
    strength_sweep,
    sweep_layers,
)
from app.serving import LabHolder
from app.steering.generation import GenerationRequest
from app.ui.analysis_helpers import (
    NONE,
    concept_choices,
    default_concept,
    generate_rows,
    max_rows,
    parse_layers,
    parse_strength,
    references_for,
    vector_for,
)
from app.ui.state import MODEL_CONCURRENCY, TabSpec, user_error

log = logging.getLogger(__name__)

N_MIX = 3


def _settings(parent_id: str):
    """Prompt and sampling controls every experiment has."""
    with gr.Row():
        prompt = gr.Textbox("Hi, can you help me with", label="Prompt", lines=2, scale=4, elem_id=f"{parent_id}-prompt")
        chat = gr.Checkbox(value=False, label="Chat template", info="Off: the model continues your text.", scale=1)
    with gr.Row():
        tokens = gr.Slider(4, 120, value=30, step=1, label="Max new tokens", elem_id=f"{parent_id}-tokens")
        temperature = gr.Slider(0, 1.5, value=0.0, step=0.05, label="Temperature", info="0 = greedy")
        seed = gr.Number(0, label="Seed (shared by every row)", precision=0)
        score = gr.Checkbox(value=True, label="Score outputs", info="Effect and perplexity (a few seconds more)")
    return [prompt, chat, tokens, temperature, seed], score


def _request(prompt, chat, tokens, temperature, seed) -> GenerationRequest:
    if not (prompt or "").strip():
        raise ValueError("type a prompt first")
    return GenerationRequest(
        prompt=prompt, max_new_tokens=int(tokens), temperature=float(temperature), seed=int(seed or 0), chat=bool(chat)
    )


def _or_recommended(value: float | None, recommended: float) -> float:
    return recommended if value is None else value


def _every(step: int) -> str:
    if step == 1:
        return "every layer"
    suffix = "th" if 10 <= step % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(step % 10, "th")
    return f"every {step}{suffix} layer"


def _number(value: float | None, digits: int) -> float | None:
    return round(float(value), digits) if value is not None and math.isfinite(value) else None


def _run(holder: LabHolder, sweep: Sweep, references: dict, score: bool, progress, what: str) -> Sweep:
    """Generate every row in one batch and (optionally) score them (a scoring failure only warns)."""
    lab = holder.lab
    run_sweep(sweep, lambda requests: generate_rows(holder, requests, progress, what))
    if not score:
        return sweep
    progress(0.95, desc="scoring: Effect and perplexity")
    try:
        score_sweep(sweep, lab.engine, lab.lm.tokenizer, references=references, is_chat=lab.lm.is_chat)
    except Exception as error:  # the outputs are still worth showing
        log.warning("scoring failed: %s", error)
        gr.Warning(f"Could not score the outputs: {user_error(error)}")
    return sweep


def _widths(n_scores: int, first: int = 11) -> list[str]:
    """Column widths (%) that keep every score column on screen beside a wide, wrapped output column."""
    return [f"{first}%", f"{100 - first - 10 * n_scores}%", *(["10%"] * n_scores)]


def _shown(sweep: Sweep, first_column: str, first_width: int = 11) -> gr.Dataframe:
    table = _table(sweep, first_column)
    return gr.Dataframe(table, column_widths=_widths(len(table.columns) - 2, first_width))


def _table(sweep: Sweep, first_column: str) -> pd.DataFrame:
    columns = {first_column: sweep.labels, "output": sweep.texts}
    for name, values in sweep.effect.items():
        columns[f"Effect ({name})" if len(sweep.effect) > 1 else "Effect"] = [_number(v, 3) for v in values]
    if sweep.perplexity:
        columns["perplexity"] = [_number(v, 1) for v in sweep.perplexity]
    return pd.DataFrame(columns)


def _empty(first_column: str) -> pd.DataFrame:
    return pd.DataFrame([], columns=[first_column, "output", "Effect", "perplexity"])


def _concept_rows(sweep: Sweep) -> tuple[list, dict, list]:
    """The swept rows' x, effect and perplexity (row 0, the baseline, drawn as a line)."""
    effect = {name: values[1:] for name, values in sweep.effect.items()}
    return sweep.x[1:], effect, sweep.perplexity[1:]


def _baselines(sweep: Sweep) -> tuple[dict, float | None]:
    return {name: v[0] for name, v in sweep.effect.items()}, (sweep.perplexity[0] if sweep.perplexity else None)


def build_advanced_tab(holder: LabHolder) -> None:
    choices = concept_choices(holder)
    start = default_concept(choices, "formal")
    n_layers = holder.lab.lm.n_layers
    rows = max_rows(holder)
    auto_step = max(1, -(-n_layers // (rows - 1)))
    gr.Markdown(
        "Every experiment is **one batched generation**: same prompt, same seed, one row per setting, "
        "plus an unsteered baseline. **Effect** > 0 means the output reads more like the concept's "
        "positive references (typical values are small, ±0.05–0.15); **perplexity** under the unsteered "
        "model measures fluency (lower is more fluent)."
    )
    with gr.Tabs():
        with gr.Tab("Layer sweep", id="layer-sweep"):
            gr.Markdown("Steer one concept at one layer per row: where in the stack does it work?")
            with gr.Row():
                ls_concept = gr.Dropdown(choices, value=start, label="Concept", scale=2, elem_id="ls-concept")
                ls_strength = gr.Textbox(
                    label="Strength", placeholder="blank = recommended", scale=1, elem_id="ls-strength"
                )
                ls_step = gr.Slider(
                    auto_step,
                    max(auto_step, n_layers),
                    value=auto_step,
                    step=1,
                    label="Every k-th layer",
                    info=f"at most {rows} rows per batch, baseline included",
                    scale=2,
                    elem_id="ls-step",
                )
            ls_settings, ls_score = _settings("ls")
            ls_run = gr.Button("Run layer sweep", variant="primary", elem_id="ls-run")
            ls_status = gr.Markdown(elem_id="ls-status")
            ls_table = gr.Dataframe(
                _empty("layer"), label="Outputs per layer", wrap=True, column_widths=_widths(2), elem_id="ls-table"
            )
            ls_plot = gr.Plot(message_figure("Run the sweep to see effect and fluency per layer."), elem_id="ls-plot")

        with gr.Tab("Strength explorer", id="strength-explorer"):
            multiples = ", ".join(f"{m:g}×" for m in STRENGTH_MULTIPLES)
            gr.Markdown(f"One concept at {multiples} its strength: where does it show, and where does it break?")
            with gr.Row():
                st_concept = gr.Dropdown(choices, value=start, label="Concept", scale=2, elem_id="st-concept")
                st_strength = gr.Textbox(
                    label="Base strength (1×)", placeholder="blank = recommended", scale=1, elem_id="st-strength"
                )
                st_layers = gr.Textbox(label="Layers", placeholder="blank = recommended; e.g. 12 or 10-14", scale=1)
            st_settings, st_score = _settings("st")
            st_run = gr.Button("Run strength explorer", variant="primary", elem_id="st-run")
            st_status = gr.Markdown(elem_id="st-status")
            st_table = gr.Dataframe(
                _empty("strength"),
                label="Outputs per strength",
                wrap=True,
                column_widths=_widths(2),
                elem_id="st-table",
            )
            st_plot = gr.Plot(
                message_figure("Run the explorer to see effect and fluency per strength."), elem_id="st-plot"
            )

        with gr.Tab("Concept mixing", id="concept-mixing"):
            gr.Markdown(
                "Steer with two or three concepts at once (their deltas add up per layer). Rows: each concept "
                "alone, then the mix. A negative weight steers toward the opposite pole."
            )
            mix_concepts, mix_weights = [], []
            with_none = concept_choices(holder, with_none=True)
            defaults = [("happy", 4.0), ("formal", 4.0), (NONE, 0.0)]
            for i in range(N_MIX):
                name, weight = defaults[i]
                with gr.Row():
                    mix_concepts.append(
                        gr.Dropdown(
                            choices if i < 2 else with_none,
                            value=name if any(v == name for _, v in with_none) else None,
                            label=f"Concept {i + 1}" + (" (optional)" if i == 2 else ""),
                            scale=2,
                            elem_id=f"mx-concept-{i + 1}",
                        )
                    )
                    mix_weights.append(gr.Slider(-10, 10, value=weight, step=0.5, label="Weight (strength)", scale=3))
            mx_layers = gr.Textbox(label="Layers", placeholder="blank = each concept's recommended; e.g. 12")
            mx_settings, mx_score = _settings("mx")
            mx_run = gr.Button("Mix", variant="primary", elem_id="mx-run")
            mx_status = gr.Markdown(elem_id="mx-status")
            mx_table = gr.Dataframe(
                _empty("steering"), label="Outputs", wrap=True, column_widths=_widths(2, 20), elem_id="mx-table"
            )
            mx_plot = gr.Plot(message_figure("Mix concepts to compare the outputs' effects."), elem_id="mx-plot")

    def run_layer_sweep(name, strength, step, prompt, chat, tokens, temperature, seed, score, progress=gr.Progress()):
        started = time.perf_counter()
        lab = holder.lab
        try:
            request = _request(prompt, chat, tokens, temperature, seed)
            vector = vector_for(holder, name, progress)
            value = _or_recommended(parse_strength(strength), vector.recommended_strength)
            layers = sweep_layers(lab.lm.n_layers, int(step), max_rows(holder))
            references, note = references_for(holder, name) if score else ((), "")
            sweep = layer_sweep(request, vector, value, layers)
            sweep = _run(holder, sweep, {name: references} if score else {}, score, progress, "layer sweep")
        except Exception as error:
            log.warning("layer sweep failed: %s", error)
            raise gr.Error(user_error(error)) from None
        seconds = time.perf_counter() - started
        status = (
            f"**{name}** ×{value:g} at {len(layers)} layers ({_every(int(step))}) + baseline: "
            f"{len(sweep.requests)} rows in one batch, {seconds:.1f} s. {note}"
        )
        x, effect, ppl = _concept_rows(sweep)
        base_effect, base_ppl = _baselines(sweep)
        figure = sweep_figure(
            x, effect, ppl, "layer", base_effect, base_ppl, f"“{name}” ×{value:g}, one layer at a time"
        )
        return status, _shown(sweep, "layer"), figure

    ls_run.click(
        run_layer_sweep,
        [ls_concept, ls_strength, ls_step, *ls_settings, ls_score],
        [ls_status, ls_table, ls_plot],
        api_name="layer_sweep",
        concurrency_id=MODEL_CONCURRENCY,
    )

    def run_strength(
        name, strength, layer_text, prompt, chat, tokens, temperature, seed, score, progress=gr.Progress()
    ):
        started = time.perf_counter()
        lab = holder.lab
        try:
            request = _request(prompt, chat, tokens, temperature, seed)
            vector = vector_for(holder, name, progress)
            value = _or_recommended(parse_strength(strength), vector.recommended_strength)
            if value == 0:
                raise ValueError("the base strength is 0: every multiple of it is 0 too")
            layers = parse_layers(layer_text, lab.lm.n_layers)
            references, note = references_for(holder, name) if score else ((), "")
            sweep = strength_sweep(request, vector, value, layers)
            sweep = _run(holder, sweep, {name: references} if score else {}, score, progress, "strength explorer")
        except Exception as error:
            log.warning("strength explorer failed: %s", error)
            raise gr.Error(user_error(error)) from None
        where = ", ".join(map(str, layers or vector.recommended_layers))
        seconds = time.perf_counter() - started
        status = f"**{name}** at layer {where}, 1× = {value:g}: {len(sweep.requests)} rows in one batch, {seconds:.1f} s. {note}"
        x, effect, ppl = _concept_rows(sweep)
        base_effect, base_ppl = _baselines(sweep)
        figure = sweep_figure(x, effect, ppl, "strength", base_effect, base_ppl, f"“{name}” at layer {where}")
        return status, _shown(sweep, "strength"), figure

    st_run.click(
        run_strength,
        [st_concept, st_strength, st_layers, *st_settings, st_score],
        [st_status, st_table, st_plot],
        api_name="strength_sweep",
        concurrency_id=MODEL_CONCURRENCY,
    )

    def run_mix(
        c1, w1, c2, w2, c3, w3, layer_text, prompt, chat, tokens, temperature, seed, score, progress=gr.Progress()
    ):
        started = time.perf_counter()
        lab = holder.lab
        pairs = [(c1, w1), (c2, w2), (c3, w3)]
        notes: list[str] = []
        try:
            request = _request(prompt, chat, tokens, temperature, seed)
            layers = parse_layers(layer_text, lab.lm.n_layers)
            chosen = [(name, float(weight)) for name, weight in pairs if name and weight]
            names = [name for name, _ in chosen]
            if len(set(names)) != len(names):
                raise ValueError("pick different concepts to mix (the same one twice just adds its weights)")
            for name in names:
                vector_for(holder, name, progress)
            sweep = concept_mix(request, [lab.make_steer(name, weight, layers) for name, weight in chosen])
            references = {}
            if score:
                for name in names:
                    references[name], note = references_for(holder, name)
                    notes.append(note)
            sweep = _run(holder, sweep, references, score, progress, "concept mixing")
        except Exception as error:
            log.warning("concept mixing failed: %s", error)
            raise gr.Error(user_error(error)) from None
        seconds = time.perf_counter() - started
        status = f"{len(sweep.requests)} rows in one batch, {seconds:.1f} s. " + " ".join(n for n in notes if n)
        figure = mix_figure(sweep.labels, sweep.effect) if sweep.effect else message_figure("Scoring was off.")
        return status, _shown(sweep, "steering", 20), figure

    mix_inputs = [x for pair in zip(mix_concepts, mix_weights) for x in pair]
    mx_run.click(
        run_mix,
        [*mix_inputs, mx_layers, *mx_settings, mx_score],
        [mx_status, mx_table, mx_plot],
        api_name="concept_mix",
        concurrency_id=MODEL_CONCURRENCY,
    )


TAB = TabSpec("Advanced Experiments", build_advanced_tab)
