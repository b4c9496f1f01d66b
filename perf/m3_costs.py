"""Costs of bge-m3's extra outputs and of quantised embeddings, on the CPU path.

``python -m perf.m3_costs overhead``: the time of requests that ask for sparse and ColBERT
outputs besides the dense vector, against dense-only requests, through the core path
(tokenizer, scheduler, ONNX Runtime, reducers). No real bge-m3 weights are installable
here, so the graph is all-MiniLM-L6-v2's encoder (6 layers, 384 wide) with random heads of
bge-m3's shapes (ColBERT hidden -> hidden, sparse hidden -> 1), exported with
``trt-async export`` like a bge-m3 folder. A and B alternate in one run, so drift on a
shared machine hits both; the ratio of medians is reported.

``python -m perf.m3_costs recall``: how much of float32's top 10 each quantised type keeps
on a held corpus (the benchmark corpus, none of which is in the calibration set): int8 and
uint8 by integer dot product, binary by Hamming distance, queries quantised like
documents.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from trt_async.bench.corpus import Corpus
from trt_async.core.config import Config, ModelConfig
from trt_async.core.registry import ModelRegistry
from trt_async.core.tasks import ServedModel


def _texts(n: int, seed: int) -> list[str]:
    source = Corpus().source(seed)
    return [source.realistic() for _ in range(n)]


async def _served(path: Path) -> tuple[ModelRegistry, ServedModel]:
    config = Config()
    config.embedding_models["m"] = ModelConfig(model_path=str(path))
    registry = ModelRegistry(config)
    await registry.start()
    return registry, registry.get("m")


def _m3_like_export(work: Path) -> Path:
    import torch

    from trt_async.tools.embedded import package_model_dir
    from trt_async.tools.export import export_model

    hf = work / "hf"
    shutil.copytree(package_model_dir(), hf)
    gen = torch.Generator().manual_seed(0)
    colbert, sparse = torch.nn.Linear(384, 384), torch.nn.Linear(384, 1)
    with torch.no_grad():
        for layer in (colbert, sparse):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.05)
    torch.save(colbert.state_dict(), hf / "colbert_linear.pt")
    torch.save(sparse.state_dict(), hf / "sparse_linear.pt")
    # bge-m3's sparse weights skip cls/eos/pad/unk; the manifest records them.
    export_model(hf, "embed", work / "model", progress=False)
    return work / "model"


async def overhead(rounds: int, requests: int, per_request: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        registry, model = await _served(_m3_like_export(Path(tmp)))
        try:
            texts = _texts(requests * per_request, seed=7)
            batches = [texts[i::requests] for i in range(requests)]
            variants: dict[str, tuple[str, ...]] = {
                "dense": (),
                "dense+sparse+colbert": ("sparse", "colbert"),
            }

            async def one(heads: tuple[str, ...]) -> float:
                start = time.perf_counter()
                await asyncio.gather(*(model.embed(b, heads=heads) for b in batches))  # type: ignore[arg-type]
                return time.perf_counter() - start

            for heads in variants.values():  # warm both paths once
                await one(heads)
            times: dict[str, list[float]] = {name: [] for name in variants}
            deadline = time.monotonic() + seconds
            for r in range(rounds):
                order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
                for name, heads in order:
                    times[name].append(await one(heads))
                if time.monotonic() > deadline:
                    break
        finally:
            await registry.close()
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "items_per_round": len(texts),
        "rounds": len(times["dense"]),
        "seconds": times,
        "median_s": medians,
        "ratio": medians["dense+sparse+colbert"] / medians["dense"],
    }


async def recall(documents: int, queries: int, k: int) -> dict[str, Any]:
    from trt_async.tools.embedded import embedded_model_dir

    corpus = Corpus()
    held = [s for lang in corpus.languages.values() for s in lang.sentences]
    docs = list(dict.fromkeys(held + _texts(documents, seed=11)))[:documents]
    qs = _texts(queries, seed=12)
    registry, model = await _served(embedded_model_dir(progress=False))
    try:
        d = (await model.embed(docs)).vectors
        q = (await model.embed(qs)).vectors
        top = np.argsort(-(q @ d.T), axis=1)[:, :k]
        out: dict[str, Any] = {"documents": len(docs), "queries": len(qs), "k": k}
        for kind in ("int8", "uint8"):
            dq = (await model.quantize(d, kind)).astype(np.int32)  # type: ignore[arg-type]
            qq = (await model.quantize(q, kind)).astype(np.int32)  # type: ignore[arg-type]
            got = np.argsort(-(qq @ dq.T), axis=1, kind="stable")[:, :k]
            out[kind] = _overlap(top, got, k)
        db = np.unpackbits((await model.quantize(d, "ubinary")), axis=1).astype(np.int32)
        qb = np.unpackbits((await model.quantize(q, "ubinary")), axis=1).astype(np.int32)
        hamming = qb @ (1 - db).T + (1 - qb) @ db.T
        out["binary"] = _overlap(top, np.argsort(hamming, axis=1, kind="stable")[:, :k], k)
        return out
    finally:
        await registry.close()


def _overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return float(
        np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--rounds", type=int, default=10)
    o.add_argument("--requests", type=int, default=8)
    o.add_argument("--per-request", type=int, default=8)
    o.add_argument("--seconds", type=float, default=120, help="stop starting rounds after this")
    r = sub.add_parser("recall")
    r.add_argument("--documents", type=int, default=2000)
    r.add_argument("--queries", type=int, default=200)
    r.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    if args.what == "overhead":
        result = asyncio.run(overhead(args.rounds, args.requests, args.per_request, args.seconds))
    else:
        result = asyncio.run(recall(args.documents, args.queries, args.k))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
