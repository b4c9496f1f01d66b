"""Soak test: minutes of steady open-loop load, watching errors, latency drift and memory.

1. **Ramp** (closed loop): a few concurrency steps of ``--ramp-seconds`` each on the
   request mix; the best items/s is the saturation throughput.
2. **Soak** (open loop): Poisson arrivals at ``--fraction`` (default 0.8) of saturation for
   ``--minutes`` (default 10). Meanwhile ``GET /metrics`` is scraped every
   ``--sample-seconds`` for the server's ``process_resident_memory_bytes``.

Reported per minute: requests, errors by status, achieved items/s, latency p50/p99/max and
the server's RSS. Goals: no errors; p99 and RSS flat after the warm-up minute(s). Written as
``report.json`` and ``report.md`` under ``<results>/soak-<timestamp>/`` (``--results``, default
``bench-results`` in the current folder), with ``server.yaml`` and ``server.log`` when the
script started the server.

    python -m perf.soak                      # embedded default, 10 minutes at 80 %
    python -m perf.soak --minutes 3
    python -m perf.soak --url http://127.0.0.1:8887 --model all-MiniLM-L6-v2

Every phase is bounded in time and in requests; the generator runs on the same machine as
a started server, so on a small CPU it takes a share of the cores (its CPU time is in the
report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trt_async.bench.cli import DEFAULT_OUT
from trt_async.bench.loadgen import (
    LoadClient,
    PhaseResult,
    Record,
    make_client,
    run_closed,
    run_open,
)
from trt_async.bench.report import error_key, machine, percentiles_ms
from trt_async.bench.workload import MIXES, RequestSpec, Targets, build_requests

RSS_LINE = re.compile(rb"^process_resident_memory_bytes\s+(\S+)$", re.MULTILINE)


@dataclass
class Samples:
    """``(seconds on the generator's clock, server RSS in bytes)``, and scrape failures."""

    rss: list[tuple[float, float]] = field(default_factory=list)
    failures: int = 0


async def scrape_rss(client: LoadClient) -> float | None:
    status, body = await client.get("/metrics")
    if status != 200:
        return None
    found = RSS_LINE.search(body)
    return float(found.group(1)) if found else None


async def sample_rss(client: LoadClient, every_s: float, stop: asyncio.Event, out: Samples) -> None:
    while not stop.is_set():
        try:
            rss = await scrape_rss(client)
        except Exception:  # a scrape must never end the soak; it is counted instead
            rss = None
        if rss is None:
            out.failures += 1
        else:
            out.rss.append((time.perf_counter(), rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def ramp(
    client: LoadClient, requests: Sequence[RequestSpec], steps: Sequence[int], seconds: float
) -> list[dict[str, Any]]:
    """Closed loop at each concurrency; items/s of the successful requests."""
    out: list[dict[str, Any]] = []
    for concurrency in steps:
        result = await run_closed(
            client,
            requests,
            concurrency=concurrency,
            duration_s=seconds,
            max_requests=1_000_000,
            warmup_s=min(2.0, seconds / 4),
        )
        ok = [r for r in result.records if r.ok]
        items_s = sum(r.items for r in ok) / result.wall_s if result.wall_s > 0 else 0.0
        step = {
            "concurrency": concurrency,
            "requests": len(result.records),
            "errors": dict(Counter(error_key(r) for r in result.records if not r.ok)),
            "items_per_s": round(items_s, 2),
            "latency_ms": percentiles_ms([r.latency for r in ok]),
        }
        print(
            f"ramp c={concurrency}: {step['items_per_s']} items/s, "
            f"p99 {(step['latency_ms'] or {}).get('p99')} ms",
            flush=True,
        )
        out.append(step)
    return out


def per_minute(
    records: Sequence[Record], samples: Samples, t0: float, duration_s: float
) -> list[dict[str, Any]]:
    """Requests, errors, latency and server RSS of each minute since ``t0``."""
    rows: list[dict[str, Any]] = []
    for m in range(max(1, math.ceil(duration_s / 60))):
        lo, hi = t0 + 60 * m, t0 + min(60 * (m + 1), duration_s)
        window = [r for r in records if lo <= r.start < hi]
        ok = [r for r in window if r.ok]
        rss = [v for t, v in samples.rss if lo <= t < hi]
        latency = percentiles_ms([r.latency for r in ok]) or {}
        rows.append(
            {
                "minute": m + 1,
                "requests": len(window),
                "errors": dict(Counter(error_key(r) for r in window if not r.ok)),
                "items_per_s": round(sum(r.items for r in ok) / (hi - lo), 2),
                "p50_ms": latency.get("p50"),
                "p99_ms": latency.get("p99"),
                "max_ms": latency.get("max"),
                "rss_mib": round(rss[-1] / 2**20, 1) if rss else None,
                "rss_max_mib": round(max(rss) / 2**20, 1) if rss else None,
            }
        )
    return rows


def drift(rows: Sequence[dict[str, Any]], key: str, warmup: int) -> dict[str, Any] | None:
    """The value after the warm-up minute(s) and at the end, and their ratio."""
    values = [r[key] for r in rows[warmup:] if r[key] is not None]
    if len(values) < 2:
        return None
    first, last = values[0], values[-1]
    return {
        "after_warmup": first,
        "last": last,
        "max": max(values),
        "ratio": round(last / first, 3) if first else None,
    }


def summary(result: PhaseResult, rows: Sequence[dict[str, Any]], warmup: int) -> dict[str, Any]:
    records = result.records
    ok = [r for r in records if r.ok]
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(Counter(error_key(r) for r in records if not r.ok)),
        "dropped_arrivals": result.dropped,
        "items_per_s": round(sum(r.items for r in ok) / result.wall_s, 2) if result.wall_s else 0,
        "latency_ms": percentiles_ms([r.latency for r in ok]),
        "client_cpu_s": round(result.client_cpu_s, 1),
        "p99_drift": drift(rows, "p99_ms", warmup),
        "rss_drift_mib": drift(rows, "rss_mib", warmup),
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["soak"]
    lines = [
        f"# Soak: {report['minutes']} min at {report['fraction']:.0%} of saturation",
        "",
        f"- target: {report['url']} model `{report['model']}`, mix `{report['mix']}`",
        f"- saturation (closed-loop ramp): {report['saturation_items_per_s']} items/s; "
        f"offered: {report['rate_requests_per_s']} requests/s "
        f"({report['offered_items_per_s']} items/s)",
        f"- requests: {s['requests']}, errors: {sum(s['errors'].values())} {s['errors'] or ''}, "
        f"dropped arrivals: {s['dropped_arrivals']}",
        f"- achieved: {s['items_per_s']} items/s; latency ms: {s['latency_ms']}",
        f"- p99 drift after warm-up: {s['p99_drift']}",
        f"- RSS drift after warm-up (MiB): {s['rss_drift_mib']}",
        f"- generator CPU: {s['client_cpu_s']} s; "
        f"RSS scrapes failed: {report['rss_scrape_failures']}",
        "",
        "## Ramp",
        "",
        "| concurrency | requests | items/s | p50 ms | p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for step in report["ramp"]:
        lat = step["latency_ms"] or {}
        lines.append(
            f"| {step['concurrency']} | {step['requests']} | {step['items_per_s']} | "
            f"{lat.get('p50', '')} | {lat.get('p99', '')} | {step['errors'] or ''} |"
        )
    lines += [
        "",
        "## Per minute",
        "",
        "| minute | requests | items/s | p50 ms | p99 ms | max ms | RSS MiB | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["per_minute"]:
        lines.append(
            f"| {row['minute']} | {row['requests']} | {row['items_per_s']} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {row['max_ms']} | {row['rss_mib']} | {row['errors'] or ''} |"
        )
    lines += ["", f"Machine: {report['machine']}", ""]
    return "\n".join(lines)


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    requests = build_requests(args.mix, Targets(args.model), args.pool, args.seed)
    mean_items = sum(r.items for r in requests) / len(requests)
    steps = [int(x) for x in args.ramp.split(",") if x]
    async with make_client(url, args.max_outstanding, api_key=args.api_key) as client:
        rss0 = await scrape_rss(client)
        print(f"server RSS before load: {rss0 and round(rss0 / 2**20, 1)} MiB", flush=True)
        ramp_steps = await ramp(client, requests, steps, args.ramp_seconds)
        saturation = max(step["items_per_s"] for step in ramp_steps)
        if saturation <= 0:
            raise SystemExit("the ramp served nothing; is the server healthy?")
        rate = args.fraction * saturation / mean_items
        duration = args.minutes * 60
        print(
            f"soak: {rate:.1f} requests/s ({args.fraction:.0%} of {saturation} items/s) "
            f"for {args.minutes:g} min",
            flush=True,
        )
        samples = Samples()
        stop = asyncio.Event()
        t0 = time.perf_counter()
        sampler = asyncio.create_task(sample_rss(client, args.sample_seconds, stop, samples))
        progress = asyncio.create_task(_progress(samples, t0, duration))
        try:
            result = await run_open(
                client,
                requests,
                rate=rate,
                duration_s=duration,
                max_requests=int(rate * duration * 2) + 10,
                seed=args.seed,
                max_outstanding=args.max_outstanding,
            )
        finally:
            stop.set()
            progress.cancel()
            await sampler
        rows = per_minute(result.records, samples, t0, duration)
        return {
            "url": url,
            "model": args.model,
            "mix": args.mix,
            "minutes": args.minutes,
            "fraction": args.fraction,
            "seed": args.seed,
            "ramp": ramp_steps,
            "saturation_items_per_s": saturation,
            "rate_requests_per_s": round(rate, 2),
            "offered_items_per_s": round(rate * mean_items, 2),
            "rss_before_mib": rss0 and round(rss0 / 2**20, 1),
            "rss_scrape_failures": samples.failures,
            "soak": summary(result, rows, args.warmup_minutes),
            "per_minute": rows,
            "rss_samples_mib": [(round(t - t0, 1), round(v / 2**20, 1)) for t, v in samples.rss],
            "machine": machine(),
        }


async def _progress(samples: Samples, t0: float, duration: float) -> None:
    while True:
        await asyncio.sleep(60)
        rss = samples.rss[-1][1] / 2**20 if samples.rss else float("nan")
        print(f"  {time.perf_counter() - t0:.0f}/{duration:.0f} s, RSS {rss:.1f} MiB", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server (default: start one on a free port)")
    p.add_argument("--config", type=Path, help="config to serve (default: the embedded model)")
    p.add_argument("--model", help="embedding model name (default: the config's first)")
    p.add_argument("--api-key")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fraction", type=float, default=0.8, help="of the saturation items/s")
    p.add_argument("--mix", default="realistic", choices=MIXES)
    p.add_argument("--ramp", default="4,16,64", help="closed-loop concurrency steps")
    p.add_argument("--ramp-seconds", type=float, default=12.0)
    p.add_argument("--warmup-minutes", type=int, default=1, help="left out of the drift")
    p.add_argument("--sample-seconds", type=float, default=5.0, help="RSS scrape interval")
    p.add_argument("--max-outstanding", type=int, default=512)
    p.add_argument("--pool", type=int, default=4000, help="distinct requests, reused in turn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-name", help="folder under --results (default: soak-<timestamp>)")
    p.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_OUT,
        help=f"results folder (default: ./{DEFAULT_OUT}, under the current folder)",
    )
    args = p.parse_args(argv)
    if not 0 < args.fraction <= 1.5:
        p.error("--fraction must be in (0, 1.5]")
    if args.minutes <= 0:
        p.error("--minutes must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = args.results / (args.run_name or f"soak-{stamp}")
    folder.mkdir(parents=True, exist_ok=True)
    server = None
    if args.url:
        url = args.url.rstrip("/")
        if args.model is None:
            raise SystemExit("--model is required with --url")
    else:
        from trt_async.bench.server import ServerProcess, base_config, free_port, write_config

        config = base_config(args.config)
        if args.model is None:
            if not config.embedding_models:
                raise SystemExit("the config serves no embedding model")
            args.model = next(iter(config.embedding_models))
        port = free_port()
        config_path = write_config(config, folder / "server.yaml", "127.0.0.1", port)
        server = ServerProcess(config_path, folder / "server.log", port=port)
        server.start()
        url = server.url
    try:
        report = asyncio.run(run(args, url))
    finally:
        if server is not None:
            code = server.stop()
            print(f"server stopped with exit code {code}", flush=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    print(f"written to {folder}")
    return 0 if not report["soak"]["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
