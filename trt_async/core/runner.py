"""Runs one bucket on a backend in a worker thread, so the event loop never waits.

The job done in the thread is the whole of a batch's CPU work: packing the items into the
bucket's input buffers (pinned host memory on the GPU), executing, and reducing the output
to one row per item. Only that row matrix crosses back to the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from trt_async.backends.base import Backend
from trt_async.backends.shapes import Bucket
from trt_async.core.heads import Reducer
from trt_async.core.multivector import Head, HeadReducer
from trt_async.core.tokenizer import Encoding

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchOutput:
    rows: np.ndarray
    #: Seconds spent in the backend's execute (the rest of the job is packing and reducing).
    execute_s: float
    #: Per head asked for, one value per item of the batch (see core.multivector).
    heads: Mapping[Head, Sequence[object]] = field(default_factory=dict)


def pack(buffers: Mapping[str, np.ndarray], items: Sequence[Encoding], pad_id: int) -> np.ndarray:
    """Write ``items`` into a bucket's input arrays in place; return the attention mask.

    Rows past ``len(items)`` are padding rows: one pad token with a live mask position, so
    no attention row is fully masked (which some kernels turn into NaN). Their outputs are
    dropped.
    """
    ids = buffers["input_ids"]
    batch, length = ids.shape
    mask = buffers.get("attention_mask")
    if mask is None:
        mask = np.zeros((batch, length), dtype=ids.dtype)
    ids.fill(pad_id)
    mask.fill(0)
    type_ids = buffers.get("token_type_ids")
    if type_ids is not None:
        type_ids.fill(0)
    for row, item in enumerate(items):
        n = len(item.ids)
        ids[row, :n] = item.ids
        mask[row, :n] = 1
        if type_ids is not None and item.type_ids is not None:
            type_ids[row, :n] = item.type_ids
    mask[len(items) :, 0] = 1
    return mask


class BatchAbandoned(Exception):
    """A batch waiting for the worker was not run: the scheduler closed before it started."""


class BatchRunner:
    """Owns the one worker thread that talks to a backend (backends are single-threaded)."""

    def __init__(
        self,
        backend: Backend,
        reduce: Reducer,
        pad_id: int,
        name: str,
        head_reducers: Mapping[Head, tuple[str, HeadReducer]] | None = None,
    ) -> None:
        self.backend = backend
        self._reduce = reduce
        self._heads = dict(head_reducers or {})
        self._pad_id = pad_id
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")

    async def run(
        self,
        bucket: Bucket,
        items: Sequence[Encoding],
        heads: Collection[Head] = (),
        abandoned: Callable[[], bool] | None = None,
    ) -> BatchOutput:
        """Run ``items`` in ``bucket``; ``heads`` are the token-level results wanted too.

        A batch picked ahead waits behind the running one; ``abandoned`` is asked when the
        worker reaches it, and a True answer raises :class:`BatchAbandoned` instead of
        running it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._job, bucket, items, heads, abandoned
        )

    def _job(
        self,
        bucket: Bucket,
        items: Sequence[Encoding],
        heads: Collection[Head],
        abandoned: Callable[[], bool] | None,
    ) -> BatchOutput:
        if abandoned is not None and abandoned():
            raise BatchAbandoned
        buffers = self.backend.inputs(bucket)
        mask = pack(buffers, items, self._pad_id)
        wanted = [(head, *self._heads[head]) for head in heads]
        start = time.perf_counter()
        outputs = self.backend.execute(bucket, [name for _, name, _ in wanted])
        execute_s = time.perf_counter() - start
        n = len(items)
        # Reducers copy out of the bucket's output buffers, which the next run reuses.
        rows = self._reduce(outputs[self.backend.io.output][:n], mask[:n])
        ids = buffers["input_ids"][:n]
        extras = {head: reduce(outputs[name][:n], ids, mask[:n]) for head, name, reduce in wanted}
        return BatchOutput(rows, execute_s, extras)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the backend's thread (prepare, close) without blocking the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
