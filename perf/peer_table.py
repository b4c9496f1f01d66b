"""The performance table of the CPU goals: several servers and the bare ceiling, one run.

``python -m perf.peer_table --target NAME=URL ... --out perf/results/table`` sends the
same seeded request streams to every target at each point of the table (one text from 1,
16 and 64 clients; 32 texts from 4 and 16 clients; one text of 150-200 words from 16
clients) in alternating rounds (A B C, C B A, ...), and between them measures the bare
ceiling: ONNX Runtime driven directly on the first target's model config (the embedded
default unless ``--config``), batch 32 sorted by length, tokenisation included. It writes
``table.json`` (every round) and ``table.md``; ``--results FILE`` also replaces the part of
FILE between the ``peer-table`` markers with ``table.md``, so the published table is the
run's output, never typed in. Every phase is bounded by ``--seconds`` and ``--max-requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trt_async.backends.shapes import Bucket
from trt_async.bench.bare import BareBackend
from trt_async.bench.corpus import Corpus
from trt_async.bench.loadgen import LoadClient, make_client, run_closed
from trt_async.bench.report import loadavg, machine, percentiles_ms
from trt_async.bench.server import base_config
from trt_async.bench.workload import RequestSpec, Targets, build_requests, embeddings_request

#: (key, what, mix, concurrency) in the order of the table.
POINTS: tuple[tuple[str, str, str, int], ...] = (
    ("single-c1", "1 text, 1 client", "realistic", 1),
    ("single-c16", "1 text, 16 clients", "realistic", 16),
    ("single-c64", "1 text, 64 clients", "realistic", 64),
    ("docs32-c4", "32 texts, 4 clients", "docs32", 4),
    ("docs32-c16", "32 texts, 16 clients", "docs32", 16),
    ("long-c16", "1 text of 150-200 words, 16 clients", "long150", 16),
)
BEGIN = "<!-- peer-table:begin -->"
END = "<!-- peer-table:end -->"


def streams(model: str, seed: int, count: int) -> dict[str, list[RequestSpec]]:
    corpus = Corpus()
    targets = Targets(model)
    out = {
        "realistic": build_requests("realistic", targets, count, seed, corpus),
        "docs32": build_requests("docs32", targets, max(count // 16, 8), seed, corpus),
    }
    src = corpus.source(seed + 1)
    out["long150"] = [
        embeddings_request(model, [src.text(src.rng.randint(150, 200))], "long150")
        for _ in range(count)
    ]
    return out


def bare_ceiling(bare: BareBackend, texts: Sequence[str], seconds: float) -> float:
    """Items/s of batch 32 sorted by length, tokenisation included, for about ``seconds``."""
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        encodings = sorted(bare.encode(texts), key=len)
        batches = [encodings[i : i + 32] for i in range(0, len(encodings), 32)]
        for items in batches:
            length = bare.grid.length_for(len(items[-1]))
            bare.run_batch(Bucket(bare.grid.batch_for(len(items)), length), items)
        done += len(encodings)
    return done / (time.perf_counter() - start)


async def phase(
    client: LoadClient, requests: Sequence[RequestSpec], concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    result = await run_closed(
        client,
        requests,
        concurrency=concurrency,
        duration_s=args.seconds,
        max_requests=args.max_requests,
        warmup_s=args.warmup,
    )
    ok = [r for r in result.records if r.ok]
    items = sum(r.items for r in ok)
    return {
        "items_per_s": items / result.wall_s if result.wall_s > 0 else 0.0,
        "requests": len(ok),
        "errors": len(result.records) - len(ok),
        "latency_ms": percentiles_ms([r.latency for r in ok]),
        "load": loadavg(),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    targets: dict[str, str] = dict(t.split("=", 1) for t in args.target)
    data = streams(args.model, args.seed, args.pool)
    config = base_config(args.config)
    model_config = next(iter(config.embedding_models.values()))
    bare = BareBackend(model_config)
    ceiling_texts = [t for spec in data["realistic"][:256] for t in spec.texts]
    bare_ceiling(bare, ceiling_texts[:64], 1.0)  # warm
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    ceilings: list[float] = []
    names = list(targets)
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(make_client(url, 128))
            for name, url in targets.items()
        }
        for client in clients.values():  # warm every server
            await run_closed(
                client, data["realistic"], concurrency=4, duration_s=2.0, max_requests=400
            )
        for key, _, mix, concurrency in POINTS:
            for r in range(args.rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    got = await phase(clients[name], data[mix], concurrency, args)
                    rounds.setdefault(key, {}).setdefault(name, []).append(got)
                    lat = got["latency_ms"] or {}
                    print(
                        f"{key} round {r + 1} {name}: {got['items_per_s']:.1f} items/s, "
                        f"p50 {lat.get('p50', 0):.1f} ms, errors {got['errors']}",
                        flush=True,
                    )
            ceilings.append(bare_ceiling(bare, ceiling_texts, args.ceiling_seconds))
            print(f"bare ceiling: {ceilings[-1]:.1f} items/s", flush=True)
    bare.close()
    return {"targets": targets, "rounds": rounds, "ceiling_items_per_s": ceilings}


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def table(report: dict[str, Any], command: str) -> str:
    names = list(report["targets"])
    ceiling = _median(report["ceiling_items_per_s"])
    first, *rest = names
    head = ["load", *(f"{n} items/s (p50 / p99 / max ms)" for n in names), f"{first} / ceiling"]
    head += [f"{first} / {n}" for n in rest]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, what, _, _ in POINTS:
        per = report["rounds"].get(key, {})
        cells = [what]
        rates: dict[str, list[float]] = {}
        for n in names:
            rs = per.get(n, [])
            rates[n] = [r["items_per_s"] for r in rs]
            lats = [r["latency_ms"] for r in rs if r["latency_ms"]]
            p50 = _median([x["p50"] for x in lats])
            p99 = _median([x["p99"] for x in lats])
            worst = max((x["max"] for x in lats), default=0.0)
            errors = sum(r["errors"] for r in rs)
            cell = f"{_median(rates[n]):.1f} ({p50:.1f} / {p99:.0f} / {worst:.0f})"
            cells.append(cell + (f", {errors} errors" if errors else ""))
        ours = _median(rates[first])
        cells.append(f"{ours / ceiling:.2f}" if ceiling else "-")
        for n in rest:
            per_round = [a / b for a, b in zip(rates[first], rates[n], strict=False) if b]
            cells.append(
                f"**{_median(per_round):.2f}** ({', '.join(f'{x:.2f}' for x in per_round)})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    ceilings = ", ".join(f"{c:.0f}" for c in report["ceiling_items_per_s"])
    load = report["load"]
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Machine: {report['machine']['machine']}, {report['machine']['cpus']} CPUs, "
            f"{report['machine']['system']}; load average at the start {load['start']}, "
            f"at the end {load['end']}. "
            f"Bare ceiling (ONNX Runtime on `{first}`'s model, batch 32 sorted by length, "
            f"tokenisation included), measured after each point: {ceilings} items/s, "
            f"median {ceiling:.0f}. Ratios are medians of per-round ratios (each round listed); "
            "items/s and latencies are medians over rounds, max is the worst of all rounds.",
            "",
            *lines,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", required=True, help="NAME=URL (repeat)")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="model name on every target")
    p.add_argument("--config", type=Path, help="model config of the bare ceiling")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per phase")
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="seconds per phase not recorded (each target is warmed once at the start)",
    )
    p.add_argument("--max-requests", type=int, default=20000)
    p.add_argument("--ceiling-seconds", type=float, default=4.0)
    p.add_argument("--pool", type=int, default=1000, help="requests pre-generated per stream")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", type=Path, required=True, help="folder for table.json and table.md")
    p.add_argument("--results", type=Path, help="Markdown file whose peer-table part to replace")
    args = p.parse_args(argv)
    command = "python -m perf.peer_table " + " ".join(argv if argv is not None else sys.argv[1:])
    start_load = loadavg()
    report = asyncio.run(measure(args))
    report["machine"] = machine()
    report["load"] = {"start": start_load, "end": loadavg()}
    report["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = table(report, command)
    (args.out / "table.md").write_text(text, encoding="utf-8")
    print(text)
    if args.results is not None:
        doc = args.results.read_text(encoding="utf-8")
        try:
            args.results.write_text(replace_part(doc, text), encoding="utf-8")
        except ValueError as exc:
            raise SystemExit(f"{args.results}: {exc}") from None
    return 0


def replace_part(doc: str, text: str) -> str:
    """``doc`` with what lies between the peer-table markers replaced by ``text``."""
    head, found, rest = doc.partition(BEGIN)
    if not found or END not in rest:
        raise ValueError(f"no {BEGIN} ... {END} part to replace")
    return head + BEGIN + "\n" + text + "\n" + END + rest.partition(END)[2]


if __name__ == "__main__":
    raise SystemExit(main())
