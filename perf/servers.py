"""The servers the perf harnesses compare, started the same way for every harness.

:func:`ours` serves a config with ``trt-async serve`` from this checkout or another one (the
``before`` of a before/after table), :func:`minimal` the bare HTTP stack
(:mod:`perf.minimal_app`), :func:`infinity` infinity-emb 0.0.78 with its optimum (ONNX
Runtime) engine on the very ``model.onnx`` our export wrote. Each runs in a process group of
its own; :func:`running` starts them, waits for each to answer one embeddings request, and
stops them all at the end. :func:`tree_cpu_s` reads a server's CPU (every process and
thread) from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")
#: What infinity-emb's optimum engine reads from a model folder.
INFINITY_FILES = (
    "model.onnx",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    cwd: Path = REPO
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, logs: Path) -> None:
        self.log = logs / f"{self.name}.log"
        env = {**os.environ, **self.env}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, body: bytes, timeout_s: float = 600.0) -> None:
        """Until one embeddings request is answered 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            request = urllib.request.Request(
                self.url + "/v1/embeddings",
                data=body,
                headers={"content-type": "application/json"},
            )
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not ready within {timeout_s:g} s; see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def process_tree(root: int) -> list[int]:
    """``root`` and every process descending from it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system, every thread) of ``root``'s process tree so far."""
    total = 0.0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def ours(name: str, config: Path, checkout: Path | None = None) -> Server:
    """``trt-async serve --config`` from ``checkout`` (default: this one)."""
    root = (checkout or REPO).resolve()
    port = free_port()
    command = [sys.executable, "-m", "trt_async", "serve", "--config", str(config)]
    return Server(
        name, [*command, "--port", str(port)], port, cwd=root, env={"PYTHONPATH": str(root)}
    )


def minimal(name: str = "minimal", dim: int = 32) -> Server:
    """The bare HTTP stack: one Litestar route on granian answering a fixed vector."""
    port = free_port()
    command = [sys.executable, "-m", "perf.minimal_app", "--port", str(port), "--dim", str(dim)]
    return Server(name, command, port, env={"PYTHONPATH": str(REPO)})


def infinity_folder(model: Path, work: Path) -> Path:
    """The folder infinity-emb's optimum engine reads: our export's model.onnx, config and
    tokenizer files, linked. It is served from inside this folder (``--model-id .``):
    infinity 0.0.78 hands a local folder's ONNX path to optimum as its file name, which
    optimum finds only when it is just ``model.onnx``."""
    folder = work / f"infinity-{model.name}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in INFINITY_FILES:
        link = folder / name
        if not link.exists():
            link.symlink_to(model / name)
    return folder


def infinity(
    executable: Path, model: Path, work: Path, served_name: str, name: str = "infinity"
) -> Server:
    """infinity-emb (``v2``, optimum engine, mean pooling, CPU) on ``model``'s ONNX under
    ``served_name``, with the OpenAI routes under ``/v1`` as ours."""
    port = free_port()
    command = [
        str(executable),
        "v2",
        "--model-id",
        ".",
        "--served-model-name",
        served_name,
        "--engine",
        "optimum",
        "--pooling-method",
        "mean",
        "--device",
        "cpu",
        "--url-prefix",
        "/v1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return Server(
        name,
        command,
        port,
        cwd=infinity_folder(model, work),
        env={"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"},
    )


def shown_command(program: str, argv: Sequence[str]) -> str:
    """The command line as a reader would type it: paths in the current folder relative to
    it, paths in the home folder written from ``~``."""
    here, home = f"{Path.cwd()}/", f"{Path.home()}/"
    return " ".join([program, *(a.replace(here, "").replace(home, "~/") for a in argv)])


@contextlib.contextmanager
def running(servers: Sequence[Server], logs: Path, probe: bytes) -> Iterator[Sequence[Server]]:
    """Start ``servers``, wait until each answers ``probe`` on ``/v1/embeddings``, stop
    them all on the way out."""
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for server in servers:
            server.start(logs)
        for server in servers:
            server.wait_ready(probe)
            print(f"{server.name}: ready at {server.url}", flush=True)
        yield servers
    finally:
        for server in servers:
            server.stop()
