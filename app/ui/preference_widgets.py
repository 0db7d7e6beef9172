"""Pieces the SELECT, CALIBRATE and LEARN tabs share: generation settings, a profile box, and a
streamed chat reply. Layout and wiring only; the logic is in ``app/preference_chat.py``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import gradio as gr

from app.limits import current as current_limits
from app.preferences.chat import chat_request, describe_steering, plain_history
from app.preferences.profiles import list_profiles
from app.steering.engine import Steering
from app.ui.state import user_error

log = logging.getLogger(__name__)
BUILDING = (  # shown while a dimension's vector is built on first use
    "Building the **{dims}** vector for this model (first use: a probe on every layer, up to a few minutes)…"
)


@dataclass
class GenerationSettings:
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    seed: gr.Number

    @property
    def inputs(self) -> list:
        return [self.max_new_tokens, self.temperature, self.seed]


def generation_settings(prefix: str, max_new_tokens: int = 120, temperature: float = 0.7) -> GenerationSettings:
    """An accordion with reply length, temperature and seed (the same seed for every reply)."""
    most = max(16, current_limits().max_new_tokens)
    with gr.Accordion("Generation settings", open=False, elem_id=f"{prefix}-settings"):
        tokens = gr.Slider(
            16, most, value=min(max_new_tokens, most), step=8, label="Max new tokens", elem_id=f"{prefix}-max-tokens"
        )
        temp = gr.Slider(
            0,
            1.5,
            value=temperature,
            step=0.05,
            label="Temperature",
            info="0 = greedy",
            elem_id=f"{prefix}-temperature",
        )
        seed = gr.Number(0, label="Seed", precision=0, info="same seed → comparable replies", elem_id=f"{prefix}-seed")
    return GenerationSettings(tokens, temp, seed)


@dataclass
class ProfileBox:
    """Name + Save, and a list of saved profiles (+ Load where the tab can load one)."""

    name: gr.Textbox
    save: gr.Button
    choice: gr.Dropdown
    load: gr.Button | None
    status: gr.Markdown

    def refresh(self, selected: str | None = None) -> dict:
        names = list_profiles()
        return gr.update(choices=names, value=selected if selected in names else None)

    def link(self, tabs: gr.Tabs, tab: gr.Tab, built: dict) -> None:
        """Profiles saved in another tab show up when this tab is opened."""
        tab.select(lambda: self.refresh(), None, self.choice, api_name=False, queue=False)


def profile_box(prefix: str, with_load: bool = True) -> ProfileBox:
    with gr.Accordion("Profile", open=True, elem_id=f"{prefix}-profile"):
        with gr.Row():
            name = gr.Textbox(
                label="Profile name", placeholder="e.g. alice", scale=3, max_lines=1, elem_id=f"{prefix}-profile-name"
            )
            save = gr.Button("Save", scale=1, elem_id=f"{prefix}-profile-save")
        with gr.Row():
            choice = gr.Dropdown(
                list_profiles(), value=None, label="Saved profiles", scale=3, elem_id=f"{prefix}-profile-list"
            )
            load = gr.Button("Load", scale=1, elem_id=f"{prefix}-profile-load") if with_load else None
        status = gr.Markdown(elem_id=f"{prefix}-profile-status")
    return ProfileBox(name, save, choice, load, status)


def stream_reply(
    lab,
    history: Sequence[dict] | None,
    message: str,
    steering: Steering,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> Iterator[tuple[list[dict], str]]:
    """Yield ``(chat history, status)`` as the steered reply grows; the last status says what steered it.

    Closing this generator (a Stop button) closes the model stream, so the engine leaves its
    ``with`` block and removes its hooks.
    """
    try:
        request = chat_request(
            lab, history, message, steering, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
        )
    except Exception as error:
        raise gr.Error(user_error(error)) from None
    what = describe_steering(steering)
    chat = [
        *plain_history(history),
        {"role": "user", "content": message.strip()},
        {"role": "assistant", "content": "…"},
    ]
    yield chat, f"Generating… ({what})"
    started = time.perf_counter()
    results = None
    stream = lab.stream([request])
    try:
        for results in stream:
            chat[-1] = {"role": "assistant", "content": results[0].text or "…"}
            yield chat, gr.skip()
    except Exception as error:
        log.exception("preference chat failed")
        raise gr.Error(user_error(error)) from None
    finally:
        stream.close()
    if results:
        result = results[0]
        chat[-1] = {"role": "assistant", "content": result.text.strip() or "(empty reply)"}
        seconds = time.perf_counter() - started
        yield chat, f"{len(result.token_ids)} tokens in {seconds:.1f} s ({result.finish_reason}) · steering: {what}"


def with_named_values(fn, head: list[str], names: list[str], progress: bool = True):
    """``fn(*head, [progress,] *values)`` exposed with one named parameter per dimension.

    Gradio names API parameters after the function's signature; ``*values`` would show up as
    ``param_5, param_6, …``. The wrapper's signature says ``cost, ambiance, …`` instead.
    """
    if inspect.isgeneratorfunction(fn):

        def named(*args):
            yield from fn(*args)
    else:

        def named(*args):
            return fn(*args)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind) for n in head]
    if progress:  # Gradio passes gr.Progress to the parameter whose default is one
        params.append(inspect.Parameter("progress", kind, default=gr.Progress()))
    params += [inspect.Parameter(n, kind, default=0.0) for n in names]
    named.__signature__ = inspect.Signature(params)
    named.__name__ = fn.__name__
    return named


def progress_callback(progress: gr.Progress):
    """Adapt ``gr.Progress`` to the core's ``(fraction, message)`` callbacks."""
    return lambda fraction, message: progress(fraction, desc=message)
