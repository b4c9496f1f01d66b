"""Check the TensorRT backend on a real GPU against ONNX Runtime on the CPU, and time it.

For an exported model folder (``trt-async export``) this builds the plan, runs every bucket
of the grid through :class:`TensorRTBackend` (CUDA graph replay), runs the same padded
batches through ONNX Runtime on the CPU, and reports per bucket the largest absolute
difference and the lowest cosine similarity over real rows. A bucket fails when any real
value is NaN or infinite (an fp16 overflow) or its lowest cosine is under the precision's
floor (:data:`COSINE_FLOORS`: fp32 0.9999, fp16 0.999, bf16 0.995); each failure is printed
with its bucket. Then it times graph replays against plain ``execute_async_v3`` enqueues,
alternating the two (graph first on even runs, plain first on odd ones) so that neither
always runs on a warmer GPU.

A second pass runs the buckets in random order, graph replays and plain enqueues
interleaved, and compares each output bit for bit with that bucket's first output on the
same inputs (a graph whose context changed under it would show here). ``--random-model``
builds a tiny random model (embedding lookup, masked mean; two outputs) on the spot, so
the check needs no model files. Writes a JSON report.

Exit status: 0 every bucket within its floor and every replay equal; 1 any failure (the
lines before say which buckets); 2 nothing to run on (no CUDA device, TensorRT or
onnxruntime missing, or a precision this TensorRT cannot build: one line says which).

Needs TensorRT, cuda-python and onnxruntime; ``--help`` works without them. It has not yet
run on a GPU with TensorRT; the tests run it against fakes of both libraries.

    python perf/gpu_check.py models/bge-small --precision fp16 --lengths 16,64,256
    python perf/gpu_check.py --random-model --lengths 16,64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

#: Lowest cosine to ONNX Runtime's fp32 output a bucket may have, by build precision.
#: fp32 engines may still use TF32 matrix products (10-bit mantissa) on Ampere and newer;
#: fp16 keeps 11 significant bits, bf16 8. Each floor sits well under what rounding alone
#: gives (1 - cosine grows with the square of the relative error: ~1e-6 for TF32, ~1e-5
#: for fp16, ~1e-4 for bf16 on encoder outputs) and far above a wrong result.
COSINE_FLOORS = {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.995}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", type=Path, nargs="?", help="model folder written by trt-async export")
    p.add_argument("--random-model", action="store_true", help="build a tiny random model instead")
    p.add_argument("--interleaved", type=int, default=200, help="runs in the random pass")
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


def _timed_pair(graph: Any, plain: Any, iters: int, warmup: int) -> tuple[list[float], list[float]]:
    """Milliseconds of ``graph()`` and ``plain()``, alternating which runs first: graph
    then plain on even runs, plain then graph on odd ones."""
    for _ in range(warmup):
        graph()
        plain()
    times: dict[str, list[float]] = {"graph": [], "plain": []}
    for i in range(iters):
        order = (("graph", graph), ("plain", plain))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times["graph"], times["plain"]


def _compare(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float, int]:
    """Largest absolute difference, lowest cosine similarity and the count of non-finite
    values, over real rows (and real tokens of token outputs). NaN when a row is not
    finite, so it can never pass a floor."""
    out, ref = out.astype(np.float32), ref.astype(np.float32)
    if out.ndim == 3:
        keep = mask.astype(bool)
        bad = int((~np.isfinite(out[keep])).sum())
        with np.errstate(invalid="ignore", over="ignore"):
            diff = float(np.abs(out - ref)[keep].max())
            # Token outputs: compare the mean-pooled rows, which is what the server returns.
            w = mask[..., None].astype(np.float32)
            out = (np.where(keep[..., None], out, 0) * w).sum(1) / w.sum(1)
            ref = (ref * w).sum(1) / w.sum(1)
    else:
        bad = int((~np.isfinite(out)).sum())
        with np.errstate(invalid="ignore", over="ignore"):
            diff = float(np.abs(out - ref).max())
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        cos = (out * ref).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(ref, axis=-1))
    return diff, float(np.nan if np.isnan(cos).any() else cos.min()), bad


def _verdict(cos: float, bad: int, floor: float) -> str | None:
    """Why a bucket fails, or None."""
    if bad:
        return f"{bad} non-finite values (NaN or inf: an overflow?)"
    if not cos >= floor:  # NaN fails too
        return f"lowest cosine {cos:.6f} < {floor} to ONNX Runtime"
    return None


def write_random_model(
    folder: Path, vocab: int = 1000, hidden: int = 32, seed: int = 0, scale: float = 1.0
) -> Path:
    """A tiny model folder: ``last_hidden_state = table[input_ids] * mask`` and its masked
    mean ``sentence_embedding`` (two outputs, as many exports have). ``scale`` multiplies
    the (normal) table; large values make the sums overflow fp16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((vocab, hidden)) * scale).astype(np.float32)
    dyn = ["batch", "seq"]
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["last_hidden_state"]),
        helper.make_node("ReduceSum", ["last_hidden_state", "one"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "one"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "floor"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["sentence_embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "random_lookup",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, dyn),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dyn),
        ],
        [
            helper.make_tensor_value_info(
                "sentence_embedding", TensorProto.FLOAT, ["batch", hidden]
            ),
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden]
            ),
        ],
        [
            numpy_helper.from_array(table, "embeddings"),
            numpy_helper.from_array(np.array([-1], np.int64), "axes"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([1.0], np.float32), "floor"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({"vocab_size": vocab}))
    return folder


def _unavailable(trt_module: Any, cuda_runtime: Any) -> str | None:
    """Why nothing can run here, or None."""
    from trt_async.backends.tensorrt.cuda import Cuda, CudaError, NoCudaDevice
    from trt_async.backends.tensorrt.trt_api import load_tensorrt

    try:
        Cuda(cuda_runtime).device_count()
    except (ImportError, CudaError) as exc:
        return str(exc) if isinstance(exc, NoCudaDevice) else f"no CUDA device: {exc}"
    if trt_module is None:
        try:
            load_tensorrt()
        except ImportError as exc:
            return f"TensorRT not installed: {str(exc).splitlines()[0]}"
    return None


def main(argv: list[str] | None = None, trt_module: Any = None, cuda_runtime: Any = None) -> int:
    args = parse_args(argv)
    if (args.model is None) == (not args.random_model):
        print("gpu_check: give a model folder or --random-model (not both)", file=sys.stderr)
        return 2
    try:
        import onnxruntime as ort
    except ImportError:
        print(
            "gpu_check: onnxruntime not installed (the CPU reference): pip install "
            "'trt-async[cpu]'",
            file=sys.stderr,
        )
        return 2
    try:
        import trt_async  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    why = _unavailable(trt_module, cuda_runtime)
    if why is not None:
        print(f"gpu_check: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        model = write_random_model(Path(tmp) / "random") if args.random_model else args.model
        return _check(args, model, ort, trt_module, cuda_runtime)


def _check(
    args: argparse.Namespace, model: Path, ort: Any, trt_module: Any, cuda_runtime: Any
) -> int:
    from trt_async.backends.base import BackendOptions
    from trt_async.backends.modelfiles import ModelFiles
    from trt_async.backends.shapes import BucketGrid
    from trt_async.backends.tensorrt import TensorRTBackend
    from trt_async.backends.tensorrt.build import BuildError, build_engine
    from trt_async.backends.tensorrt.cuda import Cuda
    from trt_async.backends.tensorrt.plan import graphs_dir

    files = ModelFiles.resolve(model)
    if files.onnx is None:
        print(f"gpu_check: {model}: no model.onnx; run trt-async export first", file=sys.stderr)
        return 2
    grid = BucketGrid(args.batch_sizes, args.lengths, args.max_batch_tokens)
    plans = (Path(model) / "graphs") if args.random_model else graphs_dir() / files.root.name
    build_s = None
    floor = COSINE_FLOORS[args.precision]
    if not args.reuse_plan:
        try:
            result = build_engine(
                files.onnx,
                precision=args.precision,
                batch_sizes=grid.batch_sizes,
                lengths=grid.lengths,
                output_dir=plans,
                device=args.device,
                trt_module=trt_module,
                cuda=Cuda(cuda_runtime),
                progress=trt_module is None,
            )
        except BuildError as exc:
            print(f"gpu_check: {exc}", file=sys.stderr)
            return 2
        build_s = result.seconds
    options = BackendOptions(precision=args.precision, device=args.device, graphs=True)
    backend = TensorRTBackend(
        files, options, plans_dir=plans, trt_module=trt_module, cuda_runtime=cuda_runtime
    )
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
    failures: list[str] = []
    first: dict[Any, tuple[dict[str, np.ndarray], bytes]] = {}
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
        out = backend.execute(bucket)[backend.io.output].copy()
        first[bucket] = ({n: np.array(bufs[n]) for n in bufs}, out.tobytes())
        feed = {
            name: np.asarray(bufs[name]).astype(np.int32 if "int32" in t else np.int64)
            for name, t in ort_types.items()
        }
        (ref,) = session.run([io.output], feed)
        diff, cos, bad = _compare(out, ref, mask)
        why = _verdict(cos, bad, floor)
        if why is not None:
            failures.append(f"{bucket.batch}x{bucket.length}: {why}")
            print(f"FAIL bucket {bucket.batch}x{bucket.length}: {why}")
        graph_ms, plain_ms = _timed_pair(
            lambda b=bucket: backend.execute(b),
            lambda b=bucket: backend.execute_plain(b),
            args.iters,
            args.warmup,
        )
        g, p = statistics.median(graph_ms), statistics.median(plain_ms)
        rows.append(
            {
                "batch": bucket.batch,
                "length": bucket.length,
                "max_abs_diff": diff,
                "min_cosine": cos,
                "non_finite": bad,
                "passed": why is None,
                "graph_ms_median": g,
                "plain_ms_median": p,
                "graph_saving_pct": 100.0 * (p - g) / p if p else 0.0,
            }
        )

    # Random order, replays and plain enqueues interleaved: every output bit for bit equal
    # to the bucket's first output on the same inputs.
    buckets = list(grid.buckets())
    mismatches: list[str] = []
    modes = {"graph": 0, "plain": 0}
    for _ in range(args.interleaved):
        bucket = buckets[int(rng.integers(len(buckets)))]
        inputs, expected = first[bucket]
        bufs = backend.inputs(bucket)
        for name, values in inputs.items():
            bufs[name][...] = values
        graph = bool(rng.random() < 0.5)
        out = backend.execute(bucket)[backend.io.output] if graph else backend.execute_plain(bucket)
        modes["graph" if graph else "plain"] += 1
        if out.tobytes() != expected:
            mismatches.append(f"{bucket.batch}x{bucket.length} ({'graph' if graph else 'plain'})")
    print(
        f"interleaved pass: {args.interleaved} runs ({modes['graph']} replays, "
        f"{modes['plain']} plain), {len(mismatches)} differ bit for bit"
        + (f": {', '.join(mismatches[:10])}" if mismatches else "")
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
        "cosine_floor": floor,
        "failures": failures,
        "interleaved": {"runs": args.interleaved, "mismatches": mismatches},
        "timing": "graph and plain alternate, graph first on even runs",
        "buckets": rows,
    }
    backend.close()
    out_path = args.out or RESULTS / f"gpu_check-{files.root.name}-{int(time.time())}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out_path}")
    failed = failures + [f"{m}: differs bit for bit from its first output" for m in mismatches]
    if failed:
        print(f"gpu_check FAILED ({len(failed)}):", *failed, sep="\n  ")
        return 1
    print(
        f"gpu_check passed: {len(rows)} buckets within cosine {floor}, all finite, "
        f"{args.interleaved} interleaved runs equal"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
