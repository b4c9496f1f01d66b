"""Garbage-collection pauses on the event loop: as the server sets the collector up
(:func:`trt_async.core.registry.settle_heap`: the loaded models frozen out of every
collection, a higher threshold for the youngest generation) and with Python's defaults.

The app runs in this process and requests go straight to its ASGI entry point (no sockets,
so the collector's work is all that differs): ``concurrency`` tasks send single-text
``POST /v1/embeddings`` requests. Rounds alternate the arms; each arm's collections are
timed with ``gc.callbacks``, per generation.

    python -m perf.gc_pauses [--config FILE] [--concurrency 64] [--requests 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar

from trt_async.app import create_app
from trt_async.bench.corpus import Corpus
from trt_async.core.config import LOG_LEVEL_ENV, ModelKind, load_config
from trt_async.core.registry import settle_heap

#: The interpreter's own thresholds, read before any app changes them.
DEFAULT_THRESHOLD = gc.get_threshold()


async def _lifespan(app: Litestar) -> tuple[asyncio.Task[None], asyncio.Queue[dict[str, str]]]:
    """Start the app's lifespan (models load); put ``lifespan.shutdown`` to end it."""
    incoming: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    started: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await incoming.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, incoming.get, started.put))  # type: ignore[arg-type]
    message = await started.get()
    if message["type"] != "lifespan.startup.complete":
        raise SystemExit(f"the app did not start: {message}")
    return task, incoming


async def _post(app: Litestar, path: str, body: bytes) -> int:
    """One request through the ASGI interface; its status."""
    sent = False
    answered = asyncio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()  # the disconnect watcher waits here, as on a live connection
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body"):
            answered.set()

    headers = [(b"host", b"gc"), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    return status


@contextmanager
def _timed_collections() -> Iterator[dict[int, list[float]]]:
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    began = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - began[0])

    gc.callbacks.append(callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(callback)


async def _arm(app: Litestar, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: set[int] = set()

    async def client(k: int) -> None:
        for i in range(k, len(bodies), concurrency):
            start = time.perf_counter()
            statuses.add(await _post(app, "/v1/embeddings", bodies[i]))
            latencies.append(time.perf_counter() - start)

    with _timed_collections() as pauses:
        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        wall = time.perf_counter() - start
    if statuses != {200}:
        raise SystemExit(f"requests answered {sorted(statuses)}, not only 200")
    latencies.sort()
    per_k = 1000 / len(latencies)
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "latency_max_ms": round(latencies[-1] * 1000, 1),
        "full_collections": len(pauses[2]),
        "full_collection_max_ms": round(max(pauses[2], default=0.0) * 1000, 1),
        "pause_ms_per_1000_requests": {
            f"gen{g}": round(sum(p) * 1000 * per_k, 1) for g, p in pauses.items()
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config) if args.config else None
    app = create_app(config)
    task, lifespan = await _lifespan(app)
    registry = app.state["registry"]
    name = args.model or next(m.name for m in registry if m.kind is ModelKind.EMBEDDING)
    texts = Corpus().languages["en"].sentences
    bodies = [
        json.dumps({"model": name, "input": texts[i % len(texts)]}).encode()
        for i in range(args.requests)
    ]
    await _arm(app, bodies[: args.concurrency * 4], args.concurrency)  # warm-up
    arms: dict[str, list[dict[str, Any]]] = {"served": [], "defaults": []}
    try:
        for r in range(args.rounds):
            order = ["served", "defaults"] if r % 2 == 0 else ["defaults", "served"]
            for arm in order:
                if arm == "served":
                    settle_heap()  # what start-up does
                else:
                    gc.unfreeze()
                    gc.set_threshold(*DEFAULT_THRESHOLD)
                    gc.collect()
                tracked = len(gc.get_objects())
                got = {**await _arm(app, bodies, args.concurrency), "tracked_at_start": tracked}
                arms[arm].append(got)
                print(f"round {r + 1} {arm}: {json.dumps(got)}", flush=True)
    finally:
        await lifespan.put({"type": "lifespan.shutdown"})
        await task
        gc.unfreeze()
        gc.set_threshold(*DEFAULT_THRESHOLD)
    return {
        "command": "python -m perf.gc_pauses " + " ".join(args.argv),
        "concurrency": args.concurrency,
        "arms": arms,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perf.gc_pauses", description=__doc__)
    parser.add_argument("--config", type=Path, help="config file (default: embedded model)")
    parser.add_argument("--model", help="embedding model name (default: the first)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000, help="requests per arm and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    # The access log would add a line per request; the writer thread is not measured here.
    # The variable is put back afterwards: apps created later in this process keep theirs.
    previous = os.environ.get(LOG_LEVEL_ENV)
    os.environ[LOG_LEVEL_ENV] = previous or "WARNING"
    try:
        result = asyncio.run(run(args))
    finally:
        if previous is None:
            del os.environ[LOG_LEVEL_ENV]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
