"""infinity-emb's own runtime, without its server: the sanity check for its figures.

Run with infinity-emb's Python (its virtualenv has none of this project's packages, so this
file imports only the standard library and infinity): loads infinity's optimum embedder on a
model folder exactly as its server does and runs texts through ``encode_pre``,
``encode_core`` and ``encode_post`` in batches of ``--batch-size`` (its server's default is
32), sorted by length as its batch handler sorts its queue. Prints one JSON object: texts a
second over the whole pass, and the pass's seconds.

    ~/venvs/infinity/bin/python perf/infinity_bare.py --folder DIR --texts texts.json

A peer's server is expected to come within reach of this figure on the same texts; one far
below it is a setup or harness problem, not a result (``perf.peer_table`` runs this when it
starts infinity itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", required=True, help="the folder infinity serves (--model-id)")
    p.add_argument("--texts", required=True, help="a JSON list of texts")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--passes", type=int, default=1)
    args = p.parse_args(argv)
    from infinity_emb.args import EngineArgs
    from infinity_emb.transformer.embedder.optimum import OptimumEmbedder

    with open(args.texts, encoding="utf-8") as f:
        texts: list[str] = json.load(f)
    os.chdir(args.folder)  # infinity 0.0.78 finds a local folder's model.onnx only as "."
    embedder = OptimumEmbedder(
        engine_args=EngineArgs(
            model_name_or_path=".", engine="optimum", device="cpu", pooling_method="mean"
        )
    )
    ordered = sorted(texts, key=len)
    batches = [ordered[i : i + args.batch_size] for i in range(0, len(ordered), args.batch_size)]
    embedder.encode_post(embedder.encode_core(embedder.encode_pre(batches[0])))  # warm
    start = time.perf_counter()
    for _ in range(args.passes):
        for batch in batches:
            embedder.encode_post(embedder.encode_core(embedder.encode_pre(batch)))
    seconds = time.perf_counter() - start
    json.dump({"texts_per_s": args.passes * len(texts) / seconds, "seconds": seconds}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
