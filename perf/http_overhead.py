"""What the HTTP layer costs at saturation: items/s through HTTP against the core alone.

A (HTTP): ``concurrency`` clients sharing one pooled ``aiohttp`` session (the load
generator's :class:`~trt_async.bench.loadgen.LoadClient`) send single-text ``POST /v1/embeddings``
requests to a real ``trt-async serve`` process (granian, one worker).
B (core): the same number of tasks call :meth:`ServedModel.embed` with one text each, in
this process. Rounds alternate A and B so drift (thermal, other load) hits both alike; the
ratio of medians is printed. Client and server share the machine's cores in A: on a small
machine that cost is part of what is measured, so the client's CPU seconds per request are
printed too.

    python -m perf.http_overhead [--config FILE] [--concurrency 64] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec

from trt_async.bench.corpus import corpus_dir
from trt_async.bench.loadgen import LoadClient
from trt_async.core.config import CONFIG_ENV, Config, ModelKind, load_config
from trt_async.core.registry import ModelRegistry
from trt_async.core.tasks import ServedModel

Call = Callable[[str], Awaitable[None]]


def _texts() -> list[str]:
    lines = (corpus_dir() / "en.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(path: Path | None) -> Config:
    if path is not None:
        return load_config(path)
    from trt_async.tools.embedded import embedded_config, embedded_model_dir

    return embedded_config(embedded_model_dir())


async def _saturate(call: Call, texts: list[str], concurrency: int, seconds: float) -> float:
    """Items per second with ``concurrency`` workers each sending one text at a time."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop:
            await call(texts[i % len(texts)])
            done += 1
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done / (time.perf_counter() - start)


async def _wait_ready(
    http: LoadClient, proc: asyncio.subprocess.Process, timeout_s: float = 180
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        try:
            if (await http.get("/ready"))[0] == 200:
                return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("server not ready in time")


async def run(args: argparse.Namespace) -> None:
    config = _config(args.config)
    name = args.model or next(n for n, k, _ in config.models() if k is ModelKind.EMBEDDING)
    texts = _texts()

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in (CONFIG_ENV, "TRT_ASYNC_API_KEY")}
    cmd = [sys.executable, "-m", "trt_async", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if args.config is not None:
        cmd += ["--config", str(args.config)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    registry = ModelRegistry(config)
    try:
        async with LoadClient(url, args.concurrency, timeout_s=60) as http:
            await _wait_ready(http, proc)
            await registry.start()
            model: ServedModel = registry.get(name)
            session = http.session
            target = http.url("/v1/embeddings")
            encode = msgspec.json.Encoder().encode

            async def via_http(text: str) -> None:
                # base64, as the official SDK asks by default.
                body = encode({"model": name, "input": text, "encoding_format": "base64"})
                async with session.post(target, data=body) as r:
                    await r.read()
                    r.raise_for_status()

            async def via_core(text: str) -> None:
                await model.embed([text])

            print(f"model {name}, concurrency {args.concurrency}, {args.seconds:g} s per run")
            for call in (via_http, via_core):  # warm-up: connections, thread pools, caches
                await _saturate(call, texts, args.concurrency, 1.0)
            http_rates: list[float] = []
            core_rates: list[float] = []
            for r in range(args.rounds):
                cpu = time.process_time()
                a = await _saturate(via_http, texts, args.concurrency, args.seconds)
                cpu_http = time.process_time() - cpu
                b = await _saturate(via_core, texts, args.concurrency, args.seconds)
                http_rates.append(a)
                core_rates.append(b)
                client_ms = 1000 * cpu_http / max(a * args.seconds, 1)
                print(
                    f"round {r + 1}: http {a:8.1f} items/s   core {b:8.1f} items/s   "
                    f"{a / b:.3f}   (client CPU {client_ms:.2f} ms a request)"
                )
        ratio = statistics.median(http_rates) / statistics.median(core_rates)
        print(
            f"median: http {statistics.median(http_rates):.1f} items/s, core "
            f"{statistics.median(core_rates):.1f} items/s; ratio {ratio:.3f} "
            f"(HTTP costs {100 * (1 - ratio):.1f}%)"
        )
    finally:
        await registry.close()
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=60)
        except TimeoutError:
            proc.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="config file (default: the embedded one)")
    parser.add_argument("--model", help="embedding model (default: the first one)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
