"""Where a server's CPU goes under load, per thread, read from ``/proc`` (Linux).

    python -m perf.thread_cpu --target after=http://127.0.0.1:8201,PID \\
        --target floor=http://127.0.0.1:8205,PID --concurrency 64 --seconds 8 --rounds 2

PID is the server's worker process (granian's worker: ``pgrep -f`` shows two processes per
server, the worker is the child). For each target, in alternating rounds, one text a
request from ``--concurrency`` clients for ``--seconds``: requests/s, the CPU of the
worker's main thread (where granian runs the event loop) per request and in cores, the
worker's busiest threads in cores, and the load generator's own cores. On two cores, what
the event loop and the client take is what the model's threads cannot have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trt_async.bench.corpus import Corpus
from trt_async.bench.loadgen import make_client, run_closed
from trt_async.bench.workload import Targets, build_requests

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid`` so far."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # the name, in brackets, may hold spaces
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return out


async def measure_one(
    url: str, pid: int, concurrency: int, seconds: float, model: str
) -> dict[str, Any]:
    requests = build_requests("realistic", Targets(model), 2000, 1234, Corpus())
    async with make_client(url, max(concurrency, 1) * 2) as client:
        await run_closed(client, requests, concurrency=4, duration_s=1.0, max_requests=100)
        before = thread_seconds(pid)
        start = time.perf_counter()
        result = await run_closed(
            client, requests, concurrency=concurrency, duration_s=seconds, max_requests=10**6
        )
        elapsed = time.perf_counter() - start
        after = thread_seconds(pid)
    done = len([r for r in result.records if r.ok])
    used = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
    loop = after.get(pid, 0.0) - before.get(pid, 0.0)
    return {
        "requests_per_s": done / elapsed,
        "errors": len(result.records) - done,
        "loop_ms_per_request": 1000.0 * loop / done if done else None,
        "loop_cores": loop / elapsed,
        "process_cores": sum(used) / elapsed,
        "busiest_thread_cores": [round(x / elapsed, 3) for x in used[:6]],
        "client_cores": result.client_cpu_s / elapsed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", required=True, help="NAME=URL,PID (repeat)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--json", type=Path, help="write every round here")
    args = p.parse_args(argv)
    targets: dict[str, tuple[str, int]] = {}
    for spec in args.target:
        name, _, rest = spec.partition("=")
        url, _, pid = rest.rpartition(",")
        if not name or not url or not pid.isdigit():
            p.error(f"--target {spec!r}: expected NAME=URL,PID")
        targets[name] = (url, int(pid))
    rounds: dict[str, list[dict[str, Any]]] = {}
    names = list(targets)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            url, pid = targets[name]
            got = asyncio.run(measure_one(url, pid, args.concurrency, args.seconds, args.model))
            rounds.setdefault(name, []).append(got)
            print(
                f"round {r + 1} {name}: {got['requests_per_s']:.1f} req/s, event loop "
                f"{got['loop_ms_per_request']:.2f} ms CPU a request ({got['loop_cores']:.2f} "
                f"cores), process {got['process_cores']:.2f} cores, busiest threads "
                f"{got['busiest_thread_cores']}, load generator {got['client_cores']:.3f} cores",
                flush=True,
            )
    for name, got in rounds.items():
        loop = statistics.median(g["loop_ms_per_request"] for g in got)
        print(f"{name}: event loop {loop:.2f} ms CPU a request (median of {len(got)} rounds)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        given = list(argv) if argv is not None else sys.argv[1:]
        report = {
            "command": " ".join(["python -m perf.thread_cpu", *given]),
            "concurrency": args.concurrency,
            "rounds": rounds,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
