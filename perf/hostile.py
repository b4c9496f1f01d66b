"""What a hostile client costs a running server: numbers for the hardening of the server.

Each scenario starts ``trt-async serve`` on a free loopback port (a fresh process, so the
memory numbers are its own), runs one bounded attack against it and prints what it cost:

* ``idle``: hold N TCP connections that send nothing (and N/8 that send headers and then
  half a body), then time ``GET /health`` while they are held;
* ``rerank``: one rerank with a long query and many documents on a cross-encoder
  (time, worker memory before / peak / after);
* ``tokenize``: one ``POST /tokenize`` with a multi-megabyte text (time, answer size,
  worker memory, ``/health`` latency while it runs);
* ``starve``: a 1-item request's latency (to the same model and to another model) while
  one large embedding request runs.

The models are the embedded all-MiniLM-L6-v2 (``mini``) and a tiny random 2-layer BERT
cross-encoder from :mod:`trt_async.tools.tiny_models` (``xrank``, 128 tokens), both on
ONNX Runtime. Needs the export and bench extras (httpx). Loopback only; every loop is bounded.

    python -m perf.hostile --workdir ./hostile-run idle rerank tokenize starve
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


# -- models and server ----------------------------------------------------------------------


def build_models(workdir: Path) -> dict[str, Path]:
    """The exported MiniLM folder and a tiny BERT cross-encoder (cached in ``workdir``)."""
    from trt_async.tools.embedded import embedded_model_dir
    from trt_async.tools.export import export_model
    from trt_async.tools.tiny_models import write_bert_classifier

    mini = embedded_model_dir(cache_dir=workdir / "cache", progress=False)
    rerank = workdir / "xrank" / "model"
    if not (rerank / "trt_async.json").is_file():
        hf = write_bert_classifier(workdir / "xrank" / "hf", num_labels=1)
        export_model(hf, "rerank", rerank, progress=False)
    return {"mini": mini, "xrank": rerank}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(x) for x in task.read_text().split()]
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    worker: int = 0

    def rss(self) -> float:
        return rss_mib(self.worker)


@contextlib.contextmanager
def serve(workdir: Path, models: dict[str, Path], server: dict[str, Any]) -> Iterator[Server]:
    config = {
        "embedding_models": {"mini": {"model_path": str(models["mini"])}},
        "reranking_models": {"xrank": {"model_path": str(models["xrank"])}},
        "server": server,
    }
    path = workdir / "server.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    port = free_port()
    log = workdir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRT_ASYNC_")}
    cmd = [sys.executable, "-m", "trt_async", "serve", "--config", str(path)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    srv = Server(proc, url, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        workers = children(proc.pid)
        srv.worker = workers[0] if workers else proc.pid
        yield srv
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PeakRss:
    """Samples a process's RSS every 20 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def health_ms(url: str, timeout: float = 5.0) -> float | None:
    """``GET /health`` latency on a new connection, or None when it timed out."""
    start = time.perf_counter()
    try:
        r = httpx.get(f"{url}/health", timeout=timeout)
    except httpx.HTTPError:
        return None
    return (time.perf_counter() - start) * 1000 if r.status_code == 200 else None


def fmt_ms(value: float | None) -> str:
    return "no answer" if value is None else f"{value:.1f} ms"


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)


# -- scenarios ------------------------------------------------------------------------------


def open_idle(url: str, count: int, body_part: bool) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    socks: list[socket.socket] = []
    for _ in range(count):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect((host, int(port)))
            if body_part:
                s.sendall(
                    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json"
                    b'\r\ncontent-length: 1000\r\n\r\n{"model": "mini", '
                )
        except OSError:
            s.close()
            break
        socks.append(s)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (read to EOF; an answer such as a
    408 may come first)."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            while s.recv(1 << 16):
                pass
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def scenario_idle(args: argparse.Namespace, models: dict[str, Path], report: Report) -> None:
    with serve(args.workdir, models, args.server) as srv:
        report.add(f"idle: /health with no extra connection: {fmt_ms(health_ms(srv.url))}")
        idle = open_idle(srv.url, args.idle, body_part=False)
        slow = open_idle(srv.url, args.idle // 8, body_part=True)
        time.sleep(0.5)
        report.add(
            f"idle: holding {len(idle)} silent + {len(slow)} half-body connections: "
            f"/health {fmt_ms(health_ms(srv.url))}"
        )
        time.sleep(args.idle_wait)
        report.add(
            f"idle: after {args.idle_wait:g} s the server still holds {still_open(idle)} silent "
            f"and {still_open(slow)} half-body; /health {fmt_ms(health_ms(srv.url))}"
        )
        for s in idle + slow:
            s.close()


def scenario_rerank(args: argparse.Namespace, models: dict[str, Path], report: Report) -> None:
    query = ("the capital of france is paris " * (args.query_kb * 1024 // 31 + 1))[
        : args.query_kb * 1024
    ]
    docs = [f"document {i} about bread, rivers and trains" for i in range(args.rerank_docs)]
    body = {"model": "xrank", "query": query, "documents": docs}
    server = {**args.server, "max_body_bytes": 16 * 1024 * 1024}
    with serve(args.workdir, models, server) as srv:
        before = srv.rss()
        with PeakRss(srv.worker) as peak:
            start = time.perf_counter()
            try:
                r = httpx.post(f"{srv.url}/v1/rerank", json=body, timeout=args.timeout)
                outcome = f"{r.status_code}"
            except httpx.TimeoutException:
                outcome = f"no answer in {args.timeout:g} s"
            took = time.perf_counter() - start
        time.sleep(1)
        report.add(
            f"rerank: {args.query_kb} kB query x {args.rerank_docs} documents on the "
            f"cross-encoder: {outcome} in {took:.2f} s; worker RSS {before:.0f} -> peak "
            f"{peak.peak:.0f} -> after {srv.rss():.0f} MiB"
        )


def scenario_tokenize(args: argparse.Namespace, models: dict[str, Path], report: Report) -> None:
    text = ("word " * (args.tokenize_mb * 1024 * 1024 // 5 + 1))[: args.tokenize_mb * 1024 * 1024]
    server = {**args.server, "max_body_bytes": 16 * 1024 * 1024}
    with serve(args.workdir, models, server) as srv:
        before = srv.rss()
        probes: list[float | None] = []
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                probes.append(health_ms(srv.url, timeout=10))
                time.sleep(0.1)

        prober = threading.Thread(target=probe)
        with PeakRss(srv.worker) as peak:
            prober.start()
            start = time.perf_counter()
            try:
                r = httpx.post(
                    f"{srv.url}/tokenize",
                    json={"inputs": text, "model": "mini"},
                    timeout=args.timeout,
                )
                outcome = f"{r.status_code}, {len(r.content) / 2**20:.1f} MiB answer"
            except httpx.TimeoutException:
                outcome = f"no answer in {args.timeout:g} s"
            took = time.perf_counter() - start
            done.set()
            prober.join()
        time.sleep(1)
        answered = [p for p in probes if p is not None]
        worst = f"{max(answered):.0f} ms" if answered else "none answered"
        report.add(
            f"tokenize: {args.tokenize_mb} MB text: {outcome} in {took:.2f} s; worker RSS "
            f"{before:.0f} -> peak {peak.peak:.0f} -> after {srv.rss():.0f} MiB; "
            f"/health worst {worst} over {len(probes)} probes"
        )


def scenario_starve(args: argparse.Namespace, models: dict[str, Path], report: Report) -> None:
    words = " ".join(f"word{j % 97}" for j in range(args.big_words))
    big = {"model": "mini", "input": [f"{i} {words}" for i in range(args.big_items)]}
    server = {**args.server, "max_body_bytes": 64 * 1024 * 1024}
    with serve(args.workdir, models, server) as srv:
        before = srv.rss()
        result: dict[str, Any] = {}

        def send_big() -> None:
            start = time.perf_counter()
            try:
                r = httpx.post(f"{srv.url}/v1/embeddings", json=big, timeout=args.timeout)
                result["big"] = f"{r.status_code}"
            except httpx.TimeoutException:
                result["big"] = "no answer"
            result["big_s"] = time.perf_counter() - start

        with PeakRss(srv.worker) as peak:
            thread = threading.Thread(target=send_big)
            thread.start()
            time.sleep(args.small_after)
            small: list[str] = []
            for name, path, body in (
                ("same model", "/v1/embeddings", {"model": "mini", "input": "hello"}),
                (
                    "other model",
                    "/v1/rerank",
                    {"model": "xrank", "query": "hello", "documents": ["world"]},
                ),
            ):
                start = time.perf_counter()
                try:
                    r = httpx.post(f"{srv.url}{path}", json=body, timeout=args.timeout)
                    status = str(r.status_code)
                except httpx.TimeoutException:
                    status = "no answer"
                small.append(f"{name} {status} in {time.perf_counter() - start:.2f} s")
            thread.join()
        time.sleep(1)
        report.add(
            f"starve: {args.big_items} items x ~{args.big_words} words to mini ran "
            f"{result['big_s']:.1f} s ({result['big']}); 1-item requests sent "
            f"{args.small_after:g} s in: {'; '.join(small)}; worker RSS {before:.0f} -> peak "
            f"{peak.peak:.0f} -> after {srv.rss():.0f} MiB"
        )


SCENARIOS = {
    "idle": scenario_idle,
    "rerank": scenario_rerank,
    "tokenize": scenario_tokenize,
    "starve": scenario_starve,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("hostile-run"))
    parser.add_argument("--idle", type=int, default=1100, help="silent connections to hold")
    parser.add_argument("--idle-wait", type=float, default=35, help="seconds to hold them")
    parser.add_argument("--query-kb", type=int, default=100)
    parser.add_argument("--rerank-docs", type=int, default=300)
    parser.add_argument("--tokenize-mb", type=int, default=2)
    parser.add_argument("--big-items", type=int, default=2048)
    parser.add_argument("--big-words", type=int, default=200)
    parser.add_argument("--small-after", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=120, help="per-request limit, s")
    parser.add_argument("--server", type=json.loads, default={}, help="extra server: keys, as JSON")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    models = build_models(args.workdir)
    report = Report()
    for name in args.scenarios or list(SCENARIOS):
        SCENARIOS[name](args, models, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
