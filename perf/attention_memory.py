"""ONNX Runtime's peak memory for one batch of a decoder graph, by rows and length.

``python -m perf.attention_memory [--shapes 1x512,1x2048,1x4096,2x2048,1x8192]``

Builds a tiny random Qwen3 embedder with Qwen3-0.6B's head count (16 heads; 2 layers, 256
wide) with :mod:`trt_async.tools.tiny_decoders`, exports it with ``--pool-in-graph``, and runs each
``rows x length`` batch once in a fresh process on a session with the server's options
(2 threads), after an 8-token warm run. Each line gives the peak resident memory above
that warm process's, against the ``rows x heads x length²`` float32 attention scores one
layer holds, which is what grows: the model's weights are a few MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HEADS = 16


def measure(onnx: Path, rows: int, length: int) -> dict[str, float]:
    """One batch in this process: peak MiB above the warm session's, and seconds."""
    import numpy as np
    import onnxruntime as ort

    from trt_async.backends.onnxruntime import session_options

    session = ort.InferenceSession(
        str(onnx), session_options(2), providers=["CPUExecutionProvider"]
    )
    feeds = {
        "input_ids": np.ones((rows, length), np.int64),
        "attention_mask": np.ones((rows, length), np.int64),
    }
    session.run(None, {name: array[:, :8] for name, array in feeds.items()})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    session.run(None, feeds)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scores = rows * HEADS * length * length * 4 / 2**20
    return {
        "rows": rows,
        "length": length,
        "peak_mib": round((peak - before) / 1024, 1),
        "scores_mib": scores,
        "peak_over_scores": round((peak - before) / 1024 / scores, 2),
        "seconds": round(seconds, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.attention_memory")
    parser.add_argument("--shapes", default="1x512,1x1024,1x2048,2x2048,4x1024,1x4096,1x8192")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--one", nargs=3, metavar=("ONNX", "ROWS", "LENGTH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.one is not None:  # the child process
        print(json.dumps(measure(Path(args.one[0]), int(args.one[1]), int(args.one[2]))))
        return 0
    from trt_async.tools.export import export_model
    from trt_async.tools.tiny_decoders import write_decoder_embedder

    results = []
    with tempfile.TemporaryDirectory(prefix="attention-memory-") as tmp:
        sizes = {
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_attention_heads": HEADS,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
        }
        hf = write_decoder_embedder(Path(tmp) / "hf", "qwen3", **sizes)
        export_model(hf, "embed", Path(tmp) / "model", progress=False, pool_in_graph=True)
        onnx = Path(tmp) / "model" / "model.onnx"
        for shape in args.shapes.split(","):
            rows, length = (int(x) for x in shape.split("x"))
            child = [sys.executable, "-m", "perf.attention_memory", "--one", str(onnx), str(rows)]
            out = subprocess.run([*child, str(length)], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(
                f"{rows} x {length}: peak +{result['peak_mib']:.0f} MiB, scores "
                f"{result['scores_mib']:.0f} MiB ({result['peak_over_scores']:.2f}x), "
                f"{result['seconds']:.2f} s",
                flush=True,
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
