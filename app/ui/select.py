"""SELECT (Bo et al. 2025): a chat steered by one slider per preference dimension.

Every slider applies on every turn: the non-zero ones become one :class:`Steering` with one
steer per dimension, each at its recommended layers with strength
``ui_to_strength(value, functional_range)``. A slider moved mid-conversation applies to the next
reply. The conversation and the slider values belong to the user's page; nothing is global.
"""

from __future__ import annotations

import gradio as gr

from app.preferences.chat import (
    describe_values,
    merge_into_profile,
    preference_dimensions,
    preference_steering,
    unbuilt,
)
from app.preferences.profiles import load_profile
from app.serving import LabHolder
from app.ui.preference_widgets import (
    BUILDING,
    generation_settings,
    profile_box,
    progress_callback,
    stream_reply,
    with_named_values,
)
from app.ui.state import MODEL_CONCURRENCY, TabSpec, user_error

EXAMPLES = (
    "Can you suggest a restaurant for my friend's birthday dinner?",
    "What should I pack for a weekend trip to the mountains?",
    "What's a good gift for my dad?",
)


def no_dimensions_note() -> None:
    gr.Markdown(
        'No preference dimensions found: add concepts with `"category": "preference"` under `concepts/` '
        "(cost, ambiance, age, time, culture) and restart."
    )


def build_select_tab(holder: LabHolder):
    gr.Markdown(
        "Chat with the model while the sliders steer its preferences. **−100…100** is mapped to this model's "
        "functional range for each dimension; 0 means no steering. Move a slider any time: it applies to the "
        "next reply."
    )
    dims = preference_dimensions(holder.lab.library.concepts())
    if not dims:
        no_dimensions_note()
        return None
    names = [d.name for d in dims]
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(
                label="Chat", height=440, elem_id="sel-chat", placeholder="Ask for a recommendation to start."
            )
            with gr.Row():
                message = gr.Textbox(
                    placeholder="e.g. Can you suggest a restaurant for tonight?",
                    show_label=False,
                    scale=5,
                    max_lines=4,
                    elem_id="sel-message",
                )
                send = gr.Button("Send", variant="primary", scale=1, elem_id="sel-send")
            with gr.Row():
                stop = gr.Button("Stop", variant="stop", size="sm", elem_id="sel-stop")
                clear = gr.Button("Clear", size="sm", elem_id="sel-clear")
            gr.Examples([[q] for q in EXAMPLES], inputs=[message], label="Try")
            status = gr.Markdown(elem_id="sel-status")
        with gr.Column(scale=2):
            with gr.Group():
                sliders = [
                    gr.Slider(-100, 100, value=0, step=5, label=d.slider_label, elem_id=f"sel-slider-{d.name}")
                    for d in dims
                ]
            reset = gr.Button("All to 0 (no steering)", size="sm", elem_id="sel-reset")
            settings = generation_settings("sel")
            profiles = profile_box("sel")

    def respond(text, history, max_new_tokens, temperature, seed, progress=gr.Progress(), *values):
        # ``progress`` sits before ``*values`` because Gradio only fills positional parameters.
        lab = holder.lab
        chosen = dict(zip(names, (float(v or 0) for v in values)))
        building = unbuilt(lab, chosen)
        if building:
            yield gr.skip(), gr.skip(), BUILDING.format(dims=", ".join(building))
        try:
            steering = preference_steering(lab, chosen, progress_callback(progress))
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        head = describe_values(chosen, dims)
        for chat, note in stream_reply(lab, history, text, steering, max_new_tokens, temperature, int(seed or 0)):
            yield chat, "", note if not isinstance(note, str) else f"**{head}** · {note}"

    respond = with_named_values(respond, ["text", "history", "max_new_tokens", "temperature", "seed"], names)
    inputs = [message, chatbot, *settings.inputs, *sliders]
    outputs = [chatbot, message, status]
    event = send.click(
        respond, inputs, outputs, api_name="select_chat", concurrency_id=MODEL_CONCURRENCY, show_progress="minimal"
    )
    submitted = message.submit(
        respond, inputs, outputs, api_name=False, concurrency_id=MODEL_CONCURRENCY, show_progress="minimal"
    )
    stop.click(None, None, None, cancels=[event, submitted], api_name=False)
    clear.click(lambda: ([], "", ""), None, [chatbot, message, status], api_name=False, queue=False)
    reset.click(lambda: [0] * len(sliders), None, sliders, api_name=False, queue=False)

    def save(name, *values):
        try:
            profile = merge_into_profile(name, dict(zip(names, values)), "select", holder.lab.lm.model_id)
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        shown = describe_values({d: v["value"] for d, v in profile.dimensions.items()}, dims)
        return profiles.refresh(profile.name), f"Saved **{profile.name}**: {shown}"

    def load(name):
        if not name:
            raise gr.Error("pick a saved profile first")
        try:
            profile = load_profile(name)
        except Exception as error:
            raise gr.Error(user_error(error)) from None
        values = {d: entry["value"] for d, entry in profile.dimensions.items()}
        note = f"Loaded **{name}**: {describe_values(values, dims)}"
        unknown = sorted(set(values) - set(names))
        if unknown:
            note += f" (ignored: {', '.join(unknown)})"
        return [*(values.get(d, 0) for d in names), name, note]

    save = with_named_values(save, ["name"], names, progress=False)
    profiles.save.click(
        save, [profiles.name, *sliders], [profiles.choice, profiles.status], api_name="select_save_profile"
    )
    profiles.load.click(
        load, [profiles.choice], [*sliders, profiles.name, profiles.status], api_name="select_load_profile"
    )
    return profiles


TAB = TabSpec("SELECT", build_select_tab)
