"""``trt-async serve``: granian with the ASGI interface, one worker, uvloop.

One worker process holds every model (and, on a GPU, the one CUDA context and its
graphs); throughput comes from batching inside it, not from more processes. The config
path and overrides reach the factory (:func:`trt_async.app.create_app`) through the
environment, which the worker inherits.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import msgspec
import yaml

from trt_async.backends.modelfiles import (
    ImageTextFiles,
    ModelDirError,
    Task,
    resolve_model_folder,
)
from trt_async.core.config import (
    CONFIG_ENV,
    LOG_LEVEL_ENV,
    Config,
    ConfigError,
    ModelConfig,
    ModelKind,
    ServerConfig,
    dump_config,
    is_hub_ref,
    load_config,
    model_name_problem,
)
from trt_async.core.hub import Exporter, HubError, fetch, parse_ref
from trt_async.http.embedding_proxy import EMBEDDING_SIZE_ENV, MODEL_NAME_ENV, SERVER_PORT_ENV

API_KEY_ENV = "TRT_ASYNC_API_KEY"
FACTORY = "trt_async.app:create_app"
#: ``org/name``: how a Hugging Face repo id looks (a local path rarely does, and exists).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class StartupError(Exception):
    """Why the server cannot start, in one line that says what to do."""


class HubModelArg(msgspec.Struct, kw_only=True):
    """One ``--model`` of the command line with the ``--task`` and ``--name`` after it."""

    model: str
    task: Task | None = None
    name: str | None = None


def check_model_files(config: Config, source: Path | None) -> None:
    """Find every model's files before any port is bound; the first problem stops start-up.

    ``model_path`` values as written in the file are read again so that a Hugging Face repo
    id (which the loader resolved against the file's folder) can be recognised.
    """
    written = _written_model_paths(source) if source is not None else {}
    for name, kind, model in config.models():
        where = f"{source or '--model'}: model {name!r} ({kind.section})"
        try:
            resolve_model_folder(Path(model.model_path), model.tokenizer_path)
        except ModelDirError as exc:
            raw = written.get((kind.section, name), "")
            if _HUB_ID.match(raw) and not Path(model.model_path).exists():
                raise StartupError(
                    f"{where}: model_path {raw!r} looks like a Hugging Face repo id, which is "
                    f"written model_path: hf://{raw} to download it (with the hub extra), or "
                    f"serve it with trt-async serve --model {raw} --task {kind.task}"
                ) from None
            raise StartupError(f"{where}: {exc}") from None


def fetch_hub_models(
    config: Config,
    source: Path | None,
    models: Sequence[HubModelArg],
    exporter: Exporter | None,
) -> bool:
    """Download (and export) every hub model of the config and of ``--model``, and point
    ``model_path`` at the folders served; True if there was any. Progress goes to stderr."""

    def say(line: str) -> None:
        print(f"trt-async serve: {line}", file=sys.stderr, flush=True)

    found = False
    for name, kind, model in config.models():
        if is_hub_ref(model.model_path):
            where = f"{source}: model {name!r} ({kind.section})"
            try:
                ref = parse_ref(model.model_path)
                hub_model = fetch(ref, kind.task, pooling=model.pooling, exporter=exporter, say=say)
            except HubError as exc:
                raise StartupError(f"{where}: {exc}") from None
            model.model_path = str(hub_model.folder)
            found = True
    for arg in models:
        try:
            ref = parse_ref(arg.model)
            hub_model = fetch(ref, arg.task, exporter=exporter, say=say)
        except HubError as exc:
            raise StartupError(str(exc)) from None
        name = arg.name or ref.name
        problem = model_name_problem(name)
        if problem is not None:
            raise StartupError(f"--model {arg.model}: {problem}; choose one with --name")
        taken = {served for served, _, _ in config.models()}
        if name in taken:
            raise StartupError(
                f"--model {arg.model}: another model is already named {name!r}; choose a "
                "name with --name after it"
            )
        kind = ModelKind.for_task(hub_model.task)
        getattr(config, kind.section)[name] = ModelConfig(model_path=str(hub_model.folder))
        found = True
    return found


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


def env_port(environ: Mapping[str, str]) -> int | None:
    """The port ``SERVER_PORT`` names (the Triton proxy's setting), or None when unset."""
    raw = environ.get(SERVER_PORT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StartupError(f"{SERVER_PORT_ENV}={raw!r} is not a port number (1 to 65535)")
    return int(raw)


def embedding_size(model_path: str, tokenizer_path: str | None = None) -> int | None:
    """The size of the vectors a model folder gives, as its files declare it (read without
    loading the graph): an image-text export's, else its export's hidden size, else its
    config.json's (graphs end at the transformer or its pooling: a sentence-transformers
    Dense layer is not exported)."""
    files = resolve_model_folder(Path(model_path), tokenizer_path)
    if isinstance(files, ImageTextFiles):
        return files.manifest.embedding_size
    manifest = files.manifest
    if manifest is not None and manifest.hidden_size:
        return manifest.hidden_size
    for key in ("hidden_size", "d_model"):
        value = files.hf_config.get(key)
        if isinstance(value, int):
            return value
    return None


@dataclass(frozen=True)
class DefaultModel:
    """The model served without a config (the embedded default), as the start-up checks
    need it: its name, and its vector size read from its files."""

    name: str
    embedding_size: Callable[[], int | None]


def check_proxy_settings(
    config: Config | None, environ: Mapping[str, str], default: DefaultModel | None = None
) -> None:
    """The Triton proxy's ``MODEL_NAME`` must name a served model and its
    ``EMBEDDING_SIZE`` (when set) that model's vector size (the first embedding model's
    without ``MODEL_NAME``): the server does not start otherwise. Without a config the
    model is ``default``."""
    wanted = environ.get(MODEL_NAME_ENV, "").strip() or None
    raw_size = environ.get(EMBEDDING_SIZE_ENV, "").strip()
    if wanted is None and not raw_size:
        return
    models = config.models() if config is not None else []
    names = [n for n, _, _ in models] if config is not None else []
    if config is None and default is not None:
        names = [default.name]
    if wanted is not None and wanted not in names:
        raise StartupError(
            f"{MODEL_NAME_ENV}={wanted!r} names no served model (served: "
            f"{', '.join(names) or 'none'}); set it to one of them or unset it"
        )
    if not raw_size:
        return
    if not raw_size.isdigit():
        raise StartupError(f"{EMBEDDING_SIZE_ENV}={raw_size!r} is not a whole number")
    embedders = [n for n, kind, _ in models if kind is ModelKind.EMBEDDING]
    name = wanted or (embedders[0] if embedders else (names[0] if names else ""))
    found = next((m for n, _, m in models if n == name), None)
    if found is not None:
        size = embedding_size(found.model_path, found.tokenizer_path)
    elif config is None and default is not None:
        size = default.embedding_size()
    else:
        raise StartupError(
            f"{EMBEDDING_SIZE_ENV}={raw_size} is set but no embedding model is served"
        )
    if size is None:
        raise StartupError(
            f"{EMBEDDING_SIZE_ENV}={raw_size}: model {name!r} does not declare its embedding "
            "size (no hidden_size in its export or config.json); unset EMBEDDING_SIZE"
        )
    if size != int(raw_size):
        raise StartupError(
            f"{EMBEDDING_SIZE_ENV}={raw_size}, but model {name!r} gives {size}-dimensional "
            f"vectors; set {EMBEDDING_SIZE_ENV}={size} or serve another model"
        )


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


class _AddModel(argparse.Action):
    """``--model``: one more hub model; the ``--task`` and ``--name`` after it are its."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, *_: Any
    ) -> None:
        models: list[HubModelArg] = list(getattr(namespace, self.dest, None) or [])
        models.append(HubModelArg(model=str(value)))
        setattr(namespace, self.dest, models)


class _ModelOption(argparse.Action):
    """``--task`` or ``--name``: set on the ``--model`` before it."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, *_: Any
    ) -> None:
        models: list[HubModelArg] = getattr(namespace, "hub_models", None) or []
        if not models:
            parser.error(f"{self.option_strings[0]} applies to the --model before it")
        setattr(models[-1], self.dest, value)


def add_serve_parser(
    subparsers: Any, exporter: Exporter | None = None, default: DefaultModel | None = None
) -> argparse.ArgumentParser:
    """Register ``trt-async serve``; ``exporter`` exports hub repositories without ONNX;
    ``default`` is the model served without a config."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve the configured models over HTTP",
        description=(
            "Serve the models of a config file (default: $TRT_ASYNC_CONFIG, else the "
            "embedded all-MiniLM-L6-v2) and of --model with granian: one worker, uvloop."
        ),
    )
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument(
        "--model",
        dest="hub_models",
        action=_AddModel,
        metavar="ORG/NAME[@REVISION]",
        help=(
            "serve a Hugging Face hub model (repeatable; the hub extra): its ONNX graph "
            "(onnx/model.onnx, or ORG/NAME@REVISION/onnx/FILE.onnx) and tokenizer are "
            "downloaded into the Hugging Face cache; a repository without one is exported "
            "with torch once"
        ),
    )
    parser.add_argument(
        "--task",
        action=_ModelOption,
        choices=get_args(Task),
        help=(
            "how the --model before it is served (default: from its config.json: a sequence "
            "classifier with one label reranks, with more labels is an NLI model, else embed)"
        ),
    )
    parser.add_argument(
        "--name",
        action=_ModelOption,
        help="the name clients use for the --model before it (default: NAME)",
    )
    parser.add_argument("--host", help="address to bind (default: server.host, 0.0.0.0)")
    parser.add_argument(
        "--port",
        type=int,
        help=f"port to bind (default: ${SERVER_PORT_ENV}, else server.port, 8887)",
    )
    parser.add_argument(
        "--api-key",
        help=(
            f"require 'Authorization: Bearer <key>' (also ${API_KEY_ENV}; default: server.api_key)"
        ),
    )
    parser.set_defaults(func=functools.partial(run_serve, exporter=exporter, default=default))
    return parser


def run_serve(
    args: argparse.Namespace,
    exporter: Exporter | None = None,
    default: DefaultModel | None = None,
) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    config_path: Path | None = args.config
    if config_path is None and os.environ.get(CONFIG_ENV):
        config_path = Path(os.environ[CONFIG_ENV])
    hub_models: list[HubModelArg] = getattr(args, "hub_models", None) or []
    server = ServerConfig()
    worker_config: Path | None = None
    # Checked here so that a bad file, a missing model or a busy port fails with one line
    # before any worker starts or any port is bound.
    try:
        config = load_config(config_path) if config_path is not None else None
        if config is None and hub_models:
            config = Config()
        if config is not None:
            server = config.server
        host = args.host or server.host
        from_env = env_port(os.environ)
        port = args.port if args.port is not None else from_env or server.port
        if config is not None:
            if hub_models or any(is_hub_ref(m.model_path) for _, _, m in config.models()):
                check_port_free(host, port)  # before a download that may take minutes
            if fetch_hub_models(config, config_path, hub_models, exporter):
                # The worker reads the folders served, not the hub references.
                worker_config = _write_worker_config(config)
            check_model_files(config, config_path)
        check_proxy_settings(config, os.environ, default)
        if config is not None:
            if worker_config is not None:
                os.environ[CONFIG_ENV] = str(worker_config)
            elif config_path is not None:
                os.environ[CONFIG_ENV] = str(config_path.resolve())
        check_port_free(host, port)
    except (ConfigError, StartupError) as exc:
        print(f"trt-async serve: {exc}", file=sys.stderr)
        _remove(worker_config)
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
    try:
        granian.serve()
    finally:
        _remove(worker_config)
    return 0


def _write_worker_config(config: Config) -> Path:
    """The config with every model's folder, for the worker process; private to this user."""
    fd, name = tempfile.mkstemp(prefix="trt-async-serve-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(dump_config(config))
    return Path(name)


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
