"""``python -m app serve``: load a model, start the library build in the background, serve the app."""

from __future__ import annotations

import argparse
import logging
import os
import time

from app.commands.common import add_model_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STEERING_LAB_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    parser.add_argument(
        "--auth",
        default=os.environ.get("STEERING_LAB_AUTH"),
        metavar="USER:PASS",
        help="require a login (or set STEERING_LAB_AUTH)",
    )
    parser.add_argument("--no-build", action="store_true", help="do not build the concept library at start")


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    from app.lab import Lab
    from app.loading import load_model
    from app.registry import availabilities
    from app.ui.app import CSS, build_app
    from app.ui.state import LabHolder

    def loader(model_id: str | None) -> Lab:
        return Lab(load_model(model_id, device=args.device))

    holder = LabHolder(lab=loader(args.model), loader=loader)
    loaded = holder.lab.library.load_cached()
    log.info("concept library: %d concepts loaded from cache", loaded)
    if not args.no_build:
        holder.lab.library.start_background_build()
    usable = [mid for mid, a in availabilities().items() if a.status in ("cached", "embedded-set-up")]
    demo = build_app(holder, switchable_models=usable)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise ValueError("--auth must look like USER:PASSWORD")
        auth = (user, password)
    log.info("starting at http://%s:%d (%.1f s after launch)", args.host, args.port, time.monotonic() - started)
    demo.queue(default_concurrency_limit=16, max_size=64).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        css=CSS,
        show_error=False,
        max_file_size="2mb",
    )
    return 0
