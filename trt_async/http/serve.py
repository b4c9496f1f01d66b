"""``trt-async serve``: granian with the ASGI interface, one worker, uvloop.

One worker process holds every model (and, on a GPU, the one CUDA context and its
graphs); throughput comes from batching inside it, not from more processes. The config
path and overrides reach the factory (:func:`trt_async.app.create_app`) through the
environment, which the worker inherits.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from trt_async.backends.modelfiles import ModelDirError, ModelFiles
from trt_async.core.config import (
    CONFIG_ENV,
    LOG_LEVEL_ENV,
    Config,
    ConfigError,
    ModelKind,
    ServerConfig,
    load_config,
)

API_KEY_ENV = "TRT_ASYNC_API_KEY"
FACTORY = "trt_async.app:create_app"
#: ``org/name``: how a Hugging Face repo id looks (a local path rarely does, and exists).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TASKS = {ModelKind.EMBEDDING: "embed", ModelKind.RERANKER: "rerank", ModelKind.NLI: "nli"}


class StartupError(Exception):
    """Why the server cannot start, in one line that says what to do."""


def check_model_files(config: Config, source: Path) -> None:
    """Find every model's files before any port is bound; the first problem stops start-up.

    ``model_path`` values as written in the file are read again so that a Hugging Face repo
    id (which the loader resolved against the file's folder) can be recognised.
    """
    written = _written_model_paths(source)
    for name, kind, model in config.models():
        where = f"{source}: model {name!r} ({kind.section})"
        try:
            ModelFiles.resolve(Path(model.model_path), model.tokenizer_path)
        except ModelDirError as exc:
            raw = written.get((kind.section, name), "")
            if _HUB_ID.match(raw) and not Path(model.model_path).exists():
                local = raw.rsplit("/", 1)[1]
                raise StartupError(
                    f"{where}: model_path {raw!r} looks like a Hugging Face repo id; models "
                    f"are not downloaded. Export it first: hf download {raw} --local-dir "
                    f"./hf/{local} && trt-async export ./hf/{local} --task {_TASKS[kind]} "
                    f"-o ./models/{local}, then set model_path: ./models/{local}"
                ) from None
            raise StartupError(f"{where}: {exc}") from None


def _written_model_paths(source: Path) -> dict[tuple[str, str], str]:
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):  # already read and parsed once by load_config
        return {}
    out: dict[tuple[str, str], str] = {}
    for kind in ModelKind:
        section = raw.get(kind.section) if isinstance(raw, dict) else None
        for name, spec in (section or {}).items():
            if isinstance(spec, dict) and isinstance(spec.get("model_path"), str):
                out[(kind.section, str(name))] = spec["model_path"]
    return out


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on.

    granian binds with ``SO_REUSEPORT``, so a second server on a busy port would start and
    take a share of the first one's connections. A plain bind (``SO_REUSEADDR`` only, which
    ignores connections in TIME_WAIT) fails while any socket listens there.
    """
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot bind {host}:{port}: {exc.strerror} (check --host)") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is already in use (another trt-async serve?); "
                    "stop that process or choose another port with --port"
                ) from None
            raise StartupError(f"cannot bind {host}:{port}: {exc.strerror}") from None


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
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    config_path: Path | None = args.config
    if config_path is None and os.environ.get(CONFIG_ENV):
        config_path = Path(os.environ[CONFIG_ENV])
    server = ServerConfig()
    # Checked here so that a bad file, a missing model or a busy port fails with one line
    # before any worker starts or any port is bound.
    try:
        if config_path is not None:
            config = load_config(config_path)
            check_model_files(config, config_path)
            server = config.server
            os.environ[CONFIG_ENV] = str(config_path.resolve())
        host = args.host or server.host
        port = args.port if args.port is not None else server.port
        check_port_free(host, port)
    except (ConfigError, StartupError) as exc:
        print(f"trt-async serve: {exc}", file=sys.stderr)
        return 2
    if args.api_key:
        os.environ[API_KEY_ENV] = args.api_key
    # The worker builds the app (and its loggers) in a process of its own.
    os.environ[LOG_LEVEL_ENV] = str(getattr(args, "log_level", "INFO"))
    granian = Granian(
        FACTORY,
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        # HTTP/1 only: in "auto" mode granian waits for the first bytes to pick a protocol
        # with no timeout, so a connection that sends nothing would be held forever.
        http=HTTPModes.http1,
        backpressure=server.max_connections,
        backlog=server.backlog,
        # Also closes keep-alive connections idle for this long.
        http1_settings=HTTP1Settings(header_read_timeout=round(server.header_timeout_s * 1000)),
        # The top-level --log-level, when the CLI has one, also sets granian's.
        log_level=LogLevels(str(getattr(args, "log_level", "info")).lower()),
    )
    granian.serve()
    return 0
