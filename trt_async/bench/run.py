"""``trt-async bench``: load a server, measure it, compare it, write JSON, Markdown and plots.

A run is a fixed plan of phases, each bounded in time and in requests:

1. a closed-loop concurrency sweep on the realistic mix (latency percentiles against
   concurrency, latency against throughput);
2. open-loop Poisson arrivals at fractions of the throughput the sweep reached;
3. one phase per request mix (short, long, 32 documents, rerank, NLI when served);
4. comparisons, in alternating A/B/B/A rounds so drift cancels: (a) dynamic bucketing
   against serial batch-1 execution, (b) length buckets against padding to the maximum
   length, (c) the HTTP server against the bare backend on the same batches, (d) our server
   against a peer OpenAI-compatible URL on identical request streams.

The target is ``--url`` (any OpenAI-compatible server) or ``--serve`` (start ours on a
free loopback port and stop it afterwards). Results go to ``OUT/<run-name>/`` (``--out``,
default ``bench-results`` in the current folder).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np

from trt_async.bench import plots, report
from trt_async.bench.corpus import Corpus, word_count
from trt_async.bench.loadgen import LoadClient, PhaseResult, make_client, run_closed, run_open
from trt_async.bench.plan import Plan, plan_from_args
from trt_async.bench.server import (
    ServerProcess,
    StatsReader,
    Variants,
    add_variants,
    base_config,
    write_config,
)
from trt_async.bench.workload import RequestSpec, Targets, build_requests, retarget
from trt_async.core.config import Config, ModelConfig

#: Mixes that send /v1/embeddings only, so that any OpenAI-compatible peer can serve them.
EMBEDDING_MIXES = ("short", "long", "docs32", "realistic")

#: Texts embedded on both servers before a peer comparison, and the lowest cosine between
#: the two vectors of a text below which the peer is taken to compute something else (fp32
#: ONNX Runtime on the same graph agrees to ~1e-7; another export of the same weights ~1e-5).
PARITY_TEXTS = 16
PARITY_MIN_COSINE = 0.999

COMPARISONS = {
    "a": "dynamic bucketing against serial batch-1 execution (same model, same server)",
    "b": "length buckets against padding every batch to the maximum length",
    "c": "the HTTP server against the bare ONNX Runtime backend on the same batches",
    "d": "our server against a peer OpenAI-compatible /v1/embeddings URL",
}


# -- the run -----------------------------------------------------------------------------------


class Bench:
    """One run against one target (and optionally a peer)."""

    def __init__(
        self,
        args: argparse.Namespace,
        plan: Plan,
        url: str,
        out: Path,
        *,
        model_configs: dict[str, ModelConfig],
        variants: Variants | None,
    ) -> None:
        self.args = args
        self.plan = plan
        self.url = url
        self.out = out
        self.model_configs = model_configs
        self.variants = variants
        self.corpus = Corpus()
        self.phases: list[dict[str, Any]] = []
        self.comparisons: list[dict[str, Any]] = []
        self.goals: list[dict[str, Any]] = []
        self.notes: list[str] = list(plan.extra_notes)
        self.histograms: dict[str, dict[str, int]] = {}
        self.extra: dict[str, Any] = {}
        self._pools: dict[str, list[RequestSpec]] = {}
        self.targets = Targets(args.model or "", args.rerank_model, args.nli_model)

    # -- helpers ---------------------------------------------------------------------------

    def requests(self, mix: str) -> list[RequestSpec]:
        if mix not in self._pools:
            count = self.plan.pool if mix in ("short", "long", "realistic") else self.plan.pool // 8
            self._pools[mix] = build_requests(
                mix,
                self.targets,
                max(count, 8),
                self.args.seed,
                self.corpus,
                encoding_format=self.args.encoding_format,
            )
        return self._pools[mix]

    def stats_model(self, spec: RequestSpec) -> str | None:
        """The model name whose stats a request stream moves."""
        if spec.path.startswith("/infer/"):
            return spec.path.removeprefix("/infer/")
        return str(json.loads(spec.body).get("model") or "") or None

    async def phase(
        self,
        client: LoadClient,
        stats: StatsReader | None,
        requests: Sequence[RequestSpec],
        *,
        name: str,
        target: str,
        mode: str,
        level: float,
        duration_s: float | None = None,
        sweep: bool = False,
        record: bool = True,
    ) -> tuple[dict[str, Any], PhaseResult]:
        plan = self.plan
        duration = duration_s if duration_s is not None else plan.duration_s
        model = self.stats_model(requests[0])
        before = await stats.snapshot() if stats is not None else None
        if mode == "closed":
            result = await run_closed(
                client,
                requests,
                concurrency=int(level),
                duration_s=duration,
                max_requests=plan.max_requests,
                warmup_s=plan.warmup_s,
            )
        else:
            result = await run_open(
                client,
                requests,
                rate=level,
                duration_s=duration,
                max_requests=plan.max_requests,
                seed=self.args.seed,
                max_outstanding=max(plan.concurrency) * 2,
            )
        after = await stats.snapshot() if stats is not None else None
        labels: dict[str, Any] = {
            "name": name,
            "target": target,
            "model": model,
            "mix": requests[0].mix,
            "mode": mode,
            "sweep": sweep,
        }
        labels["concurrency" if mode == "closed" else "rate"] = (
            int(level) if mode == "closed" else round(level, 3)
        )
        summary = report.summarise(result, **labels)
        reason = stats.reason if stats is not None else "no stats for this target"
        summary["padding"] = report.padding_from_stats(
            (before or {}).get(model or "") if before else None,
            (after or {}).get(model or "") if after else None,
            reason,
        )
        load = report.loadavg()
        summary["loadavg_1m"] = load[0] if load else None
        if record:
            self.phases.append(summary)
        print(_progress_line(summary), file=sys.stderr, flush=True)
        return summary, result

    # -- plan steps ------------------------------------------------------------------------

    async def sweep(self, client: LoadClient, stats: StatsReader, peer: LoadClient | None) -> None:
        base = self.requests("realistic")
        peer_reqs = retarget(base, self.args.peer_model or self.targets.embedding)
        for c in self.plan.concurrency:
            await self.phase(
                client, stats, base, name=f"sweep c={c}", target="ours", mode="closed",
                level=c, sweep=True,
            )  # fmt: skip
            if peer is not None:
                await self.phase(
                    peer, None, peer_reqs, name=f"sweep c={c}", target="peer", mode="closed",
                    level=c, sweep=True,
                )  # fmt: skip

    async def open_loop(self, client: LoadClient, stats: StatsReader) -> None:
        rates = self.plan.rates
        if rates == []:
            return  # --rates '': no open-loop phases
        if not rates:
            ours = [p for p in self.phases if p["target"] == "ours" and p["sweep"]]
            best = max((p["requests_per_s"] for p in ours), default=0.0)
            if best <= 0:
                self.notes.append("open-loop phases skipped: the sweep measured no throughput")
                return
            rates = [round(best * f, 2) for f in self.plan.rate_fractions]
        for rate in rates:
            await self.phase(
                client, stats, self.requests("realistic"), name=f"poisson {rate:g}/s",
                target="ours", mode="open", level=rate, sweep=True,
            )  # fmt: skip

    async def mixes(self, client: LoadClient, stats: StatsReader, peer: LoadClient | None) -> None:
        """One phase per mix; the embedding mixes also on the peer, right after ours."""
        for mix in self.plan.mixes:
            if mix == "rerank" and not self.targets.rerank:
                self.notes.append("rerank mix skipped: no reranking model is served")
                continue
            if mix == "nli" and not self.targets.nli:
                self.notes.append("NLI mix skipped: no NLI model is served")
                continue
            c = self.plan.mix_concurrency
            await self.phase(
                client, stats, self.requests(mix), name=f"mix {mix}", target="ours",
                mode="closed", level=c,
            )  # fmt: skip
            if peer is not None and mix in EMBEDDING_MIXES:
                reqs = retarget(self.requests(mix), self.args.peer_model or self.targets.embedding)
                await self.phase(
                    peer, None, reqs, name=f"mix {mix}", target="peer", mode="closed", level=c,
                )  # fmt: skip

    async def ab(
        self,
        key: str,
        arms: tuple[tuple[str, LoadClient, StatsReader | None, list[RequestSpec]], ...],
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Alternating rounds A B, B A, A B...; returns each arm's round summaries."""
        rounds: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
        c = self.plan.compare_concurrency
        for i in range(self.plan.rounds):
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for arm in order:
                label, client, stats, reqs = arms[arm]
                summary, _ = await self.phase(
                    client, stats, reqs, name=f"({key}) {label} round {i + 1}",
                    target="peer" if label == "peer" else "ours", mode="closed", level=c,
                    duration_s=self.plan.compare_duration_s,
                )  # fmt: skip
                rounds[arm].append(summary)
        return rounds

    async def compare_grid(self, client: LoadClient, stats: StatsReader, key: str) -> None:
        assert self.variants is not None
        other = self.variants.serial if key == "a" else self.variants.padmax
        if other is None:
            return
        base = self.requests("realistic")
        a_label = "serial batch 1" if key == "a" else f"pad to {self.variants.max_length}"
        a_rounds, b_rounds = await self.ab(
            key,
            (
                (a_label, client, stats, retarget(base, other)),
                ("dynamic buckets", client, stats, base),
            ),
        )
        metric = "items_per_s"
        c = report.compare(
            COMPARISONS[key].split(" (")[0], a_label, "dynamic buckets", a_rounds, b_rounds,
            metric, _MEANINGS[key],
        )  # fmt: skip
        c["key"] = key
        c["a_padding"] = _merged_padding(a_rounds)
        c["b_padding"] = _merged_padding(b_rounds)
        c["a_latency_ms"] = _merged_latency(a_rounds)
        c["b_latency_ms"] = _merged_latency(b_rounds)
        self.comparisons.append(c)
        hist = c["b_padding"].get("batches_by_bucket")
        if hist:
            self.histograms[
                f"dynamic buckets, realistic mix, c={self.plan.compare_concurrency}"
            ] = hist
        cc = self.plan.compare_concurrency
        if key == "a":
            self.goals.append(
                _goal(
                    f"items/s at concurrency {cc}: dynamic buckets / serial batch 1",
                    c["ratio_b_over_a"],
                    3.0,
                )
            )
        else:
            eff_b = c["b_padding"].get("efficiency")
            eff_a = c["a_padding"].get("efficiency")
            self.goals.append(
                _goal(
                    "padding efficiency, realistic mix (length buckets)"
                    + (f"; pad-to-max: {eff_a:.3f}" if eff_a is not None else ""),
                    eff_b,
                    0.85,
                )
            )

    async def compare_bare(self, client: LoadClient, stats: StatsReader) -> None:
        from trt_async.bench.bare import BareBackend

        model_cfg = self.model_configs.get(self.targets.embedding)
        if model_cfg is None:
            # The bare path assembles the same runtime as the server (create_runtime), on
            # whichever backend the config resolves to; it needs that config.
            self.notes.append(
                "comparison (c) skipped: the bare backend needs the served model's config "
                "(use --serve or --config)"
            )
            return
        bare = await asyncio.to_thread(BareBackend, model_cfg)
        try:
            await self._compare_bare(client, stats, bare)
        finally:
            bare.close()

    async def _compare_bare(self, client: LoadClient, stats: StatsReader, bare: Any) -> None:
        base = self.requests("realistic")
        texts = [t for r in base for t in r.texts]
        encodings = bare.encode(texts)
        c = self.plan.compare_concurrency
        server_rounds: list[dict[str, Any]] = []
        bare_rounds: list[dict[str, Any]] = []
        replayed = True
        for i in range(self.plan.rounds):
            summary, _ = await self.phase(
                client, stats, base, name=f"(c) server round {i + 1}", target="ours",
                mode="closed", level=c, duration_s=self.plan.compare_duration_s,
            )  # fmt: skip
            hist = summary["padding"].get("batches_by_bucket")
            if hist:
                batches = bare.replay_batches(hist, encodings)
            else:
                replayed = False
                batches = bare.ideal_batches(encodings[: max(summary["items"], 1)])
            run = bare.run(batches)
            bare_rounds.append(
                {
                    "items_per_s": run.items_per_s,
                    "items": run.items,
                    "batches": run.batches,
                    "seconds": run.seconds,
                    "padding_efficiency": run.real_tokens / max(run.padded_tokens, 1),
                }
            )
            server_rounds.append(summary)
            print(
                f"  bare backend round {i + 1}: {run.items} items in {run.batches} batches, "
                f"{run.items_per_s:.1f} items/s",
                file=sys.stderr,
            )
        comp = report.compare(
            "server vs bare backend", "bare backend", "HTTP server", bare_rounds, server_rounds,
            "items_per_s", _MEANINGS["c"],
        )  # fmt: skip
        comp["key"] = "c"
        comp["bare_rounds"] = bare_rounds
        comp["batches"] = "replayed from the server's stats" if replayed else "ideal (no stats)"
        self.comparisons.append(comp)
        self.goals.append(
            _goal(
                f"server items/s at concurrency {c} / bare backend on the same batches",
                comp["ratio_b_over_a"],
                0.85,
            )
        )
        await self._latency_one(client, stats, bare, base)

    async def _latency_one(
        self, client: LoadClient, stats: StatsReader, bare: Any, base: list[RequestSpec]
    ) -> None:
        """The c=1 goal: server p50 against a bare batch-1 call plus an HTTP round trip.

        Alternating rounds of the server at concurrency 1 and the bare backend at batch 1 on
        the texts the server was sent, so both see the same state of the machine.
        """
        n = min(self.plan.bare_latency_items, len(base))
        encodings = bare.encode([r.texts[0] for r in base[:n]])
        bare.batch_one_latencies(encodings[:5])  # warm caches
        server_p50: list[float] = []
        bare_p50: list[float] = []
        for i in range(self.plan.rounds):
            for step in ("server", "bare") if i % 2 == 0 else ("bare", "server"):
                if step == "bare":
                    bare_p50.append(float(np.median(bare.batch_one_latencies(encodings))) * 1000)
                    continue
                summary, _ = await self.phase(
                    client, stats, base[:n], name=f"(c) c=1 round {i + 1}", target="ours",
                    mode="closed", level=1, duration_s=self.plan.compare_duration_s,
                )  # fmt: skip
                if summary.get("latency_ms"):
                    server_p50.append(summary["latency_ms"]["p50"])
        http: list[float] = []
        for _ in range(max(n, 20)):
            t = time.perf_counter()
            await client.get("/health")  # same pool and client as the load
            http.append(time.perf_counter() - t)
        http_ms = float(np.median(http)) * 1000
        if not server_p50:
            self.notes.append("c=1 latency goal not evaluated: no successful c=1 request")
            return
        p50 = float(np.median(server_p50))
        bare_ms = float(np.median(bare_p50))
        self.extra["latency_c1"] = {
            "server_p50_ms_rounds": [round(x, 3) for x in server_p50],
            "bare_batch1_p50_ms_rounds": [round(x, 3) for x in bare_p50],
            "http_noop_p50_ms": round(http_ms, 3),
            "items_measured": n,
        }
        self.goals.append(
            _goal(
                "p50 at concurrency 1 / (bare batch-1 call + HTTP round trip) "
                f"[{p50:.2f} ms vs {bare_ms:.2f} + {http_ms:.2f} ms]",
                p50 / (bare_ms + http_ms),
                1.3,
                higher_is_better=False,
            )
        )

    async def peer_parity(self, client: LoadClient, peer: LoadClient) -> None:
        """Embed the same texts on both servers and record the cosine of each pair of vectors.

        A peer comparison means something only when the peer computes what we compute: the
        same model, pooling and inputs. Texts are kept short enough (<= 120 words) that
        neither server truncates them, whatever its maximum length.
        """
        source = self.corpus.source(self.args.seed + 1)
        texts: list[str] = []
        while len(texts) < PARITY_TEXTS:
            text = source.realistic()
            if word_count(text) <= 120:
                texts.append(text)
        peer_model = self.args.peer_model or self.targets.embedding
        try:
            ours = await _embed(client, self.targets.embedding, texts)
            theirs = await _embed(peer, peer_model, texts)
        except ValueError as exc:
            self.notes.append(f"peer parity not checked: {exc}")
            return
        if ours.shape != theirs.shape:
            self.extra["peer_parity"] = {
                "texts": len(texts),
                "dimensions": [ours.shape[1], theirs.shape[1]],
                "min_cosine": None,
            }
            self.notes.append(
                f"the peer's vectors have {theirs.shape[1]} dimensions, ours {ours.shape[1]}: "
                "it serves another model, so (d) compares different work"
            )
            return
        cosine = (ours * theirs).sum(axis=1) / (
            np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
        )
        low = float(cosine.min())
        self.extra["peer_parity"] = {
            "texts": len(texts),
            "dimensions": ours.shape[1],
            "min_cosine": round(low, 6),
            "mean_cosine": round(float(cosine.mean()), 6),
        }
        line = f"peer parity: {len(texts)} texts, lowest cosine {low:.6f} between the vectors"
        print(line, file=sys.stderr, flush=True)
        if low < PARITY_MIN_COSINE:
            self.notes.append(
                f"the peer's vectors differ from ours (lowest cosine {low:.4f} over "
                f"{len(texts)} texts, < {PARITY_MIN_COSINE}): it does not serve the same "
                "model with the same pooling, so (d) compares different work"
            )

    async def compare_peer(
        self,
        client: LoadClient,
        stats: StatsReader,
        peer: LoadClient,
    ) -> None:
        base = self.requests("realistic")
        peer_reqs = retarget(base, self.args.peer_model or self.targets.embedding)
        a_rounds, b_rounds = await self.ab(
            "d", (("peer", peer, None, peer_reqs), ("ours", client, stats, base))
        )
        comp = report.compare(
            "ours vs peer", f"peer {self.args.peer_url}", "ours", a_rounds, b_rounds,
            "items_per_s", _MEANINGS["d"],
        )  # fmt: skip
        comp["key"] = "d"
        comp["a_latency_ms"] = _merged_latency(a_rounds)
        comp["b_latency_ms"] = _merged_latency(b_rounds)
        self.comparisons.append(comp)

    # -- everything ------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        connections = max([*plan.concurrency, plan.mix_concurrency, plan.compare_concurrency]) * 2
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                make_client(self.url, connections, api_key=self.args.api_key)
            )
            peer = None
            if self.args.peer_url:
                peer = await stack.enter_async_context(
                    make_client(self.args.peer_url, connections, api_key=self.args.peer_api_key)
                )
            await self._resolve_models(client)
            if peer is not None:
                await self.peer_parity(client, peer)
            stats = StatsReader(client)
            if await stats.snapshot() is None:
                self.notes.append(stats.reason)
            self.extra["loadavg_start"] = report.loadavg()
            started = time.perf_counter()
            await self.sweep(client, stats, peer)
            await self.open_loop(client, stats)
            await self.mixes(client, stats, peer)
            for key in plan.compare:
                if key in ("a", "b"):
                    if self.variants is None:
                        self.notes.append(
                            f"comparison ({key}) skipped: it needs --serve (the server must "
                            "serve the model under extra names with other grids)"
                        )
                        continue
                    await self.compare_grid(client, stats, key)
                elif key == "c":
                    await self.compare_bare(client, stats)
                elif key == "d":
                    if peer is None:
                        self.notes.append("comparison (d) skipped: no --peer-url given")
                        continue
                    await self.compare_peer(client, stats, peer)
            load_s = time.perf_counter() - started
        if not self.histograms:
            top = [p for p in self.phases if p.get("sweep") and p.get("mode") == "closed"]
            for p in top[::-1]:
                hist = p["padding"].get("batches_by_bucket")
                if hist:
                    self.histograms[f"{p['name']}, {p['mix']} mix"] = hist
                    break
        if not self.histograms:
            self.notes.append(
                "no batch-size histogram: the server's model stats have no batches_by_bucket"
            )
        return self.assemble(load_s)

    async def _resolve_models(self, client: LoadClient) -> None:
        if self.targets.embedding:
            return
        try:
            _, body = await client.get("/v1/models")
            ids = [m["id"] for m in msgspec.json.decode(body).get("data", [])]
        except (
            aiohttp.ClientError,
            TimeoutError,
            msgspec.DecodeError,
            LookupError,
            TypeError,
            AttributeError,
        ):
            ids = []
        if not ids:
            raise SystemExit("trt-async bench: give --model (GET /v1/models listed no model)")
        self.targets = replace(self.targets, embedding=ids[0])

    def assemble(self, load_s: float) -> dict[str, Any]:
        folder = self.out
        plot_paths: list[str] = []
        drawn = [
            plots.latency_vs_throughput(self.phases, folder / "latency_vs_throughput.png"),
            plots.percentiles_vs_concurrency(self.phases, folder / "latency_vs_concurrency.png"),
            plots.comparisons_bars(self.comparisons, folder / "comparisons.png"),
        ]
        for i, (title, hist) in enumerate(self.histograms.items()):
            drawn.append(
                plots.batch_histogram(
                    hist, folder / f"batch_sizes{'' if i == 0 else f'_{i}'}.png", title
                )
            )
        plot_paths = [str(p.relative_to(folder)) for p in drawn if p is not None]
        return {
            "run": folder.name,
            "target": self.url if not self.args.serve else f"ours (--serve) at {self.url}",
            "peer": self.args.peer_url,
            "models": {
                "embedding": self.targets.embedding,
                "rerank": self.targets.rerank,
                "nli": self.targets.nli,
            },
            "seed": self.args.seed,
            "plan": {k: v for k, v in vars(self.plan).items() if k != "extra_notes"},
            "machine": report.machine(),
            "loadavg_start": self.extra.pop("loadavg_start", None),
            "loadavg_end": report.loadavg(),
            "load_seconds": round(load_s, 1),
            "phases": self.phases,
            "comparisons": self.comparisons,
            "goals": self.goals,
            "batch_histograms": self.histograms,
            **self.extra,
            "notes": self.notes,
            "plots": plot_paths,
        }


_MEANINGS = {
    "a": "the same model folder served twice by one server, once with the default grid and "
    "once with batch_sizes [1]; items/s at the same concurrency shows what batching buys",
    "b": "the same model folder with the default length buckets and with one length (the "
    "maximum); the padding efficiency is real tokens over tokens computed",
    "c": "the server's items/s against ONNX Runtime run directly (pack, execute, pool; one "
    "thread per lane of the backend, as the server runs batches under load; no HTTP, no "
    "tokenisation on the clock) on the same batch shapes the server ran; the ratio is what "
    "HTTP, JSON, tokenisation and scheduling cost at saturation",
    "d": "identical request streams (same seed, same bodies but the model name) sent to our "
    "server and to the peer in alternating rounds",
}


async def _embed(client: LoadClient, model: str, texts: list[str]) -> np.ndarray:
    """``(texts, dimensions)`` vectors from ``POST /v1/embeddings`` (float encoding)."""
    body = msgspec.json.encode({"model": model, "input": texts, "encoding_format": "float"})
    try:
        status, raw = await client.post("/v1/embeddings", body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ValueError(f"{client.base_url}: {type(exc).__name__}") from exc
    if status != 200:
        raise ValueError(f"{client.base_url}/v1/embeddings answered {status}: {raw[:200]!r}")
    try:
        rows = msgspec.json.decode(raw, type=_Embeddings).data
    except msgspec.ValidationError as exc:
        raise ValueError(f"{client.base_url}/v1/embeddings: unexpected answer ({exc})") from exc
    if len(rows) != len(texts):
        raise ValueError(f"{client.base_url}: {len(rows)} vectors for {len(texts)} texts")
    return np.asarray([r.embedding for r in sorted(rows, key=lambda r: r.index)], np.float64)


class _Row(msgspec.Struct):
    index: int
    embedding: list[float]


class _Embeddings(msgspec.Struct):
    data: list[_Row]


def _merged_padding(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    pads = [r["padding"] for r in rounds if r.get("padding", {}).get("available")]
    if not pads:
        return {"available": False}
    real = sum(p["real_tokens"] for p in pads)
    padded = sum(p["padded_tokens"] for p in pads)
    hist: dict[str, int] = {}
    for p in pads:
        for k, v in (p.get("batches_by_bucket") or {}).items():
            hist[k] = hist.get(k, 0) + v
    batches = sum(p.get("batches", 0) for p in pads)
    items = sum(p.get("items", 0) for p in pads)
    return {
        "available": True,
        "real_tokens": real,
        "padded_tokens": padded,
        "efficiency": round(real / padded, 4) if padded else None,
        "batches": batches,
        "mean_batch_items": round(items / batches, 3) if batches else None,
        "batches_by_bucket": hist,
    }


def _merged_latency(rounds: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Per-round p50/p99 averaged (percentiles of pooled records are in each round)."""
    lat = [r["latency_ms"] for r in rounds if r.get("latency_ms")]
    if not lat:
        return None
    return {k: round(float(np.mean([x[k] for x in lat])), 3) for k in ("p50", "p99")}


def _goal(
    goal: str, measured: float | None, target: float, *, higher_is_better: bool = True
) -> dict[str, Any]:
    met = (
        None
        if measured is None
        else (measured >= target if higher_is_better else measured <= target)
    )
    return {
        "goal": goal,
        "measured": None if measured is None else round(float(measured), 3),
        "target": f"{'≥' if higher_is_better else '≤'} {target:g}",
        "met": met,
    }


def _progress_line(s: dict[str, Any]) -> str:
    lat = s.get("latency_ms") or {}
    pad = s.get("padding") or {}
    eff = f" pad={pad['efficiency']:.3f}" if pad.get("efficiency") is not None else ""
    return (
        f"{s['name']:<34} {s['requests_per_s']:8.1f} req/s {s['items_per_s']:8.1f} items/s "
        f"p50={lat.get('p50', float('nan')):.1f} p99={lat.get('p99', float('nan')):.1f} ms "
        f"errors={sum(s['errors'].values())}{eff}"
    )


def _configured(config: Config, args: argparse.Namespace) -> None:
    """Fill in model names from the config where none were given."""
    if args.model is None and config.embedding_models:
        args.model = next(iter(config.embedding_models))
    if args.rerank_model is None and config.reranking_models:
        args.rerank_model = next(iter(config.reranking_models))
    if args.nli_model is None and config.nli_models:
        args.nli_model = next(iter(config.nli_models))


def run_bench(args: argparse.Namespace) -> int:
    import logging

    # One line per request from httpx (server start-up) would drown the progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.url and not args.serve:
        print("trt-async bench: give --url URL or --serve", file=sys.stderr)
        return 2
    plan = plan_from_args(args)
    run_name = (
        args.run_name or f"{'smoke' if args.smoke else args.plan}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out = args.out / run_name
    out.mkdir(parents=True, exist_ok=True)
    model_configs: dict[str, ModelConfig] = {}
    variants: Variants | None = None
    server: ServerProcess | None = None
    try:
        if args.serve:
            config = base_config(args.config)
            _configured(config, args)
            if args.model is None:
                print("trt-async bench: the config serves no embedding model", file=sys.stderr)
                return 2
            want = {k for k in plan.compare if k in ("a", "b")}
            if want:
                variants = add_variants(config, args.model, serial="a" in want, padmax="b" in want)
            model_configs = {name: cfg for name, _, cfg in config.models()}
            config_path = write_config(config, out / "server.yaml", "127.0.0.1", 0)
            server = ServerProcess(config_path, out / "server.log")
            print(f"starting the server ({config_path})...", file=sys.stderr, flush=True)
            server.start()
            url = server.url
        else:
            url = args.url.rstrip("/")
            if args.config is not None:
                from trt_async.core.config import load_config

                config = load_config(args.config)
                _configured(config, args)
                model_configs = {name: cfg for name, _, cfg in config.models()}
        bench = Bench(args, plan, url, out, model_configs=model_configs, variants=variants)
        result = asyncio.run(bench.run())
    finally:
        if server is not None:
            server.stop()
            for kept in (out / "server.yaml", out / "server.log"):
                _home_as_tilde(kept)
    paths = report.write(result, out)
    print(report.markdown(result))
    print(f"\nwrote {paths['json']}, {paths['markdown']} and {len(result['plots'])} plots")
    return 0


def _home_as_tilde(path: Path) -> None:
    """Once the server has stopped, show the home folder as ``~`` in a file kept with the
    results (the model cache lives there), so result folders name no machine's paths."""
    home = str(Path.home())
    if len(home) < 2 or not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    if home in text:
        path.write_text(text.replace(home, "~"), encoding="utf-8")
