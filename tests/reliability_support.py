"""Helpers for the reliability and security tests: a tiny model on disk, a sandbox, a served app.

The served app is the real ``python -m app serve`` in a subprocess, on a tiny random-weight
model saved to disk (no download), with a login (``STEERING_LAB_AUTH``) and a lowered
``max_new_tokens`` limit, so the tests also check that the environment reaches the server.
One server per test process: :func:`shared_server` starts it once and stops it at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.storage import REPO_ROOT

AUTH = ("teacher", "s3cret:with-colon")
SERVER_MAX_NEW_TOKENS = 100  # STEERING_LAB_MAX_NEW_TOKENS given to the served app
SERVER_QUEUE_SIZE = 24  # STEERING_LAB_QUEUE_SIZE given to the served app
CONCEPTS = ("happy", "pirate")


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A tiny random llama and a character tokenizer saved as a local model directory."""
    from tests.conftest import make_char_tokenizer, make_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "model.safetensors").exists():
        make_tiny_model("llama", seed=seed).save_pretrained(folder)
        make_char_tokenizer().save_pretrained(folder)
    return folder


def make_sandbox(root: Path) -> Path:
    """``root/concepts`` (two built-in concepts, an empty custom folder) and ``root/cache``."""
    (root / "concepts" / "custom").mkdir(parents=True, exist_ok=True)
    (root / "cache").mkdir(exist_ok=True)
    for name in CONCEPTS:
        shutil.copy(REPO_ROOT / "concepts" / f"{name}.json", root / "concepts")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    root: Path
    log_path: Path

    def client(self, auth: tuple[str, str] | None = AUTH):
        from gradio_client import Client

        return Client(
            self.url,
            auth=auth,
            verbose=False,
            download_files=False,
            analytics_enabled=False,
            httpx_kwargs={"timeout": 300},
        )

    @contextmanager
    def http(self) -> Iterator:
        """An ``httpx.Client`` logged in as :data:`AUTH` (the session cookie sent by hand: it is
        marked Secure, which a cookie jar would keep off plain http)."""
        import httpx

        with httpx.Client(base_url=self.url, timeout=120) as http:
            login = http.post("/login", data={"username": AUTH[0], "password": AUTH[1]})
            login.raise_for_status()
            http.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in login.cookies.items())
            yield http

    def call_raw(self, api_name: str, body: str) -> tuple[str, str]:
        """POST a raw JSON body (e.g. one holding ``NaN``, which clients refuse to send) to
        ``/gradio_api/call/<api_name>``; returns the last server-sent event and its data."""
        with self.http() as http:
            posted = http.post(
                f"/gradio_api/call/{api_name}", content=body, headers={"Content-Type": "application/json"}
            )
            posted.raise_for_status()
            event_id = posted.json()["event_id"]
            event, data = "", ""
            with http.stream("GET", f"/gradio_api/call/{api_name}/{event_id}") as stream:
                for line in stream.iter_lines():
                    if line.startswith("event:"):
                        event = line.removeprefix("event:").strip()
                    elif line.startswith("data:"):
                        data = line.removeprefix("data:").strip()
            return event, data

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(root: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 240) -> Server:
    """Serve the app on the tiny model from ``root`` (a sandbox); wait until it answers."""
    make_sandbox(root)
    model = save_tiny_model(root / "tiny-model")
    port = free_port()
    environ = {
        **os.environ,
        "STEERING_LAB_CACHE": str(root / "cache"),
        "STEERING_LAB_CONCEPTS": str(root / "concepts"),
        "STEERING_LAB_AUTH": f"{AUTH[0]}:{AUTH[1]}",
        "STEERING_LAB_MAX_NEW_TOKENS": str(SERVER_MAX_NEW_TOKENS),
        "STEERING_LAB_QUEUE_SIZE": str(SERVER_QUEUE_SIZE),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(root / "gradio-tmp"),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    log_path = root / "server.log"
    command = [
        sys.executable,
        "-m",
        "app",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--no-build",
        "--lock-model",
        *extra,
    ]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=environ, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, root, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"the app exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.stop()
        raise RuntimeError(f"the app did not start in {timeout:.0f} s:\n{server.log()[-3000:]}")
    return server


_shared: dict[str, Server] = {}


def shared_server() -> Server:
    """The one served app of this test process (started on first use, stopped at exit)."""
    server = _shared.get("app")
    if server is None or not server.alive():
        root = Path(tempfile.mkdtemp(prefix="steering-lab-served-"))
        server = _shared["app"] = start_server(root)
        atexit.register(server.stop)
        atexit.register(shutil.rmtree, root, True)
    return server


def generate_args(prompt: str = "The meeting went", concept: str = "happy", strength: float = 4.0, **changes) -> dict:
    """Keyword arguments for the Playground's ``/generate`` endpoint (greedy, a few tokens)."""
    args = {
        "text": prompt,
        "use_chat": False,
        "c1": concept,
        "s1": strength,
        "c2": "",
        "s2": 0.0,
        "c3": "",
        "s3": 0.0,
        "layer_text": "",
        "position": "all",
        "max_tokens": 6,
        "temp": 0.0,
        "seed_value": 0,
    }
    args.update(changes)
    return args


def health(client) -> dict:
    info = client.predict(api_name="/health")
    return json.loads(info) if isinstance(info, str) else info
