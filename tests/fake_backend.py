"""A small, honest Backend for scheduler tests: it computes from what was packed.

Each output row is ``[sum of token ids under the mask, number of real tokens, batch size,
padded length]``, so a test can check that every item came back in its own row, unpadded,
and see the bucket it ran in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping

import numpy as np

from trt_async.backends.base import (
    BackendInfo,
    BackendSpec,
    CounterSpec,
    Lanes,
    ModelIO,
    Progress,
)
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
    def __init__(
        self, fail_when: Callable[[np.ndarray], bool] | None = None, lanes: Lanes | None = None
    ) -> None:
        self._io = ModelIO(("input_ids", "attention_mask"), "sentence_embedding")
        self._lanes = lanes or Lanes()
        self._buffers: dict[tuple[int, Bucket], dict[str, np.ndarray]] = {}
        self.fail_when = fail_when
        self.executed: list[tuple[Bucket, list[int]]] = []
        #: The lane of each entry of ``executed``.
        self.executed_lanes: list[int] = []
        #: Lanes inside execute() now, and the most at once.
        self._busy: set[int] = set()
        self.most_at_once = 0
        self._lock = threading.Lock()
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

    def lanes(self) -> Lanes:
        return self._lanes

    def counters(self) -> dict[CounterSpec, int]:
        return {EXECUTED: len(self.executed)}

    def prepare(self, grid: BucketGrid, progress: Progress | None = None) -> None:
        self.prepared = grid
        for lane in range(self._lanes.count):
            for bucket in grid.buckets():
                self._buffers[lane, bucket] = {
                    name: np.zeros((bucket.batch, bucket.length), dtype=np.int64)
                    for name in self._io.inputs
                }

    def inputs(self, bucket: Bucket, lane: int = 0) -> Mapping[str, np.ndarray]:
        return self._buffers[lane, bucket]

    def execute(
        self, bucket: Bucket, extra: Collection[str] = (), lane: int = 0
    ) -> Mapping[str, np.ndarray]:
        # The Backend contract: each lane from one thread at a time (its buffers are one set).
        with self._lock:
            if lane in self._busy:
                raise AssertionError(f"lane {lane} entered while a batch runs on it")
            self._busy.add(lane)
            self.most_at_once = max(self.most_at_once, len(self._busy))
        try:
            return self._execute(bucket, lane)
        finally:
            with self._lock:
                self._busy.discard(lane)

    def _execute(self, bucket: Bucket, lane: int) -> Mapping[str, np.ndarray]:
        self.started.set()
        self.gate.wait(timeout=10)
        if self.closed:
            # A real backend has freed its session/engine and buffers by now.
            raise AssertionError("a batch ran on a closed backend")
        ids = self._buffers[lane, bucket]["input_ids"]
        mask = self._buffers[lane, bucket]["attention_mask"]
        # First token id of each real row identifies the item in tests.
        with self._lock:
            self.executed.append((bucket, [int(ids[r, 0]) for r in range(bucket.batch)]))
            self.executed_lanes.append(lane)
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
