"""The app in a real browser: every tab renders, the Playground steers, the Creator saves.

Screenshots land in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.browser.helpers import error_toasts, fill_text, open_tab, set_number, shot, tab_labels, text_value

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GENERATION_TIMEOUT_MS = 240_000  # a shared 2-core CI box can be slow; a real run takes seconds


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def test_every_tab_renders(page, artifacts):
    labels = tab_labels(page)
    assert labels[:2] == ["Steering Playground", "Concept Creator"]
    for label in labels:
        open_tab(page, label)
        page.wait_for_timeout(500)
        shot(page, artifacts, f"tab-{_slug(label)}")
        panel = page.get_by_role("tabpanel").filter(visible=True)
        assert panel.count() >= 1, f"tab {label!r} shows no panel"
        assert panel.first.inner_text().strip(), f"tab {label!r} is empty"
        assert not error_toasts(page), f"tab {label!r} raised: {error_toasts(page)}"
        assert "Traceback" not in page.content()


def test_playground_steered_text_differs_from_baseline(page, artifacts):
    open_tab(page, "Steering Playground")
    fill_text(page, "pg-prompt", "The meeting went")
    if page.locator("#pg-chat input").is_checked():
        page.locator("#pg-chat input").uncheck()
    assert text_value(page, "pg-concept-1").startswith("happy")
    set_number(page, "pg-strength-1", 9)
    fill_text(page, "pg-layers", "15")
    set_number(page, "pg-max-tokens", 8)
    set_number(page, "pg-temperature", 0)
    page.locator("#pg-generate").click()
    page.locator("#pg-status").get_by_text("Done in").wait_for(timeout=GENERATION_TIMEOUT_MS)
    baseline, steered = text_value(page, "pg-baseline"), text_value(page, "pg-steered")
    shot(page, artifacts, "playground-generated")
    assert baseline.strip() and steered.strip()
    assert baseline != steered
    assert "happy" in page.locator("#pg-status").inner_text() and "layer 15" in page.locator("#pg-status").inner_text()
    assert "The texts part at token" in page.locator("#pg-headline").inner_text()
    assert "Generate to see" not in page.locator("#pg-diff").inner_text()  # the diff replaced its placeholder
    assert page.locator("#pg-plot .js-plotly-plot").count() == 1
    assert not error_toasts(page)


def test_stop_ends_a_long_generation(page):
    open_tab(page, "Steering Playground")
    set_number(page, "pg-max-tokens", 200)
    page.locator("#pg-generate").click()
    page.locator("#pg-status").get_by_text(re.compile(r"token \d+/200")).wait_for(timeout=GENERATION_TIMEOUT_MS)
    page.locator("#pg-stop").click()
    # Stop lands at the next decoding step: generous, since a busy machine can make a step take seconds.
    page.locator("#pg-status").get_by_text("Stopped.").wait_for(timeout=GENERATION_TIMEOUT_MS)
    stopped_at = text_value(page, "pg-steered")
    page.wait_for_timeout(2_000)
    assert text_value(page, "pg-steered") == stopped_at  # nothing streams in after Stop
    assert "Stopped." in page.locator("#pg-status").inner_text()  # and no late step overwrote the status
    # The model is free again: a short generation completes.
    set_number(page, "pg-max-tokens", 3)
    page.locator("#pg-generate").click()
    page.locator("#pg-status").get_by_text("Done in").wait_for(timeout=GENERATION_TIMEOUT_MS)


def test_creator_concept_is_saved_and_appears_in_the_playground(page, app_server, artifacts):
    name = f"browser_{uuid.uuid4().hex[:6]}"
    open_tab(page, "Concept Creator")
    fill_text(page, "cr-name", name)
    fill_text(page, "cr-positive", "I love sunny days.\nWhat a wonderful surprise!\nThis is the best news ever.")
    fill_text(page, "cr-negative", "I hate rainy days.\nWhat a terrible shock.\nThis is the worst news ever.")
    page.locator("#cr-extract").click()
    page.locator("#cr-summary").get_by_text("recommended strength").wait_for(timeout=GENERATION_TIMEOUT_MS)
    assert page.locator("#cr-download-safetensors").is_enabled()
    shot(page, artifacts, "creator-extracted")

    page.locator("#cr-save").click()
    page.locator("#cr-saved").get_by_text("Saved").wait_for(timeout=GENERATION_TIMEOUT_MS)
    saved = app_server.concepts_dir / "custom" / f"{name}.json"
    data = json.loads(saved.read_text())
    assert data["name"] == name and len(data["positive"]) == 3 and len(data["negative"]) == 3

    open_tab(page, "Steering Playground")
    page.locator("#pg-concept-1 input").click()
    assert page.get_by_role("option", name=f"{name} (custom)").count() == 1
    page.keyboard.press("Escape")

    open_tab(page, "Concept Creator")
    fill_text(page, "cr-try-prompt", "Tell me about the beach.")
    page.locator("#cr-try").click()
    page.get_by_role("tab", name="Steering Playground", selected=True).wait_for(timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_timeout(500)
    assert text_value(page, "pg-concept-1") == f"{name} (custom)"
    assert text_value(page, "pg-prompt") == "Tell me about the beach."
    shot(page, artifacts, "creator-try-in-playground")
    assert not error_toasts(page)


def test_preset_fills_the_form(page):
    open_tab(page, "Steering Playground")
    page.get_by_label("Preset demos").click()
    page.get_by_role("option", name="“The meeting went” + happy, middle layer").click()
    page.get_by_text("happy: recommended layer").wait_for(timeout=GENERATION_TIMEOUT_MS)
    assert text_value(page, "pg-prompt") == "The meeting went"
    assert text_value(page, "pg-concept-1") == "happy (emotion)"
    assert text_value(page, "pg-layers") == "15"  # SmolLM2 has 30 layers: the middle one
    assert not page.locator("#pg-chat input").is_checked()
    assert float(page.locator("#pg-strength-1 input[type=number]").input_value()) > 0


def test_creator_loads_an_uploaded_concept_and_reports_a_broken_one(page, tmp_path):
    good = tmp_path / "uploaded.json"
    good.write_text(
        json.dumps(
            {
                "name": "uploaded_one",
                "description": "from a file",
                "positive": ["yes indeed", "absolutely"],
                "negative": ["no way", "never"],
                "prompts": ["Will it rain?"],
            }
        )
    )
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x", "positive": "oops"')
    open_tab(page, "Concept Creator")
    upload = page.locator("input[type=file]").first
    upload.set_input_files(str(good))
    page.wait_for_function("() => document.querySelector('#cr-name input, #cr-name textarea').value === 'uploaded_one'")
    assert text_value(page, "cr-positive") == "yes indeed\nabsolutely"
    assert text_value(page, "cr-try-prompt") == "Will it rain?"
    upload.set_input_files(str(broken))
    page.locator(".toast-body.error").first.wait_for(timeout=GENERATION_TIMEOUT_MS)
    assert "not valid JSON" in page.locator(".toast-body.error").first.inner_text()
    assert "Traceback" not in page.content()


def test_creator_rejects_a_bad_name_with_a_readable_message(page, app_server):
    open_tab(page, "Concept Creator")
    fill_text(page, "cr-name", "../escape")
    page.locator("#cr-save").click()
    toast = page.locator(".toast-body.error")
    toast.first.wait_for(timeout=GENERATION_TIMEOUT_MS)
    assert "bad concept name" in toast.first.inner_text()
    assert not (app_server.concepts_dir / "escape.json").exists()
    assert "Traceback" not in page.content()
