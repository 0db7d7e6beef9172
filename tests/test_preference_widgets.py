"""Shared pieces of the preference tabs (app/ui/preference_widgets.py)."""

from __future__ import annotations

import inspect

import gradio as gr

from app.ui.preference_widgets import with_named_values


def test_api_parameters_are_named_after_the_dimensions():
    def respond(text, progress=gr.Progress(), *values):
        yield text, values

    named = with_named_values(respond, ["text"], ["cost", "age"])
    params = inspect.signature(named).parameters
    assert list(params) == ["text", "progress", "cost", "age"]
    assert isinstance(params["progress"].default, gr.Progress)  # Gradio still injects progress
    assert inspect.isgeneratorfunction(named)
    assert list(named("hi", None, 10, -5)) == [("hi", (10, -5))]


def test_plain_functions_stay_plain():
    def save(name, *values):
        return name, values

    named = with_named_values(save, ["name"], ["cost"], progress=False)
    assert list(inspect.signature(named).parameters) == ["name", "cost"]
    assert named("alice", 35) == ("alice", (35,))
