"""perf/peer_table.py: the table drawn from a run's rounds, and the published part replaced."""

from __future__ import annotations

import threading
import time

import pytest

from perf.peer_table import (
    BEGIN,
    CEILING,
    END,
    POINTS,
    bare_ceiling,
    best_ceiling,
    ceiling_batches,
    ceiling_texts,
    goals,
    main,
    replace_part,
    table,
)
from trt_async.backends.base import Lanes
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.bench.bare import BareBackend


def _round(items_per_s: float, p50: float, worst: float, errors: int = 0) -> dict[str, object]:
    latency = {"p50": p50, "p90": p50, "p99": 2 * p50, "max": worst, "mean": p50}
    return {"items_per_s": items_per_s, "requests": 10, "errors": errors, "latency_ms": latency}


def _ceiling(items_per_s: float) -> dict[str, object]:
    return {"items_per_s": items_per_s, "requests": 0, "errors": 0, "latency_ms": None}


def _report() -> dict[str, object]:
    rounds = {
        key: {
            "ours": [_round(200.0, 10.0, 30.0), _round(180.0, 12.0, 40.0)],
            "peer": [_round(100.0, 20.0, 50.0), _round(120.0, 22.0, 60.0, errors=1)],
            CEILING: [_ceiling(200.0), _ceiling(200.0)],
        }
        for key, *_ in POINTS
    }
    for one, ms in zip(rounds["single-c1"][CEILING], (8.0, 10.0), strict=True):
        one["batch_one_ms"] = ms
    return {
        "targets": {"ours": "http://127.0.0.1:1", "peer": "http://127.0.0.1:2"},
        "rounds": rounds,
        "ceilings": [{"by_cap": {"realistic": {"256": 150.0, "1024": 200.0}}}],
        "ceiling_caps": {"realistic": 1024},
        "machine": {"machine": "x86_64", "cpus": 2, "system": "Linux"},
        "load": {"start": [1.0, 1.0, 1.0], "end": [2.0, 1.0, 1.0]},
    }


def test_table_has_one_row_per_point_with_per_round_ratios() -> None:
    text = table(_report(), "python -m perf.peer_table --target ours=URL")
    points_table = text.split("\n\n")[2]  # command, machine, points, goals
    rows = [line for line in points_table.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(POINTS)
    first = rows[0].split(" | ")
    # Medians over rounds: 190 items/s, p50 11 ms, p99 22 ms, worst max 40 ms.
    assert first[1] == "190.0 (11.0 / 22 / 40)"
    assert first[2] == "110.0 (21.0 / 42 / 60), 1 errors"
    assert first[3] == "200.0"  # the ceiling's own items/s
    # Against the ceiling per round: 200/200 and 180/200, median 0.95.
    assert first[4] == "**0.95** (1.00, 0.90)"
    # Per-round ratios 2.00 and 1.50, their median 1.75.
    assert first[5].strip(" |") == "**1.75** (2.00, 1.50)"
    assert "`python -m perf.peer_table --target ours=URL`" in text
    assert "realistic 1024" in text and "realistic 256: 150, 1024: 200" in text


def test_the_load_generators_share_of_the_cpus_is_reported_where_measured() -> None:
    report = _report()
    assert "load generator" not in table(report, "cmd")  # older reports: not measured
    rounds = report["rounds"]
    assert isinstance(rounds, dict)
    for share, got in zip((0.02, 0.04), rounds["single-c64"]["ours"], strict=True):
        got["client_cpu_share"] = share
    text = table(report, "cmd")
    assert "load generator" in text and "1 text, 64 clients 3.0 %" in text


def test_a_run_of_some_points_draws_only_those() -> None:
    report = _report()
    rounds = report["rounds"]
    assert isinstance(rounds, dict)
    report["rounds"] = {key: rounds[key] for key in ("single-c64",)}
    text = table(report, "python -m perf.peer_table --points single-c64")
    rows = [line for line in text.split("\n\n")[2].splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| 1 text, 64 clients"]
    measured = [g for g, *_ in goals(report, "peer")]
    assert measured and all(g.startswith("1 text, 64 clients") for g in measured)


def test_unknown_points_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--target", "a=http://127.0.0.1:1", "--out", "x", "--points", "single-c65"])
    assert exit_info.value.code == 2
    assert "--points: unknown single-c65" in capsys.readouterr().err


def test_goals_are_computed_from_the_rounds_and_can_fail() -> None:
    rows = {g: (got, met) for g, got, _, met in goals(_report(), "peer")}
    # 0.95 exactly is met; the per-round median decides, not the medians' ratio.
    assert rows["1 text, 64 clients: ours / bare ceiling"] == ("0.950", True)
    # Per-round ratios 2.00 and 1.50: median 1.75 >= 1.5.
    assert rows["1 text, 1 client: ours / peer"] == ("1.750", True)
    # p50 10 and 12 ms against one bare text of 8 and 10 ms: 1.25 and 1.2, median 1.225 > 1.2.
    one = next(k for k in rows if k.startswith("1 client:"))
    assert rows[one] == ("1.225", False)
    # p99 is 2x p50 in every round (met); the worst max 40 ms is 3.6x the median p50 11.
    assert rows["1 text, 64 clients: p99 / p50"] == ("2.000", True)
    assert rows["1 text, 64 clients: max / p50"] == ("3.636", False)


def test_replace_part_swaps_only_the_marked_part() -> None:
    doc = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    assert replace_part(doc, "new") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    with pytest.raises(ValueError, match="peer-table"):
        replace_part("no markers here", "new")


class _Bare:
    """The part of BareBackend the ceiling uses: a text of n words is n tokens."""

    def __init__(self, lanes: Lanes | None = None) -> None:
        self.grid = BucketGrid([1, 2, 4, 8, 32], [8, 16, 64], max_batch_tokens=256)
        self.lanes = lanes or Lanes()
        self.ran: list[tuple[Bucket, list[int]]] = []
        self.threads_by_lane: dict[int, set[int]] = {}

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [list(range(len(t.split()))) for t in texts]

    def run_batch(self, bucket: Bucket, items: list[list[int]], lane: int = 0) -> None:
        self.ran.append((bucket, [len(e) for e in items]))
        self.threads_by_lane.setdefault(lane, set()).add(threading.get_ident())
        time.sleep(0.001)  # let the other lane's thread take turns

    # The real lane handling, run against this stand-in's batches.
    on_lanes = BareBackend.on_lanes
    run = BareBackend.run


def test_the_ceiling_runs_every_parallel_lane_from_its_own_thread_or_the_solo_lane() -> None:
    bare = _Bare(Lanes(2, solo=True))
    batches = [["w w"], ["w w w"]] * 10
    assert bare_ceiling(bare, batches, 0.1) > 0  # type: ignore[arg-type]
    assert sorted(bare.threads_by_lane) == [0, 1]
    threads = [t for lane in (0, 1) for t in bare.threads_by_lane[lane]]
    assert len(threads) == len(set(threads)) == 2  # a thread of its own per lane
    bare.threads_by_lane.clear()
    assert bare_ceiling(bare, batches, 0.05, parallel=False) > 0  # type: ignore[arg-type]
    assert list(bare.threads_by_lane) == [2]  # the solo lane, one batch at a time
    # A fixed list runs once, batch by batch, over the lanes.
    bare.ran.clear()
    fixed = [(Bucket(1, 8), [[0, 1]]), (Bucket(2, 8), [[0], [0, 1, 2]]), (Bucket(1, 16), [[0] * 9])]
    assert bare.run(fixed).items == 4  # type: ignore[arg-type]
    assert sorted(b.batch * 100 + b.length for b, _ in bare.ran) == [108, 116, 208]
    assert best_ceiling({"256": 90.0, "1024": 100.0, "solo 1024": 95.0}) == (1024, True)
    assert best_ceiling({"256": 90.0, "solo 256": 95.0}) == (256, False)


def test_ceiling_batches_are_sorted_and_each_padded_to_its_own_longest_item() -> None:
    bare = _Bare()
    texts = [" ".join(["w"] * n) for n in [60, 3, 5, 7, 2, 9, 12, 4] * 8]
    batches = ceiling_batches(bare, texts)  # type: ignore[arg-type]
    lengths = [len(t.split()) for b in batches for t in b]
    assert lengths == sorted(lengths)
    # At most 256 tokens in a batch of a grid size: 32 rows of 8, 8 of 16, 4 of 64.
    assert [len(b) for b in batches] == [32, 8, 8, 8, 4, 4]
    rate = bare_ceiling(bare, batches, 0.05)  # type: ignore[arg-type]
    assert rate > 0 and len(bare.ran) >= len(batches)
    for bucket, items in bare.ran:
        assert bucket.length == bare.grid.length_for(max(items))
        assert bucket.batch == bare.grid.batch_for(len(items))
    # A token cap shortens batches further: 32 tokens is 4 rows of 8, 2 of 16, 1 of 64.
    capped = ceiling_batches(bare, texts, 32)  # type: ignore[arg-type]
    assert [len(b) for b in capped] == [4] * 10 + [2] * 8 + [1] * 8
    # Every batch is run in turn before any repeats, longest first.
    first = [tuple(items) for _, items in bare.ran[: len(batches)]]
    assert first == [tuple(len(t.split()) for t in b) for b in batches][::-1]


def test_the_ceiling_counts_whole_passes_only() -> None:
    """A clock cut would count whichever batches it let in (0.62-1.10x a whole pass on this
    machine): every batch runs once a pass, and passes end it."""
    bare = _Bare(Lanes(2, solo=True))
    texts = [" ".join(["w"] * n) for n in [60, 3, 5, 7, 2, 9, 12, 4] * 8]
    batches = ceiling_batches(bare, texts)  # type: ignore[arg-type]
    for seconds in (0.0, 0.03):
        bare.ran.clear()
        assert bare_ceiling(bare, batches, seconds) > 0  # type: ignore[arg-type]
        assert len(bare.ran) % len(batches) == 0 and len(bare.ran) >= len(batches)
    assert len(bare.ran) > len(batches)  # 30 ms is more than one pass of 1-ms batches
    passes = len(bare.ran) // len(batches)
    ran = sorted(tuple(items) for _, items in bare.ran)
    assert ran == sorted(tuple(len(t.split()) for t in b) for b in batches * passes)


def test_the_ceiling_sample_keeps_the_spread_of_lengths() -> None:
    bare = _Bare()
    texts = [" ".join(["w"] * n) for n in range(1, 101)]  # 5050 tokens
    sample = ceiling_texts(bare, texts, 505)  # type: ignore[arg-type]
    lengths = [len(t.split()) for t in sample]
    assert len(lengths) == 10 and lengths == sorted(lengths)
    assert lengths[0] <= 10 and lengths[-1] >= 91  # both ends, not a prefix
    assert abs(sum(lengths) / len(lengths) - 50.5) <= 1.0
    assert ceiling_texts(bare, texts[:5], 505) == texts[:5]  # fewer tokens: all of them
