"""Small Playwright helpers shared by the browser tests (tabs, Gradio inputs)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page

_TOP_LEVEL_TABS = """() => {
  const config = window.gradio_config;
  const byId = Object.fromEntries(config.components.map(c => [c.id, c]));
  const find = node => {
    if (byId[node.id] && byId[node.id].type === 'tabs') return node;
    for (const child of node.children || []) { const found = find(child); if (found) return found; }
    return null;
  };
  const tabs = find(config.layout);
  return (tabs ? tabs.children : []).map(child => byId[child.id])
    .filter(c => c && c.type === 'tabitem' && c.props.visible !== false).map(c => c.props.label);
}"""


def tab_labels(page: Page) -> list[str]:
    """The main tab bar's labels, from the app's config (tabs folded into "More tabs" included,
    tabs nested inside a tab left out)."""
    return page.evaluate(_TOP_LEVEL_TABS)


def open_tab(page: Page, label: str) -> None:
    """Select a tab by label, through the overflow menu when the tab bar is too narrow."""
    tab = page.get_by_role("tab", name=label, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button", has_text=re.compile(f"^{re.escape(label)}$")).click()
    page.get_by_role("tab", name=label, exact=True, selected=True).wait_for(state="attached")


def set_number(page: Page, elem_id: str, value: float) -> None:
    """Type into a gr.Slider's or gr.Number's number box and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def text_value(page: Page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def fill_text(page: Page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)


def shot(page: Page, folder: Path, name: str) -> Path:
    """A full-page screenshot in ``folder`` (plots render once scrolled into view)."""
    page.mouse.wheel(0, 20_000)
    page.wait_for_timeout(800)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def error_toasts(page: Page) -> list[str]:
    """Texts of the Gradio error toasts on screen."""
    return [t for t in page.locator(".toast-body.error").all_inner_texts() if t.strip()]
