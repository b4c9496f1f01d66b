"""``trt-async serve``: granian with the ASGI interface, one worker, uvloop.

One worker process holds every model (and, on a GPU, the one CUDA context and its
graphs); throughput comes from batching inside it, not from more processes. The config
path and overrides reach the factory (:func:`trt_async.app.create_app`) through the
environment, which the worker inherits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from trt_async.core.config import CONFIG_ENV, ConfigError, load_config

API_KEY_ENV = "TRT_ASYNC_API_KEY"
FACTORY = "trt_async.app:create_app"


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve the configured models over HTTP",
        description=(
            "Serve the models of a config file (default: $TRT_ASYNC_CONFIG, else the "
            "embedded all-MiniLM-L6-v2) with granian: one worker, uvloop."
        ),
    )
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--host", help="address to bind (default: server.host, 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to bind (default: server.port, 8887)")
    parser.add_argument(
        "--api-key",
        help=(
            f"require 'Authorization: Bearer <key>' (also ${API_KEY_ENV}; default: server.api_key)"
        ),
    )
    parser.set_defaults(func=run_serve)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    config_path: Path | None = args.config
    if config_path is None and os.environ.get(CONFIG_ENV):
        config_path = Path(os.environ[CONFIG_ENV])
    host, port = "0.0.0.0", 8887
    if config_path is not None:
        # Checked here so a bad file fails with its message before any worker starts.
        try:
            server = load_config(config_path).server
        except ConfigError as exc:
            print(f"trt-async serve: {exc}", file=sys.stderr)
            return 2
        host, port = server.host, server.port
        os.environ[CONFIG_ENV] = str(config_path.resolve())
    if args.api_key:
        os.environ[API_KEY_ENV] = args.api_key
    granian = Granian(
        FACTORY,
        factory=True,
        address=args.host or host,
        port=args.port if args.port is not None else port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        # The top-level --log-level, when the CLI has one, also sets granian's.
        log_level=LogLevels(str(getattr(args, "log_level", "info")).lower()),
    )
    granian.serve()
    return 0
