"""Items/s of the core path against ONNX Runtime's session called directly, in one run.

``python -m perf.core_vs_session [--config FILE --model NAME] [--rounds 3] [--seconds 10]``

The core path is :class:`~trt_async.core.registry.ModelRegistry` +
:meth:`ServedModel.embed <trt_async.core.tasks.ServedModel.embed>`, one text per call,
driven by ``--concurrency`` asyncio tasks so that the scheduler always has full batches to
form: it includes tokenisation, queueing, the worker-thread hop, packing, pooling and
normalisation. The bare path is ``session.run`` on a second ``InferenceSession`` of the
same ``model.onnx`` with the same options and thread count, fed the very batches (shapes
and texts) the core formed in the round just before, built in advance. Rounds alternate
core/session, session/core, ... so drift cancels. The goal is core ≥ 0.9 of the session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from trt_async.backends.onnxruntime import session_options
from trt_async.backends.shapes import Bucket
from trt_async.bench.corpus import Corpus
from trt_async.core.config import Config, ModelConfig
from trt_async.core.registry import ModelRegistry
from trt_async.core.tokenizer import Encoding

GOAL = 0.9


class BatchLog:
    """A scheduler ``BatchObserver`` that remembers the batches run."""

    def __init__(self) -> None:
        self.batches: list[tuple[Bucket, int]] = []

    def batch_done(
        self, bucket: Bucket, items: int, real_tokens: int, seconds: float, ok: bool
    ) -> None:
        if ok:
            self.batches.append((bucket, items))


@dataclass(frozen=True)
class Round:
    path: str
    items: int
    batches: int
    seconds: float

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def session_for(config: ModelConfig, onnx: Path) -> ort.InferenceSession:
    """A session as ``OnnxRuntimeBackend`` builds its solo lane: its options, every thread."""
    threads = config.intra_op_threads or (os.cpu_count() or 1)
    return ort.InferenceSession(
        str(onnx), session_options(threads), providers=["CPUExecutionProvider"]
    )


def build_feeds(
    batches: Sequence[tuple[Bucket, int]],
    encodings: Sequence[Encoding],
    length_for: Any,
    inputs: Sequence[str],
    dtype: np.dtype,
    pad_id: int,
) -> list[tuple[dict[str, np.ndarray], int]]:
    """Padded input arrays for each batch, filled with encodings that pad to its length."""
    pools: dict[int, deque[Encoding]] = defaultdict(deque)
    for enc in encodings:
        pools[length_for(len(enc))].append(enc)
    feeds: list[tuple[dict[str, np.ndarray], int]] = []
    for bucket, n in batches:
        pool = pools.get(bucket.length) or deque(encodings)
        ids = np.full((bucket.batch, bucket.length), pad_id, dtype=dtype)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row in range(bucket.batch):
            enc = pool[0]
            pool.rotate(-1)
            k = min(len(enc.ids), bucket.length)
            ids[row, :k] = enc.ids[:k]
            mask[row, :k] = 1
            if enc.type_ids is not None:
                types[row, :k] = enc.type_ids[:k]
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds.append(({name: arrays[name] for name in inputs}, n))
    return feeds


async def core_round(
    registry: ModelRegistry, name: str, texts: Sequence[str], concurrency: int, seconds: float
) -> Round:
    model = registry.get(name)
    it = iter(range(len(texts)))
    done = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal done
        for i in it:
            if time.perf_counter() >= deadline:
                return
            await model.embed([texts[i]])
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return Round("core", done, 0, elapsed)


def session_round(
    session: ort.InferenceSession, output: str, feeds: Sequence[tuple[dict[str, np.ndarray], int]]
) -> Round:
    start = time.perf_counter()
    for feed, _ in feeds:
        session.run([output], feed)
    elapsed = time.perf_counter() - start
    return Round("session", sum(n for _, n in feeds), len(feeds), elapsed)


async def compare(
    config: Config,
    name: str,
    *,
    rounds: int,
    seconds: float,
    concurrency: int,
    seed: int,
    texts_count: int,
) -> dict[str, Any]:
    log = BatchLog()
    registry = ModelRegistry(config, observer_factory=lambda _: log)
    await registry.start()
    try:
        model = registry.get(name)
        runtime = model.runtime
        onnx = runtime.files.onnx
        if onnx is None or runtime.backend_name != "onnxruntime":
            raise SystemExit(f"{name}: this comparison needs an ONNX Runtime model")
        src = Corpus().source(seed)
        texts = [src.realistic() for _ in range(texts_count)]
        encodings = runtime.tokenizer.encode(texts, truncate=True)
        session = session_for(model.config, onnx)
        io = runtime.io
        results: list[dict[str, Any]] = []
        await core_round(registry, name, texts[:200], concurrency, 2.0)  # warm up
        feeds: list[tuple[dict[str, np.ndarray], int]] = []

        async def run_core() -> Round:
            nonlocal feeds
            log.batches.clear()
            r = await core_round(registry, name, texts, concurrency, seconds)
            feeds = build_feeds(
                log.batches,
                encodings,
                runtime.grid.length_for,
                io.inputs,
                io.input_dtype,
                runtime.tokenizer.pad_id,
            )
            return Round("core", r.items, len(log.batches), r.seconds)

        def run_session() -> Round:
            session_round(session, io.output, feeds[:3])  # this thread's first calls
            return session_round(session, io.output, feeds)

        for i in range(rounds):
            # Core then session, then session (on the previous core round's batches) then
            # core, and so on: each path runs first half of the time.
            if i % 2 == 0 or not feeds:
                core = await run_core()
                bare = run_session()
            else:
                bare = run_session()
                core = await run_core()
            results.append(
                {
                    "round": i + 1,
                    "core_items_per_s": round(core.items_per_s, 2),
                    "session_items_per_s": round(bare.items_per_s, 2),
                    "items": core.items,
                    "batches": core.batches,
                    "mean_batch": round(core.items / max(core.batches, 1), 2),
                    "ratio": round(core.items_per_s / bare.items_per_s, 4),
                }
            )
            print(
                f"round {i + 1}: core {core.items_per_s:7.1f} items/s "
                f"({core.items} items, {core.batches} batches), session "
                f"{bare.items_per_s:7.1f} items/s, ratio {results[-1]['ratio']:.3f}",
                file=sys.stderr,
                flush=True,
            )
        core_mean = float(np.mean([r["core_items_per_s"] for r in results]))
        session_mean = float(np.mean([r["session_items_per_s"] for r in results]))
        return {
            "model": name,
            "threads": model.config.intra_op_threads or os.cpu_count(),
            "concurrency": concurrency,
            "rounds": results,
            "core_items_per_s": round(core_mean, 2),
            "session_items_per_s": round(session_mean, 2),
            "ratio": round(core_mean / session_mean, 4),
            "goal": GOAL,
            "met": core_mean / session_mean >= GOAL,
        }
    finally:
        await registry.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.core_vs_session",
        description="Core path items/s against the bare ONNX Runtime session, alternating.",
    )
    parser.add_argument("--config", type=Path, help="config file (default: embedded model)")
    parser.add_argument("--model", help="embedding model name (default: the first)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="core time per round")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--texts", type=int, default=5000, help="realistic texts generated")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.config is not None:
        from trt_async.core.config import load_config

        config = load_config(args.config)
    else:
        from trt_async.tools.embedded import embedded_config, embedded_model_dir

        config = embedded_config(embedded_model_dir())
    name = args.model or next(iter(config.embedding_models), None)
    if name is None:
        print("no embedding model in the config", file=sys.stderr)
        return 2
    # Only the model measured: other configured names would load runtimes of their own.
    config.embedding_models = {name: config.embedding_models[name]}
    config.reranking_models = {}
    config.nli_models = {}
    result = asyncio.run(
        compare(
            config,
            name,
            rounds=args.rounds,
            seconds=args.seconds,
            concurrency=args.concurrency,
            seed=args.seed,
            texts_count=args.texts,
        )
    )
    print(
        f"core {result['core_items_per_s']:.1f} items/s, session "
        f"{result['session_items_per_s']:.1f} items/s, core/session {result['ratio']:.3f} "
        f"(goal ≥ {GOAL}: {'met' if result['met'] else 'not met'})"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
