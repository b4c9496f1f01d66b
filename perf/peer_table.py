"""The performance table of the CPU goals: several servers and the bare ceiling, one run.

``python -m perf.peer_table --target NAME=URL ... --out DIR`` sends the same seeded request
streams to every target at each point of the table (one text from 1, 16 and 64 clients; 32
texts from 4 and 16 clients; one text of 150-200 words from 16 clients) in alternating
rounds (A B C, C B A, ...). The bare ceiling is one more contender of every round, run in
this process once the servers are idle: ONNX Runtime driven directly on the first target's
model config (the embedded default unless ``--config``), the mix's texts (a sample with
their spread of lengths where they are many) sorted by token count and run in whole passes,
in batches each padded only to its own longest item, tokenisation included, with the
padded-token cap per batch that a sweep at the start found best for that mix, one thread
per parallel lane of the backend taking the next batch (or, where the sweep found it
faster, one batch at a time on the solo lane). ``--points`` runs some of the points. In
the 1-client rounds it also times one text at a time (tokenise + batch-1 call), the
reference of the latency goal. Machine speed drifts over a run, so every ratio, the
ceiling's included, is a median of per-round ratios. It writes ``table.json`` (every
round) and ``table.md`` (the table, then the goals with what was measured); ``--results
FILE`` also replaces the part of FILE between the ``peer-table`` markers with ``table.md``,
so the published table is the run's output, never typed in. Every phase is bounded by
``--seconds`` and ``--max-requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from perf.servers import infinity, ours, running, shown_command
from trt_async.backends.shapes import Bucket
from trt_async.bench.bare import BareBackend
from trt_async.bench.corpus import Corpus
from trt_async.bench.loadgen import LoadClient, make_client, run_closed
from trt_async.bench.report import loadavg, machine, percentiles_ms
from trt_async.bench.server import base_config
from trt_async.bench.workload import RequestSpec, Targets, build_requests, embeddings_request
from trt_async.core.config import load_config
from trt_async.tools.embedded import embedded_config_yaml, embedded_model_dir

#: (key, what, mix, concurrency) in the order of the table.
POINTS: tuple[tuple[str, str, str, int], ...] = (
    ("single-c1", "1 text, 1 client", "realistic", 1),
    ("single-c16", "1 text, 16 clients", "realistic", 16),
    ("single-c64", "1 text, 64 clients", "realistic", 64),
    ("docs32-c4", "32 texts, 4 clients", "docs32", 4),
    ("docs32-c16", "32 texts, 16 clients", "docs32", 16),
    ("long-c16", "1 text of 150-200 words, 16 clients", "long150", 16),
)
#: Points where the server is saturated: the tail goals apply there.
SATURATED = ("single-c64", "docs32-c16", "long-c16")
#: The bare ceiling's name among the contenders of each round.
CEILING = "bare ceiling"
BEGIN = "<!-- peer-table:begin -->"
END = "<!-- peer-table:end -->"
#: Most rows of one bare batch (the batch size of the issue that set the goals).
CEILING_BATCH = 32
#: Padded-token budgets of one bare batch the ceiling tries; it is the best of them. On a
#: CPU, past a few hundred padded tokens a bigger batch costs more per item (its activations
#: leave the caches), so 32 rows of long texts are not the runtime's best.
CEILING_CAPS = (256, 512, 1024, 2048, 8192)
#: The sweep's key prefix for batches run one at a time on the solo lane.
SOLO = "solo"
#: Tokens of each mix's texts the ceiling runs per pass: the whole pools of the one-text and
#: 32-text mixes (47k and 92k tokens at the default seed and pool), and half of the long
#: mix's (208k; its texts are all 164-251 tokens long, so a sparser set pads no more). A
#: sparser sample sorts into wider batches that pad more: at 24k tokens it read a median
#: 0.95x a whole pool (0.75-1.06, ``perf/ceiling_sampling.py``), which would flatter every
#: server.
CEILING_PASS_TOKENS = 98304


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


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat), None where unknown."""

    def sample() -> tuple[int, int] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        values = [int(x) for x in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    first = sample()
    time.sleep(seconds)
    second = sample()
    if first is None or second is None or second[0] == first[0]:
        return None
    return 1.0 - (second[1] - first[1]) / (second[0] - first[0])


def wait_until_idle(limit_s: float = 30.0, busy: float = 0.1) -> float | None:
    """Wait (at most ``limit_s``) until the CPUs are less than ``busy`` busy over a second:
    servers finish the last phase's answers and ONNX Runtime threads stop spinning. Returns
    the last share seen, kept in the report."""
    deadline = time.monotonic() + limit_s
    seen = cpu_busy()
    while seen is not None and seen >= busy and time.monotonic() < deadline:
        seen = cpu_busy()
    return seen


def ceiling_batches(
    bare: BareBackend, texts: Sequence[str], cap_tokens: int = 1 << 30
) -> list[list[str]]:
    """``texts`` sorted by token count, cut into batches of :data:`CEILING_BATCH` rows or
    fewer: no more than the bucket grid allows at that length, and no more padded tokens
    than ``cap_tokens``."""
    lengths = [len(e) for e in bare.encode(texts)]
    ordered = [t for _, t in sorted(zip(lengths, texts, strict=True), key=lambda x: x[0])]
    counts = sorted(lengths)
    batches: list[list[str]] = []
    i = 0
    while i < len(ordered):
        n = CEILING_BATCH
        while n > 1:
            length = bare.grid.length_for(counts[min(i + n, len(ordered)) - 1])
            if n <= bare.grid.capacity(length) and n * length <= cap_tokens:
                break
            n -= 1
        batches.append(ordered[i : i + n])
        i += n
    return batches


def ceiling_texts(bare: BareBackend, texts: Sequence[str], tokens: int) -> list[str]:
    """About ``tokens`` tokens' worth of ``texts``, evenly spaced in token-count order, so the
    subset has the whole list's mix of lengths (all of ``texts`` if they hold fewer)."""
    lengths = [len(e) for e in bare.encode(list(texts))]
    if sum(lengths) <= tokens:
        return list(texts)
    n = max(1, round(len(texts) * tokens / sum(lengths)))
    ordered = [t for _, t in sorted(zip(lengths, texts, strict=True), key=lambda x: x[0])]
    return [ordered[(2 * i + 1) * len(ordered) // (2 * n)] for i in range(n)]


def bare_ceiling(
    bare: BareBackend, batches: Sequence[Sequence[str]], seconds: float, parallel: bool = True
) -> float:
    """Items/s of whole passes over ``batches`` (at least one, then until ``seconds`` have
    passed): each batch tokenised, padded to the bucket of its own longest item and run.

    Every pass runs every batch once, so the figure is the mix's, not that of whichever
    batches a clock cut let in (a seeded order cut after 4 s read 0.62-1.10x a whole pass
    over the same batches, ``perf/ceiling_sampling.py``). A pass runs the batches longest
    first, so the lanes finish it together: the last batches are the shortest.
    With ``parallel`` and a backend of several parallel lanes, one thread per lane takes
    the next batch, as the server's lanes do under load; otherwise batches run one after
    another on the lane a batch alone gets."""
    order = list(range(len(batches)))[::-1]  # ceiling_batches sorts them shortest first
    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    start = time.perf_counter()

    def work(lane: int) -> bool:
        with lock:
            at = state["next"]
            if at % len(order) == 0 and at > 0 and time.perf_counter() - start >= seconds:
                return False
            texts = batches[order[at % len(order)]]
            state["next"] += 1
        ran = run_texts(bare, texts, lane)
        with lock:
            state["done"] += ran
        return True

    bare.on_lanes(work, parallel)
    return state["done"] / (time.perf_counter() - start)


def run_texts(bare: BareBackend, texts: Sequence[str], lane: int) -> int:
    """Tokenise ``texts`` and run them on ``lane`` as one batch padded to its own longest
    item; returns how many ran."""
    items = bare.encode(texts)
    length = bare.grid.length_for(max(len(e) for e in items))
    bare.run_batch(Bucket(bare.grid.batch_for(len(items)), length), items, lane)
    return len(items)


def batch_one_ms(bare: BareBackend, texts: Sequence[str]) -> float:
    """Median milliseconds of one text alone: tokenise, then a batch-1 call at its length
    (on the lane a batch alone gets)."""
    out: list[float] = []
    for text in texts:
        start = time.perf_counter()
        enc = bare.encode([text])
        bare.run_batch(Bucket(1, bare.grid.length_for(len(enc[0]))), enc)
        out.append(time.perf_counter() - start)
    return 1000.0 * float(statistics.median(out))


def measure_ceilings(
    bare: BareBackend, texts: dict[str, list[str]], singles: Sequence[str], seconds: float
) -> dict[str, Any]:
    """Each mix's ceiling (the best of :data:`CEILING_CAPS`, every cap's figure kept) and the
    time of one text alone, once the machine is idle.

    With several parallel lanes, the caps run on them side by side, and the best cap also
    one batch at a time on the solo lane (key ``solo <cap>``): the ceiling is the better."""
    busy = wait_until_idle()
    out: dict[str, Any] = {"cpu_busy_before": None if busy is None else round(busy, 3)}
    by_cap: dict[str, dict[str, float]] = {}
    for mix, mix_texts in texts.items():
        rates = {
            str(cap): bare_ceiling(bare, ceiling_batches(bare, mix_texts, cap), seconds)
            for cap in CEILING_CAPS
        }
        if bare.lanes.solo:
            cap = int(max(rates, key=rates.__getitem__))
            solo = ceiling_batches(bare, mix_texts, cap)
            rates[f"{SOLO} {cap}"] = bare_ceiling(bare, solo, seconds, parallel=False)
        by_cap[mix] = rates
    out["by_cap"] = by_cap
    out["items_per_s"] = {mix: max(rates.values()) for mix, rates in by_cap.items()}
    out["batch_one_ms"] = batch_one_ms(bare, singles)
    shown = "; ".join(
        f"{m} {v:.1f} (cap {max(by_cap[m], key=by_cap[m].__getitem__)})"
        for m, v in out["items_per_s"].items()
    )
    print(
        f"bare ceiling (CPU busy before: {out['cpu_busy_before']}): {shown} items/s; "
        f"one text {out['batch_one_ms']:.2f} ms",
        flush=True,
    )
    return out


def best_ceiling(rates: dict[str, float]) -> tuple[int, bool]:
    """The sweep's best (cap, on the parallel lanes) from its ``by_cap`` figures."""
    key = max(rates, key=rates.__getitem__)
    mode, _, cap = key.rpartition(" ")
    return int(cap), mode != SOLO


def ceiling_phase(
    bare: BareBackend, batches: Sequence[Sequence[str]], seconds: float, parallel: bool = True
) -> dict[str, Any]:
    """The bare ceiling as one more contender of a round, once the servers are idle."""
    busy = wait_until_idle(limit_s=10.0)
    return {
        "items_per_s": bare_ceiling(bare, batches, seconds, parallel),
        "requests": 0,
        "errors": 0,
        "latency_ms": None,
        "cpu_busy_before": None if busy is None else round(busy, 3),
    }


async def phase(
    client: LoadClient, requests: Sequence[RequestSpec], concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    start = time.perf_counter()
    result = await run_closed(
        client,
        requests,
        concurrency=concurrency,
        duration_s=args.seconds,
        max_requests=args.max_requests,
        warmup_s=args.warmup,
    )
    elapsed = time.perf_counter() - start
    ok = [r for r in result.records if r.ok]
    items = sum(r.items for r in ok)
    return {
        "items_per_s": items / result.wall_s if result.wall_s > 0 else 0.0,
        "requests": len(ok),
        "errors": len(result.records) - len(ok),
        "latency_ms": percentiles_ms([r.latency for r in ok]),
        "load": loadavg(),
        # The load generator shares the machine with the server; the bare ceiling has no
        # client. Its share of all CPUs over the phase (warm-up included) bounds how close
        # any server measured this way can come to the ceiling.
        "client_cpu_share": result.client_cpu_s / (elapsed * (os.cpu_count() or 1))
        if elapsed > 0
        else None,
    }


#: Texts of each mix a peer's own runtime is timed on.
PEER_BARE_TEXTS = 512


def peer_bare(
    python: Path, folder: Path, texts: Sequence[str], work: Path, mix: str
) -> dict[str, float]:
    """A peer's own runtime on ``texts`` (``perf/infinity_bare.py`` with its own Python):
    what its server is to be checked against."""
    path = work / f"peer-bare-{mix}.json"
    path.write_text(json.dumps(list(texts)), encoding="utf-8")
    done = subprocess.run(
        [str(python), str(Path(__file__).with_name("infinity_bare.py")), "--folder",
         str(folder), "--texts", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    targets: dict[str, str] = dict(t.split("=", 1) for t in args.target)
    data = streams(args.model, args.seed, args.pool)
    config = base_config(args.config)
    # The ceiling's batches are bounded by its caps, not by the server's default budget.
    model_config = msgspec.structs.replace(
        next(iter(config.embedding_models.values())), max_batch_tokens=max(CEILING_CAPS)
    )
    bare = BareBackend(model_config)
    points = [p for p in POINTS if p[0] in args.points]
    mixes = sorted({mix for _, _, mix, _ in points})
    texts = {
        mix: ceiling_texts(bare, [t for spec in data[mix] for t in spec.texts], CEILING_PASS_TOKENS)
        for mix in mixes
    }
    singles = [spec.texts[0] for spec in data["realistic"][: args.batch_one_texts]]
    bare_ceiling(bare, ceiling_batches(bare, texts[mixes[0]]), 1.0)  # warm
    ceilings = [measure_ceilings(bare, texts, singles, args.ceiling_seconds)]
    # Each mix's best token cap (and lanes), found at the start, is what the rounds run.
    chosen = {mix: best_ceiling(rates) for mix, rates in ceilings[0]["by_cap"].items()}
    best = {mix: cap if parallel else f"{SOLO} {cap}" for mix, (cap, parallel) in chosen.items()}
    batches = {mix: ceiling_batches(bare, texts[mix], chosen[mix][0]) for mix in mixes}
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    names = [*targets, CEILING]
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(make_client(url, 128))
            for name, url in targets.items()
        }
        for client in clients.values():  # warm every server
            await run_closed(
                client, data["realistic"], concurrency=4, duration_s=2.0, max_requests=400
            )
        for key, _, mix, concurrency in points:
            for r in range(args.rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    if name == CEILING:
                        got = ceiling_phase(
                            bare, batches[mix], args.ceiling_seconds, chosen[mix][1]
                        )
                        if concurrency == 1:
                            got["batch_one_ms"] = batch_one_ms(bare, singles)
                    else:
                        got = await phase(clients[name], data[mix], concurrency, args)
                    rounds.setdefault(key, {}).setdefault(name, []).append(got)
                    lat = got["latency_ms"]
                    said = f", p50 {lat['p50']:.1f} ms, errors {got['errors']}" if lat else ""
                    print(
                        f"{key} round {r + 1} {name}: {got['items_per_s']:.1f} items/s{said}",
                        flush=True,
                    )
    bare.close()
    runtimes: dict[str, dict[str, float]] = {}
    for name, (python, folder) in args.peer_runtimes.items():
        for mix in mixes:
            sample = [t for spec in data[mix] for t in spec.texts][:PEER_BARE_TEXTS]
            got = peer_bare(python, folder, sample, args.work, mix)
            runtimes.setdefault(name, {})[mix] = got["texts_per_s"]
            print(f"{name}'s own runtime, {mix}: {got['texts_per_s']:.1f} items/s", flush=True)
    return {
        "targets": targets,
        "rounds": rounds,
        "ceilings": ceilings,
        "ceiling_caps": best,
        "ceiling_pass_tokens": CEILING_PASS_TOKENS,
        "peer_runtimes": runtimes,
    }


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _summary(rs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Medians over rounds of items/s, p50 and p99; the worst max of all rounds."""
    lats = [r["latency_ms"] for r in rs if r["latency_ms"]]
    return {
        "items_per_s": _median([r["items_per_s"] for r in rs]),
        "p50": _median([x["p50"] for x in lats]),
        "p99": _median([x["p99"] for x in lats]),
        "max": max((x["max"] for x in lats), default=0.0),
        "errors": float(sum(r["errors"] for r in rs)),
    }


def _ratios(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> list[float]:
    return [
        a["items_per_s"] / b["items_per_s"]
        for a, b in zip(ours, theirs, strict=False)
        if b["items_per_s"]
    ]


def goals(report: dict[str, Any], peer: str | None) -> list[tuple[str, str, str, bool]]:
    """(goal, measured, target, met) for each goal the run measured."""
    first = next(iter(report["targets"]))
    rounds = report["rounds"]
    what_of = {key: what for key, what, _, _ in POINTS}
    out: list[tuple[str, str, str, bool]] = []

    def ratio(goal: str, key: str, other: str, target: float) -> None:
        if key in rounds and other in rounds[key]:
            got = _median(_ratios(rounds[key][first], rounds[key][other]))
            out.append((goal, f"{got:.3f}", f">= {target}", got >= target))

    for key in ("single-c64", "docs32-c16"):
        ratio(f"{what_of[key]}: {first} / bare ceiling", key, CEILING, 0.95)
    if peer is not None:
        for key, target in (
            ("single-c1", 1.5),
            ("single-c16", 1.5),
            ("single-c64", 1.5),
            ("docs32-c16", 1.15),
            ("long-c16", 1.15),
        ):
            ratio(f"{what_of[key]}: {first} / {peer}", key, peer, target)
    ones = rounds.get("single-c1", {})
    if first in ones and CEILING in ones:
        per_round = [
            a["latency_ms"]["p50"] / b["batch_one_ms"]
            for a, b in zip(ones[first], ones[CEILING], strict=False)
            if a["latency_ms"] and b.get("batch_one_ms")
        ]
        one = _median([b["batch_one_ms"] for b in ones[CEILING] if b.get("batch_one_ms")])
        got = _median(per_round)
        out.append(
            (
                f"1 client: {first}'s p50 / one bare text (tokenise + batch-1 call, {one:.2f} ms)",
                f"{got:.3f}",
                "<= 1.2",
                got <= 1.2,
            )
        )
    for key in SATURATED:
        if key in rounds:
            s = _summary(rounds[key][first])
            p99, worst = s["p99"] / s["p50"], s["max"] / s["p50"]
            out.append((f"{what_of[key]}: p99 / p50", f"{p99:.3f}", "<= 2", p99 <= 2))
            out.append((f"{what_of[key]}: max / p50", f"{worst:.3f}", "<= 3", worst <= 3))
    return out


def _ratio_cell(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> str:
    per_round = _ratios(ours, theirs)
    if not per_round:
        return "-"
    return f"**{_median(per_round):.2f}** ({', '.join(f'{x:.2f}' for x in per_round)})"


def table(report: dict[str, Any], command: str, peer: str | None = None) -> str:
    names = list(report["targets"])
    first, *rest = names
    head = ["load", *(f"{n} items/s (p50 / p99 / max ms)" for n in names), "bare ceiling items/s"]
    head += [f"{first} / ceiling", *(f"{first} / {n}" for n in rest)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, what, _, _ in POINTS:
        if key not in report["rounds"]:
            continue  # not measured (--points)
        per = report["rounds"].get(key, {})
        cells = [what]
        for n in names:
            s = _summary(per.get(n, []))
            cell = f"{s['items_per_s']:.1f} ({s['p50']:.1f} / {s['p99']:.0f} / {s['max']:.0f})"
            cells.append(cell + (f", {s['errors']:.0f} errors" if s["errors"] else ""))
        cells.append(f"{_summary(per.get(CEILING, []))['items_per_s']:.1f}")
        for n in (CEILING, *rest):
            cells.append(_ratio_cell(per.get(first, []), per.get(n, [])))
        lines.append("| " + " | ".join(cells) + " |")
    caps = report.get("ceiling_caps", {})
    sweeps = []
    for c in report.get("ceilings", []):
        for mix, rates in sorted(c.get("by_cap", {}).items()):
            sweeps.append(f"{mix} " + ", ".join(f"{cap}: {v:.0f}" for cap, v in rates.items()))
    load = report["load"]
    pass_tokens = report.get("ceiling_pass_tokens")
    sample, order = (
        (
            f"each mix's texts (up to {pass_tokens} tokens: beyond that, a sample spaced "
            "evenly in length order)",
            "run in whole passes (each batch once a pass, longest first)",
        )
        if pass_tokens
        else ("the point's texts", "run in a seeded order until the clock stops them")
    )
    shares = []
    for key, what, _, _ in POINTS:
        mine = report["rounds"].get(key, {}).get(first, [])
        got = [r["client_cpu_share"] for r in mine if r.get("client_cpu_share") is not None]
        if got:
            shares.append(f"{what} {100 * _median(got):.1f} %")
    client = (
        "The load generator (the driver's process) took this share of all CPUs during "
        f"`{first}`'s phases (medians over rounds), CPU the bare ceiling's runs have to "
        f"themselves: {', '.join(shares)}. "
        if shares
        else ""
    )
    goal_rows = [
        f"| {g} | {got} | {target} | {'yes' if met else '**no**'} |"
        for g, got, target, met in goals(report, peer)
    ]
    checks = []
    for name, rates in report.get("peer_runtimes", {}).items():
        for key, what, mix, _ in POINTS:
            served_rate = _summary(report["rounds"].get(key, {}).get(name, []))["items_per_s"]
            if mix in rates and key in report["rounds"]:
                checks.append(
                    f"{what}: {served_rate:.1f} of {rates[mix]:.1f} "
                    f"({served_rate / rates[mix]:.2f})"
                )
        if checks:
            checks.insert(0, f"`{name}` against its own runtime")
    sanity = (
        "Sanity check of the peer: its server's items/s against its own runtime's on the "
        "same texts without a server (`perf/infinity_bare.py`: its optimum embedder in "
        "batches of 32 sorted by length, one pass, run after the rounds): "
        + "; ".join(checks[1:])
        + ". A server far below its own runtime would be a setup problem, not a result."
        if checks
        else ""
    )
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Machine: {report['machine']['machine']}, {report['machine']['cpus']} CPUs, "
            f"{report['machine']['system']}; load average at the start {load['start']}, "
            f"at the end {load['end']}. "
            f"The bare ceiling is one more contender of every round, run once the servers "
            f"are idle: ONNX Runtime on `{first}`'s model and grid in the driver, {sample}, "
            f"sorted by token count, in batches of at most {CEILING_BATCH} rows and a "
            "padded-token cap, each padded to its own longest item, tokenisation included, "
            f"{order}; "
            "one thread per parallel lane of the backend takes the next batch, as the "
            "server's lanes do under load (`solo`: one batch at a time on the lane a batch "
            "alone gets). "
            f"The cap is each mix's best of {', '.join(map(str, CEILING_CAPS))} in a sweep "
            f"at the start: {', '.join(f'{m} {c}' for m, c in sorted(caps.items()))} "
            f"(items/s by cap: {'; '.join(sweeps)}). {client}"
            "Ratios are medians of per-round ratios (each round listed); items/s and "
            "latencies are medians over rounds, max is the worst of all rounds.",
            "",
            *lines,
            "",
            *([sanity, ""] if sanity else []),
            "| goal | measured | target | met |",
            "|---|---|---|---|",
            *goal_rows,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", default=[], help="NAME=URL (repeat)")
    p.add_argument(
        "--serve",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="start a target for the run and stop it after (repeat): NAME=ours (this "
        "checkout), NAME=ours:PATH (another checkout of the project), NAME=infinity:EXE "
        "(infinity-emb's infinity_emb executable, on our export's ONNX); each serves the "
        "embedded model (or --config's)",
    )
    p.add_argument("--work", type=Path, help="folder for the served config and logs")
    p.set_defaults(peer_runtimes={})
    p.add_argument(
        "--render",
        type=Path,
        help="draw table.md (and --results) again from this table.json instead of measuring",
    )
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
    p.add_argument(
        "--points",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        default=[key for key, *_ in POINTS],
        help=f"comma-separated points to run (default: all: {','.join(k for k, *_ in POINTS)})",
    )
    p.add_argument(
        "--ceiling-seconds", type=float, default=4.0, help="seconds per mix and token cap"
    )
    p.add_argument(
        "--batch-one-texts", type=int, default=200, help="texts timed alone (1-client goal)"
    )
    p.add_argument("--peer", help="the target the peer goals compare with (default: the last)")
    p.add_argument("--pool", type=int, default=1000, help="requests pre-generated per stream")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--out", type=Path, help="folder for table.json and table.md (with --render: its folder)"
    )
    p.add_argument("--results", type=Path, help="Markdown file whose peer-table part to replace")
    args = p.parse_args(argv)
    unknown = sorted(set(args.points) - {key for key, *_ in POINTS})
    if unknown or not args.points:
        p.error(f"--points: unknown {', '.join(unknown) or '(none given)'}")
    if args.render is not None:
        report = json.loads(args.render.read_text(encoding="utf-8"))
        command = report["command"]
        args.out = args.out or args.render.parent
    else:
        if not (args.target or args.serve) or args.out is None:
            p.error("--target or --serve, and --out, are required (or --render a table.json)")
        command = shown_command(
            "python -m perf.peer_table", argv if argv is not None else sys.argv[1:]
        )
        start_load = loadavg()
        with served(args) as urls:
            args.target = [*args.target, *(f"{name}={url}" for name, url in urls.items())]
            report = asyncio.run(measure(args))
        report["machine"] = machine()
        report["load"] = {"start": start_load, "end": loadavg()}
        report["command"] = command
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    peer = args.peer or (list(report["targets"])[-1] if len(report["targets"]) > 1 else None)
    text = table(report, command, peer)
    args.out.mkdir(parents=True, exist_ok=True)  # --render may draw into a new folder
    (args.out / "table.md").write_text(text, encoding="utf-8")
    print(text)
    if args.results is not None:
        doc = args.results.read_text(encoding="utf-8")
        try:
            args.results.write_text(replace_part(doc, text), encoding="utf-8")
        except ValueError as exc:
            raise SystemExit(f"{args.results}: {exc}") from None
    return 0


@contextlib.contextmanager
def served(args: argparse.Namespace) -> Iterator[dict[str, str]]:
    """The ``--serve`` targets running for the ``with`` block: name -> URL."""
    if not args.serve:
        yield {}
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="peer-table-"))
    args.work = work
    work.mkdir(parents=True, exist_ok=True)
    if args.config is not None:
        config = args.config.resolve()
        model = Path(next(iter(load_config(config).embedding_models.values())).model_path)
    else:
        model = embedded_model_dir()
        config = work / "served.yaml"
        config.write_text(embedded_config_yaml(model), encoding="utf-8")
    servers = []
    for spec in args.serve:
        name, _, what = spec.partition("=")
        kind, _, where = what.partition(":")
        if kind == "ours":
            servers.append(ours(name, config, Path(where) if where else None))
        elif kind == "infinity" and where:
            server = infinity(Path(where), model, work, args.model, name=name)
            servers.append(server)
            # Its own runtime on the same texts, with its own Python (see peer_bare()).
            args.peer_runtimes[name] = (Path(where).parent / "python", server.cwd)
        else:
            raise SystemExit(f"--serve {spec!r}: expected NAME=ours[:PATH] or NAME=infinity:EXE")
    probe = msgspec.json.encode({"model": args.model, "input": ["ready?"]})
    with running(servers, work, probe):
        yield {server.name: server.url for server in servers}


def replace_part(doc: str, text: str) -> str:
    """``doc`` with what lies between the peer-table markers replaced by ``text``."""
    head, found, rest = doc.partition(BEGIN)
    if not found or END not in rest:
        raise ValueError(f"no {BEGIN} ... {END} part to replace")
    return head + BEGIN + "\n" + text + "\n" + END + rest.partition(END)[2]


if __name__ == "__main__":
    raise SystemExit(main())
