"""What tokenising a prompted embedding request costs the event loop, in the shared hops
or in a thread hop of its own.

``python -m perf.prompt_hops [--rounds 3] [--concurrency 64] [--requests 4000]``

A prompted request (``prompt_name``) is tokenised as ``prompt + text``. The server hands
it to the model's :class:`~trt_async.core.tokenize_queue.TokenizeQueue`, whose hops take
every request waiting; the alternative is one tokenizer-pool hop per request (what the
request path does for rerank pairs). Both are measured here, with the plain (prompt-less)
path through the same queue as the baseline, on the same texts: ``concurrency`` clients
each send one-text requests back to back until ``requests`` are done, on Qwen3-Embedding's
tokenizer pipeline (trained small by :mod:`trt_async.tools.tiny_decoders`) with its 14-word
query prompt.

Per way: requests/s, the event loop thread's CPU per request (``time.thread_time`` on the
loop's thread: what the loop pays for handing work out and taking it back) and the thread
hops per request. Rounds alternate the order of the three ways.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)


def texts(n: int) -> list[str]:
    from trt_async.tools.tiny_models import corpus

    lines = [line for line in corpus() if line.strip()]
    return [lines[i % len(lines)] for i in range(n)]


async def drive(
    send: Callable[[str], Awaitable[Any]], items: Sequence[str], concurrency: int
) -> tuple[float, float]:
    """(seconds, loop CPU seconds) for ``items`` sent by ``concurrency`` clients."""
    cursor = iter(range(len(items)))

    async def client() -> None:
        for i in cursor:
            await send(items[i])

    cpu, start = time.thread_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - start, time.thread_time() - cpu


async def one_round(
    tok: Any, items: Sequence[str], concurrency: int, order: Sequence[str]
) -> dict[str, dict[str, float]]:
    from trt_async.core.fairpool import FairPool
    from trt_async.core.prompting import encode_prompted
    from trt_async.core.tokenize_queue import TokenizeQueue

    class CountingPool(FairPool):
        hops = 0

        async def run(self, owner: Hashable, fn: Callable[[], T]) -> T:
            self.hops += 1
            return await super().run(owner, fn)

    def sender(way: str, pool: CountingPool) -> Callable[[str], Awaitable[Any]]:
        queue: TokenizeQueue[Any] = TokenizeQueue(tok, pool, "model", lambda e: e)
        prompt = "" if way.startswith("plain") else QUERY_PROMPT

        async def shared(text: str) -> Any:
            return await queue.run(queue.request([text], truncate=True, prompt=prompt))

        async def own_hop(text: str) -> Any:
            return await pool.run(
                "model", lambda: encode_prompted(tok, [text], prompt, truncate=True)
            )

        return own_hop if way.endswith("a hop each") else shared

    out: dict[str, dict[str, float]] = {}
    for way in order:
        pool = CountingPool(2, f"hops-{way}")
        send = sender(way, pool)
        await drive(send, items[: len(items) // 10], concurrency)  # warm up
        pool.hops = 0
        seconds, loop_cpu = await drive(send, items, concurrency)
        out[way] = {
            "requests_per_s": len(items) / seconds,
            "loop_cpu_us_per_request": loop_cpu / len(items) * 1e6,
            "hops_per_request": pool.hops / len(items),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.prompt_hops")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    from trt_async.core.tokenizer import TextTokenizer
    from trt_async.tools.tiny_decoders import write_tokenizer

    ways = ["plain, shared hops", "prompted, shared hops", "prompted, a hop each"]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="prompt-hops-") as tmp:
        write_tokenizer(Path(tmp), "qwen3", appends_eos=True)
        tok = TextTokenizer(Path(tmp) / "tokenizer.json", 512, with_type_ids=False)
        items = texts(args.requests)
        for r in range(args.rounds):
            order = ways if r % 2 == 0 else ways[::-1]
            rounds.append(asyncio.run(one_round(tok, items, args.concurrency, order)))
    summary = {
        way: {
            key: statistics.median(rnd[way][key] for rnd in rounds)
            for key in ("requests_per_s", "loop_cpu_us_per_request", "hops_per_request")
        }
        for way in ways
    }
    header = f"{'way':<24} {'req/s':>9} {'loop CPU us/req':>16} {'hops/req':>9}"
    print(f"{header}  (median of {args.rounds} rounds)")
    for way, row in summary.items():
        print(
            f"{way:<24} {row['requests_per_s']:>9.0f} {row['loop_cpu_us_per_request']:>16.1f} "
            f"{row['hops_per_request']:>9.3f}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "rounds": rounds,
                    "median": summary,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
