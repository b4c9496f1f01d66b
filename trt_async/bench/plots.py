"""PNG plots of a report (matplotlib, no display needed).

Each function draws from the report's JSON-ready dicts and returns the file it wrote, or
None when the report holds nothing to draw (a note says why in the report).
"""

from __future__ import annotations

import textwrap
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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


def _level(p: Phase) -> float:
    return float(p.get("concurrency") or p.get("rate") or 0.0)


def _level_label(p: Phase) -> str:
    if p.get("mode") == "open":
        return f"{p.get('rate', 0):g}/s"
    return f"c={p.get('concurrency')}"


def latency_vs_throughput(phases: Sequence[Phase], path: Path) -> Path | None:
    """p50 and p99 latency against achieved items/s, one colour per target and mix.

    Points are joined in order of offered load (concurrency, or arrival rate for the open
    loop) and labelled with it, so a curve that bends back (more load, less throughput)
    shows as such.
    """
    groups = {
        **{f"{k}, closed loop": v for k, v in _group(phases, "closed").items()},
        **{f"{k}, open loop (Poisson)": v for k, v in _group(phases, "open").items()},
    }
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (label, group) in enumerate(groups.items()):
        group = sorted(group, key=_level)
        colour = colours[n % len(colours)]
        x = [p["items_per_s"] for p in group]
        for key, style in (("p50", "-o"), ("p99", "--^")):
            y = [p["latency_ms"][key] for p in group]
            ax.plot(x, y, style, color=colour, label=f"{label}: {key}")
        for p in group:
            ax.annotate(
                _level_label(p),
                (p["items_per_s"], p["latency_ms"]["p50"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color=colour,
            )
    ax.set_xlabel("throughput (items/s)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_yscale("log")
    ax.set_title("Latency against throughput (points labelled with the offered load)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def percentiles_vs_concurrency(phases: Sequence[Phase], path: Path) -> Path | None:
    """Latency percentiles against the closed-loop concurrency."""
    groups = _group(phases, "closed")
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    levels: set[int] = set()
    for label, group in groups.items():
        group = sorted(group, key=lambda p: p["concurrency"])
        x = [p["concurrency"] for p in group]
        levels.update(x)
        for key in _PCT:
            if all(key in p["latency_ms"] for p in group):  # p99.9 needs 1,000 samples
                ax.plot(x, [p["latency_ms"][key] for p in group], "-o", label=f"{label}: {key}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted(levels)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("concurrency (requests in flight, log scale)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Latency percentiles against concurrency (closed loop)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def batch_histogram(histogram: Mapping[str, int], path: Path, title: str = "") -> Path | None:
    """Batches run by batch size (rows), from ``{"BxL": count}`` bucket counts.

    Left: how many batches of each size; right: the share of all items that ran in batches
    of each size (rows x count: what an item saw), with both means in the title.
    """
    fig = batch_figure(histogram, title)
    return None if fig is None else _save(fig, path)


def batch_figure(histogram: Mapping[str, int], title: str = "") -> Figure | None:
    """The figure of :func:`batch_histogram`; batch sizes and counts on integer ticks."""
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
    batches = sum(by_size.values())
    items = sum(s * c for s, c in by_size.items())
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(sizes, [by_size[s] for s in sizes], width=0.8)
    left.set_xlabel("batch size (rows per batch)")
    left.set_ylabel("batches")
    left.set_title(f"batches by size (mean {items / batches:.1f} rows)", fontsize=10)
    left.grid(True, axis="y", alpha=0.3)
    shares = [100 * s * by_size[s] / items for s in sizes]
    weighted = sum(s * s * by_size[s] for s in sizes) / items
    right.bar(sizes, shares, width=0.8, color="tab:green")
    right.set_xlabel("batch size (rows per batch)")
    right.set_ylabel("share of items (%)")
    right.set_title(f"items by the size of their batch (mean {weighted:.1f})", fontsize=10)
    right.grid(True, axis="y", alpha=0.3)
    for ax in (left, right):
        # Batch sizes are whole rows: a tick at each size run, or integers where they crowd.
        if len(sizes) <= 16:
            ax.set_xticks(sizes, [str(s) for s in sizes])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or "Batch sizes the scheduler formed")
    return fig


def comparisons_bars(comparisons: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """A against B (mean of the rounds, with each round as a dot) for every comparison."""
    if not comparisons:
        return None
    fig, axes = plt.subplots(1, len(comparisons), figsize=(4 * len(comparisons), 4.4))
    axes_list = list(axes) if len(comparisons) > 1 else [axes]
    for ax, c in zip(axes_list, comparisons, strict=True):
        ax.bar([0, 1], [c["a_mean"], c["b_mean"]], color=["tab:gray", "tab:blue"])
        for i, key in enumerate(("a_rounds", "b_rounds")):
            label = "each round" if i == 0 else None
            ax.plot([i] * len(c[key]), c[key], "k.", alpha=0.7, label=label)
        ax.set_xticks([0, 1], [textwrap.fill(str(c["a"]), 16), textwrap.fill(str(c["b"]), 16)])
        ax.tick_params(axis="x", labelsize=8)
        ratio = c.get("ratio_b_over_a")
        name = textwrap.fill(str(c["name"]), 30)
        ax.set_title(f"{name}\nB/A = {ratio:.2f}" if ratio else name, fontsize=9)
        ax.set_ylabel(_metric_label(str(c["metric"])))
        ax.legend(fontsize=7, loc="best")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("A/B comparisons: mean of alternating rounds (bars) and each round (dots)")
    return _save(fig, path)


def _metric_label(metric: str) -> str:
    return {"items_per_s": "throughput (items/s)", "requests_per_s": "requests/s"}.get(
        metric, metric.replace("_", " ")
    )
