"""From raw records to numbers: throughput, latency percentiles, errors, server time split.

Summaries are plain JSON-ready dicts so that the JSON report holds exactly what the
Markdown table and the plots are drawn from.
"""

from __future__ import annotations

import json
import math
import platform
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trt_async.bench.loadgen import TIMING_HEADERS, PhaseResult, Record

#: Latency percentiles reported, as (key, percentile).
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)


#: The fewest samples a percentile is reported from: below 1,000 samples p99.9 is only an
#: interpolation between the largest few values, so it is left out rather than printed.
MIN_SAMPLES: dict[str, int] = {"p99.9": 1000}


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float] | None:
    """p50/p90/p99 (p99.9 from 1,000 samples), max and mean in milliseconds; None when
    there is nothing."""
    if not latencies_s:
        return None
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    out = {
        key: float(np.percentile(ms, q))
        for key, q in PERCENTILES
        if len(ms) >= MIN_SAMPLES.get(key, 1)
    }
    out["max"] = float(ms.max())
    out["mean"] = float(ms.mean())
    return {k: round(v, 3) for k, v in out.items()}


def error_key(record: Record) -> str:
    """``"429"`` for an HTTP status, ``"0 timeout"`` for a transport failure, and so on."""
    if record.status == 0:
        return f"0 {record.error}"
    if 200 <= record.status < 300:
        return f"{record.status} {record.error}"  # a 2xx whose body was wrong
    return str(record.status)


def summarise(result: PhaseResult, **labels: Any) -> dict[str, Any]:
    """The numbers of one phase (``labels`` are copied in: name, mix, concurrency...)."""
    records = result.records
    ok = [r for r in records if r.ok]
    errors = Counter(error_key(r) for r in records if not r.ok)
    wall = result.wall_s
    items = sum(r.items for r in ok)
    token_counts = [r.tokens for r in ok]
    tokens = sum(t for t in token_counts if t is not None) if ok else 0
    tokens_known = bool(ok) and all(t is not None for t in token_counts)
    server: dict[str, dict[str, float]] = {}
    for key in TIMING_HEADERS:
        values = [r.server[key] for r in ok if key in r.server]
        if values:
            arr = np.asarray(values, dtype=np.float64)
            server[key] = {
                "mean": round(float(arr.mean()), 3),
                "p50": round(float(np.percentile(arr, 50)), 3),
                "p99": round(float(np.percentile(arr, 99)), 3),
                "coverage": round(len(values) / len(ok), 4),
            }
    rate = (lambda n: round(n / wall, 3)) if wall > 0 else (lambda n: 0.0)
    return {
        **labels,
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(sorted(errors.items())),
        "dropped": result.dropped,
        "warmup_requests": result.warmup_requests,
        "items": items,
        "tokens": tokens if tokens_known else None,
        "wall_s": round(wall, 4),
        "requests_per_s": rate(len(ok)),
        "offered_requests_per_s": (
            round(result.offered_per_s, 3) if result.offered_per_s is not None else None
        ),
        "items_per_s": rate(items),
        "tokens_per_s": rate(tokens) if tokens_known else None,
        "latency_ms": percentiles_ms([r.latency for r in ok]),
        "server_ms": server,
        "client_cpu_s": round(result.client_cpu_s, 3),
        "client_cpu_share": round(result.client_cpu_s / wall, 3) if wall > 0 else None,
    }


def merge(results: Iterable[PhaseResult]) -> PhaseResult:
    """Several phases (the rounds of one arm) as one: records pooled, walls summed."""
    results = list(results)
    records = [r for res in results for r in res.records]
    return PhaseResult(
        records,
        sum(r.wall_s for r in results),
        sum(r.client_cpu_s for r in results),
        sum(r.dropped for r in results),
        sum(r.warmup_requests for r in results),
    )


def padding_from_stats(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, reason: str = ""
) -> dict[str, Any]:
    """Padding efficiency and batch counts of one phase, from two model-stats snapshots."""
    if before is None or after is None:
        return {"available": False, "reason": reason or "the server reported no model stats"}
    keys = ("real_tokens", "padded_tokens", "batches", "items")
    if not all(k in before and k in after for k in keys[:2]):
        return {"available": False, "reason": "the model stats lack real_tokens/padded_tokens"}
    delta = {k: int(after[k]) - int(before[k]) for k in keys if k in before and k in after}
    out: dict[str, Any] = {"available": True, **delta}
    out["efficiency"] = (
        round(delta["real_tokens"] / delta["padded_tokens"], 4) if delta["padded_tokens"] else None
    )
    if delta.get("batches"):
        out["mean_batch_items"] = round(delta.get("items", 0) / delta["batches"], 3)
    hist_b = before.get("batches_by_bucket")
    hist_a = after.get("batches_by_bucket")
    if isinstance(hist_a, Mapping):
        hist_b = hist_b if isinstance(hist_b, Mapping) else {}
        diff = {k: int(v) - int(hist_b.get(k, 0)) for k, v in hist_a.items()}
        out["batches_by_bucket"] = {k: v for k, v in diff.items() if v > 0}
    return out


def compare(
    name: str,
    a_label: str,
    b_label: str,
    a_rounds: Sequence[dict[str, Any]],
    b_rounds: Sequence[dict[str, Any]],
    metric: str = "items_per_s",
    meaning: str = "",
) -> dict[str, Any]:
    """B against A over alternating rounds: per-round ratios and the ratio of the means."""
    a_vals = [float(r[metric]) for r in a_rounds]
    b_vals = [float(r[metric]) for r in b_rounds]
    ratios = [b / a if a > 0 else math.inf for a, b in zip(a_vals, b_vals, strict=False)]
    a_mean = float(np.mean(a_vals)) if a_vals else 0.0
    b_mean = float(np.mean(b_vals)) if b_vals else 0.0
    return {
        "name": name,
        "meaning": meaning,
        "metric": metric,
        "a": a_label,
        "b": b_label,
        "a_rounds": [round(v, 3) for v in a_vals],
        "b_rounds": [round(v, 3) for v in b_vals],
        "a_mean": round(a_mean, 3),
        "b_mean": round(b_mean, 3),
        "ratio_b_over_a": round(b_mean / a_mean, 4) if a_mean > 0 else None,
        "round_ratios": [round(r, 4) for r in ratios],
    }


def loadavg() -> list[float] | None:
    """The system load averages (1, 5, 15 min): other work on the machine shows here."""
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine() -> dict[str, Any]:
    import os

    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


# -- rendering --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _load(phase: Mapping[str, Any]) -> str:
    if phase.get("mode") == "open":
        return f"{phase.get('rate')}/s"
    if phase.get("mode") == "closed":
        return f"c={phase.get('concurrency')}"
    return str(phase.get("mode", ""))


def phases_table(phases: Sequence[Mapping[str, Any]]) -> str:
    head = (
        "| phase | target | mix | load | req/s | items/s | tokens/s | p50 ms | p90 ms | p99 ms "
        "| p99.9 ms | max ms | errors | queue / tok / inf p50 ms | padding eff. |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in phases:
        lat = p.get("latency_ms") or {}
        srv = p.get("server_ms") or {}
        split = " / ".join(
            _fmt((srv.get(k) or {}).get("p50"), 2) for k in ("queue", "tokenize", "inference")
        )
        pad = p.get("padding") or {}
        eff = pad.get("efficiency") if pad.get("available") else None
        errors = ", ".join(f"{k}: {v}" for k, v in (p.get("errors") or {}).items()) or "0"
        if p.get("dropped"):
            errors += f" (+{p['dropped']} dropped)"
        lines.append(
            f"| {p.get('name', '')} | {p.get('target', '')} | {p.get('mix', '')} | {_load(p)} "
            f"| {_fmt(p.get('requests_per_s'))} | {_fmt(p.get('items_per_s'))} "
            f"| {_fmt(p.get('tokens_per_s'), 0)} | {_fmt(lat.get('p50'))} | {_fmt(lat.get('p90'))} "
            f"| {_fmt(lat.get('p99'))} | {_fmt(lat.get('p99.9'))} | {_fmt(lat.get('max'))} "
            f"| {errors} | {split} | {_fmt(eff, 3)} |"
        )
    return "\n".join(lines)


def comparisons_table(comparisons: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| comparison | A | B | metric | A (mean) | B (mean) | B / A | per-round B / A |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        rounds = ", ".join(f"{r:.2f}" for r in c.get("round_ratios", []))
        lines.append(
            f"| {c['name']} | {c['a']} | {c['b']} | {c['metric']} | {_fmt(c['a_mean'])} "
            f"| {_fmt(c['b_mean'])} | {_fmt(c['ratio_b_over_a'], 3)} | {rounds} |"
        )
    return "\n".join(lines)


def markdown(report: Mapping[str, Any]) -> str:
    """The whole report as Markdown: setup, phases, comparisons, goals, notes, plots."""
    out = [f"# Benchmark `{report.get('run', '')}`", ""]
    m = report.get("machine") or {}
    out.append(
        f"Machine: {m.get('cpus')} CPUs, {m.get('machine')}, {m.get('system')}; "
        f"Python {m.get('python')}. Target: {report.get('target', '')}. "
        f"Seed {report.get('seed')}. Load average (1/5/15 min) at start "
        f"{report.get('loadavg_start')}, at end {report.get('loadavg_end')}."
    )
    out.append("")
    if report.get("phases"):
        out += ["## Phases", "", phases_table(report["phases"]), ""]
    if report.get("comparisons"):
        out += ["## Comparisons (alternating A/B rounds)", ""]
        out.append(comparisons_table(report["comparisons"]))
        out.append("")
        parity = report.get("peer_parity")
        if parity and parity.get("min_cosine") is not None:
            out.append(
                f"Peer parity: the same {parity['texts']} texts embedded by both servers; "
                f"lowest cosine between the two vectors of a text {parity['min_cosine']}."
            )
            out.append("")
        for c in report["comparisons"]:
            if c.get("meaning"):
                out.append(f"- **{c['name']}**: {c['meaning']}")
        out.append("")
    if report.get("goals"):
        out += ["## Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
        for g in report["goals"]:
            met = {True: "yes", False: "**no**", None: "n/a"}[g.get("met")]
            out.append(f"| {g['goal']} | {g['measured']} | {g['target']} | {met} |")
        out.append("")
    if report.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if report.get("plots"):
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"]] + [""]
    return "\n".join(out)


def write(report: Mapping[str, Any], folder: Path) -> dict[str, Path]:
    """``report.json`` (raw numbers) and ``report.md`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    return paths
