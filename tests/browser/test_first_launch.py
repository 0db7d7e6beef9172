"""A first launch: the page answers a Playground click while the concept library is still building.

The server starts as on a fresh clone (empty vector cache, the library build running behind the
page). The default form's concept is built in the click's own call while the build waits between
its forward passes, so the comparison comes back long before the build of every concept is done;
the test waits on events only (the status text, the health endpoint), never on a clock.
"""

from __future__ import annotations

import time

import pytest

from tests.browser.conftest import AppServer, _start_server
from tests.browser.helpers import error_toasts, text_value

GENERATION_TIMEOUT_MS = 240_000  # a busy shared machine is far slower than an idle one


@pytest.fixture(scope="module")
def first_launch_server():
    server = _start_server(first_launch=True)
    try:
        yield server
    finally:
        server.stop()


def library_state(server: AppServer) -> dict:
    from gradio_client import Client

    client = Client(server.url, verbose=False, download_files=False, analytics_enabled=False)
    return client.predict(api_name="/health")["library"]


def test_a_comparison_finishes_while_the_library_is_still_building(browser, first_launch_server):
    server = first_launch_server
    deadline = time.monotonic() + 120
    while library_state(server)["status"] != "building":  # the build starts right after the page
        if time.monotonic() > deadline or server.process.poll() is not None:
            pytest.fail(f"the library build did not start:\n{server.log_tail()}")
        time.sleep(0.2)

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        page.goto(server.url, wait_until="domcontentloaded")
        page.locator("#pg-generate").wait_for(state="visible", timeout=60_000)
        page.locator("#pg-generate").click()  # the default form: concept happy, not built yet
        page.locator("#pg-status").get_by_text("Done in").wait_for(timeout=GENERATION_TIMEOUT_MS)
        library = library_state(server)
        assert not error_toasts(page)
        assert text_value(page, "pg-baseline") and text_value(page, "pg-steered")
    finally:
        context.close()
    assert library["status"] == "building", library
    ready, total = library["ready"], library["building"][1]
    assert ready < total, library  # the build has concepts left: the click did not wait for them
