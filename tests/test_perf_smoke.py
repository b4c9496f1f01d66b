"""``trt-async bench --smoke --serve`` end to end on the embedded model (a real granian).

Asserts that the report is complete and consistent, not how fast anything was.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _ordered(lat: dict[str, float], requests: int) -> bool:
    # p99.9 is reported from 1,000 samples on; the smoke plan's phases are shorter.
    assert ("p99.9" in lat) == (requests >= 1000)
    values = [lat[k] for k in ("p50", "p90", "p99", "p99.9", "max") if k in lat]
    return values == sorted(values) and values[0] > 0


def _check_phase(p: dict[str, Any]) -> None:
    name = p["name"]
    assert p["requests"] > 0, name
    assert p["errors"] == {}, f"{name}: {p['errors']}"
    assert p["ok"] == p["requests"], name
    assert p["dropped"] == 0, name
    assert p["items_per_s"] > 0 and p["requests_per_s"] > 0, name
    assert p["items"] >= p["ok"], name
    assert p["items_per_s"] == pytest.approx(p["items"] / p["wall_s"], rel=1e-3, abs=1e-3)
    assert p["tokens"] is not None and p["tokens"] >= p["items"], name  # usage counted
    assert _ordered(p["latency_ms"], p["ok"]), name
    if p["mode"] == "open":  # the achieved rate stays within the offered one
        assert p["requests_per_s"] <= p["offered_requests_per_s"], name
    for key in ("queue", "tokenize", "inference", "total"):
        split = p["server_ms"][key]
        assert split["coverage"] == 1.0 and split["p50"] >= 0, (name, key)
    pad = p["padding"]
    assert pad["available"], name
    assert 0 < pad["efficiency"] <= 1, name
    assert sum(pad["batches_by_bucket"].values()) == pad["batches"] > 0, name
    # Every item of the phase ran in a batch the stats counted (no other traffic); the
    # embedder reranks by embedding the query with the documents: one item more a request.
    assert p["warmup_requests"] == 0
    assert pad["items"] == p["items"] + (p["ok"] if p["mix"] == "rerank" else 0), name


def test_bench_smoke_against_our_server(minilm_model_dir: Path, tmp_path: Path) -> None:
    from trt_async.cli import build_parser
    from trt_async.tools.embedded import embedded_config_yaml

    config = tmp_path / "config.yaml"
    config.write_text(embedded_config_yaml(minilm_model_dir), encoding="utf-8")
    args = build_parser().parse_args(
        ["bench", "--smoke", "--serve", "--config", str(config), "--out", str(tmp_path),
         "--run-name", "smoke"]
    )  # fmt: skip
    assert args.func(args) == 0

    folder = tmp_path / "smoke"
    rep = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert rep["models"] == {
        "embedding": "all-MiniLM-L6-v2",
        "rerank": "all-MiniLM-L6-v2-rerank",
        "nli": None,
    }
    phases = rep["phases"]
    names = [p["name"] for p in phases]
    assert {"sweep c=1", "sweep c=4", "mix short", "mix docs32", "mix rerank"} <= set(names)
    assert any(p["mode"] == "open" for p in phases)
    for p in phases:
        _check_phase(p)
    by_name = {p["name"]: p for p in phases}
    assert by_name["mix docs32"]["items"] == 32 * by_name["mix docs32"]["ok"]
    serial = [p for p in phases if p["name"].startswith("(a) serial")]
    assert serial and all(
        all(k.startswith("1x") for k in p["padding"]["batches_by_bucket"]) for p in serial
    )  # batch size 1 only
    padmax = [p for p in phases if p["name"].startswith("(b) pad to")]
    max_length = int(padmax[0]["name"].split("pad to ")[1].split()[0]) if padmax else 0
    assert padmax and all(
        k.endswith(f"x{max_length}") for p in padmax for k in p["padding"]["batches_by_bucket"]
    )
    assert padmax[0]["padding"]["efficiency"] < by_name["sweep c=4"]["padding"]["efficiency"]

    comparisons = {c["key"]: c for c in rep["comparisons"]}
    assert set(comparisons) == {"a", "b", "c"}  # (d) needs a peer
    for c in comparisons.values():
        assert c["ratio_b_over_a"] > 0 and len(c["round_ratios"]) == rep["plan"]["rounds"]
    assert comparisons["c"]["batches"] == "replayed from the server's stats"
    assert comparisons["c"]["bare_rounds"][0]["items"] == sum(
        p["padding"]["items"] for p in phases if p["name"].startswith("(c) server")
    )
    assert len(rep["goals"]) == 4 and all(g["measured"] is not None for g in rep["goals"])
    assert any("(d) skipped" in n for n in rep["notes"])

    md = (folder / "report.md").read_text(encoding="utf-8")
    assert "| sweep c=1 | ours | realistic | c=1 |" in md and "## Goals" in md
    assert len(rep["plots"]) >= 4
    for plot in rep["plots"]:
        assert (folder / plot).read_bytes()[:4] == b"\x89PNG", plot
        assert f"({plot})" in md
    assert (folder / "server.yaml").is_file() and (folder / "server.log").is_file()

    # The server was stopped: its port is free again.
    port = urlparse(rep["target"].split(" at ")[-1]).port
    assert port is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_gc_pauses_runs_both_arms(minilm_model_dir: Path, tmp_path: Path) -> None:
    from perf.gc_pauses import main
    from trt_async.core.config import LOG_LEVEL_ENV
    from trt_async.tools.embedded import embedded_config_yaml

    config = tmp_path / "config.yaml"
    config.write_text(embedded_config_yaml(minilm_model_dir), encoding="utf-8")
    out = tmp_path / "gc.json"
    argv = ["--config", str(config), "--requests", "24", "--concurrency", "4", "--rounds", "1"]
    before = os.environ.get(LOG_LEVEL_ENV)
    main([*argv, "--json", str(out)])
    # It quiets the access log for itself only: later apps in this process log requests.
    assert os.environ.get(LOG_LEVEL_ENV) == before
    result = json.loads(out.read_text(encoding="utf-8"))
    served, defaults = result["arms"]["served"][0], result["arms"]["defaults"][0]
    assert served["requests"] == defaults["requests"] == 24
    # Served, the loaded app's objects are out of every generation the collector walks.
    assert served["tracked_at_start"] * 2 < defaults["tracked_at_start"]
    assert set(served["pause_ms_per_1000_requests"]) == {"gen0", "gen1", "gen2"}


def test_ceiling_sampling_measures_every_mix_and_cap_three_ways(
    minilm_model_dir: Path, tmp_path: Path
) -> None:
    from perf.ceiling_sampling import CAPS, MIXES, main
    from trt_async.tools.embedded import embedded_config_yaml

    config = tmp_path / "config.yaml"
    config.write_text(embedded_config_yaml(minilm_model_dir), encoding="utf-8")
    argv = ["--config", str(config), "--pool", "16", "--seconds", "0.1", "--rounds", "1"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    runs = json.loads((tmp_path / "out" / "table.json").read_text(encoding="utf-8"))
    assert sorted(runs) == sorted(MIXES)
    for caps in runs.values():
        assert sorted(caps, key=int) == [str(c) for c in CAPS]
        for got in caps.values():
            assert sorted(got) == ["all", "cut", "sample"]
            assert all(len(v) == 1 and v[0] > 0 for v in got.values())
    assert "| realistic | 256 |" in (tmp_path / "out" / "table.md").read_text(encoding="utf-8")
