"""The server's own CPU cost per request and per item, against the HTTP stack it stands on.

On a GPU the model takes microseconds, so what a process can serve is decided by its own CPU
cost: HTTP, decoding, tokenisation, scheduling, pooling, encoding, logs. This harness measures
that cost on a CPU with a model whose forward pass costs next to nothing:

1. builds the *near-instant model*: a randomly initialised BERT (1 layer, width 32) with
   all-MiniLM-L6-v2's own tokenizer, exported by ``trt-async export --task embed`` (so the
   tokenisation is real and the forward pass costs microseconds);
2. starts each target on it: this checkout's server (``after``), optionally an earlier
   checkout's (``--before PATH``), the minimal Litestar + granian + msgspec app
   (:mod:`perf.minimal_app`, the floor of the stack), and infinity-emb on the same ONNX file
   when its executable is given (``--infinity``);
3. drives them with ``wrk`` (one thread) at two points, in alternating rounds: one short text
   a request from 64 connections, and 32 short texts a request from 16;
4. reads each server's CPU (all its processes and threads, from ``/proc``) over the run and
   divides by the requests served;
5. measures the per-item floor of the 32-text point in this process, in every round right
   after that round's runs (the machine's speed drifts within minutes): the bare
   tokenisation of the same texts with the model's tokenizer and the bare ONNX Runtime run
   of the batch (one thread), to which the minimal app's cost an item in that round is
   added;
6. with ``--control``, serves a second instance of this checkout (``after-again``): two
   servers of the same code differ by the noise of the run, and their ratio, round by round,
   is the band no other ratio of the run resolves; with ``--fresh``, every target is
   started anew for each round;
7. with ``--syscalls``, counts each target's system calls and context switches a request
   under each point's load (the kernel's own counters, read by ``perf stat``): on a VM where
   a thread handoff costs more than the work handed over, they say where CPU goes that no
   Python profile shows;
8. writes ``overhead.json`` and ``overhead.md`` under ``--out`` and, with ``--results``, the
   table into ``perf/RESULTS.md``.

    python -m perf.overhead --rounds 3 --seconds 10 --before ../checkout-at-old-commit \\
        --infinity ~/venvs/infinity/bin/infinity_emb --out perf/results/overhead \\
        --results perf/RESULTS.md

Every wrk run must end with no errors and no non-2xx answers, or the harness stops: a
throughput of refused requests is not a throughput. Without ``wrk`` on the PATH it stops and
says how to install it (Debian: ``apt install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from perf.servers import (
    REPO,
    Server,
    infinity,
    minimal,
    ours,
    process_tree,
    running,
    shown_command,
    tree_cpu_s,
)
from trt_async.backends.modelfiles import MANIFEST_NAME
from trt_async.tools.tiny_models import write_near_instant_embedder

MODEL_NAME = "tiny"

#: (name, texts a request, connections): the goals' two points, and one client alone (where
#: every request pays its thread handoffs by itself).
POINTS: dict[str, tuple[int, int]] = {
    "single-c64": (1, 64),
    "docs32-c16": (32, 16),
    "single-c1": (1, 1),
}
POINT_TITLES = {
    "single-c64": "1 short text, 64 connections",
    "docs32-c16": "32 short texts, 16 connections",
    "single-c1": "1 short text, 1 connection",
}


# -- the near-instant model ---------------------------------------------------------------------


def build_tiny_model(work: Path) -> Path:
    """Export the near-instant model into ``work`` once; return the exported folder."""
    out = work / "tiny-export"
    if (out / MANIFEST_NAME).is_file():
        return out
    hf = work / "tiny-hf"
    shutil.rmtree(hf, ignore_errors=True)
    write_near_instant_embedder(hf)
    subprocess.run(
        [sys.executable, "-m", "trt_async", "export", str(hf), "--task", "embed", "-o", str(out)],
        check=True,
        cwd=REPO,
    )
    return out


def write_config(model: Path, work: Path) -> Path:
    path = work / "tiny.yaml"
    path.write_text(
        f"embedding_models:\n  {MODEL_NAME}:\n    model_path: {json.dumps(str(model))}\n",
        encoding="utf-8",
    )
    return path


# -- the requests -------------------------------------------------------------------------------


def point_bodies(texts_per_request: int, count: int = 400, seed: int = 7) -> list[bytes]:
    """Seeded OpenAI embeddings bodies of one-sentence texts."""
    import msgspec

    from trt_async.bench.corpus import Corpus

    source = Corpus().source(seed, {"en": 1.0})
    out = []
    for _ in range(count):
        texts = [source.short() for _ in range(texts_per_request)]
        body = {"model": MODEL_NAME, "input": texts[0] if texts_per_request == 1 else texts}
        out.append(msgspec.json.encode(body))
    return out


def wrk_script(bodies: Sequence[bytes], path: Path) -> Path:
    """A wrk Lua script that posts ``bodies`` in turn."""

    def lua(body: bytes) -> str:
        return "[==[" + body.decode("utf-8") + "]==]"

    lines = ["local bodies = {", *(f"  {lua(b)}," for b in bodies), "}"]
    lines += [
        "local i = 0",
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        "request = function()",
        "  i = i % #bodies + 1",
        "  return wrk.format(nil, nil, nil, bodies[i])",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- servers ------------------------------------------------------------------------------------


# -- one run ------------------------------------------------------------------------------------

_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class RunResult:
    requests: int
    seconds: float
    requests_per_s: float
    items_per_s: float
    cpu_ms_per_request: float
    cpu_us_per_item: float
    server_cores: float
    client_cores: float
    latency_ms: dict[str, float]


def wrk_command(server: Server, script: Path, connections: int, seconds: float) -> list[str]:
    """wrk with one thread, ``connections`` connections and ``script``'s bodies against
    ``server``'s embeddings route for ``seconds``."""
    return [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        server.url + "/v1/embeddings",
    ]


def run_wrk(
    server: Server, script: Path, connections: int, seconds: float, items: int
) -> RunResult:
    assert server.process is not None
    before_cpu = tree_cpu_s(server.process.pid)
    before_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [*wrk_command(server, script, connections, seconds), "--latency"],
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    cpu = tree_cpu_s(server.process.pid) - before_cpu
    after_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after_client.ru_utime - before_client.ru_utime) + (
        after_client.ru_stime - before_client.ru_stime
    )
    out = done.stdout
    problems = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", out)
    if problems:
        raise RuntimeError(f"{server.name}: wrk saw {problems}:\n{out}")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    wrk_seconds = float(re.search(r"requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    latency = {p: float(v) * _UNITS[u] for p, v, u in _LATENCY.findall(out)}
    return RunResult(
        requests=total,
        seconds=wrk_seconds,
        requests_per_s=total / wrk_seconds,
        items_per_s=total * items / wrk_seconds,
        cpu_ms_per_request=1000.0 * cpu / total,
        cpu_us_per_item=1e6 * cpu / (total * items),
        server_cores=cpu / elapsed,
        client_cores=client / elapsed,
        latency_ms=latency,
    )


# -- the per-item floor -------------------------------------------------------------------------


def item_floor(model: Path, bodies: Sequence[bytes], repeats: int = 200) -> dict[str, float]:
    """CPU µs an item of the 32-text point that no server can avoid: tokenising the texts with
    the model's tokenizer (one by one and with ``encode_batch``, parallelism off) and one
    ONNX Runtime run of the padded batch on one thread."""
    import msgspec
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    texts = [list(msgspec.json.decode(b)["input"]) for b in bodies[:repeats]]
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    n = sum(len(t) for t in texts)

    def cpu() -> float:
        return time.process_time()

    start = cpu()
    for batch in texts:
        for text in batch:
            tok.encode(text)
    one_by_one = 1e6 * (cpu() - start) / n
    start = cpu()
    encoded = [tok.encode_batch(batch) for batch in texts]
    batched = 1e6 * (cpu() - start) / n
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model / "model.onnx"), options)
    names = {i.name for i in session.get_inputs()}
    feeds = []
    for batch in encoded:
        length = max(len(e.ids) for e in batch)
        ids = np.zeros((len(batch), length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(batch):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        feeds.append(feed)
    session.run(None, feeds[0])
    start = cpu()
    for feed in feeds:
        session.run(None, feed)
    onnx = 1e6 * (cpu() - start) / n
    return {
        "tokenize_one_by_one_us": one_by_one,
        "tokenize_batch_us": batched,
        "onnxruntime_us": onnx,
    }


# -- system calls ------------------------------------------------------------------------------

#: What ``perf stat`` counts: every system call entered, and every context switch, of the
#: server's processes (all their threads).
KERNEL_EVENTS = ("raw_syscalls:sys_enter", "context-switches")


def syscall_run(server: Server, script: Path, connections: int, seconds: float) -> dict[str, float]:
    """System calls and context switches a request, counted by the kernel over the middle of
    a wrk run at ``connections`` (from 0.5 s after its start to 0.5 s before its end: the
    requests of that window are estimated from the run's steady rate)."""
    assert server.process is not None
    pids = ",".join(str(pid) for pid in process_tree(server.process.pid))
    load = subprocess.Popen(
        wrk_command(server, script, connections, seconds),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(0.5)
    window = seconds - 1.0
    stat = subprocess.run(
        [
            "perf",
            "stat",
            "-x,",
            "-e",
            ",".join(KERNEL_EVENTS),
            "-p",
            pids,
            "--",
            "sleep",
            f"{window:g}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out, _ = load.communicate(timeout=seconds + 60)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    wrk_seconds = float(re.search(r"requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    requests = total / wrk_seconds * window
    counts = kernel_counts(stat.stderr)
    return {
        "requests_per_s": total / wrk_seconds,
        "syscalls_per_request": counts["raw_syscalls:sys_enter"] / requests,
        "context_switches_per_request": counts["context-switches"] / requests,
    }


def kernel_counts(perf_stat_csv: str) -> dict[str, int]:
    """Each of :data:`KERNEL_EVENTS`'s counts from ``perf stat -x,``'s output (``count,unit,
    event,...`` a line); an event missing, or counted as ``<not supported>``, is an error."""
    counts = {}
    for line in perf_stat_csv.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in KERNEL_EVENTS and fields[0].isdigit():
            counts[fields[2]] = int(fields[0])
    if set(counts) != set(KERNEL_EVENTS):
        raise RuntimeError(
            f"perf stat counted {sorted(counts)}, not {KERNEL_EVENTS}:\n{perf_stat_csv}"
        )
    return counts


def syscalls_text(report: dict[str, Any]) -> str:
    """The kernel counters' table, per point and target, as Markdown."""
    counted: dict[str, dict[str, dict[str, float]]] = report.get("syscalls", {})
    if not counted:
        return ""
    names = [n for n in report["targets"] if any(n in per for per in counted.values())]
    lines = [
        "| system calls / context switches a request (one run each, after the rounds) | "
        + " | ".join(names)
        + " |",
        "|---|" + "---|" * len(names),
    ]
    for point, per_target in counted.items():
        cells = [
            (
                f"{per_target[n]['syscalls_per_request']:.1f} / "
                f"{per_target[n]['context_switches_per_request']:.2f}"
                if n in per_target
                else "–"
            )
            for n in names
        ]
        lines.append(f"| {POINT_TITLES[point]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- profiles ----------------------------------------------------------------------------------


def py_spy() -> Path | None:
    """py-spy's executable: on the PATH, or beside this Python's (a venv not activated)."""
    found = shutil.which("py-spy")
    if found is not None:
        return Path(found)
    beside = Path(sys.executable).with_name("py-spy")
    return beside if beside.exists() else None


def profile_run(
    server: Server, script: Path, connections: int, seconds: float, items: int, out: Path
) -> dict[str, Any]:
    """Load ``server`` as a measured run does while ``py-spy`` samples every thread of its
    processes (native frames off, idle samples off); the top frames, self and inclusive."""
    assert server.process is not None
    spy = subprocess.Popen(
        [
            str(py_spy()),
            "record",
            "--pid",
            str(server.process.pid),
            "--subprocesses",
            "--threads",
            "--nonblocking",
            "--rate",
            "250",
            "--duration",
            f"{seconds:g}",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    run_wrk(server, script, connections, seconds, items)
    spy.wait(timeout=seconds + 60)
    return top_frames(out)


#: Leaf frames where a thread waits for work: samples there are idle, not cost.
IDLE_LEAVES = ("Condition.wait (", "Queue.get (", "_worker (concurrent/futures/thread.py:81)")
#: Frames that only start processes and threads: on the stack of every sample under them.
PLUMBING = (
    "<frozen runpy>",
    "multiprocessing/",
    "threading.py",
    "concurrent/futures/thread.py",
    "trt_async/cli.py",
    "trt_async/__main__.py",
    "trt_async/http/serve.py",
    "granian/server/common.py",
    "granian/server/mp.py:93",
    "granian/server/mp.py:513",
)


def top_frames(raw: Path, count: int = 10) -> dict[str, Any]:
    """Shares of the busy samples per frame from py-spy's raw (collapsed) output, for the
    event loop's thread (MainThread of the serving process) and for all other threads
    together: where samples were (self) and which frames were on the stack (inclusive,
    leaving out the frames that only start processes and threads). Samples whose leaf waits
    for work are idle and left out. On the event loop's thread, granian's frame that runs
    the loop (``_spawn_asgi_lifespan_worker``) as a leaf is granian's and uvloop's own work
    in native code, and the loop's waits in epoll, which py-spy cannot tell apart."""
    groups: dict[str, dict[str, dict[str, int]]] = {}
    totals: dict[str, int] = {}
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread (")), "")
        frames = [f for f in frames if not f.startswith(("process ", "thread ("))]
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            continue
        group = "event loop" if thread.endswith(": MainThread") else "other threads"
        tables = groups.setdefault(group, {"self": {}, "inclusive": {}})
        samples = int(n)
        totals[group] = totals.get(group, 0) + samples
        tables["self"][frames[-1]] = tables["self"].get(frames[-1], 0) + samples
        for frame in set(frames):
            if not any(part in frame for part in PLUMBING):
                tables["inclusive"][frame] = tables["inclusive"].get(frame, 0) + samples
    everything = sum(totals.values()) or 1
    out: dict[str, Any] = {}
    for group, tables in groups.items():
        total = totals[group]
        inclusive = tables["inclusive"]
        out[group] = {
            "share_of_busy_samples": round(100.0 * total / everything, 1),
            **{
                kind: [
                    (frame, round(100.0 * n / total, 1))
                    for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:count]
                ]
                for kind, table in (("self", tables["self"]), ("inclusive", inclusive))
            },
        }
    return out


# -- the report ---------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _span(values: Sequence[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}–{hi:{fmt}}"


def summarise(report: dict[str, Any]) -> str:
    """The table of the run: per point and target, req/s and CPU a request (range over
    rounds), and the ratios the goals are stated in (medians of per-round ratios)."""
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = report["rounds"]
    names: list[str] = report["targets"]
    lines = [
        "| load | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for point, per_target in rounds.items():
        items = POINTS[point][0]
        cells = []
        for name in names:
            runs = per_target.get(name, [])
            if not runs:
                cells.append("–")
                continue
            rps = [r["requests_per_s"] for r in runs]
            cpu = [r["cpu_ms_per_request"] for r in runs]
            cell = f"{_span(rps, ',.0f')} req/s; {_span(cpu, '.3f')} ms CPU a request"
            if items > 1:
                per_item = [r["cpu_us_per_item"] for r in runs]
                cell += f" ({_span(per_item, '.0f')} µs an item)"
            cells.append(cell)
        lines.append(f"| {POINT_TITLES[point]} | " + " | ".join(cells) + " |")
    lines.append("")
    ratios = report.get("ratios", {})
    if ratios:
        lines.append("| ratio (median of per-round ratios) | " + " | ".join(ratios) + " |")
        lines.append("|---|" + "---|" * len(ratios))
        for point in rounds:
            row = [
                (f"{ratios[k][point]:.2f}" if ratios[k].get(point) is not None else "–")
                for k in ratios
            ]
            lines.append(f"| {POINT_TITLES[point]} | " + " | ".join(row) + " |")
        lines.append("")
    load = report.get("load")
    if load:
        lines.append(
            f"Load average at the start {load['start']}, at the end {load['end']} (2 CPUs: "
            "other work on the machine moves absolute figures; compare within a round)."
        )
        lines.append("")
    floors = report.get("floors")
    if floors:
        lines.append(floor_text(floors))
        lines.append("")
    control = control_text(report)
    if control:
        lines.append(control)
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def profiles_text(report: dict[str, Any]) -> str:
    """The sampled profiles' top frames, per target, point and thread group, as Markdown."""
    out = []
    for target, points in report.get("profiles", {}).items():
        for point, groups in points.items():
            for group, tables in groups.items():
                out.append(
                    f"\n### {target}, {POINT_TITLES[point]}: {group} "
                    f"({tables['share_of_busy_samples']} % of busy samples)\n"
                )
                out.append("| self | % | inclusive | % |\n|---|---|---|---|")
                for (own, a), (incl, b) in zip(tables["self"], tables["inclusive"], strict=False):
                    out.append(f"| `{own}` | {a} | `{incl}` | {b} |")
    return "\n".join(out) + ("\n" if out else "")


def ratios(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Medians over rounds of: after's CPU a request over the minimal app's, over before's
    and over the control's (``after-again``); after's req/s over infinity's and over
    before's; after's CPU an item over the floor measured in the same round (32-text
    point)."""
    rounds = report["rounds"]
    out: dict[str, dict[str, float | None]] = {}

    def per_round(point: str, a: str, b: str, key: str, invert: bool = False) -> float | None:
        runs_a, runs_b = rounds[point].get(a), rounds[point].get(b)
        if not runs_a or not runs_b:
            return None
        values = [
            (y[key] / x[key]) if invert else (x[key] / y[key])
            for x, y in zip(runs_a, runs_b, strict=False)
        ]
        return _median(values)

    targets = report["targets"]
    if "minimal" in targets:
        out["after CPU / minimal CPU"] = {
            p: per_round(p, "after", "minimal", "cpu_ms_per_request") for p in rounds
        }
    if "before" in targets:
        out["after CPU / before CPU"] = {
            p: per_round(p, "after", "before", "cpu_ms_per_request") for p in rounds
        }
        out["after req/s / before req/s"] = {
            p: per_round(p, "after", "before", "requests_per_s") for p in rounds
        }
    if "infinity" in targets:
        out["after req/s / infinity req/s"] = {
            p: per_round(p, "after", "infinity", "requests_per_s") for p in rounds
        }
    if "after-again" in targets:
        out["after CPU / after-again CPU"] = {
            p: per_round(p, "after", "after-again", "cpu_ms_per_request") for p in rounds
        }
    floors = [f for f in report.get("floors", []) if "total_us" in f]
    runs = rounds.get("docs32-c16", {}).get("after", [])
    if floors and runs:
        # Each round's CPU an item over the floor measured right after that round.
        value = _median(
            [r["cpu_us_per_item"] / f["total_us"] for r, f in zip(runs, floors, strict=False)]
        )
        out["after CPU an item / floor"] = {p: value if p == "docs32-c16" else None for p in rounds}
    return out


def round_floor(
    model: Path, bodies: Sequence[bytes], minimal_runs: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """The per-item floor measured now, with the minimal app's CPU an item of the round
    just run (the last of ``minimal_runs``) added when it ran."""
    floor = item_floor(model, bodies)
    if minimal_runs:
        floor["minimal_us"] = minimal_runs[-1]["cpu_us_per_item"]
        floor["total_us"] = (
            min(floor["tokenize_one_by_one_us"], floor["tokenize_batch_us"])
            + floor["onnxruntime_us"]
            + floor["minimal_us"]
        )
    return floor


def floor_text(floors: Sequence[dict[str, float]]) -> str:
    """The floors of the rounds, each part as its range over rounds."""

    def part(key: str) -> str:
        values = [f[key] for f in floors if key in f]
        return _span(values, ".1f") if values else "–"

    return (
        f"Per-item floor of the 32-text point, measured after each round (CPU µs an item): "
        f"tokenisation {part('tokenize_one_by_one_us')} one by one, "
        f"{part('tokenize_batch_us')} with encode_batch; ONNX Runtime {part('onnxruntime_us')}"
        f" (one thread); the minimal app {part('minimal_us')}; total {part('total_us')}."
    )


def control_text(report: dict[str, Any]) -> str:
    """The control's ratios round by round: how far two instances of the same code differ
    in this run."""
    rounds = report["rounds"]
    lines = []
    for point, per_target in rounds.items():
        a, b = per_target.get("after"), per_target.get("after-again")
        if not a or not b:
            continue
        values = ", ".join(
            f"{x['cpu_ms_per_request'] / y['cpu_ms_per_request']:.2f}"
            for x, y in zip(a, b, strict=False)
        )
        lines.append(f"{POINT_TITLES[point]}: {values}")
    if not lines:
        return ""
    return (
        "Control (two instances of this checkout, `after` over `after-again`, CPU a request "
        "by round): " + "; ".join(lines) + ". Ratios of the run within that spread of 1.00 "
        "are not resolved by it."
    )


def write_results(path: Path, table: str, command: str) -> None:
    """Replace (or append) the overhead section of RESULTS.md."""
    begin, end = "<!-- overhead:begin -->", "<!-- overhead:end -->"
    section = f"{begin}\nCommand: `{command}`\n\n{table}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


# -- main ---------------------------------------------------------------------------------------


def make_servers(args: argparse.Namespace, config: Path, model: Path, work: Path) -> list[Server]:
    servers = [ours("after", config)]
    if args.control:
        servers.append(ours("after-again", config))
    if args.before is not None:
        servers.append(ours("before", config, args.before))
    servers.append(minimal())
    if args.infinity is not None:
        servers.append(infinity(args.infinity, model, work, MODEL_NAME))
    if args.only:
        servers = [s for s in servers if s.name in args.only]
    return servers


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each run")
    p.add_argument("--before", type=Path, help="a checkout of an earlier commit to serve too")
    p.add_argument("--infinity", type=Path, help="infinity-emb's infinity_emb executable")
    p.add_argument(
        "--control",
        action="store_true",
        help="serve a second instance of this checkout: the run's noise between equals",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start every target anew for each round (and once more for --syscalls/--profile)",
    )
    p.add_argument("--points", default=",".join(POINTS), help="comma-separated points")
    p.add_argument("--only", nargs="*", help="serve only these targets")
    p.add_argument("--work", type=Path, help="folder for the model and logs (default: temp)")
    p.add_argument("--out", type=Path, help="write overhead.json and overhead.md here")
    p.add_argument("--results", type=Path, help="write the table into this RESULTS.md")
    p.add_argument(
        "--profile",
        nargs="*",
        help="after the rounds, sample these targets under each point's load with py-spy",
    )
    p.add_argument(
        "--syscalls",
        action="store_true",
        help="after the rounds, count each target's system calls and context switches a "
        "request with perf stat (Debian: apt install linux-perf)",
    )
    args = p.parse_args(argv)
    if args.syscalls and shutil.which("perf") is None:
        print("--syscalls needs perf on the PATH (Debian: apt install linux-perf)", file=sys.stderr)
        return 2
    if args.profile and py_spy() is None:
        print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("perf.overhead needs wrk on the PATH (Debian: apt install wrk)", file=sys.stderr)
        return 2
    points = [x for x in args.points.split(",") if x]
    unknown = [x for x in points if x not in POINTS]
    if unknown:
        p.error(f"unknown points {unknown}; choose from {', '.join(POINTS)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(work)
    config = write_config(model, work)
    servers = make_servers(args, config, model, work)
    scripts = {
        point: wrk_script(point_bodies(POINTS[point][0]), work / f"{point}.lua") for point in points
    }
    probe = point_bodies(1, count=1)[0]
    report: dict[str, Any] = {
        "load": {"start": [round(x, 2) for x in os.getloadavg()]},
        "command": shown_command("python -m perf.overhead", argv or sys.argv[1:]),
        "targets": [s.name for s in servers],
        "rounds": {point: {} for point in points},
    }

    def one_round(r: int) -> None:
        order = servers if r % 2 == 0 else servers[::-1]
        for point in points:
            items, connections = POINTS[point]
            for server in order:
                if args.warmup > 0:
                    run_wrk(server, scripts[point], connections, args.warmup, items)
                got = run_wrk(server, scripts[point], connections, args.seconds, items)
                report["rounds"][point].setdefault(server.name, []).append(asdict(got))
                print(
                    f"round {r + 1} {point} {server.name}: {got.requests_per_s:,.0f} req/s, "
                    f"{got.cpu_ms_per_request:.3f} ms CPU a request "
                    f"({got.cpu_us_per_item:.1f} µs an item), server {got.server_cores:.2f} "
                    f"cores, wrk {got.client_cores:.2f}, p50 {got.latency_ms.get('50', 0):.2f}"
                    f" ms, p99 {got.latency_ms.get('99', 0):.2f} ms",
                    flush=True,
                )
            if point == "docs32-c16":
                floor = round_floor(
                    model, point_bodies(32), report["rounds"][point].get("minimal", [])
                )
                report.setdefault("floors", []).append(floor)
                print(f"round {r + 1} floor: {floor}", flush=True)

    def counters_and_profiles() -> None:
        if args.syscalls:
            for point in points:
                for server in servers:
                    counted = syscall_run(server, scripts[point], POINTS[point][1], args.seconds)
                    report.setdefault("syscalls", {}).setdefault(point, {})[server.name] = counted
                    print(
                        f"kernel counters {point} {server.name}: "
                        f"{counted['syscalls_per_request']:.1f} system calls, "
                        f"{counted['context_switches_per_request']:.2f} context switches a "
                        "request",
                        flush=True,
                    )
        for server in servers:
            if server.name not in (args.profile or ()):
                continue
            for point in points:
                items, connections = POINTS[point]
                raw = work / f"profile-{server.name}-{point}.txt"
                frames = profile_run(server, scripts[point], connections, args.seconds, items, raw)
                report.setdefault("profiles", {}).setdefault(server.name, {})[point] = frames
                print(f"profile {server.name} {point}:", flush=True)
                for group, tables in frames.items():
                    print(f" {group}: {tables['share_of_busy_samples']} % of busy samples")
                    for kind in ("self", "inclusive"):
                        for frame, share in tables[kind]:
                            print(f"  {kind:9s} {share:5.1f} %  {frame}", flush=True)

    if args.fresh:
        # Every round on newly started servers: what one process happened to be (its memory
        # layout, its threads' cores) is not carried from round to round.
        for r in range(args.rounds):
            with running(servers, work, probe):
                one_round(r)
        if args.syscalls or args.profile:
            with running(servers, work, probe):
                counters_and_profiles()
    else:
        with running(servers, work, probe):
            for r in range(args.rounds):
                one_round(r)
            counters_and_profiles()
    report["load"]["end"] = [round(x, 2) for x in os.getloadavg()]
    report["ratios"] = ratios(report)
    table = summarise(report)
    if "syscalls" in report:
        table += "\n\n" + syscalls_text(report)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "overhead.md").write_text(
            f"`{report['command']}`\n\n{table}\n{profiles_text(report)}", encoding="utf-8"
        )
    if args.results is not None:
        write_results(args.results, table, report["command"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
