"""How the bare ceiling samples its batches, checked against a whole pass over all of them.

The ceiling of ``perf/peer_table.py`` is items/s of bare ONNX Runtime on a mix's texts,
sorted by token count and cut into batches under a padded-token cap. Three ways to measure
it, one after another for each mix and cap, the caps in alternating order from round to
round:

- ``all``: one whole pass over every text of the mix's pool (each batch once, longest
  first), the reference;
- ``sample``: whole passes over ~``--sample-tokens`` of the mix's texts spaced evenly in
  length order (the table runs whole passes over the whole pools of these mixes: see
  ``CEILING_PASS_TOKENS`` there);
- ``cut``: the batches in one seeded order, stopped by the clock after ``--seconds``, as
  the table measured it before: its figure is that of whichever batches came first.

    python -m perf.ceiling_sampling --rounds 2 --out perf/results/ceiling-sampling

prints each figure and writes ``table.json`` and ``table.md`` under ``--out``: per mix and
cap, ``sample / all`` and ``cut / all`` for every round.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from perf.peer_table import (
    CEILING_CAPS,
    bare_ceiling,
    ceiling_batches,
    ceiling_texts,
    run_texts,
    streams,
)
from trt_async.bench.bare import BareBackend
from trt_async.bench.server import base_config

MIXES = ("realistic", "docs32")
CAPS = (256, 1024, 2048, 8192)


def clock_cut(bare: BareBackend, batches: Sequence[Sequence[str]], seconds: float) -> float:
    """Items/s of ``batches`` in a seeded random order until ``seconds`` pass (the ceiling's
    method before whole passes): on the parallel lanes, each batch padded to its own longest
    item, tokenisation included."""
    order = list(range(len(batches)))
    random.Random(0).shuffle(order)
    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    start = time.perf_counter()

    def work(lane: int) -> bool:
        with lock:
            if time.perf_counter() - start >= seconds and state["done"] > 0:
                return False
            texts = batches[order[state["next"] % len(order)]]
            state["next"] += 1
        ran = run_texts(bare, texts, lane)
        with lock:
            state["done"] += ran
        return True

    bare.on_lanes(work)
    return state["done"] / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="the clock cut's seconds")
    p.add_argument("--pool", type=int, default=1000, help="requests per stream (as the table)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sample-tokens", type=int, default=24576, help="tokens of the sample")
    p.add_argument("--config", type=Path, help="model config (default: the embedded model)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    config = base_config(args.config)
    model = msgspec.structs.replace(
        next(iter(config.embedding_models.values())), max_batch_tokens=max(CEILING_CAPS)
    )
    bare = BareBackend(model)
    data = streams("all-MiniLM-L6-v2", args.seed, args.pool)
    pools = {mix: [t for spec in data[mix] for t in spec.texts] for mix in MIXES}
    samples = {mix: ceiling_texts(bare, pools[mix], args.sample_tokens) for mix in MIXES}
    bare_ceiling(bare, ceiling_batches(bare, samples[MIXES[0]]), 1.0)  # warm
    runs: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in range(args.rounds):
        for mix in MIXES:
            for cap in CAPS if r % 2 == 0 else CAPS[::-1]:
                every = ceiling_batches(bare, pools[mix], cap)
                got = {
                    "all": bare_ceiling(bare, every, 0.0),
                    "sample": bare_ceiling(bare, ceiling_batches(bare, samples[mix], cap), 0.0),
                    "cut": clock_cut(bare, every, args.seconds),
                }
                for how, value in got.items():
                    runs.setdefault(mix, {}).setdefault(str(cap), {}).setdefault(how, [])
                    runs[mix][str(cap)][how].append(value)
                shown = ", ".join(f"{how} {v:.1f}" for how, v in got.items())
                print(f"round {r + 1} {mix} cap {cap}: {shown} items/s", flush=True)
    bare.close()
    lines = [
        f"Command: `python -m perf.ceiling_sampling --rounds {args.rounds} --seconds "
        f"{args.seconds:g} --sample-tokens {args.sample_tokens} --out DIR`",
        "",
        f"Texts: the table's pools ({args.pool} requests per stream); `sample` is "
        f"~{args.sample_tokens} tokens of each. Items/s are medians over rounds; ratios are "
        "per round.",
        "",
        "| mix | cap | all items/s | sample / all | cut / all |",
        "|---|---|---|---|---|",
    ]
    for mix, caps in runs.items():
        for cap, got in caps.items():
            ratios = {
                how: ", ".join(f"{v / a:.2f}" for v, a in zip(got[how], got["all"], strict=True))
                for how in ("sample", "cut")
            }
            lines.append(
                f"| {mix} | {cap} | {statistics.median(got['all']):.1f} | {ratios['sample']} "
                f"| {ratios['cut']} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    (args.out / "table.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
