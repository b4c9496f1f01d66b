"""``perf/overhead.py``: its profile reading, its table and ratios, and the minimal app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from perf.minimal_app import create_minimal_app
from perf.overhead import (
    control_text,
    kernel_counts,
    point_bodies,
    ratios,
    summarise,
    syscalls_text,
    top_frames,
)


def test_top_frames_splits_the_loop_from_other_threads_and_drops_idle_samples(
    tmp_path: Path,
) -> None:
    loop = 'process 1:"x";thread (11): MainThread;<module> (<frozen runpy>:88)'
    worker = 'process 1:"x";thread (12): batch-0;Thread.run (threading.py:982)'
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "\n".join(
            [
                f"{loop};handler (trt_async/http/routes.py:1);decode (x.py:2) 30",
                f"{loop};handler (trt_async/http/routes.py:1) 10",
                f"{worker};run (onnxruntime.py:5) 40",
                f"{worker};Condition.wait (threading.py:327) 500",  # idle: not counted
            ]
        )
        + "\n"
    )
    frames = top_frames(raw)
    loop_frames, other = frames["event loop"], frames["other threads"]
    assert loop_frames["share_of_busy_samples"] == 50.0  # 40 of the 80 busy samples
    assert loop_frames["self"][0] == ("decode (x.py:2)", 75.0)
    assert ("handler (trt_async/http/routes.py:1)", 100.0) in loop_frames["inclusive"]
    # Frames that only start processes and threads are not listed as inclusive cost.
    assert not any("runpy" in f for f, _ in loop_frames["inclusive"])
    assert other["self"] == [("run (onnxruntime.py:5)", 100.0)]


def _run(rps: float, cpu_ms: float, per_item: float = 0.0) -> dict[str, Any]:
    return {"requests_per_s": rps, "cpu_ms_per_request": cpu_ms, "cpu_us_per_item": per_item}


def test_ratios_are_medians_of_per_round_ratios_and_the_table_shows_ranges() -> None:
    report: dict[str, Any] = {
        "targets": ["after", "before", "minimal"],
        "rounds": {
            "single-c64": {
                "after": [_run(100, 0.20), _run(90, 0.30), _run(110, 0.25)],
                "before": [_run(50, 0.40), _run(60, 0.40), _run(55, 0.50)],
                "minimal": [_run(500, 0.10), _run(400, 0.10), _run(450, 0.10)],
            }
        },
    }
    got = ratios(report)
    # Round by round: 0.5, 0.75, 0.5 -> median 0.5 (not 0.25 / 0.4333).
    assert got["after CPU / before CPU"]["single-c64"] == 0.5
    assert got["after CPU / minimal CPU"]["single-c64"] == 2.5
    assert got["after req/s / before req/s"]["single-c64"] == 2.0
    report["ratios"] = got
    text = summarise(report)
    assert "| 1 short text, 64 connections | 90–110 req/s; 0.200–0.300 ms CPU a request" in text


def test_the_floor_ratio_pairs_each_round_with_the_floor_measured_after_it() -> None:
    floor = {"tokenize_one_by_one_us": 30.0, "tokenize_batch_us": 28.0, "onnxruntime_us": 7.0}
    report: dict[str, Any] = {
        "targets": ["after", "minimal"],
        "rounds": {
            "docs32-c16": {
                "after": [_run(10, 2.0, 60.0), _run(10, 2.0, 80.0), _run(10, 2.0, 70.0)],
                "minimal": [_run(10, 0.2, 5.0)] * 3,
            }
        },
        # The machine slowed in the last round: its floor too.
        "floors": [
            {**floor, "minimal_us": 5.0, "total_us": 40.0},
            {**floor, "minimal_us": 5.0, "total_us": 40.0},
            {**floor, "minimal_us": 5.0, "total_us": 50.0},
        ],
    }
    got = ratios(report)
    # Round by round 1.5, 2.0, 1.4 -> 1.5; a floor apart from its round's run would not
    # give it (the median run over the median floor is 70 / 40 = 1.75).
    assert got["after CPU an item / floor"]["docs32-c16"] == 1.5
    report["ratios"] = got
    assert "total 40.0–50.0." in summarise(report)


def test_the_control_is_two_instances_of_the_same_code_round_by_round() -> None:
    report: dict[str, Any] = {
        "targets": ["after", "after-again"],
        "rounds": {
            "single-c64": {
                "after": [_run(100, 0.26), _run(100, 0.30), _run(100, 0.24)],
                "after-again": [_run(100, 0.20), _run(100, 0.30), _run(100, 0.30)],
            }
        },
    }
    got = ratios(report)
    assert got["after CPU / after-again CPU"]["single-c64"] == 1.0  # 1.3, 1.0, 0.8
    text = control_text(report)
    assert "1 short text, 64 connections: 1.30, 1.00, 0.80" in text
    report["ratios"] = got
    assert text in summarise(report)


def test_the_minimal_app_answers_the_openai_body_with_a_vector_per_input() -> None:
    with TestClient(create_minimal_app()) as client:
        for body in (point_bodies(1, count=1)[0], point_bodies(32, count=1)[0]):
            answer = client.post(
                "/v1/embeddings", content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 200
            data = msgspec.json.decode(answer.content)["data"]
            sent = msgspec.json.decode(body)["input"]
            assert len(data) == (1 if isinstance(sent, str) else len(sent))
            assert len(data[0]["embedding"]) == 32


def test_kernel_counts_read_perf_stat_csv_and_refuse_what_it_could_not_count() -> None:
    # As perf stat -x, writes them (count, unit, event, run time, share of it counted, ...).
    csv = "109,,raw_syscalls:sys_enter,1440197,100.00,,\n1,,context-switches,1440197,100.00,,\n"
    assert kernel_counts(csv) == {"raw_syscalls:sys_enter": 109, "context-switches": 1}
    # A VM without the tracepoint says so in the count's place: no figure is made up.
    with pytest.raises(RuntimeError, match="perf stat counted"):
        kernel_counts("<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n" + csv.split("\n")[1])
    report = {
        "targets": ["after", "minimal"],
        "syscalls": {
            "single-c64": {
                "after": {"syscalls_per_request": 18.14, "context_switches_per_request": 5.351},
                "minimal": {"syscalls_per_request": 6.1, "context_switches_per_request": 2.02},
            }
        },
    }
    assert "| 1 short text, 64 connections | 18.1 / 5.35 | 6.1 / 2.02 |" in syscalls_text(report)
