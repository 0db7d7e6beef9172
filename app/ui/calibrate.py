"""CALIBRATE (Bo et al. 2025): find a preferred strength by comparing two replies at a time.

A pre-written question is answered twice in one batched call, at d_A and d_B (same seed); the
user grades which is better, the losing end moves toward the winner (``calibrate_step``), and
after 2–4 rounds the interval has closed in on the preference. One dimension, or all of them one
after another. Then a chat at the calibrated values, and a profile to keep them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import gradio as gr

from app.preferences.calibrate import CHOICES, CalibrationState, calibrate_step
from app.preferences.chat import (
    Dimension,
    calibration_question,
    describe_values,
    load_calibration_questions,
    merge_into_profile,
    preference_dimensions,
    preference_steering,
    unbuilt,
)
from app.preferences.figures import calibration_figure
from app.serving import LabHolder
from app.steering.generation import GenerationRequest
from app.ui.preference_widgets import BUILDING, generation_settings, profile_box, progress_callback, stream_reply
from app.ui.select import no_dimensions_note
from app.ui.state import MODEL_CONCURRENCY, TabSpec, user_error

log = logging.getLogger(__name__)

ALL = "__all__"
CHOICE_LABELS = {  # button text -> preferences.CHOICES
    "A much better": "⬅⬅ A much better",
    "A slightly better": "⬅ A slightly better",
    "about the same": "≈ About the same",
    "B slightly better": "B slightly better ➡",
    "B much better": "B much better ➡➡",
}


@dataclass
class Session:
    """One user's calibration (plain data for ``gr.State``)."""

    queue: list[str] = field(default_factory=list)  # dimensions left, the current one first
    state: CalibrationState | None = None
    results: dict[str, float] = field(default_factory=dict)
    finished: dict[str, CalibrationState] = field(default_factory=dict)
    question: str = ""
    pair_ready: bool = False  # A and B are shown and wait for a choice

    @property
    def current(self) -> str | None:
        return self.queue[0] if self.queue else None


def start_session(names: list[str], questions: dict[str, list[str]]) -> Session:
    """A calibration of ``names`` one after another, starting at [−100, 100] each."""
    session = Session(queue=list(names), state=CalibrationState())
    session.question = calibration_question(questions, names[0], 0)
    return session


def apply_choice(session: Session, choice: str, questions: dict[str, list[str]]) -> Session:
    """One graded choice: narrow the pair; a converged dimension is stored and the next one starts."""
    if not session.current or session.state is None:
        raise ValueError("press Start calibration first")
    if not session.pair_ready:
        raise ValueError("wait for both replies before choosing")
    state = calibrate_step(session.state, choice)
    session = replace(session, pair_ready=False, state=state, results=dict(session.results))
    if state.done:
        session.finished = {**session.finished, session.current: state}
        session.results[session.current] = state.result
        session.queue = session.queue[1:]
        session.state = CalibrationState() if session.queue else None
    if session.current:
        session.question = calibration_question(questions, session.current, session.state.round)
    return session


def _dim(dims: list[Dimension], name: str | None) -> Dimension | None:
    return next((d for d in dims if d.name == name), None)


def _figure(session: Session, dims: list[Dimension]):
    name = session.current or (list(session.finished)[-1] if session.finished else None)
    state = session.state if session.current else session.finished.get(name) if name else None
    dim = _dim(dims, name)
    if state is None or dim is None:
        return calibration_figure([])
    return calibration_figure(
        state.history,
        current=(state.d_a, state.d_b),
        result=state.result if state.done else None,
        labels=dim.labels,
        title=f"{dim.name}: {dim.negative} ↔ {dim.positive}",
    )


def _summary(session: Session, dims: list[Dimension]) -> str:
    lines = []
    if session.current and session.state is not None:
        dim = _dim(dims, session.current)
        s = session.state
        left = f" · then {', '.join(session.queue[1:])}" if len(session.queue) > 1 else ""
        lines.append(
            f"**{dim.name}**, round {s.round + 1} (at most {s.max_rounds}): "
            f"A = {s.d_a:.0f} ({dim.share(s.d_a)}), B = {s.d_b:.0f} ({dim.share(s.d_b)}){left}"
        )
    if session.results:
        lines.append(f"Calibrated: **{describe_values(session.results, dims)}**")
    return "\n\n".join(lines) or "Pick a dimension and press **Start**."


def build_calibrate_tab(holder: LabHolder):
    gr.Markdown(
        "Answer a few A/B questions and the app finds the strength you prefer. Both replies answer the same "
        "question with the same seed, steered at **A** and **B**; after each choice the pair closes in "
        "(2–4 rounds). Then chat at the calibrated strength."
    )
    dims = preference_dimensions(holder.lab.library.concepts())
    if not dims:
        no_dimensions_note()
        return None
    questions = load_calibration_questions()
    session_state = gr.State(Session())
    with gr.Row():
        which = gr.Dropdown(
            [(f"{d.name} ({d.negative} ↔ {d.positive})", d.name) for d in dims]
            + [(f"All {len(dims)}, one after another", ALL)],
            value=dims[0].name,
            label="Dimension",
            scale=3,
            elem_id="cal-dimension",
        )
        start = gr.Button("Start calibration", variant="primary", scale=1, elem_id="cal-start")
    summary = gr.Markdown(_summary(Session(), dims), elem_id="cal-summary")
    question = gr.Markdown(elem_id="cal-question")
    with gr.Row(equal_height=True):
        reply_a = gr.Textbox(label="Response A", lines=8, max_lines=16, elem_classes="steer-output", elem_id="cal-a")
        reply_b = gr.Textbox(label="Response B", lines=8, max_lines=16, elem_classes="steer-output", elem_id="cal-b")
    with gr.Row():
        buttons = [
            gr.Button(CHOICE_LABELS[c], interactive=False, elem_id=f"cal-choice-{i}") for i, c in enumerate(CHOICES)
        ]
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.Plot(calibration_figure([]), label="Trajectory", elem_id="cal-plot")
        with gr.Column(scale=2):
            settings = generation_settings("cal", max_new_tokens=96)
            profiles = profile_box("cal", with_load=False)
    with gr.Accordion("Chat at the calibrated strength", open=True):
        chat_note = gr.Markdown("Finish a calibration to chat at its strength.", elem_id="cal-chat-note")
        chatbot = gr.Chatbot(label="Chat", height=320, elem_id="cal-chat")
        with gr.Row():
            message = gr.Textbox(show_label=False, placeholder="Ask something", scale=5, elem_id="cal-message")
            send = gr.Button("Send", variant="primary", scale=1, elem_id="cal-send")
            clear = gr.Button("Clear", scale=1, elem_id="cal-clear")

    def choice_buttons(enabled: bool) -> list:
        return [gr.update(interactive=enabled) for _ in buttons]

    def begin(name: str):
        if not name:
            raise gr.Error("pick a dimension first")
        session = start_session([d.name for d in dims] if name == ALL else [name], questions)
        return session, _summary(session, dims), _figure(session, dims), "", "", *choice_buttons(False)

    def make_pair(session: Session, max_new_tokens, temperature, seed, progress=gr.Progress()):
        """Both replies of this round in one batched call: two rows, the same seed."""
        if not session.current or session.state is None or session.pair_ready:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * len(buttons)
            return
        lab, dim, state = holder.lab, session.current, session.state
        if unbuilt(lab, {dim: state.d_a or state.d_b}):
            yield gr.skip(), BUILDING.format(dims=dim), "", "", *[gr.skip()] * len(buttons)
        try:
            rows = [
                GenerationRequest(
                    prompt=session.question,
                    steering=preference_steering(lab, {dim: d}, progress_callback(progress)),
                    max_new_tokens=int(max_new_tokens),
                    temperature=float(temperature),
                    seed=int(seed or 0) + state.round,
                )
                for d in (state.d_a, state.d_b)
            ]
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        shown = f"**Question** ({dim}, round {state.round + 1}): {session.question}"
        yield session, shown, "…", "…", *choice_buttons(False)
        stream = lab.stream(rows)
        results = None
        try:
            for results in stream:
                yield gr.skip(), gr.skip(), results[0].text, results[1].text, *[gr.skip()] * len(buttons)
        except Exception as error:
            log.exception("calibration pair failed")
            raise gr.Error(user_error(error)) from None
        finally:
            stream.close()
        session.pair_ready = True
        texts = [r.text.strip() or "(empty reply)" for r in results] if results else ["", ""]
        yield session, shown, texts[0], texts[1], *choice_buttons(True)

    def choose(choice: str, session: Session):
        try:
            session = apply_choice(session, choice, questions)
        except ValueError as error:
            raise gr.Error(user_error(error)) from None
        note = (
            f"Chat steered with **{describe_values(session.results, dims)}**."
            if session.results
            else "Finish a calibration to chat at its strength."
        )
        return session, _summary(session, dims), _figure(session, dims), note, *choice_buttons(False)

    pair_inputs = [session_state, *settings.inputs]
    pair_outputs = [session_state, question, reply_a, reply_b, *buttons]
    start.click(
        begin, [which], [session_state, summary, plot, reply_a, reply_b, *buttons], api_name="calibrate_start"
    ).success(
        make_pair,
        pair_inputs,
        pair_outputs,
        api_name="calibrate_pair",
        concurrency_id=MODEL_CONCURRENCY,
        show_progress="minimal",
    )
    for i, button in enumerate(buttons):
        grade = gr.Textbox(CHOICES[i], visible=False)  # the button's grade, as the API's ``choice``
        button.click(
            choose,
            [grade, session_state],
            [session_state, summary, plot, chat_note, *buttons],
            api_name="calibrate_choose" if i == 0 else False,
        ).success(
            make_pair,
            pair_inputs,
            pair_outputs,
            api_name=False,
            concurrency_id=MODEL_CONCURRENCY,
            show_progress="minimal",
        )

    def chat(text, history, session: Session, max_new_tokens, temperature, seed, progress=gr.Progress()):
        if not session.results:
            raise gr.Error("finish a calibration first: the chat uses its result")
        lab = holder.lab
        try:
            steering = preference_steering(lab, session.results, progress_callback(progress))
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        head = describe_values(session.results, dims)
        for history_now, note in stream_reply(
            lab, history, text, steering, max_new_tokens, temperature, int(seed or 0)
        ):
            yield history_now, "", note if not isinstance(note, str) else f"**{head}** · {note}"

    send_event = send.click(
        chat,
        [message, chatbot, session_state, *settings.inputs],
        [chatbot, message, chat_note],
        api_name="calibrate_chat",
        concurrency_id=MODEL_CONCURRENCY,
        show_progress="minimal",
    )
    message.submit(
        chat,
        [message, chatbot, session_state, *settings.inputs],
        [chatbot, message, chat_note],
        api_name=False,
        concurrency_id=MODEL_CONCURRENCY,
        show_progress="minimal",
    )
    clear.click(lambda: ([], ""), None, [chatbot, message], api_name=False, queue=False, cancels=[send_event])

    def save(name, session: Session):
        if not session.results:
            raise gr.Error("finish a calibration first: there is nothing to save yet")
        try:
            profile = merge_into_profile(name, session.results, "calibrate", holder.lab.lm.model_id)
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        return profiles.refresh(profile.name), f"Saved to **{profile.name}**: {describe_values(session.results, dims)}"

    profiles.save.click(
        save, [profiles.name, session_state], [profiles.choice, profiles.status], api_name="calibrate_save_profile"
    )
    return profiles


TAB = TabSpec("CALIBRATE", build_calibrate_tab)
