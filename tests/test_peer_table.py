"""perf/peer_table.py: the table drawn from a run's rounds, and the published part replaced."""

from __future__ import annotations

import pytest

from perf.peer_table import BEGIN, END, POINTS, replace_part, table


def _round(items_per_s: float, p50: float, worst: float, errors: int = 0) -> dict[str, object]:
    latency = {"p50": p50, "p90": p50, "p99": 2 * p50, "max": worst, "mean": p50}
    return {"items_per_s": items_per_s, "requests": 10, "errors": errors, "latency_ms": latency}


def _report() -> dict[str, object]:
    rounds = {
        key: {
            "ours": [_round(200.0, 10.0, 30.0), _round(180.0, 12.0, 40.0)],
            "peer": [_round(100.0, 20.0, 50.0), _round(120.0, 22.0, 60.0, errors=1)],
        }
        for key, *_ in POINTS
    }
    return {
        "targets": {"ours": "http://127.0.0.1:1", "peer": "http://127.0.0.1:2"},
        "rounds": rounds,
        "ceiling_items_per_s": [210.0, 190.0, 200.0],
        "machine": {"machine": "x86_64", "cpus": 2, "system": "Linux"},
        "load": {"start": [1.0, 1.0, 1.0], "end": [2.0, 1.0, 1.0]},
    }


def test_table_has_one_row_per_point_with_per_round_ratios() -> None:
    text = table(_report(), "python -m perf.peer_table --target ours=URL")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "load" not in line]
    assert len(rows) == len(POINTS)
    first = rows[0].split(" | ")
    # Medians over rounds: 190 items/s, p50 11 ms, p99 22 ms, worst max 40 ms.
    assert first[1] == "190.0 (11.0 / 22 / 40)"
    assert first[2] == "110.0 (21.0 / 42 / 60), 1 errors"
    assert first[3] == "0.95"  # 190 over the median ceiling of 200
    # Per-round ratios 2.00 and 1.50, their median 1.75.
    assert first[4].strip(" |") == "**1.75** (2.00, 1.50)"
    assert "`python -m perf.peer_table --target ours=URL`" in text
    assert "median 200" in text


def test_replace_part_swaps_only_the_marked_part() -> None:
    doc = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    assert replace_part(doc, "new") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    with pytest.raises(ValueError, match="peer-table"):
        replace_part("no markers here", "new")
