"""Browser-test fixtures: the real app served on a free port, and headless Debian chromium.

``app_server`` starts ``python -m app serve --model smollm2-135m-instruct`` once per session
with a private cache (its ``models`` linked to the real one) and a temporary copy of
``concepts/``, so concepts saved by tests never touch the repository. ``browser`` drives
``/usr/bin/chromium`` through Playwright. Missing pieces skip the tests with the reason, except
under ``CI=true``, where a missing model or browser is a broken set-up and fails.

Fixture names are shared by every browser test module: app_server, app_url, browser, page,
artifacts. ``tests/test_gradio_api.py`` imports ``app_server``/``app_url`` from here; the server
is kept in the session's stash, so it starts only once however many modules use it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.storage import REPO_ROOT
from tests.conftest import missing

MODEL_ID = "smollm2-135m-instruct"
CHROMIUM = Path("/usr/bin/chromium")
START_TIMEOUT_S = 180  # ~20 s on an idle machine; a busy shared CI box is far slower
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)
            # the first test also waits for the server to start (START_TIMEOUT_S)
            item.add_marker(pytest.mark.timeout(START_TIMEOUT_S + 300))


@dataclass
class AppServer:
    url: str
    process: subprocess.Popen
    root: Path  # holds cache/ and concepts/ of this server
    log_path: Path

    @property
    def concepts_dir(self) -> Path:
        return self.root / "concepts"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _start_server(*, first_launch: bool = False) -> AppServer:
    """Serve SmolLM2. ``first_launch``: with an empty vector cache and the library build running
    behind the page, as on a fresh clone; otherwise vectors built here are reused and nothing builds."""
    from app.models.embedded import is_set_up, models_dir

    models = models_dir()
    if not is_set_up(MODEL_ID, models):
        missing(f"{MODEL_ID} is not set up in {models}: run ./setup_local_cache.sh --model {MODEL_ID}")
    root = Path(tempfile.mkdtemp(prefix="steering-lab-browser-"))
    cache = root / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(models.resolve(), target_is_directory=True)
    vectors = models.parent / "vectors"
    if vectors.is_dir() and not first_launch:  # reuse vectors already built here (same model fingerprint)
        shutil.copytree(vectors, cache / "vectors")
    shutil.copytree(REPO_ROOT / "concepts", root / "concepts")
    port = _free_port()
    env = {
        **os.environ,
        "STEERING_LAB_CACHE": str(cache),
        "STEERING_LAB_CONCEPTS": str(root / "concepts"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = root / "server.log"
    command = [sys.executable, "-m", "app", "serve", "--model", MODEL_ID, "--port", str(port)]
    if not first_launch:
        command.append("--no-build")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = AppServer(url=f"http://127.0.0.1:{port}/", process=process, root=root, log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log_tail()
            server.stop()
            pytest.fail(f"the app exited with code {process.returncode} while starting:\n{tail}", pytrace=False)
        if _answers(server.url):
            return server
        time.sleep(1.0)
    tail = server.log_tail()
    server.stop()
    pytest.fail(f"the app did not answer at {server.url} within {START_TIMEOUT_S} s:\n{tail}", pytrace=False)


_SERVER_KEY = pytest.StashKey[AppServer]()


@pytest.fixture(scope="session")
def app_server(request: pytest.FixtureRequest) -> AppServer:
    """The app serving SmolLM2 on a free port (one per test session, stopped at its end)."""
    stash = request.config.stash
    if _SERVER_KEY not in stash:
        server = _start_server()
        stash[_SERVER_KEY] = server
        request.config.add_cleanup(server.stop)
    server = stash[_SERVER_KEY]
    if server.process.poll() is not None:
        pytest.fail(f"the app server died (code {server.process.returncode}):\n{server.log_tail()}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def app_url(app_server: AppServer) -> str:
    return app_server.url


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, app_url: str):
    """A fresh page on the app, loaded (the first tab shows)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(app_url, wait_until="domcontentloaded")
    page.get_by_role("tab").first.wait_for(state="visible", timeout=60_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/``: screenshots for people to look at (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
