"""The bare backend: the model's backend driven directly, without HTTP, queues or asyncio.

It is what the server is measured against. A :class:`BareBackend` builds its runtime with
:func:`~trt_async.core.runtime.create_runtime`, the server's own composition root, so the
tokenizer, bucket grid, backend and pooling are those the server would serve the config
with. It then runs batches in the calling thread: fill the bucket's buffers (``pack``),
``execute``, pool. The runtime's scheduler and worker threads stay unused. Tokenisation is
done before the clock starts. A batch runs on the lane a lone batch gets in the server (the
solo lane, where the backend has one), unless a lane is named.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_async.backends.base import Lanes
from trt_async.backends.modelfiles import ModelFiles
from trt_async.backends.shapes import Bucket
from trt_async.core.config import ModelConfig
from trt_async.core.runner import pack
from trt_async.core.runtime import create_runtime
from trt_async.core.tokenizer import Encoding


@dataclass(frozen=True, slots=True)
class BareRun:
    items: int
    batches: int
    seconds: float
    real_tokens: int
    padded_tokens: int

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def parse_bucket(key: str) -> Bucket:
    batch, length = key.lower().split("x")
    return Bucket(int(batch), int(length))


class BareBackend:
    """One model's runtime (as the server builds it), its batches run synchronously."""

    def __init__(self, config: ModelConfig) -> None:
        files = ModelFiles.resolve(Path(config.model_path), config.tokenizer_path)
        self.runtime = create_runtime(files, config, label="bare")
        self.backend = self.runtime.backend
        self.tokenizer = self.runtime.tokenizer
        self.grid = self.runtime.grid
        self.max_length = self.runtime.max_length
        self.reduce = self.runtime.reduce
        try:
            self.backend.prepare(self.grid)
        except BaseException:
            self.close()
            raise

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        return self.tokenizer.encode(list(texts), truncate=True)

    @property
    def lanes(self) -> Lanes:
        return self.runtime.runner.lanes

    def run_batch(
        self, bucket: Bucket, items: Sequence[Encoding], lane: int | None = None
    ) -> np.ndarray:
        """Pack, execute, pool: what the server's batch job does, minus the thread hop.

        ``lane`` defaults to the one a batch alone runs on (see the module's doc)."""
        if lane is None:
            lane = self.lanes.alone
        buffers = self.backend.inputs(bucket, lane)
        mask = pack(buffers, items, self.tokenizer.pad_id)
        out = self.backend.execute(bucket, (), lane)[self.backend.io.output]
        n = len(items)
        return self.reduce(out[:n], mask[:n])

    def batch_one_latencies(self, encodings: Iterable[Encoding]) -> list[float]:
        """Seconds of each item run alone (batch 1, its own padded length)."""
        out: list[float] = []
        for enc in encodings:
            bucket = Bucket(1, self.grid.length_for(len(enc)))
            start = time.perf_counter()
            self.run_batch(bucket, [enc])
            out.append(time.perf_counter() - start)
        return out

    def ideal_batches(self, encodings: Sequence[Encoding]) -> list[tuple[Bucket, list[Encoding]]]:
        """Items grouped by padded length in arrival order, in batches as full as allowed."""
        queues: dict[int, list[Encoding]] = defaultdict(list)
        for enc in encodings:
            queues[self.grid.length_for(len(enc))].append(enc)
        batches: list[tuple[Bucket, list[Encoding]]] = []
        for length, items in sorted(queues.items()):
            cap = self.grid.capacity(length)
            for i in range(0, len(items), cap):
                chunk = items[i : i + cap]
                batches.append((Bucket(self.grid.batch_for(len(chunk)), length), chunk))
        return batches

    def replay_batches(
        self, histogram: Mapping[str, int], encodings: Sequence[Encoding]
    ) -> list[tuple[Bucket, list[Encoding]]]:
        """The batch shapes a server ran (``{"BxL": count}``), filled with real encodings.

        Each bucket of padded length L takes items that pad to L (cycled from
        ``encodings``); if none does, the longest shorter ones. Compute on the CPU depends on
        the shapes only, so the bare backend does the same work the server did.
        """
        by_length: dict[int, deque[Encoding]] = defaultdict(deque)
        for enc in encodings:
            by_length[self.grid.length_for(len(enc))].append(enc)
        batches: list[tuple[Bucket, list[Encoding]]] = []
        for key, count in histogram.items():
            bucket = parse_bucket(key)
            pool = by_length.get(bucket.length)
            if not pool:
                shorter = [n for n in by_length if n < bucket.length and by_length[n]]
                pool = by_length[max(shorter)] if shorter else deque(encodings)
            for _ in range(count):
                items: list[Encoding] = []
                for _ in range(bucket.batch):
                    enc = pool[0]
                    pool.rotate(-1)
                    items.append(enc)
                batches.append((bucket, items))
        return batches

    def on_lanes(self, work: Callable[[int], bool], parallel: bool = True) -> None:
        """Call ``work(lane)`` until it returns False: from one thread per parallel lane at
        once, as the server's lanes run under load, or (``parallel`` False, or a single
        lane) from this thread on the lane a batch alone gets. ``work`` must take its next
        batch under a lock of its own."""
        if parallel and self.lanes.parallel > 1:
            lanes = list(range(self.lanes.parallel))
        else:
            lanes = [self.lanes.alone]

        def loop(lane: int) -> None:
            while work(lane):
                pass

        if len(lanes) == 1:
            loop(lanes[0])
            return
        threads = [threading.Thread(target=loop, args=(lane,)) for lane in lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def run(
        self, batches: Sequence[tuple[Bucket, Sequence[Encoding]]], parallel: bool = True
    ) -> BareRun:
        """Run ``batches`` once each, on the lanes as :meth:`on_lanes` uses them."""
        pending = iter(batches)
        lock = threading.Lock()

        def work(lane: int) -> bool:
            with lock:
                batch = next(pending, None)
            if batch is None:
                return False
            self.run_batch(batch[0], batch[1], lane)
            return True

        start = time.perf_counter()
        self.on_lanes(work, parallel)
        seconds = time.perf_counter() - start
        return BareRun(
            items=sum(len(items) for _, items in batches),
            batches=len(batches),
            seconds=seconds,
            real_tokens=sum(len(e) for _, items in batches for e in items),
            padded_tokens=sum(b.tokens for b, _ in batches),
        )

    def close(self) -> None:
        """Free the backend (the runtime's worker thread never started: nothing ran there)."""
        self.backend.close()
        self.runtime.runner.shutdown()
