"""One model's graphs side by side on the bare runtime: which export runs fastest on the CPU.

The variants, all from the embedded model's weights (all-MiniLM-L6-v2):

- ``ours``: the server's export (eager attention: MatMul, Softmax, MatMul),
- ``plain``: the same weights exported from transformers' default SDPA attention,
- ``fused``: ours through ONNX Runtime's transformer optimizer, which fuses Attention,
  SkipLayerNormalization, BiasGelu and the embeddings into com.microsoft operators (ONNX
  Runtime only: TensorRT's ONNX parser does not take them).

Each runs three workloads with the server's session options, in alternating rounds:

- ``one text``: realistic texts one at a time at their bucket length, on every thread
  (what the solo lane runs for one client),
- ``32 sorted``: realistic texts in batches of 32 sorted by length, one thread (what each
  parallel lane runs under load on two cores),
- ``long x16``: 150-200 word texts in batches of 16, one thread.

Before timing, each variant's hidden states are checked against ours on real tokens.

    python -m perf.graph_variants --rounds 5 --out bench-results/graph-variants

prints the table and writes ``table.md`` and ``table.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from perf.peer_table import streams
from trt_async.backends.onnxruntime import session_options
from trt_async.bench.bare import BareBackend
from trt_async.bench.server import base_config
from trt_async.core.runner import pack
from trt_async.core.tokenizer import Encoding

#: (name, batch size, batches per round, threads: 0 = every core, the mix of the texts)
WORKLOADS: tuple[tuple[str, int, int, int, str], ...] = (
    ("one text", 1, 200, 0, "realistic"),
    ("32 sorted", 32, 12, 1, "realistic"),
    ("long x16", 16, 6, 1, "long150"),
)
Batch = tuple[dict[str, np.ndarray], int]


def fuse(src: Path, dst: Path, config: dict[str, Any]) -> dict[str, int]:
    """Write ``src`` through ONNX Runtime's BERT optimizer to ``dst``; the fused op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(src),
        model_type="bert",
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
        opt_level=0,  # graph fusions only; the session applies its own optimisations on load
    )
    model.save_model_to_file(str(dst))
    return {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}


def plain_export(src: Path, dst: Path) -> Path:
    """The embedded model exported with SDPA attention into ``dst``."""
    from trt_async.tools.embedded import package_model
    from trt_async.tools.export import export_model

    hf_dir, _ = package_model()
    export_model(hf_dir, "embed", dst, progress=False, attention="sdpa")
    return dst / src.name


def feeds(
    session: ort.InferenceSession, items: Sequence[Encoding], length: int, pad_id: int
) -> Batch:
    """``items`` packed as the server packs a bucket, for ``session``'s inputs."""
    buffers = {i.name: np.zeros((len(items), length), np.int64) for i in session.get_inputs()}
    pack(buffers, items, pad_id)
    return buffers, len(items)


def batches(bare: BareBackend, texts: Sequence[str], size: int, count: int) -> list[tuple]:
    encs = bare.encode(texts)
    if size > 1:
        encs = sorted(encs, key=len)
    groups = [encs[i : i + size] for i in range(0, len(encs) - size + 1, size)][:count]
    return [(g, bare.grid.length_for(max(len(e) for e in g))) for g in groups]


def max_difference(ours: ort.InferenceSession, other: ort.InferenceSession, batch: Batch) -> float:
    feed, _ = batch
    mask = feed["attention_mask"].astype(bool)
    a = ours.run(None, feed)[0][mask]
    b = other.run(None, feed)[0][mask]
    return float(np.abs(a - b).max())


def run_rounds(
    sessions: dict[str, ort.InferenceSession], work: list[Batch], rounds: int
) -> dict[str, list[float]]:
    """Items/s of each session per round, the order reversed every other round."""
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            session = sessions[name]
            session.run(None, work[0][0])  # warm
            start = time.perf_counter()
            for feed, _ in work:
                session.run(None, feed)
            rates[name].append(sum(n for _, n in work) / (time.perf_counter() - start))
    return rates


def publish(out: Path, table: str, result: dict[str, Any]) -> None:
    """Print ``table`` and write it with the numbers behind it: ``table.md``, ``table.json``."""
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table, encoding="utf-8")
    (out / "table.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def render(result: dict[str, Any]) -> str:
    names = result["variants"]
    lines = [
        "| workload | "
        + " | ".join(f"{n} items/s" for n in names)
        + " | "
        + " | ".join(f"{n} / ours" for n in names if n != "ours")
        + " |",
        "|---" * (len(names) * 2) + "|",
    ]
    for load, row in result["workloads"].items():
        rates = [f"{statistics.median(row['rates'][n]):.1f}" for n in names]
        ratios = [
            f"{row['ratio_to_ours'][n]:.3f} ({', '.join(f'{x:.2f}' for x in row['per_round'][n])})"
            for n in names
            if n != "ours"
        ]
        lines.append(f"| {load} | " + " | ".join(rates + ratios) + " |")
    notes = [
        "",
        f"Command: `{result['command']}`. Medians of {result['rounds']} alternating rounds; "
        "the ratio is the median of per-round ratios (each round in brackets).",
        "Max abs difference from ours on real tokens: "
        + ", ".join(f"{n} {d:.1e}" for n, d in result["max_difference"].items())
        + ". Fused operators: "
        + ", ".join(f"{k} {v}" for k, v in result.get("fused_ops", {}).items())
        + ".",
    ]
    return "\n".join(lines + notes) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.graph_variants", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=Path("bench-results/graph-variants"))
    args = parser.parse_args(argv)

    model_name, model = next(iter(base_config(None).embedding_models.items()))
    ours = Path(model.model_path) / "model.onnx"
    config = json.loads((Path(model.model_path) / "config.json").read_text(encoding="utf-8"))
    bare = BareBackend(model)
    data = streams(model_name, args.seed, 400)
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "command": "python -m " + " ".join(["perf.graph_variants", *(argv or sys.argv[1:])]),
        "rounds": args.rounds,
        "variants": ["ours", "plain", "fused"],
        "workloads": {},
        "max_difference": {},
    }
    with tempfile.TemporaryDirectory(prefix="graph-variants-") as tmp:
        print("exporting the plain (SDPA) graph", file=sys.stderr, flush=True)
        graphs = {"ours": ours, "plain": plain_export(ours, Path(tmp) / "plain")}
        graphs["fused"] = Path(tmp) / "fused.onnx"
        result["fused_ops"] = fuse(ours, graphs["fused"], config)
        for load, size, count, threads, mix in WORKLOADS:
            n = threads or cores
            sessions = {
                name: ort.InferenceSession(
                    str(path),
                    session_options(n),
                    providers=["CPUExecutionProvider"],
                )
                for name, path in graphs.items()
            }
            texts = [r.texts[i] for r in data[mix] for i in range(len(r.texts))]
            groups = batches(bare, texts, size, count)
            work = [
                feeds(sessions["ours"], g, length, bare.tokenizer.pad_id) for g, length in groups
            ]
            for other in ("plain", "fused"):
                diff = max_difference(sessions["ours"], sessions[other], work[0])
                result["max_difference"][other] = max(
                    result["max_difference"].get(other, 0.0), diff
                )
            print(f"{load}: {len(work)} batches on {n} thread(s)", file=sys.stderr, flush=True)
            rates = run_rounds(sessions, work, args.rounds)
            per_round = {
                name: [a / b for a, b in zip(rates[name], rates["ours"], strict=True)]
                for name in sessions
                if name != "ours"
            }
            result["workloads"][load] = {
                "threads": n,
                "rates": rates,
                "per_round": per_round,
                "ratio_to_ours": {k: statistics.median(v) for k, v in per_round.items()},
            }
    bare.close()
    publish(args.out, render(result), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
