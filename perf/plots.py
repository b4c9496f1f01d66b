"""PNG plots of a report (matplotlib, no display needed).

Each function draws from the report's JSON-ready dicts and returns the file it wrote, or
None when the report holds nothing to draw (a note says why in the report).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Phase = Mapping[str, Any]

_PCT = ("p50", "p90", "p99", "p99.9")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _group(phases: Sequence[Phase], mode: str) -> dict[str, list[Phase]]:
    groups: dict[str, list[Phase]] = defaultdict(list)
    for p in phases:
        if p.get("mode") == mode and p.get("latency_ms") and p.get("sweep"):
            groups[f"{p.get('target', '')} {p.get('mix', '')}".strip()].append(p)
    return groups


def latency_vs_throughput(phases: Sequence[Phase], path: Path) -> Path | None:
    """p50 and p99 latency against achieved items/s, one curve per target and mix."""
    groups = {
        **_group(phases, "closed"),
        **{f"{k} (open)": v for k, v in _group(phases, "open").items()},
    }
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in groups.items():
        group = sorted(group, key=lambda p: p["items_per_s"])
        x = [p["items_per_s"] for p in group]
        for key, style in (("p50", "-o"), ("p99", "--^")):
            ax.plot(x, [p["latency_ms"][key] for p in group], style, label=f"{label} {key}")
    ax.set_xlabel("throughput (items/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Latency against throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def percentiles_vs_concurrency(phases: Sequence[Phase], path: Path) -> Path | None:
    """Latency percentiles against the closed-loop concurrency."""
    groups = _group(phases, "closed")
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in groups.items():
        group = sorted(group, key=lambda p: p["concurrency"])
        x = [p["concurrency"] for p in group]
        for key in _PCT:
            ax.plot(x, [p["latency_ms"][key] for p in group], "-o", label=f"{label} {key}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency percentiles against concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def batch_histogram(histogram: Mapping[str, int], path: Path, title: str = "") -> Path | None:
    """Batches run by batch size (rows), from ``{"BxL": count}`` bucket counts."""
    by_size: Counter[int] = Counter()
    for bucket, count in histogram.items():
        try:
            size = int(str(bucket).lower().split("x")[0])
        except ValueError:
            continue
        by_size[size] += int(count)
    if not by_size:
        return None
    sizes = sorted(by_size)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(sizes, [by_size[s] for s in sizes], width=0.8)
    ax.set_xlabel("batch size (items per batch)")
    ax.set_ylabel("batches")
    ax.set_title(title or "Batch sizes the scheduler formed")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def comparisons_bars(comparisons: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """A against B (mean of the rounds, with each round as a dot) for every comparison."""
    if not comparisons:
        return None
    fig, axes = plt.subplots(1, len(comparisons), figsize=(3.2 * len(comparisons), 4))
    axes_list = list(axes) if len(comparisons) > 1 else [axes]
    for ax, c in zip(axes_list, comparisons, strict=True):
        ax.bar([0, 1], [c["a_mean"], c["b_mean"]], color=["tab:gray", "tab:blue"])
        for i, key in enumerate(("a_rounds", "b_rounds")):
            ax.plot([i] * len(c[key]), c[key], "k.", alpha=0.7)
        ax.set_xticks([0, 1], [c["a"], c["b"]], fontsize=7, rotation=10)
        ratio = c.get("ratio_b_over_a")
        ax.set_title(f"{c['name']}\nB/A = {ratio:.2f}" if ratio else c["name"], fontsize=9)
        ax.set_ylabel(c["metric"].replace("_", " "))
    return _save(fig, path)
