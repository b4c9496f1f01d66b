"""Starting our server for a benchmark, and reading any server's model statistics.

``--serve`` runs ``trt-async serve`` (granian) as a subprocess on a free loopback port with
a config written into the run's folder, waits for ``GET /ready``, and stops it afterwards.
The config adds variants of the embedding model under extra names with other bucket grids
(serial batch 1, pad to max length); the registry gives each its own runtime because the
grid differs, so A/B comparisons run against one process and one model folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import msgspec
import yaml

from trt_async.backends.modelfiles import ModelFiles
from trt_async.core.config import Config, ModelConfig
from trt_async.core.runtime import model_max_length

if TYPE_CHECKING:
    from trt_async.bench.loadgen import LoadClient

#: Routes that may list models with their statistics, tried in order.
STATS_ROUTES = ("/models/status", "/v1/models/status", "/status", "/models", "/v1/models")

SERIAL_SUFFIX = "-serial"
PADMAX_SUFFIX = "-padmax"


@dataclass(frozen=True)
class Variants:
    """Names served for the comparisons (None where the variant was not added)."""

    base: str
    serial: str | None
    padmax: str | None
    max_length: int


def base_config(config_path: Path | None) -> Config:
    """The config to serve: a file, or the embedded default (exported once into a cache)."""
    if config_path is not None:
        from trt_async.core.config import load_config

        return load_config(config_path)
    from trt_async.tools.embedded import embedded_config, embedded_model_dir

    return embedded_config(embedded_model_dir(progress=True))


def resolved_max_length(model: ModelConfig) -> int:
    return model_max_length(model, ModelFiles.resolve(model.model_path, model.tokenizer_path))


def add_variants(config: Config, base: str, *, serial: bool, padmax: bool) -> Variants:
    """Serve embedding model ``base`` again as ``base-serial`` and ``base-padmax``."""
    model = config.embedding_models.get(base)
    if model is None:
        raise ValueError(
            f"embedding model {base!r} is not in the config "
            f"(it has {', '.join(config.embedding_models) or 'none'})"
        )
    max_length = resolved_max_length(model)
    names: dict[str, str | None] = {"serial": None, "padmax": None}
    if serial:
        names["serial"] = base + SERIAL_SUFFIX
        config.embedding_models[base + SERIAL_SUFFIX] = msgspec.structs.replace(
            model, batch_sizes=[1], model_name=base + SERIAL_SUFFIX
        )
    if padmax:
        names["padmax"] = base + PADMAX_SUFFIX
        config.embedding_models[base + PADMAX_SUFFIX] = msgspec.structs.replace(
            model, lengths=[max_length], max_length=max_length, model_name=base + PADMAX_SUFFIX
        )
    return Variants(base, names["serial"], names["padmax"], max_length)


def write_config(config: Config, path: Path, host: str, port: int) -> Path:
    raw = msgspec.to_builtins(config)
    raw["server"]["host"] = host
    raw["server"]["port"] = port
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``trt-async serve`` in a subprocess; a context manager that always stops it."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "trt_async",
            "--log-level",
            "WARNING",
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with {self._proc.returncode} during start-up:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/ready").status_code == 200:
                        return
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"the server was not ready after {self.start_timeout_s:g} s:\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- statistics ------------------------------------------------------------------------------


def extract_model_stats(payload: Any) -> dict[str, dict[str, Any]]:
    """``{model name: stats}`` from any JSON that embeds ``describe()``-like objects."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            stats = node.get("stats")
            name = node.get("name") or node.get("id")
            if isinstance(stats, Mapping) and isinstance(name, str) and "real_tokens" in stats:
                found[name] = dict(stats)
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(payload)
    return found


class StatsReader:
    """Finds which listing route carries model statistics, then reads snapshots from it."""

    def __init__(self, client: LoadClient) -> None:
        self.client = client
        self.route: str | None = None
        self.reason = ""
        self._probed = False

    async def snapshot(self) -> dict[str, dict[str, Any]] | None:
        if self._probed and self.route is None:
            return None
        routes = (self.route,) if self.route else STATS_ROUTES
        for route in routes:
            try:
                status, body = await self.client.get(route)
            except (aiohttp.ClientError, TimeoutError):
                continue
            if status != 200:
                continue
            try:
                stats = extract_model_stats(msgspec.json.decode(body))
            except msgspec.DecodeError:
                continue
            if stats:
                self.route = route
                self._probed = True
                return stats
        if not self._probed:
            self.reason = (
                f"none of {', '.join(STATS_ROUTES)} returned model stats (real_tokens, "
                "padded_tokens); padding efficiency and batch sizes are not reported"
            )
        self._probed = True
        return None
