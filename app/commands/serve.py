"""``python -m app serve``: load a model, serve the app and its REST API (app/api), then build the
concept library in the background.

Safe by default (docs/security.md): binds 127.0.0.1, no share link, a login with ``--auth``,
limits on every request (app/limits.py), uploads capped, and Gradio serves only the files it
made itself, with the code, the virtual environment, models and profiles blocked outright.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from app import limits as limits_module
from app.commands.common import add_model_arguments
from app.storage import REPO_ROOT, cache_dir

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STEERING_LAB_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    parser.add_argument(
        "--auth",
        default=os.environ.get("STEERING_LAB_AUTH"),
        metavar="USER:PASS",
        help="require a login (or set STEERING_LAB_AUTH); use it for a class server",
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="no background work at start: neither the concept library build nor the concept map's warm-up",
    )
    parser.add_argument(
        "--lock-model",
        action="store_true",
        default=os.environ.get("STEERING_LAB_LOCK_MODEL") == "1",
        help="hide the model switcher, so users cannot load another model for everyone (STEERING_LAB_LOCK_MODEL=1)",
    )
    limits_module.add_arguments(parser)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` -> ``(user, pass)``; the password may contain ``:``."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth must look like USER:PASSWORD (or set STEERING_LAB_AUTH=USER:PASSWORD)")
    return user, password


def gradio_temp_dir() -> Path:
    """Where Gradio keeps uploads and the files it serves (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def blocked_paths() -> list[str]:
    """Folders Gradio must never serve: the code, the virtual environment, models and profiles.

    Gradio already serves only files it created or was told to allow (and refuses a path it
    did not make, e.g. ``/gradio_api/file=/etc/passwd``); this blocks ours explicitly in case a
    tab ever returns a path inside them. Other folders of the cache (vectors, results) stay
    usable for downloads. A folder holding Gradio's own temp dir is left out.
    """
    temp = gradio_temp_dir()
    folders = []
    for folder in (
        REPO_ROOT / ".git",
        REPO_ROOT / ".venv",
        REPO_ROOT / "app",
        cache_dir() / "models",
        cache_dir() / "profiles",
    ):
        folder = Path(folder).resolve()
        if temp != folder and folder not in temp.parents:
            folders.append(str(folder))
    return list(dict.fromkeys(folders))


def launch_options(args: argparse.Namespace, limits: limits_module.Limits) -> dict[str, Any]:
    """The keyword arguments for ``Blocks.launch`` (separate so tests can check them)."""
    auth = parse_auth(args.auth)
    if args.host not in LOCAL_HOSTS and auth is None:
        log.warning("serving on %s without --auth: anyone who can reach this machine can use the app", args.host)
    if args.share and auth is None:
        log.warning("--share without --auth: anyone with the link can use the app and its model")
    return {
        "server_name": args.host,
        "server_port": args.port,
        "share": bool(args.share),
        "auth": auth,
        "show_error": False,  # a gr.Error still shows its message; other exceptions show no traceback
        "max_file_size": limits.max_upload_bytes,
        "allowed_paths": [],
        "blocked_paths": blocked_paths(),
    }


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    limits = limits_module.configure(limits_module.from_args(args))
    options = launch_options(args, limits)  # a bad --auth fails before the model loads
    from app.api.server import app_kwargs
    from app.lab import Lab
    from app.models.loading import load_model
    from app.models.registry import availabilities
    from app.serving import LabHolder
    from app.ui.app import CSS, build_app, start_library

    def loader(model_id: str | None) -> Lab:
        return Lab(load_model(model_id, device=args.device))

    holder = LabHolder(lab=loader(args.model), loader=loader)
    loaded = holder.lab.library.load_cached()
    log.info("concept library: %d concepts loaded from cache", loaded)
    usable = (
        []
        if args.lock_model
        else [mid for mid, a in availabilities().items() if a.status in ("cached", "embedded-set-up")]
    )
    demo = build_app(holder, switchable_models=usable)
    log.info("limits: %s", limits)
    log.info("starting at http://%s:%d (%.1f s after launch)", args.host, args.port, time.monotonic() - started)
    demo.queue(default_concurrency_limit=16, max_size=limits.queue_size)
    # The REST API (app/api, /docs) shares the port, the lab and the login with the UI.
    demo.launch(css=CSS, prevent_thread_lock=True, app_kwargs=app_kwargs(holder, options["auth"]), **options)
    if not args.no_build:
        # Only now: the build shares the CPU with whatever it runs beside, and the page comes first.
        start_library(holder.lab)  # the Playground's opening concept first
        from app.analysis.umap_cache import start_warming

        start_warming()  # the concept map's UMAP compiles in a low-priority child, not at the first map
    demo.block_thread()
    return 0
