"""Steering Playground: baseline and steered side by side, same seed, streamed in one batch.

Up to three concepts (each with a strength), their layers, a position mode and sampling
settings. After generation: where the two texts part (a token-level diff) and, step by step,
how steering moved the next-token probabilities on the steered text's own prefix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import gradio as gr

from app.analysis.token_figures import message_figure, token_shift_figure
from app.analysis.token_shift import next_token_shift, token_diff
from app.serving import LabHolder
from app.steering.engine import POSITION_MODES, Steer
from app.steering.generation import GenerationRequest
from app.steering.layers import parse_layer_list as parse_layers
from app.steering.library import VectorLibrary
from app.steering.vectors import DEFAULT_STRENGTH, SteeringVector
from app.ui.playground_setup import POSITION_HELP, PRESETS, describe_steers
from app.ui.state import MODEL_CONCURRENCY, TabSpec, user_error

log = logging.getLogger(__name__)

N_ROWS = 3
DEFAULT_CONCEPT = "happy"  # the concept the Playground opens with: the library builds it first
TOP_K = 5
OPENING_POLL_S = 3.0  # how often an untouched opening form asks whether its concept's sweep is done
NONE = ""  # the "no concept" choice of rows 2 and 3


@dataclass
class PlaygroundParts:
    """Components other tabs may fill in (e.g. the Creator's “Try it in the Playground”)."""

    prompt: gr.Textbox
    chat: gr.Checkbox
    concepts: list[gr.Dropdown] = field(default_factory=list)
    strengths: list[gr.Slider] = field(default_factory=list)
    layers: gr.Textbox | None = None
    note: gr.Markdown | None = None  # the line under the concept rows (recommended layer and strength)
    holder: LabHolder | None = None

    def choice_updates(self, selected: str | None = None, clear_others: bool = False) -> list[dict]:
        """Fresh concept lists for every row; row 1 switches to ``selected`` when given."""
        choices = concept_choices(self.holder)
        updates = [gr.update(choices=choices)]
        for _ in self.concepts[1:]:
            more = [("— none —", NONE), *choices]
            updates.append(gr.update(choices=more, value=NONE) if clear_others else gr.update(choices=more))
        if selected:
            updates[0] = gr.update(choices=choices, value=selected)
        return updates

    def link(self, tabs: gr.Tabs, tab: gr.Tab, built: dict) -> None:
        """Refresh the concept lists whenever the Playground tab is selected (new custom concepts)."""
        tab.select(lambda: self.choice_updates(), None, self.concepts, api_name=False, queue=False)


def concept_choices(holder: LabHolder) -> list[tuple[str, str]]:
    """(label, name) for every library and custom concept; custom ones marked."""
    concepts = holder.lab.library.concepts()
    return sorted(
        ((f"{name} ({c.category})", name) for name, c in concepts.items()),
        key=lambda item: (item[0].endswith("(custom)"), item[1]),
    )


def _steers(holder: LabHolder, rows: list[tuple[str, float]], layers_text: str, progress) -> list[Steer]:
    lab = holder.lab
    layers = parse_layers(layers_text, lab.lm.n_layers)
    steers = []
    for name, strength in rows:
        if not name:
            continue
        label = f"building the {name} vector"
        # The strength is the form's: the concept's strength sweep may finish later, in the background.
        lab.library.get(name, progress=lambda f, m, label=label: progress(f, desc=f"{label}: {m}"), recommended=False)
        steers.append(lab.make_steer(name, float(strength), layers))
    if not steers:
        raise ValueError("pick at least one concept to steer with")
    return steers


def _diff_outputs(holder: LabHolder, baseline_ids: list[int], steered_ids: list[int]):
    lab = holder.lab
    base_tokens, steer_tokens = lab.decode(baseline_ids), lab.decode(steered_ids)
    diff = token_diff(base_tokens, steer_tokens)
    if diff.first_difference is None:
        headline = (
            "**The two texts are identical**: steering changed no token. Raise the strength or try another layer."
        )
    else:
        i = diff.first_difference
        a = repr(base_tokens[i]) if i < len(base_tokens) else "(end)"
        b = repr(steer_tokens[i]) if i < len(steer_tokens) else "(end)"
        headline = f"The texts part at **token {i + 1}**: baseline {a} vs steered {b}."
    return headline, diff.segments


def _shift_figure(holder: LabHolder, request: GenerationRequest, steered_ids: list[int]):
    shifts = next_token_shift(holder.lab, request, steered_ids, k=TOP_K)
    decode = holder.lab.decode
    return token_shift_figure(
        tokens=decode([s.token_id for s in shifts]),
        chosen_baseline=[s.chosen_baseline for s in shifts],
        chosen_steered=[s.chosen_steered for s in shifts],
        candidates=[decode(list(s.candidates)) for s in shifts],
        baseline=[s.baseline for s in shifts],
        steered=[s.steered for s in shifts],
    )


class StopSignals:
    """Per browser session, the stop signals of its queued and running generations.

    Generate arms a signal before its run is queued, so a Stop pressed while the run still waits
    for the model stops it too; the run holds the oldest armed signal while it runs (a call without
    Generate's arming, e.g. over the API, gets a fresh one). Stop sets them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, list[threading.Event]] = {}  # armed or running
        self._armed: dict[str, list[threading.Event]] = {}  # armed, not yet running

    def arm(self, session: str) -> None:
        signal = threading.Event()
        with self._lock:
            self._live.setdefault(session, []).append(signal)
            self._armed.setdefault(session, []).append(signal)

    @contextmanager
    def claimed(self, session: str) -> Iterator[threading.Event]:
        """The signal of the run that enters: the oldest armed one, else a fresh one; released on exit."""
        with self._lock:
            armed = self._armed.get(session)
            if armed:
                signal = armed.pop(0)
                if not armed:
                    del self._armed[session]
            else:
                signal = threading.Event()
                self._live.setdefault(session, []).append(signal)
        try:
            yield signal
        finally:
            with self._lock:
                live = self._live.get(session, [])
                if signal in live:
                    live.remove(signal)
                if not live:
                    self._live.pop(session, None)

    def stop(self, session: str) -> bool:
        """Set every signal of ``session``; False when it has nothing queued or running."""
        with self._lock:
            live = list(self._live.get(session, []))
        for signal in live:
            signal.set()
        return bool(live)


def _initial_strength(holder: LabHolder, name: str) -> float:
    """The concept's recommended strength once its vector is built, else the sweep's fallback."""
    vector = holder.lab.library.cached(name)
    return vector.recommended_strength if vector is not None else DEFAULT_STRENGTH


def recommendation_note(vector: SteeringVector) -> str:
    layers = ", ".join(map(str, vector.recommended_layers))
    return f"**{vector.name}**: recommended layer {layers}, strength {vector.recommended_strength:g}."


def settle_opening_strength(
    library: VectorLibrary, concept: str, strength: float
) -> tuple[SteeringVector | None, bool]:
    """(the vector whose recommendation an untouched opening form moves to, or None; whether to ask
    again later).

    On a first launch the page is made before the opening concept is built, so its form starts at
    the fallback strength. Once the background build has swept the concept, a form that still shows
    the opening concept at that fallback moves to the recommendation. A form the user changed is
    left alone, and so is one whose concept the build could not make (the build ended without it).
    """
    if concept != DEFAULT_CONCEPT or strength != DEFAULT_STRENGTH:
        return None, False
    vector = library.cached(DEFAULT_CONCEPT)
    if vector is None:
        return None, library.status != "ready"
    return (vector if vector.recommended_strength != strength else None), False


def build_playground_tab(holder: LabHolder) -> PlaygroundParts:
    gr.Markdown(
        "Steer the model with one or more concepts and compare with the unsteered baseline: same prompt, "
        "same seed, one batched run. Start from a preset or pick your own."
    )
    with gr.Row():
        preset = gr.Dropdown(
            list(PRESETS),
            value=None,
            label="Preset demos",
            info="Pick one to fill in the form, then Generate.",
            scale=3,
        )
        refresh = gr.Button("↻ Refresh concept list", scale=1, size="sm", elem_id="pg-refresh")
    with gr.Row():
        prompt = gr.Textbox("The meeting went", label="Prompt", lines=2, scale=4, elem_id="pg-prompt")
        chat = gr.Checkbox(
            value=False,
            elem_id="pg-chat",
            label="Chat template",
            info="On: the model answers as an assistant. Off: it continues your text.",
            scale=1,
        )
    choices = concept_choices(holder)
    concepts, strengths = [], []
    with gr.Group():
        for row in range(N_ROWS):
            with gr.Row(visible=True):
                concepts.append(
                    gr.Dropdown(
                        choices if row == 0 else [("— none —", NONE), *choices],
                        value=DEFAULT_CONCEPT
                        if row == 0 and any(v == DEFAULT_CONCEPT for _, v in choices)
                        else (None if row == 0 else NONE),
                        label=f"Concept {row + 1}" if row else "Concept",
                        scale=2,
                        elem_id=f"pg-concept-{row + 1}",
                    )
                )
                strengths.append(
                    gr.Slider(
                        -10,
                        10,
                        # Called on every page load: a page opened after the library built the
                        # opening concept starts at its recommendation, not at the fallback.
                        value=(lambda: _initial_strength(holder, DEFAULT_CONCEPT)) if row == 0 else 0.0,
                        step=0.5,
                        label="Strength",
                        scale=3,
                        info="negative = toward the opposite pole" if row == 0 else None,
                        elem_id=f"pg-strength-{row + 1}",
                    )
                )
    recommended = gr.Markdown("Strength defaults to the concept's recommended strength when you pick a concept.")
    with gr.Row():
        layers = gr.Textbox(
            label="Layers (blank = each concept's recommended)",
            placeholder="e.g. 15, or 10,12,14, or 10-14, or middle",
            elem_id="pg-layers",
            scale=2,
        )
        positions = gr.Radio(
            list(POSITION_MODES), value="all", label="Steer which positions", info=POSITION_HELP, scale=3
        )
    with gr.Row():
        max_new_tokens = gr.Slider(1, 200, value=40, step=1, label="Max new tokens", elem_id="pg-max-tokens")
        temperature = gr.Slider(
            0, 2, value=0.7, step=0.05, label="Temperature", info="0 = greedy", elem_id="pg-temperature"
        )
        seed = gr.Number(0, label="Seed (shared by both runs)", precision=0, elem_id="pg-seed")
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", scale=3, elem_id="pg-generate")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="pg-stop")
    status = gr.Markdown(elem_id="pg-status")
    with gr.Row(equal_height=True):
        baseline = gr.Textbox(
            label="Baseline (no steering)",
            lines=8,
            max_lines=20,
            elem_classes="steer-output",
            buttons=["copy"],
            elem_id="pg-baseline",
        )
        steered = gr.Textbox(
            label="Steered", lines=8, max_lines=20, elem_classes="steer-output", buttons=["copy"], elem_id="pg-steered"
        )
    headline = gr.Markdown("Generate to see where the two texts part.", elem_id="pg-headline")
    diff = gr.HighlightedText(
        label="Token-level differences",
        color_map={"baseline only": "#c9c9c9", "steered only": "#ff9f80"},
        show_legend=True,
        show_inline_category=False,
        value=[("Generate to see the token-level differences.", None)],
        elem_id="pg-diff",
    )
    plot = gr.Plot(
        message_figure("Generate to see how steering shifts the next-token probabilities."),
        label="Next-token probabilities",
        elem_id="pg-plot",
    )

    parts = PlaygroundParts(
        prompt=prompt,
        chat=chat,
        concepts=concepts,
        strengths=strengths,
        layers=layers,
        note=recommended,
        holder=holder,
    )

    def recommend(name: str):
        """Set the strength to the concept's recommendation (builds the vector if needed)."""
        if not name:
            return gr.skip(), ""
        try:
            vector = holder.lab.library.get(name)
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        return vector.recommended_strength, recommendation_note(vector)

    for dropdown, slider in zip(concepts, strengths):
        dropdown.input(recommend, dropdown, [slider, recommended], api_name=False, concurrency_id=MODEL_CONCURRENCY)

    opening = gr.Timer(OPENING_POLL_S)

    def settle(concept: str, strength: float):
        vector, again = settle_opening_strength(holder.lab.library, concept, strength)
        if vector is None:
            return gr.skip(), gr.skip(), gr.skip() if again else gr.Timer(active=False)
        return vector.recommended_strength, recommendation_note(vector), gr.Timer(active=False)

    opening.tick(settle, [concepts[0], strengths[0]], [strengths[0], recommended, opening], api_name=False, queue=False)

    def apply_preset(name: str):
        if name not in PRESETS:
            return [gr.skip()] * (3 + 2 * N_ROWS + 1)
        text, use_chat, rows, layer_text = PRESETS[name]
        notes = []
        values: list = []
        for row in range(N_ROWS):
            concept, strength = rows[row] if row < len(rows) else (NONE, 0.0)
            if concept and strength is None:
                strength, note = recommend(concept)
                notes.append(note)
            values += [concept, strength]
        if layer_text == "middle":
            layer_text = str(holder.lab.lm.n_layers // 2)
        return [text, use_chat, layer_text, *values, " ".join(notes) or gr.skip()]

    preset_outputs = [prompt, chat, layers]
    for dropdown, slider in zip(concepts, strengths):
        preset_outputs += [dropdown, slider]
    preset.input(apply_preset, preset, [*preset_outputs, recommended], api_name=False, concurrency_id=MODEL_CONCURRENCY)
    refresh.click(lambda: parts.choice_updates(), None, concepts, api_name="refresh_concepts", queue=False)

    # Stop is a signal the generation reads between two decoding steps, not a cancelled event: the
    # generation itself then says "Stopped." last, so no step still in flight can overwrite it.
    stops = StopSignals()

    def arm(request: gr.Request) -> None:
        stops.arm(request.session_hash or "")

    def press_stop(request: gr.Request):
        return "Stopping…" if stops.stop(request.session_hash or "") else gr.skip()

    def run(
        text,
        use_chat,
        c1,
        s1,
        c2,
        s2,
        c3,
        s3,
        layer_text,
        position,
        max_tokens,
        temp,
        seed_value,
        request: gr.Request,
        progress=gr.Progress(),
    ):
        with stops.claimed(request.session_hash or "") as stop_signal:
            yield from _run(
                text,
                use_chat,
                [(c1, s1), (c2, s2), (c3, s3)],
                layer_text,
                position,
                max_tokens,
                temp,
                seed_value,
                stop_signal,
                progress,
            )

    def _run(text, use_chat, concept_rows, layer_text, position, max_tokens, temp, seed_value, stop_signal, progress):
        started = time.perf_counter()
        try:
            if not (text or "").strip():
                raise ValueError("type a prompt first")
            steers = _steers(holder, concept_rows, layer_text, progress)
            request = GenerationRequest(
                prompt=text,
                max_new_tokens=int(max_tokens),
                temperature=float(temp),
                seed=int(seed_value or 0),
                chat=bool(use_chat),
            )
            rows = holder.lab.compare_requests(request, steers, position)
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        what = describe_steers(steers, position)
        waiting = message_figure("Generating…")
        yield "", "", f"Generating… steered with {what}", "Generating…", [], waiting
        results = None
        stream = holder.lab.stream(rows, stop_signal)
        try:
            for results in stream:
                step = max(len(r.token_ids) for r in results)
                yield (
                    results[0].text,
                    results[1].text,
                    f"Generating… token {step}/{int(max_tokens)} · {what}",
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                )
        except Exception as error:
            log.exception("playground generation failed")
            raise gr.Error(user_error(error)) from None
        finally:
            stream.close()  # a client that went away closes this generator; that leaves the engine's `with` block
            if results is not None and not all(r.finish_reason for r in results):
                log.info("playground: generation stopped after %d tokens", max(len(r.token_ids) for r in results))
        stopped = stop_signal.is_set() and (not results or any(r.finish_reason == "stopped" for r in results))
        stopped_note = ""
        if not results:
            if stopped:
                yield "", "", "Stopped. Nothing was generated.", gr.skip(), gr.skip(), gr.skip()
            return
        if stopped:
            stopped_note = f"Stopped. {len(results[1].token_ids)} steered tokens · {what}"
            yield results[0].text, results[1].text, stopped_note, gr.skip(), gr.skip(), gr.skip()
        try:
            head, segments = _diff_outputs(holder, results[0].token_ids, results[1].token_ids)
            figure = _shift_figure(holder, rows[1], results[1].token_ids)
        except Exception as error:
            log.exception("playground analysis failed")
            head, segments, figure = f"Could not compare the texts: {user_error(error)}", [], message_figure("No data.")
        seconds = time.perf_counter() - started
        done = f"Done in {seconds:.1f} s · {len(results[1].token_ids)} steered tokens ({results[1].finish_reason}) · {what}"
        yield results[0].text, results[1].text, stopped_note if stopped else done, head, segments, figure

    generate.click(arm, None, None, api_name=False, queue=False).then(
        run,
        [
            prompt,
            chat,
            *[x for pair in zip(concepts, strengths) for x in pair],
            layers,
            positions,
            max_new_tokens,
            temperature,
            seed,
        ],
        [baseline, steered, status, headline, diff, plot],
        api_name="generate",
        concurrency_id=MODEL_CONCURRENCY,
        show_progress="minimal",
    )
    stop.click(press_stop, None, status, api_name=False, queue=False)
    return parts


TAB = TabSpec("Steering Playground", build_playground_tab)
