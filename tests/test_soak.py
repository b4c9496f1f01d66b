"""The soak script's bookkeeping (the soak itself runs for minutes and is not part of CI)."""

from __future__ import annotations

import pytest

pytest.importorskip("aiohttp", reason="the load generator needs the bench extra")

from perf.soak import Samples, drift, markdown, parse_args, per_minute, summary
from trt_async.bench.loadgen import PhaseResult, Record


def records() -> list[Record]:
    out = []
    for second in range(150):  # two and a half minutes, one request a second
        latency = 0.010 if second < 60 else 0.020
        status = 503 if second == 100 else 200
        error = None if status == 200 else f"HTTP {status}"
        out.append(Record(1000.0 + second, 1000.0 + second + latency, status, 2, error=error))
    return out


def test_per_minute_splits_requests_latency_errors_and_rss() -> None:
    samples = Samples(rss=[(1000.0 + t, (100 + t // 60) * 2**20) for t in range(0, 150, 5)])
    rows = per_minute(records(), samples, 1000.0, 150)
    assert [r["minute"] for r in rows] == [1, 2, 3]
    assert [r["requests"] for r in rows] == [60, 60, 30]
    assert rows[0]["p99_ms"] == pytest.approx(10, abs=0.01)
    assert rows[1]["p99_ms"] == pytest.approx(20, abs=0.01)
    assert rows[1]["errors"] == {"503": 1} and rows[2]["errors"] == {}
    assert rows[0]["items_per_s"] == 2.0 and rows[2]["items_per_s"] == 2.0  # 30 s window
    assert [r["rss_mib"] for r in rows] == [100.0, 101.0, 102.0]

    rss = drift(rows, "rss_mib", warmup=1)
    assert rss == {"after_warmup": 101.0, "last": 102.0, "max": 102.0, "ratio": 1.01}
    assert drift(rows, "rss_mib", warmup=2) is None  # one value is no trend

    result = PhaseResult(records(), wall_s=150.0, client_cpu_s=1.0)
    s = summary(result, rows, warmup=1)
    assert s["requests"] == 150 and s["ok"] == 149 and s["errors"] == {"503": 1}
    report = {
        "url": "http://127.0.0.1:1",
        "model": "m",
        "mix": "realistic",
        "minutes": 2.5,
        "fraction": 0.8,
        "ramp": [
            {
                "concurrency": 4,
                "requests": 10,
                "items_per_s": 5.0,
                "errors": {},
                "latency_ms": {"p50": 1.0, "p99": 2.0},
            }
        ],
        "saturation_items_per_s": 5.0,
        "rate_requests_per_s": 2.0,
        "offered_items_per_s": 4.0,
        "rss_scrape_failures": 0,
        "soak": s,
        "per_minute": rows,
        "machine": {},
    }
    text = markdown(report)
    assert "| 3 | 30 | 2.0 |" in text and "80% of saturation" in text


def test_arguments_are_checked() -> None:
    assert parse_args([]).minutes == 10 and parse_args([]).fraction == 0.8
    with pytest.raises(SystemExit):
        parse_args(["--fraction", "0"])
