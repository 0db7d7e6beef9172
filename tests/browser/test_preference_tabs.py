"""SELECT, CALIBRATE and LEARN in a real browser (Playwright + Debian chromium, SmolLM2).

Every test uses the ``cost`` dimension only, so the server builds one preference vector (on
first use, a probe over three layers). Replies are short and greedy to keep the run fast.
Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import re

import pytest

# A busy CPU can take minutes for a calibration's three pairs; pytest.ini's 300 s is per test.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

FIRST_REPLY_MS = 600_000  # the first steered reply also builds the cost vector on a busy CPU
REPLY_MS = 300_000
TOKENS = 16


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def set_number(page, elem_id: str, value: float) -> None:
    """Type into a slider's or number's box and commit it (Gradio reads it on blur)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def short_greedy_replies(page, prefix: str) -> None:
    page.locator(f"#{prefix}-settings .label-wrap").first.click()
    set_number(page, f"{prefix}-max-tokens", TOKENS)
    set_number(page, f"{prefix}-temperature", 0)


def wait_for_text(page, selector: str, pattern: str, timeout: int) -> str:
    """Wait until the element's text matches ``pattern`` (a regex); return the text."""
    page.wait_for_function(
        "([sel, pat]) => { const el = document.querySelector(sel); return el && new RegExp(pat).test(el.innerText); }",
        arg=[selector, pattern],
        timeout=timeout,
    )
    return page.locator(selector).inner_text()


def last_reply(page, chat_id: str) -> str:
    return page.locator(f"#{chat_id} .message-content").last.inner_text().strip()


def assert_no_error(page) -> None:
    toasts = page.locator(".toast-body.error, .toast-wrap .error")
    assert toasts.count() == 0, toasts.first.inner_text()
    assert "Traceback" not in page.locator("body").inner_text()


def test_select_reply_changes_with_the_slider(page, artifacts):
    open_tab(page, "SELECT")
    short_greedy_replies(page, "sel")
    replies = {}
    for value in (-100, 100):
        page.locator("#sel-clear").click()
        set_number(page, "sel-slider-cost", value)
        page.locator("#sel-message textarea").fill("Where should I eat dinner tonight?")
        page.locator("#sel-send").click()
        pole = "budget" if value < 0 else "luxury"
        status = wait_for_text(page, "#sel-status", rf"100% {pole}.*tokens in", FIRST_REPLY_MS)
        assert "cost ×" in status  # the status names the steering that was applied
        replies[value] = last_reply(page, "sel-chat")
        page.screenshot(path=artifacts / f"select_cost_{value:+d}.png", full_page=True)
    assert_no_error(page)
    assert replies[-100] and replies[100]
    assert replies[-100] != replies[100], "the same greedy reply at cost −100 and +100"


def test_a_full_calibration_run(page, artifacts):
    open_tab(page, "CALIBRATE")
    short_greedy_replies(page, "cal")
    page.locator("#cal-start").click()
    choices = {c: page.locator(f"#cal-choice-{i}") for i, c in enumerate(["A++", "A+", "=", "B+", "B++"])}
    # B much better: [−100, 100] → [50, 100]; A slightly better: → [50, 75]; about the same: stop at 62.5
    for round_number, choice in enumerate(["B++", "A+", "="], start=1):
        wait_for_text(page, "#cal-summary", rf"round {round_number} ", REPLY_MS)
        page.wait_for_function("() => !document.querySelector('#cal-choice-0').disabled", timeout=FIRST_REPLY_MS)
        a, b = page.locator("#cal-a textarea").input_value(), page.locator("#cal-b textarea").input_value()
        assert a.strip() and b.strip() and a != "…"
        assert re.search(r"Question.*round " + str(round_number), page.locator("#cal-question").inner_text())
        if round_number == 1:
            page.screenshot(path=artifacts / "calibrate_round1.png", full_page=True)
        choices[choice].click()
    summary = wait_for_text(page, "#cal-summary", r"Calibrated", REPLY_MS)
    assert "cost: 62% luxury" in summary
    assert "round" not in summary  # nothing left to calibrate
    plot = page.locator("#cal-plot")
    assert plot.locator(".scatterlayer .trace").count() >= 2  # d_A and d_B drawn, not an empty plot
    page.locator("#cal-message textarea").fill("Any tips for a weekend in Rome?")
    page.locator("#cal-send").click()
    wait_for_text(page, "#cal-chat-note", r"62% luxury.*tokens in", REPLY_MS)
    assert last_reply(page, "cal-chat")
    page.locator("#cal-profile-name input").fill("browser_calibrated")
    page.locator("#cal-profile-save").click()
    wait_for_text(page, "#cal-profile-status", r"Saved to", 120_000)
    assert_no_error(page)
    page.screenshot(path=artifacts / "calibrate_done.png", full_page=True)


def test_a_learn_turn_moves_the_value(page, artifacts):
    open_tab(page, "LEARN")
    short_greedy_replies(page, "learn")
    assert "cost: neutral" in page.locator("#learn-values").inner_text()
    page.locator("#learn-message textarea").fill("Where should I stay in Paris?")
    page.locator("#learn-send").click()
    wait_for_text(page, "#learn-status", r"rate it", FIRST_REPLY_MS)
    assert last_reply(page, "learn-chat")
    page.locator("#learn-feedback textarea").fill("Too expensive. I want something cheaper, on a budget.")
    page.locator("#learn-down").click()
    values = wait_for_text(page, "#learn-values", r"1 rating", 120_000)
    assert re.search(r"cost: \d+% budget", values), values
    assert "Moved cost -" in page.locator("#learn-status").inner_text()
    assert page.locator("#learn-plot .scatterlayer .trace").count() >= 1
    # the next reply is steered at the learned value
    page.locator("#learn-message textarea").fill("And where should I eat?")
    page.locator("#learn-send").click()
    status = wait_for_text(page, "#learn-status", r"rate it", REPLY_MS)
    assert re.search(r"cost: \d+% budget", status), status
    assert_no_error(page)
    page.screenshot(path=artifacts / "learn_after_feedback.png", full_page=True)
