"""The int8 export (``trt-async export --int8``) against the fp32 one: how close, how fast.

Both graphs are exported from the embedded model's weights (all-MiniLM-L6-v2).

- Closeness, through the server's own path (``ServedModel.embed``: pooled, normalised):
  the cosine between each text's int8 and fp32 vectors, over the bench corpus and the
  realistic and long mixes; and retrieval against fp32: the first ``--queries`` texts
  search the rest, and recall@10 is the share of fp32's ten nearest that int8 also
  returns in its ten (top-1 agreement too).
- Speed, on the bare runtime with the server's session options, in alternating rounds:
  the workloads of ``perf/graph_variants.py`` (one text on every thread, sorted batches of
  32 on one thread, long texts in batches of 16 on one thread).

    python -m perf.int8 --rounds 5 --out perf/results/int8

prints the table and writes ``table.md`` and ``table.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from perf.graph_variants import WORKLOADS, batches, feeds, publish, run_rounds
from perf.peer_table import streams
from trt_async.backends.onnxruntime import session_options
from trt_async.bench.bare import BareBackend
from trt_async.bench.corpus import Corpus
from trt_async.bench.server import base_config
from trt_async.core.config import Config, ModelConfig
from trt_async.core.registry import ModelRegistry


def _texts(data: dict[str, Any]) -> list[str]:
    corpus = list(Corpus().languages["en"].sentences)
    mixes = [t for mix in ("realistic", "long150") for r in data[mix] for t in r.texts]
    return list(dict.fromkeys(corpus + mixes))


async def _vectors(folders: dict[str, Path], texts: list[str]) -> dict[str, np.ndarray]:
    config = Config(
        embedding_models={name: ModelConfig(model_path=str(p)) for name, p in folders.items()}
    )
    registry = ModelRegistry(config)
    await registry.start()
    try:
        out = {}
        for name in folders:
            parts = [
                (await registry.get(name).embed(texts[i : i + 64])).vectors
                for i in range(0, len(texts), 64)
            ]
            out[name] = np.concatenate(parts)
        return out
    finally:
        await registry.close()


def closeness(fp32: np.ndarray, int8: np.ndarray, queries: int) -> dict[str, float]:
    """Cosines per text, and int8's retrieval measured against fp32's (vectors normalised)."""
    cosine = (fp32 * int8).sum(axis=1)
    q, docs = slice(0, queries), slice(queries, None)
    top_fp32 = np.argsort(-(fp32[q] @ fp32[docs].T), axis=1)[:, :10]
    top_int8 = np.argsort(-(int8[q] @ int8[docs].T), axis=1)[:, :10]
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(top_fp32, top_int8, strict=True)]
    return {
        "texts": len(cosine),
        "cosine_min": float(cosine.min()),
        "cosine_p1": float(np.percentile(cosine, 1)),
        "cosine_mean": float(cosine.mean()),
        "queries": queries,
        "documents": len(fp32) - queries,
        "recall_at_10": float(np.mean(overlap)),
        "top1_agreement": float(np.mean(top_fp32[:, 0] == top_int8[:, 0])),
    }


def render(result: dict[str, Any]) -> str:
    c = result["closeness"]
    lines = [
        f"Closeness to fp32 over {c['texts']} texts (the server's vectors): cosine min "
        f"{c['cosine_min']:.4f}, 1st percentile {c['cosine_p1']:.4f}, mean "
        f"{c['cosine_mean']:.4f}. Retrieval, {c['queries']} queries over "
        f"{c['documents']} texts: recall@10 against fp32's top 10 {c['recall_at_10']:.3f}, "
        f"top-1 agreement {c['top1_agreement']:.3f}.",
        "",
        "| workload | fp32 items/s | int8 items/s | int8 / fp32 |",
        "|---|---|---|---|",
    ]
    for load, row in result["workloads"].items():
        rates = [f"{statistics.median(row['rates'][n]):.1f}" for n in ("fp32", "int8")]
        rounds = ", ".join(f"{x:.2f}" for x in row["per_round"])
        lines.append(f"| {load} | {rates[0]} | {rates[1]} | {row['ratio']:.3f} ({rounds}) |")
    lines += [
        "",
        f"Command: `{result['command']}`. Graph sizes: fp32 {result['mb']['fp32']:.1f} MB, "
        f"int8 {result['mb']['int8']:.1f} MB. Medians of {result['rounds']} alternating "
        "rounds; the ratio is the median of per-round ratios (each round in brackets).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from trt_async.tools.embedded import package_model
    from trt_async.tools.export import export_model

    parser = argparse.ArgumentParser(prog="python -m perf.int8", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=Path("bench-results/int8"))
    args = parser.parse_args(argv)

    model_name, model = next(iter(base_config(None).embedding_models.items()))
    fp32_dir = Path(model.model_path)
    data = streams(model_name, args.seed, 400)
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "command": "python -m " + " ".join(["perf.int8", *(argv or sys.argv[1:])]),
        "rounds": args.rounds,
        "workloads": {},
    }
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        print("exporting the int8 graph", file=sys.stderr, flush=True)
        hf_dir, _ = package_model()
        int8_dir = Path(tmp) / "int8"
        export_model(hf_dir, "embed", int8_dir, progress=False, quantize="int8")
        graphs = {"fp32": fp32_dir / "model.onnx", "int8": int8_dir / "model.onnx"}
        result["mb"] = {name: path.stat().st_size / 1e6 for name, path in graphs.items()}

        texts = _texts(data)
        vectors = asyncio.run(_vectors({"fp32": fp32_dir, "int8": int8_dir}, texts))
        result["closeness"] = closeness(vectors["fp32"], vectors["int8"], args.queries)

        bare = BareBackend(model)
        for load, size, count, threads, mix in WORKLOADS:
            n = threads or cores
            sessions = {
                name: ort.InferenceSession(
                    str(path), session_options(n), providers=["CPUExecutionProvider"]
                )
                for name, path in graphs.items()
            }
            mix_texts = [t for r in data[mix] for t in r.texts]
            groups = batches(bare, mix_texts, size, count)
            work = [
                feeds(sessions["fp32"], g, length, bare.tokenizer.pad_id) for g, length in groups
            ]
            print(f"{load}: {len(work)} batches on {n} thread(s)", file=sys.stderr, flush=True)
            rates = run_rounds(sessions, work, args.rounds)
            per_round = [a / b for a, b in zip(rates["int8"], rates["fp32"], strict=True)]
            result["workloads"][load] = {
                "threads": n,
                "rates": rates,
                "per_round": per_round,
                "ratio": statistics.median(per_round),
            }
        bare.close()
    publish(args.out, render(result), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
