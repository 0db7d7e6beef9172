"""LEARN (Bo et al. 2025): the chat learns your preference from thumbs and a few words.

After each reply, 👍 / 👎 (the buttons or the chat's own) and optional text update every active
dimension once with the paper's Eq. 1, ``d ← d + p · dissatisfaction · direction``
(``learn_from_feedback``): the text's embedding says which way, the thumbs how unhappy. The
next reply is steered at the new values; the values are shown as a share of the pole
("35% budget") and plotted round by round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import gradio as gr

from app.preferences.chat import (
    Dimension,
    describe_values,
    feedback_phrases,
    merge_into_profile,
    preference_dimensions,
    preference_steering,
    unbuilt,
)
from app.preferences.figures import learn_figure
from app.preferences.learn import LearnState, learn_from_feedback, learn_step
from app.preferences.profiles import load_profile
from app.serving import LabHolder
from app.ui.preference_widgets import BUILDING, generation_settings, profile_box, progress_callback, stream_reply
from app.ui.select import no_dimensions_note
from app.ui.state import MODEL_CONCURRENCY, TabSpec, user_error

log = logging.getLogger(__name__)
THUMBS_ONLY_HINT = (
    "thumbs alone can't tell which way to go from here: add a few words, e.g. “cheaper” or “more for kids”"
)


@dataclass
class Session:
    """One user's learning (plain data for ``gr.State``)."""

    learn: LearnState
    trajectory: list[dict[str, float]] = field(default_factory=list)  # values after each round; [0] = start
    awaiting_feedback: bool = False  # a reply is shown and not rated yet


def new_session(active: list[str], start: dict[str, float] | None = None, step: float = 25.0) -> Session:
    values = {dim: float((start or {}).get(dim, 0.0)) for dim in active}
    return Session(learn=LearnState(values=values, step=step), trajectory=[dict(values)])


def values_markdown(session: Session, dims: list[Dimension]) -> str:
    """One line per active dimension: ``cost: **35% budget** (−35)``."""
    rows = [
        f"- {d.name}: **{d.share(session.learn.values[d.name])}** ({session.learn.values[d.name]:+.0f})"
        for d in dims
        if d.name in session.learn.values
    ]
    if not rows:
        return "Tick at least one dimension to learn."
    n = session.learn.round
    return f"**Learned so far** ({n} rating{'s' if n != 1 else ''}):\n\n" + "\n".join(rows)


def build_learn_tab(holder: LabHolder):
    gr.Markdown(
        "Chat, then rate each reply with 👍 / 👎 and, if you like, say what you want (“cheaper”, “more for "
        "adults”). The app updates the steering after every rating and shows what it has learned."
    )
    dims = preference_dimensions(holder.lab.library.concepts())
    if not dims:
        no_dimensions_note()
        return None
    names = [d.name for d in dims]
    labels = {d.name: d.labels for d in dims}
    phrases = feedback_phrases(dims)
    session_state = gr.State(new_session(names))
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(
                label="Chat", height=420, elem_id="learn-chat", placeholder="Ask for a recommendation."
            )
            with gr.Row():
                message = gr.Textbox(
                    show_label=False, placeholder="e.g. Where should I eat tonight?", scale=5, elem_id="learn-message"
                )
                send = gr.Button("Send", variant="primary", scale=1, elem_id="learn-send")
            with gr.Row():
                feedback = gr.Textbox(
                    show_label=False,
                    placeholder="Optional feedback on the last reply, e.g. “too expensive”",
                    scale=4,
                    elem_id="learn-feedback",
                )
                up = gr.Button("👍 Like", scale=1, min_width=80, elem_id="learn-up")
                down = gr.Button("👎 Dislike", scale=1, min_width=80, elem_id="learn-down")
            with gr.Row():
                stop = gr.Button("Stop", variant="stop", size="sm", elem_id="learn-stop")
                clear = gr.Button("Clear chat", size="sm", elem_id="learn-clear")
            status = gr.Markdown("Send a message to start.", elem_id="learn-status")
        with gr.Column(scale=2):
            active = gr.CheckboxGroup(
                [(f"{d.name} ({d.negative} ↔ {d.positive})", d.name) for d in dims],
                value=names,
                label="Learn these dimensions",
                elem_id="learn-active",
            )
            step = gr.Slider(
                5, 50, value=25, step=5, label="Step p (UI units per fully unhappy round)", elem_id="learn-step"
            )
            values = gr.Markdown(values_markdown(new_session(names), dims), elem_id="learn-values")
            plot = gr.Plot(learn_figure([]), label="Learned values", show_label=False, elem_id="learn-plot")
            settings = generation_settings("learn")
            profiles = profile_box("learn")

    def respond(text, history, session: Session, max_new_tokens, temperature, seed, progress=gr.Progress()):
        lab = holder.lab
        building = unbuilt(lab, session.learn.values)
        if building:
            yield gr.skip(), gr.skip(), gr.skip(), BUILDING.format(dims=", ".join(building))
        try:
            steering = preference_steering(lab, session.learn.values, progress_callback(progress))
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        head = describe_values(session.learn.values, dims)
        note = ""
        for chat, note in stream_reply(lab, history, text, steering, max_new_tokens, temperature, int(seed or 0)):
            yield chat, "", gr.skip(), note if not isinstance(note, str) else f"**{head}** · {note}"
        session.awaiting_feedback = True
        yield (
            gr.skip(),
            gr.skip(),
            session,
            f"**{head}** · {note} — rate it with 👍 / 👎 (and a few words if you like).",
        )

    chat_inputs = [message, chatbot, session_state, *settings.inputs]
    chat_outputs = [chatbot, message, session_state, status]
    event = send.click(
        respond,
        chat_inputs,
        chat_outputs,
        api_name="learn_chat",
        concurrency_id=MODEL_CONCURRENCY,
        show_progress="minimal",
    )
    submitted = message.submit(
        respond, chat_inputs, chat_outputs, api_name=False, concurrency_id=MODEL_CONCURRENCY, show_progress="minimal"
    )
    stop.click(None, None, None, cancels=[event, submitted], api_name=False)

    def rate(thumbs: str | None, text: str, session: Session, p: float):
        if not session.awaiting_feedback:
            raise gr.Error("rate the latest reply: send a message first (each reply takes one rating)")
        if thumbs not in ("up", "down", None):
            raise gr.Error(f"thumbs must be 'up' or 'down', got {thumbs!r}")
        text = (text or "").strip()
        if thumbs is None and not text:
            raise gr.Error("write some feedback or press 👍 / 👎")
        before = dict(session.learn.values)
        learn = replace(session.learn, step=float(p))
        note = ""
        try:
            learn = learn_from_feedback(learn, thumbs, text, phrases)
        except Exception as error:  # e.g. the sentence-embedding model is missing: fall back to thumbs only
            log.warning("could not read feedback text: %s", error)
            learn = learn_step(learn, thumbs)
            note = f" (could not read the text: {user_error(error)})"
        session.learn, session.awaiting_feedback = learn, False
        session.trajectory.append(dict(learn.values))
        moved = {d: learn.values[d] - before[d] for d in learn.values if learn.values[d] != before[d]}
        if moved:
            what = ", ".join(f"{d} {v:+.0f}" for d, v in moved.items())
            summary = f"Moved {what}: the next reply is steered with **{describe_values(learn.values, dims)}**."
        elif thumbs == "up":
            summary = "👍 Kept the values: the next reply uses the same steering."
        elif text:
            summary = "Could not tell which dimension your words are about; try naming it, e.g. “cheaper”."
        else:
            summary = f"👎 noted, but {THUMBS_ONLY_HINT}."
        return session, values_markdown(session, dims), learn_figure(session.trajectory, labels), "", summary + note

    feedback_inputs = [feedback, session_state, step]
    feedback_outputs = [session_state, values, plot, feedback, status]

    def thumbs_up(text: str, session: Session, p: float):
        return rate("up", text, session, p)

    def thumbs_down(text: str, session: Session, p: float):
        return rate("down", text, session, p)

    def text_only(text: str, session: Session, p: float):
        return rate(None, text, session, p)

    up.click(thumbs_up, feedback_inputs, feedback_outputs, api_name="learn_thumbs_up")
    down.click(thumbs_down, feedback_inputs, feedback_outputs, api_name="learn_thumbs_down")
    feedback.submit(text_only, feedback_inputs, feedback_outputs, api_name="learn_feedback_text")

    def on_like(history, text, session: Session, p: float, data: gr.LikeData):
        last = len(history or []) - 1
        index = data.index[0] if isinstance(data.index, list | tuple) else data.index
        if index != last or data.liked not in (True, False):
            gr.Info("Ratings go to the latest reply.")
            return [gr.skip()] * len(feedback_outputs)
        return rate("up" if data.liked else "down", text, session, p)

    chatbot.like(on_like, [chatbot, feedback, session_state, step], feedback_outputs, api_name=False)

    def set_active(chosen: list[str], session: Session, p: float):
        current = session.learn.values
        fresh = new_session(list(chosen or []), start=current, step=p)
        fresh.awaiting_feedback = session.awaiting_feedback
        return fresh, values_markdown(fresh, dims), learn_figure(fresh.trajectory, labels)

    active.input(set_active, [active, session_state, step], [session_state, values, plot], api_name=False, queue=False)

    def clear_chat(session: Session):
        session.awaiting_feedback = False
        return [], "", session, "Chat cleared; the learned values stay."

    clear.click(clear_chat, [session_state], [chatbot, message, session_state, status], api_name=False, queue=False)
    # the chat's own trash button empties it too: nothing is left to rate
    chatbot.clear(lambda s: clear_chat(s)[2:], [session_state], [session_state, status], api_name=False, queue=False)

    def save(name, session: Session):
        if not session.learn.values:
            raise gr.Error("tick at least one dimension first")
        try:
            profile = merge_into_profile(name, session.learn.values, "learn", holder.lab.lm.model_id)
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        return profiles.refresh(
            profile.name
        ), f"Saved to **{profile.name}**: {describe_values(session.learn.values, dims)}"

    def load(name, chosen: list[str], p: float):
        if not name:
            raise gr.Error("pick a saved profile first")
        try:
            profile = load_profile(name)
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        start = {d: entry["value"] for d, entry in profile.dimensions.items() if d in names}
        fresh = new_session(sorted(set(chosen or []) | set(start), key=names.index), start=start, step=p)
        note = f"Starting from **{name}**: {describe_values(fresh.learn.values, dims)}"
        return (
            fresh,
            list(fresh.learn.values),
            values_markdown(fresh, dims),
            learn_figure(fresh.trajectory, labels),
            name,
            note,
        )

    profiles.save.click(
        save, [profiles.name, session_state], [profiles.choice, profiles.status], api_name="learn_save_profile"
    )
    profiles.load.click(
        load,
        [profiles.choice, active, step],
        [session_state, active, values, plot, profiles.name, profiles.status],
        api_name="learn_load_profile",
    )
    return profiles


TAB = TabSpec("LEARN", build_learn_tab)
