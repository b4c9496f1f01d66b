"""Runs buckets on a backend in worker threads, so the event loop never waits.

The job done in the thread is the whole of a batch's CPU work: packing the items into the
bucket's input buffers (pinned host memory on the GPU), executing, and reducing the output
to one row per item. Only that row matrix crosses back to the loop.

Each of the backend's parallel lanes has one thread of a pool, so a batch waiting for a
lane starts on whichever frees first; the solo lane, if the backend has one, has a thread
of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from trt_async.backends.base import Backend, Lanes
from trt_async.backends.shapes import Bucket
from trt_async.core.heads import Reducer, l2_normalize
from trt_async.core.multivector import Head, HeadReducer
from trt_async.core.tokenizer import Encoding

T = TypeVar("T")
M = TypeVar("M")

#: One item of a batch: a text's tokens, or one item of a fixed-shape input (an image's
#: ``(3, H, W)`` pixel values, a row of its request's array).
Item = Encoding | np.ndarray
#: ``pack(buffers, items, pad_id) -> mask``: writes a batch's items into its bucket's inputs
#: and gives the mask the reducers read (:func:`pack` for tokens).
Packer = Callable[[Mapping[str, np.ndarray], Sequence[Item], int], np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchOutput:
    rows: np.ndarray
    #: Seconds spent in the backend's execute (the rest of the job is packing and reducing).
    execute_s: float
    #: Per head asked for, one value per item of the batch (see core.multivector).
    heads: Mapping[Head, Sequence[object]] = field(default_factory=dict)
    #: ``rows`` L2-normalised, for runners that give vectors (what most requests return).
    units: np.ndarray | None = None


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


def _pack_tokens(
    buffers: Mapping[str, np.ndarray], items: Sequence[Item], pad_id: int
) -> np.ndarray:
    return pack(buffers, cast("Sequence[Encoding]", items), pad_id)


class BatchAbandoned(Exception):
    """A batch waiting for the worker was not run: the scheduler closed before it started."""


class _Job:
    __slots__ = ("call", "future", "loop")

    def __init__(
        self,
        call: Callable[[int], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.call = call
        self.future = future
        self.loop = loop


class _LaneThreads:
    """Threads that take jobs from one queue, each with its lane's index.

    A job's result reaches its awaiting task with one ``call_soon_threadsafe``: an executor's
    future, wrapped for asyncio, costs the event loop several callbacks and a lock per
    batch more.
    """

    def __init__(self, lanes: Sequence[int], name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, args=(lane,), name=f"{name}-{i}", daemon=True)
            for i, lane in enumerate(lanes)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[[int], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(call, future, loop))
        return future

    def _work(self, lane: int) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                result = job.call(lane)
            except BaseException as exc:  # handed to the awaiting task, as an executor does
                outcome: tuple[Any, BaseException | None] = (None, exc)
            else:
                outcome = (result, None)
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                job.loop.call_soon_threadsafe(_settle, job.future, *outcome)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class BatchRunner:
    """Owns the worker threads that talk to a backend: one per lane."""

    def __init__(
        self,
        backend: Backend,
        reduce: Reducer,
        pad_id: int,
        name: str,
        head_reducers: Mapping[Head, tuple[str, HeadReducer]] | None = None,
        *,
        units: bool = False,
        pack: Packer | None = None,
    ) -> None:
        self.backend = backend
        self._reduce = reduce
        #: How a batch's items go into its inputs: token ids by default.
        self._pack = _pack_tokens if pack is None else pack
        #: Whether each batch's rows are also given L2-normalised (vectors, not logits): the
        #: worker thread normalises a whole batch in one operation, the event loop would
        #: pay for one per request.
        self._units = units
        self._heads = dict(head_reducers or {})
        self._pad_id = pad_id
        self.lanes: Lanes = backend.lanes()
        self._parallel = _LaneThreads(range(self.lanes.parallel), f"batch-{name}")
        self._solo = (
            _LaneThreads([self.lanes.alone], f"batch-{name}-solo") if self.lanes.solo else None
        )
        #: Batches handed to a lane and not back yet (counted on the event loop).
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(
        self,
        bucket: Bucket,
        items: Sequence[Item],
        heads: Collection[Head] = (),
        abandoned: Callable[[], bool] | None = None,
        solo: bool = False,
    ) -> BatchOutput:
        """Run ``items`` in ``bucket``; ``heads`` are the token-level results wanted too.

        ``solo``: the batch runs alone, so it takes the solo lane if the backend has one.
        A batch picked ahead waits for a lane; ``abandoned`` is asked when a worker
        reaches it, and a True answer raises :class:`BatchAbandoned` instead of running
        it."""
        return await self._hand(solo, lambda lane: self._job(bucket, items, heads, abandoned, lane))

    def _hand(self, solo: bool, call: Callable[[int], T]) -> asyncio.Future[T]:
        """``call(lane)`` on the solo lane's thread (``solo``, if the backend has one) or
        the next free parallel lane's (a parallel lane is known only on the thread that
        takes the job)."""
        threads = self._solo if solo and self._solo is not None else self._parallel
        self._in_flight += 1
        self._idle.clear()
        future = threads.submit(call)
        future.add_done_callback(self._handed_back)
        return future

    def _handed_back(self, future: asyncio.Future[Any]) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def run_made(
        self,
        make: Callable[[], M],
        batch_of: Callable[[M], tuple[Bucket, Sequence[Item]] | None],
        solo: bool = False,
    ) -> asyncio.Future[tuple[M, BatchOutput | None, float]]:
        """``make()`` on a lane's thread, then the batch ``batch_of`` finds in what it made,
        run at once on that thread: one thread handoff for what otherwise takes two (a
        tokenisation hop, then a batch). Its future gives what was made, the batch's output
        (None when ``batch_of`` found no batch) and the seconds ``make`` took, or what
        ``make`` or the batch raised."""

        def job(lane: int) -> tuple[M, BatchOutput | None, float]:
            start = time.perf_counter()
            made = make()
            made_s = time.perf_counter() - start
            batch = batch_of(made)
            if batch is None:
                return made, None, made_s
            bucket, items = batch
            return made, self._job(bucket, items, (), None, lane), made_s

        return self._hand(solo, job)

    async def drain(self) -> None:
        """Wait until no batch is running or waiting for a lane."""
        await self._idle.wait()

    def _job(
        self,
        bucket: Bucket,
        items: Sequence[Item],
        heads: Collection[Head],
        abandoned: Callable[[], bool] | None,
        lane: int,
    ) -> BatchOutput:
        if abandoned is not None and abandoned():
            raise BatchAbandoned
        buffers = self.backend.inputs(bucket, lane)
        mask = self._pack(buffers, items, self._pad_id)
        wanted = [(head, *self._heads[head]) for head in heads]
        start = time.perf_counter()
        outputs = self.backend.execute(bucket, [name for _, name, _ in wanted], lane)
        execute_s = time.perf_counter() - start
        n = len(items)
        # Reducers copy out of the bucket's output buffers, which the next run reuses.
        rows = self._reduce(outputs[self.backend.io.output][:n], mask[:n])
        extras = {}
        if wanted:  # token-level heads read the ids (fixed-shape inputs have none)
            ids = buffers["input_ids"][:n]
            extras = {
                head: reduce(outputs[name][:n], ids, mask[:n]) for head, name, reduce in wanted
            }
        units = l2_normalize(rows) if self._units else None
        return BatchOutput(rows, execute_s, extras, units)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a backend thread (prepare, close) without blocking the loop; with
        several lanes, only while no batch runs (see :meth:`drain`)."""
        return await self._parallel.submit(lambda lane: fn())

    def shutdown(self) -> None:
        self._parallel.shutdown()
        if self._solo is not None:
            self._solo.shutdown()
