"""Items/s of the core path against the bare ONNX Runtime session, for decoder embedders.

``python -m perf.decoder_core_vs_session [--rounds 3] [--seconds 6] [--concurrency 64]``

:mod:`perf.core_vs_session`'s comparison (the core path one text per call, against
``session.run`` on the very batches the core formed) run on tiny randomly initialised
Qwen3 embedders built by :mod:`trt_async.tools.tiny_decoders` (Qwen3's tokenizer pipeline
appending ``<|endoftext|>``, last-token pooling), exported with ``trt-async export``, and on
all-MiniLM-L6-v2 in the same run for comparison:

* ``qwen3-tiny``: 2 layers, 64 wide, 4 heads, per-token output pooled by the server;
* ``qwen3-h256``: 2 layers, 256 wide, 16 heads (Qwen3-0.6B's head count), pooled in the
  graph (``--pool-in-graph``).

No decoder weights install from a package registry, so no real decoder is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perf.core_vs_session import compare
from trt_async.core.config import Config, ModelConfig

MODELS: dict[str, tuple[dict[str, Any], bool]] = {
    "qwen3-tiny": ({}, False),
    "qwen3-h256": (
        {
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
        },
        True,
    ),
}


def build(root: Path) -> dict[str, Path]:
    """Each model of :data:`MODELS` written and exported under ``root``."""
    from trt_async.tools.export import export_model
    from trt_async.tools.tiny_decoders import write_decoder_embedder

    out = {}
    for name, (sizes, pooled) in MODELS.items():
        hf = write_decoder_embedder(root / f"{name}-hf", "qwen3", **sizes)
        export_model(hf, "embed", root / name, progress=False, pool_in_graph=pooled)
        out[name] = root / name
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.decoder_core_vs_session")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    from trt_async.tools.embedded import embedded_config, embedded_model_dir

    results = []
    with tempfile.TemporaryDirectory(prefix="decoder-perf-") as tmp:
        folders = build(Path(tmp))
        minilm = embedded_config(embedded_model_dir())
        configs = {
            name: Config(embedding_models={name: ModelConfig(model_path=str(path))})
            for name, path in folders.items()
        }
        first = next(iter(minilm.embedding_models))
        configs[first] = Config(embedding_models={first: minilm.embedding_models[first]})
        for name, config in configs.items():
            print(f"{name}:", file=sys.stderr, flush=True)
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
            # Per-round ratios: each pairs a core round with a session round run beside it,
            # so the median resists a shared machine's drift better than the mean's ratio.
            result["median_round_ratio"] = round(
                statistics.median(r["ratio"] for r in result["rounds"]), 4
            )
            results.append(result)
            print(
                f"{name}: core {result['core_items_per_s']:.1f} items/s, session "
                f"{result['session_items_per_s']:.1f} items/s, core/session {result['ratio']:.3f}"
                f" (median of rounds {result['median_round_ratio']:.3f})"
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
