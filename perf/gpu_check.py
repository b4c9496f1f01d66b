"""Check the TensorRT backend on a real GPU against ONNX Runtime on the CPU, and time it.

For an exported model folder (``trt-async export``) this builds the plan, runs every bucket
of the grid through :class:`TensorRTBackend` (CUDA graph replay), runs the same padded
batches through ONNX Runtime on the CPU, and reports per bucket the largest absolute
difference and the lowest cosine similarity over real rows, then the median time of a
graph replay against a plain ``execute_async_v3`` enqueue. Writes a JSON report.

Needs TensorRT, cuda-python and onnxruntime; ``--help`` works without them.

    python perf/gpu_check.py models/bge-small --precision fp16 --lengths 16,64,256
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", type=Path, help="model folder written by trt-async export")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--lengths", type=_ints, default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--iters", type=int, default=50, help="timed runs per bucket and mode")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reuse-plan", action="store_true", help="skip the build if a plan fits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", type=Path, default=None, help="JSON report path")
    return p.parse_args(argv)


def _timed(fn: Any, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _compare(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Largest absolute difference and lowest cosine similarity over real rows and tokens."""
    out, ref = out.astype(np.float32), ref.astype(np.float32)
    if out.ndim == 3:
        keep = mask.astype(bool)
        diff = float(np.abs(out - ref)[keep].max())
        # Token outputs: compare the mean-pooled rows, which is what the server returns.
        w = mask[..., None].astype(np.float32)
        out = (out * w).sum(1) / w.sum(1)
        ref = (ref * w).sum(1) / w.sum(1)
    else:
        diff = float(np.abs(out - ref).max())
    cos = (out * ref).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(ref, axis=-1))
    return diff, float(cos.min())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("onnxruntime is needed for the CPU reference: pip install 'trt-async[cpu]'")
    try:
        import trt_async  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from trt_async.backends.modelfiles import ModelFiles
    from trt_async.backends.shapes import BucketGrid
    from trt_async.backends.tensorrt import TensorRTBackend
    from trt_async.backends.tensorrt.build import build_engine
    from trt_async.backends.tensorrt.plan import graphs_dir
    from trt_async.core.config import ModelConfig

    files = ModelFiles.resolve(args.model)
    if files.onnx is None:
        sys.exit(f"{args.model}: no model.onnx; run trt-async export first")
    grid = BucketGrid(args.batch_sizes, args.lengths, args.max_batch_tokens)
    plans = graphs_dir() / files.root.name
    build_s = None
    if not args.reuse_plan:
        result = build_engine(
            files.onnx,
            precision=args.precision,
            batch_sizes=grid.batch_sizes,
            lengths=grid.lengths,
            output_dir=plans,
            device=args.device,
        )
        build_s = result.seconds
    config = ModelConfig(
        model_path=str(args.model),
        backend="tensorrt",
        precision=args.precision,
        device=args.device,
        graphs=True,
    )
    backend = TensorRTBackend(files, config, plans_dir=plans)
    started = time.perf_counter()
    backend.prepare(grid, lambda done, total, what: print(f"\r{done}/{total} {what}", end=""))
    prepare_s = time.perf_counter() - started
    print()
    io = backend.io
    session = ort.InferenceSession(str(files.onnx), providers=["CPUExecutionProvider"])
    ort_types = {i.name: i.type for i in session.get_inputs()}
    vocab = int(files.hf_config.get("vocab_size", 1000))
    rng = np.random.default_rng(args.seed)

    rows: list[dict[str, Any]] = []
    for bucket in grid.buckets():
        bufs = backend.inputs(bucket)
        lengths = rng.integers(1, bucket.length + 1, bucket.batch)
        lengths[0] = bucket.length  # one full row per batch
        mask = (np.arange(bucket.length)[None, :] < lengths[:, None]).astype(np.int64)
        ids = rng.integers(5, vocab, (bucket.batch, bucket.length)) * mask
        bufs["input_ids"][...] = ids
        if "attention_mask" in bufs:
            bufs["attention_mask"][...] = mask
        if "token_type_ids" in bufs:
            bufs["token_type_ids"][...] = 0
        out = backend.execute(bucket).copy()
        feed = {
            name: np.asarray(bufs[name]).astype(np.int32 if "int32" in t else np.int64)
            for name, t in ort_types.items()
        }
        (ref,) = session.run([io.output], feed)
        diff, cos = _compare(out, ref, mask)
        graph_ms = _timed(lambda b=bucket: backend.execute(b), args.iters, args.warmup)
        plain_ms = _timed(lambda b=bucket: backend.execute_plain(b), args.iters, args.warmup)
        g, p = statistics.median(graph_ms), statistics.median(plain_ms)
        rows.append(
            {
                "batch": bucket.batch,
                "length": bucket.length,
                "max_abs_diff": diff,
                "min_cosine": cos,
                "graph_ms_median": g,
                "plain_ms_median": p,
                "graph_saving_pct": 100.0 * (p - g) / p if p else 0.0,
            }
        )

    info = backend.info()
    columns = ("max|diff|", 10), ("min cos", 9), ("graph ms", 9), ("plain ms", 9), ("saved", 7)
    print(f"{'bucket':>10} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for r in rows:
        print(
            f"{r['batch']:>4}x{r['length']:<5} {r['max_abs_diff']:>10.2e} {r['min_cosine']:>9.6f} "
            f"{r['graph_ms_median']:>9.3f} {r['plain_ms_median']:>9.3f} "
            f"{r['graph_saving_pct']:>6.1f}%"
        )
    report = {
        "model": str(args.model),
        "device": info.device,
        "precision": args.precision,
        "details": {k: v for k, v in info.details.items() if k != "graph_fallbacks"},
        "graph_fallbacks": info.details.get("graph_fallbacks"),
        "memory": dict(info.memory),
        "build_s": build_s,
        "prepare_s": prepare_s,
        "output": io.output,
        "buckets": rows,
    }
    backend.close()
    out_path = args.out or RESULTS / f"gpu_check-{files.root.name}-{int(time.time())}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
