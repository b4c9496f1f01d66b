"""The load harness on synthetic data: corpus, workloads, load generator, report, plots.

No model: the HTTP side is a tiny aiohttp server on a free loopback port, in the test's own
loop, whose handler answers like our server (OpenAI and Cohere shapes, timing headers) with a
known delay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from trt_async.bench import plots, report
from trt_async.bench.corpus import Corpus, word_count
from trt_async.bench.loadgen import (
    LoadClient,
    PhaseResult,
    Record,
    make_client,
    poisson_schedule,
    run_closed,
    run_open,
    send,
)
from trt_async.bench.run import _home_as_tilde
from trt_async.bench.server import StatsReader, extract_model_stats
from trt_async.bench.workload import MIXES, Targets, build_requests, retarget

TARGETS = Targets("emb", "rr", "nli")
ROOT = Path(__file__).resolve().parent.parent


def test_corpus_is_deterministic_and_has_both_languages() -> None:
    a = Corpus().source(7)
    b = Corpus().source(7)
    texts_a = [a.realistic() for _ in range(300)]
    assert texts_a == [b.realistic() for _ in range(300)]
    assert texts_a != [Corpus().source(8).realistic() for _ in range(300)]
    assert any("\u4e00" <= ch <= "\u9fff" for t in texts_a for ch in t)
    assert any(t.isascii() for t in texts_a)
    long = [a.long() for _ in range(20)]
    assert all(word_count(t) >= 250 for t in long)
    words = sorted(word_count(t) for t in texts_a)
    assert 10 <= words[len(words) // 2] <= 60  # median near 25 words
    assert words[-1] > 3 * words[len(words) // 2]  # a long tail


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_build_requests(mix: str) -> None:
    reqs = build_requests(mix, TARGETS, 20, seed=3)
    assert reqs == build_requests(mix, TARGETS, 20, seed=3)
    assert len(reqs) == 20
    for r in reqs:
        body = json.loads(r.body)
        if mix == "rerank":
            assert r.path == "/v1/rerank"
            assert 10 <= len(body["documents"]) <= 100
            assert r.items == len(body["documents"])
            assert body["model"] == "rr" and body["query"]
        elif mix == "nli":
            assert r.path == "/infer/nli"
            assert len(body["premises"]) == len(body["hypotheses"]) == r.items == 8
        else:
            assert r.path == "/v1/embeddings" and body["model"] == "emb"
            n = 32 if mix == "docs32" else 1
            assert r.items == n
            assert (len(body["input"]) if n > 1 else 1) == n


def test_rerank_documents_between_10_and_100() -> None:
    sizes = [r.items for r in build_requests("rerank", TARGETS, 200, seed=1)]
    assert min(sizes) >= 10 and max(sizes) <= 100 and len(set(sizes)) > 20


def test_retarget_keeps_the_stream() -> None:
    reqs = build_requests("docs32", TARGETS, 5, seed=1)
    other = retarget(reqs, "emb-serial")
    for a, b in zip(reqs, other, strict=True):
        ja, jb = json.loads(a.body), json.loads(b.body)
        assert jb.pop("model") == "emb-serial"
        ja.pop("model")
        assert ja == jb and a.items == b.items


def test_mix_needing_a_model_refuses_without_it() -> None:
    with pytest.raises(ValueError, match="NLI"):
        build_requests("nli", Targets("emb"), 1, seed=1)


# -- load generator against a tiny in-process server -------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _serve(handler: Handler, connections: int = 64) -> AsyncIterator[LoadClient]:
    """An aiohttp server on a free loopback port answering every POST with ``handler``, and
    a :class:`LoadClient` pointed at it."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with make_client(str(server.make_url("")), connections) as client:
            yield client
    finally:
        await server.close()


def _answer(delay_s: float = 0.002, fail_every: int = 0) -> Handler:
    """Answers like our server: OpenAI and Cohere shapes, usage, timing headers."""
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        await asyncio.sleep(delay_s)
        if fail_every and count % fail_every == 0:
            return web.json_response({"error": {"message": "busy"}}, status=429)
        assert request.content_type == "application/json"
        body = json.loads(await request.read())
        headers = {
            "x-queue-time": "0.5",
            "x-tokenization-time": "0.1",
            "x-inference-time": "1.2",
            "x-total-time": "1.9",
        }
        if request.path == "/v1/rerank":
            docs = body["documents"]
            results = [{"index": i, "relevance_score": 0.5} for i in range(len(docs))]
            payload = {"results": results, "usage": {"total_tokens": 10 * len(docs)}}
            return web.json_response(payload, headers=headers)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "embedding": [0.0] * 4, "index": i} for i in range(len(inputs))
        ]
        usage = {"prompt_tokens": 7 * len(inputs), "total_tokens": 7 * len(inputs)}
        return web.json_response({"data": data, "usage": usage}, headers=headers)

    return handler


async def test_send_reads_rows_usage_and_timing_headers() -> None:
    async with _serve(_answer()) as client:
        spec = build_requests("docs32", TARGETS, 1, seed=1)[0]
        record = await send(client, spec)
        rerank = await send(client, build_requests("rerank", TARGETS, 1, seed=1)[0])
    assert record.ok and record.items == 32 and record.tokens == 7 * 32
    assert record.server == {"queue": 0.5, "tokenize": 0.1, "inference": 1.2, "total": 1.9}
    assert record.latency > 0
    assert rerank.ok and rerank.tokens == 10 * rerank.items


async def test_send_flags_a_short_answer() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": [{"embedding": [1.0], "index": 0}]})

    async with _serve(handler) as client:
        record = await send(client, build_requests("docs32", TARGETS, 1, seed=1)[0])
    assert not record.ok and record.error == "1 rows for 32 items"


async def test_send_counts_errors_by_status_and_transport() -> None:
    async def garbled(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"not json", content_type="application/json")

    spec = build_requests("short", TARGETS, 1, seed=1)[0]
    async with _serve(_answer(delay_s=0, fail_every=1)) as client:
        busy = await send(client, spec)
    async with _serve(garbled) as client:
        unreadable = await send(client, spec)
    async with (
        _serve(_answer(delay_s=0.5)) as client,
        LoadClient(client.base_url, 4, timeout_s=0.1) as impatient,
    ):
        timed_out = await send(impatient, spec)
    async with LoadClient("http://127.0.0.1:1", 4) as nowhere:
        refused = await send(nowhere, spec)
    assert (busy.status, busy.error) == (429, "HTTP 429")
    assert unreadable.status == 200 and unreadable.error == "unreadable body"
    assert (timed_out.status, timed_out.error) == (0, "timeout")
    assert refused.status == 0 and refused.error and not refused.ok


async def test_base_url_prefix_and_api_key_are_kept() -> None:
    seen: list[tuple[str, str | None]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.get("authorization")))
        return web.json_response({"data": [{"index": 0}]})

    spec = build_requests("short", TARGETS, 1, seed=1)[0]
    async with (
        _serve(handler) as client,
        make_client(client.base_url + "/api/", 2, api_key="k") as prefixed,
    ):
        record = await send(prefixed, spec)
        status, _ = await prefixed.get("/health")
    assert record.ok and status == 200
    assert seen == [("/api/v1/embeddings", "Bearer k"), ("/api/health", "Bearer k")]


async def test_closed_loop_is_bounded_by_count_and_keeps_concurrency() -> None:
    in_flight = 0
    peak = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return web.json_response({"data": [{"index": 0}], "usage": {"total_tokens": 3}})

    reqs = build_requests("short", TARGETS, 10, seed=1)
    async with _serve(handler) as client:
        result = await run_closed(client, reqs, concurrency=8, duration_s=30, max_requests=50)
    assert len(result.records) == 50  # the 10-request stream is reused
    assert peak == 8
    assert result.wall_s < 5
    assert all(r.ok and r.tokens == 3 for r in result.records)


async def test_closed_loop_is_bounded_by_time() -> None:
    reqs = build_requests("short", TARGETS, 10, seed=1)
    async with _serve(_answer(delay_s=0.01)) as client:
        start = time.perf_counter()
        result = await run_closed(client, reqs, concurrency=2, duration_s=0.3, max_requests=10**6)
        elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert 10 < len(result.records) < 100


async def test_open_loop_poisson_rate_and_drops() -> None:
    reqs = build_requests("short", TARGETS, 10, seed=1)
    async with _serve(_answer(delay_s=0.001)) as client:
        result = await run_open(client, reqs, rate=200, duration_s=1.0, max_requests=10**6, seed=1)
    async with _serve(_answer(delay_s=0.5)) as client:
        slow = await run_open(
            client, reqs, rate=200, duration_s=0.3, max_requests=10**6, max_outstanding=5
        )
    assert 140 <= len(result.records) <= 260  # Poisson(200) over 1 s
    assert result.dropped == 0
    assert len(slow.records) == 5 and slow.dropped > 20
    # The schedule offers the rate asked for, and the achieved rate is measured over the
    # whole schedule plus the drain, so it cannot exceed it.
    assert len(result.records) == 200 and result.offered_per_s == 200
    s = report.summarise(result, mode="open", rate=200)
    assert s["offered_requests_per_s"] == 200
    assert s["requests_per_s"] <= s["offered_requests_per_s"]
    assert slow.wall_s >= 0.5  # the drain of the slow answers counts


async def test_open_loop_capped_by_count_still_offers_its_rate() -> None:
    reqs = build_requests("short", TARGETS, 10, seed=1)
    async with _serve(_answer(delay_s=0.001)) as client:
        result = await run_open(client, reqs, rate=100, duration_s=10, max_requests=25, seed=3)
    assert len(result.records) == 25
    assert result.offered_per_s == pytest.approx(100)
    assert 0.25 <= result.wall_s < 0.5  # 25 arrivals at 100/s, not spread over 10 s
    assert report.summarise(result)["requests_per_s"] <= 100


def test_poisson_schedule_has_exponential_gaps_and_the_exact_count() -> None:
    times = poisson_schedule(50.0, 40.0, random.Random(5))
    assert len(times) == 2000 and times == sorted(times)
    assert times[0] >= 0 and times[-1] <= 40.0
    gaps = np.diff(times)
    assert np.mean(gaps) == pytest.approx(1 / 50, rel=0.05)
    # Exponential gaps: standard deviation equal to the mean (coefficient of variation 1).
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.08)
    assert poisson_schedule(50.0, 40.0, random.Random(5)) == times  # seeded
    assert len(poisson_schedule(0.1, 1.0, random.Random(5))) == 1  # at least one arrival


async def test_stats_reader_finds_the_stats_route() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path != "/models/status":
            return web.json_response({"detail": "not found"}, status=404)
        stats = {"real_tokens": 9, "padded_tokens": 10}
        return web.json_response({"models": [{"name": "emb", "stats": stats}]})

    async with _serve(handler) as client:
        reader = StatsReader(client)
        assert await reader.snapshot() == {"emb": {"real_tokens": 9, "padded_tokens": 10}}
        assert reader.route == "/models/status"

    async with _serve(_answer(delay_s=0, fail_every=1)) as client:
        reader = StatsReader(client)
        assert await reader.snapshot() is None and "real_tokens" in reader.reason


# -- report ------------------------------------------------------------------------------------


def _synthetic(n: int = 1000, errors: int = 10) -> PhaseResult:
    records = [
        Record(start=i * 0.01, end=i * 0.01 + 0.001 * (1 + i % 100), status=200, items=2,
               tokens=20, server={"queue": 1.0, "inference": 2.0})
        for i in range(n)
    ]  # fmt: skip
    records += [Record(start=0.5, end=0.6, status=429, items=2) for _ in range(errors)]
    records.append(Record(start=0.5, end=0.6, status=0, items=2, error="timeout"))
    return PhaseResult(records, wall_s=10.0, client_cpu_s=1.0)


def test_summary_counts_add_up_and_percentiles_are_ordered() -> None:
    s = report.summarise(_synthetic(), name="x", mode="closed", concurrency=4)
    assert s["requests"] == s["ok"] + sum(s["errors"].values()) == 1011
    assert s["errors"] == {"0 timeout": 1, "429": 10}
    assert s["items"] == 2000 and s["tokens"] == 20000
    assert s["items_per_s"] == 200.0 and s["requests_per_s"] == 100.0
    assert s["tokens_per_s"] == 2000.0
    lat = s["latency_ms"]
    order = [lat["p50"], lat["p90"], lat["p99"], lat["p99.9"], lat["max"]]
    assert order == sorted(order)
    assert "p99.9" not in report.summarise(_synthetic(999, 0))["latency_ms"]  # too few
    assert lat["p50"] == pytest.approx(50.5, abs=1) and lat["max"] == pytest.approx(100)
    assert s["server_ms"]["queue"]["mean"] == 1.0 and s["server_ms"]["inference"]["p50"] == 2.0
    assert "tokenize" not in s["server_ms"]
    assert s["client_cpu_share"] == 0.1


def test_summary_of_a_phase_without_success() -> None:
    s = report.summarise(PhaseResult([Record(0, 1, 503, 1)], 1.0, 0.1))
    assert s["ok"] == 0 and s["latency_ms"] is None and s["errors"] == {"503": 1}


def test_padding_from_stats() -> None:
    before = {"real_tokens": 100, "padded_tokens": 200, "batches": 2, "items": 4,
              "batches_by_bucket": {"2x50": 2}}  # fmt: skip
    after = {"real_tokens": 1000, "padded_tokens": 1200, "batches": 12, "items": 44,
             "batches_by_bucket": {"2x50": 2, "4x64": 10}}  # fmt: skip
    p = report.padding_from_stats(before, after)
    assert p["efficiency"] == 0.9 and p["batches"] == 10 and p["mean_batch_items"] == 4.0
    assert p["batches_by_bucket"] == {"4x64": 10}
    missing = report.padding_from_stats(None, None, "no route")
    assert missing == {"available": False, "reason": "no route"}


def test_compare_ratio() -> None:
    c = report.compare("x", "A", "B", [{"items_per_s": 10}, {"items_per_s": 20}],
                       [{"items_per_s": 30}, {"items_per_s": 60}])  # fmt: skip
    assert c["ratio_b_over_a"] == 3.0 and c["round_ratios"] == [3.0, 3.0]


def test_extract_model_stats_from_any_listing() -> None:
    listing = {"ready": True, "models": [
        {"name": "a", "stats": {"real_tokens": 1, "padded_tokens": 2}},
        {"name": "b", "stats": {"queued_items": 0}},
    ]}  # fmt: skip
    assert extract_model_stats(listing) == {"a": {"real_tokens": 1, "padded_tokens": 2}}
    assert extract_model_stats({"data": [{"id": "x"}]}) == {}


def test_kept_files_name_no_home_folder(tmp_path: Path) -> None:
    kept = tmp_path / "server.yaml"
    kept.write_text(f"model_path: {Path.home() / '.cache' / 'm'}\n", encoding="utf-8")
    _home_as_tilde(kept)
    assert kept.read_text(encoding="utf-8") == f"model_path: {Path('~') / '.cache' / 'm'}\n"
    _home_as_tilde(tmp_path / "missing.log")  # no file: nothing to do


def test_markdown_json_and_plots(tmp_path: Path) -> None:
    phases = []
    for c in (1, 4, 16):
        s = report.summarise(_synthetic(200, 0), name=f"sweep c={c}", target="ours",
                             mix="realistic", mode="closed", concurrency=c, sweep=True)  # fmt: skip
        s["padding"] = {"available": True, "efficiency": 0.9}
        phases.append(s)
    comp = report.compare("a vs b", "A", "B", [{"items_per_s": 1.0}], [{"items_per_s": 3.0}])
    drawn = [
        plots.latency_vs_throughput(phases, tmp_path / "lt.png"),
        plots.percentiles_vs_concurrency(phases, tmp_path / "pc.png"),
        plots.batch_histogram({"4x64": 3, "8x32": 5, "4x32": 1}, tmp_path / "bh.png"),
        plots.comparisons_bars([comp], tmp_path / "cmp.png"),
    ]
    for path in drawn:
        assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.batch_histogram({}, tmp_path / "none.png") is None
    fig = plots.batch_figure({"1x16": 7, "2x16": 1, "3x32": 2, "8x64": 3})
    assert fig is not None
    for ax in fig.axes:
        assert [t for t in ax.get_xticks() if t != int(t)] == []  # whole batch sizes only
    assert list(fig.axes[0].get_xticks()) == [1, 2, 3, 8]
    assert [t for t in fig.axes[0].get_yticks() if t != int(t)] == []  # whole batch counts
    many = plots.batch_figure({f"{b}x16": 1 for b in range(1, 33)})
    assert many is not None and all(t == int(t) for t in many.axes[0].get_xticks())
    rep = {"run": "t", "phases": phases, "comparisons": [comp], "plots": ["lt.png"],
           "goals": [{"goal": "g", "measured": 3.0, "target": "≥ 3", "met": True}]}  # fmt: skip
    paths = report.write(rep, tmp_path)
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "| sweep c=16 | ours | realistic | c=16 |" in md
    assert "| a vs b | A | B | items_per_s |" in md and "![lt](lt.png)" in md
    assert msgspec.json.decode(paths["json"].read_bytes())["phases"][0]["ok"] == 200


# -- the command line without the bench and test extras ----------------------------------------

#: Modules of the bench and test extras: a quick-start install (``.[cpu,export]``) lacks them.
NOT_IN_QUICK_START = ("aiohttp", "matplotlib", "httpx", "yarl", "pytest", "openai")

#: Python run in a subprocess first: any import of those modules fails as if not installed.
_WITHOUT_EXTRAS = f"""
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {NOT_IN_QUICK_START!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


def _without_extras(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_server_imports_nothing_from_the_bench_or_test_extras() -> None:
    run = _without_extras(
        """
        import importlib, pkgutil, trt_async
        failed = []
        for m in pkgutil.walk_packages(trt_async.__path__, "trt_async."):
            if m.name == "trt_async.__main__":
                continue
            try:
                importlib.import_module(m.name)
            except ModuleNotFoundError as exc:
                failed.append(m.name)
        print(",".join(failed))
        from trt_async.cli import main
        assert main(["serve", "--help"]) == 0
        """
    )
    assert run.returncode == 0, run.stderr
    failed = run.stdout.splitlines()[0].split(",")
    # Only the harness itself needs the extra; serve, export, build and the CLI do not.
    harness = {"loadgen", "plots", "report", "run", "server"}
    assert set(failed) == {f"trt_async.bench.{m}" for m in harness}
    assert "usage: trt-async serve" in run.stdout


def test_bench_without_the_extra_says_which_extra_to_install() -> None:
    run = _without_extras(
        """
        from trt_async.cli import main
        raise SystemExit(main(["bench", "--serve"]))
        """
    )
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "trt-async bench needs the bench extra (aiohttp is not installed): "
        "pip install 'trt-async[bench]'"
    ]
    helped = _without_extras("from trt_async.cli import main; main(['bench', '--help'])")
    assert helped.returncode == 0 and "--peer-url" in helped.stdout, helped.stderr


def test_other_missing_modules_are_not_blamed_on_the_bench_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trt_async.bench import cli

    # A None entry makes the import raise ModuleNotFoundError naming that module.
    monkeypatch.setitem(sys.modules, "trt_async.bench.run", None)
    with pytest.raises(ModuleNotFoundError, match=r"trt_async\.bench\.run"):
        cli._run(argparse.Namespace())


def test_the_bench_extra_brings_the_modules_the_hint_names() -> None:
    from trt_async.bench.cli import EXTRA_MODULES

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    bench = pyproject["project"]["optional-dependencies"]["bench"]
    names = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0] for req in bench}
    assert names == set(EXTRA_MODULES)


def test_bare_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    from trt_async.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: trt-async") and all(
        cmd in out for cmd in ("serve", "export", "build", "bench")
    )


def test_results_go_outside_the_package_by_default() -> None:
    from trt_async.bench.cli import DEFAULT_OUT
    from trt_async.cli import build_parser

    args = build_parser().parse_args(["bench", "--serve"])
    assert args.out == DEFAULT_OUT and not args.out.is_absolute()
    assert args.out.parts[0] not in ("perf", "trt_async")


# -- the peer's vectors are checked before comparing with it -------------------------------------


def _vectors(embed: Callable[[str], list[float]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        data = [{"index": i, "embedding": embed(t)} for i, t in enumerate(body["input"])]
        return web.json_response({"data": data[::-1]})  # any order: rows carry their index

    return handler


def _same_model(text: str) -> list[float]:
    return [float(len(text)), float(text.count("e")) + 1.0, 1.0]


async def _parity(ours: Handler, theirs: Handler, tmp_path: Path) -> Any:
    from trt_async.bench.plan import PLANS
    from trt_async.bench.run import Bench

    args = argparse.Namespace(
        model="emb", rerank_model=None, nli_model=None, seed=1, peer_model="peer-emb",
        encoding_format="float", serve=False, peer_url="peer", api_key=None,
    )  # fmt: skip
    async with _serve(ours) as a, _serve(theirs) as b:
        bench = Bench(args, PLANS["smoke"], a.base_url, tmp_path, model_configs={}, variants=None)
        await bench.peer_parity(a, b)
    return bench


async def test_peer_parity_passes_for_the_same_vectors(tmp_path: Path) -> None:
    bench = await _parity(_vectors(_same_model), _vectors(_same_model), tmp_path)
    parity = bench.extra["peer_parity"]
    assert parity["texts"] == 16 and parity["min_cosine"] == pytest.approx(1.0)
    assert bench.notes == []


async def test_peer_parity_flags_another_model(tmp_path: Path) -> None:
    def other(text: str) -> list[float]:
        return [1.0, float(len(text)), 0.0]

    bench = await _parity(_vectors(_same_model), _vectors(other), tmp_path)
    assert bench.extra["peer_parity"]["min_cosine"] < 0.999
    assert any("does not serve the same model" in n for n in bench.notes)

    wider = await _parity(_vectors(_same_model), _vectors(lambda t: [1.0] * 4), tmp_path)
    assert wider.extra["peer_parity"]["dimensions"] == [3, 4]
    assert any("4 dimensions, ours 3" in n for n in wider.notes)


async def test_peer_parity_reports_a_peer_that_cannot_embed(tmp_path: Path) -> None:
    async def missing(request: web.Request) -> web.StreamResponse:
        return web.json_response({"detail": "Not Found"}, status=404)

    bench = await _parity(_vectors(_same_model), missing, tmp_path)
    assert "peer_parity" not in bench.extra
    assert any("peer parity not checked" in n and "answered 404" in n for n in bench.notes)


async def test_closed_loop_measures_a_server_slower_than_its_window_at_its_real_rate() -> None:
    """A server that takes longer per answer than the phase lasts: 4 clients, 0.6 s an
    answer, so 6.7 answers a second. Counting only requests sent after the warm-up and
    waiting for them measured nothing (the warm-up's requests ended after the deadline)."""
    reqs = build_requests("short", TARGETS, 10, seed=1)
    async with _serve(_answer(delay_s=0.6)) as client:
        result = await run_closed(
            client, reqs, concurrency=4, duration_s=0.3, max_requests=10**6, warmup_s=0.1
        )
    assert result.wall_s > 0, result
    rate = len(result.records) / result.wall_s
    assert 5.5 <= rate <= 7.5, (len(result.records), result.wall_s)
