"""A small, honest Backend for scheduler tests: it computes from what was packed.

Each output row is ``[sum of token ids under the mask, number of real tokens, batch size,
padded length]``, so a test can check that every item came back in its own row, unpadded,
and see the bucket it ran in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping

import numpy as np

from trt_async.backends.base import BackendInfo, BackendSpec, CounterSpec, ModelIO, Progress
from trt_async.backends.shapes import Bucket, BucketGrid

#: Declared like a CPU backend: a small per-batch overhead, one counter of batches run.
EXECUTED = CounterSpec("fake_batches", "Batches the fake backend ran")
FAKE_SPEC = BackendSpec(
    name="fake",
    length_steps=(16, 32, 64, 128),
    batch_sizes=(1, 2, 4, 8),
    batch_overhead_tokens=32,
    counters=(EXECUTED,),
)


class FakeBackend:
    def __init__(self, fail_when: Callable[[np.ndarray], bool] | None = None) -> None:
        self._io = ModelIO(("input_ids", "attention_mask"), "sentence_embedding")
        self._buffers: dict[Bucket, dict[str, np.ndarray]] = {}
        self.fail_when = fail_when
        self.executed: list[tuple[Bucket, list[int]]] = []
        #: While cleared, execute() blocks: lets a test pile work up behind a running batch.
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.prepared: BucketGrid | None = None
        self.closed = False

    @property
    def io(self) -> ModelIO:
        return self._io

    def spec(self) -> BackendSpec:
        return FAKE_SPEC

    def counters(self) -> dict[CounterSpec, int]:
        return {EXECUTED: len(self.executed)}

    def prepare(self, grid: BucketGrid, progress: Progress | None = None) -> None:
        self.prepared = grid
        for bucket in grid.buckets():
            self._buffers[bucket] = {
                name: np.zeros((bucket.batch, bucket.length), dtype=np.int64)
                for name in self._io.inputs
            }

    def inputs(self, bucket: Bucket) -> Mapping[str, np.ndarray]:
        return self._buffers[bucket]

    def execute(self, bucket: Bucket, extra: Collection[str] = ()) -> Mapping[str, np.ndarray]:
        self.started.set()
        self.gate.wait(timeout=10)
        ids = self._buffers[bucket]["input_ids"]
        mask = self._buffers[bucket]["attention_mask"]
        # First token id of each real row identifies the item in tests.
        self.executed.append((bucket, [int(ids[r, 0]) for r in range(bucket.batch)]))
        if self.fail_when is not None and self.fail_when(ids):
            raise RuntimeError("injected backend failure")
        out = np.zeros((bucket.batch, 4), dtype=np.float32)
        out[:, 0] = (ids * mask).sum(axis=1)
        out[:, 1] = mask.sum(axis=1)
        out[:, 2] = bucket.batch
        out[:, 3] = bucket.length
        return {self._io.output: out}

    def info(self) -> BackendInfo:
        return BackendInfo(name="fake", device="cpu")

    def close(self) -> None:
        self.closed = True
