"""The length-bucket scheduler: one per served model runtime.

Requests become items (one per text or pair). Items wait in one FIFO per padded length of
the bucket grid. Whenever a lane of the backend is free a batch starts at once: no fixed
batching delay, so a lone request runs as batch 1 (on the solo lane, where the backend has
one). While the lanes are busy items accumulate, and
the next batch is the one with the most real tokens per unit of cost (a per-batch
overhead plus its padded tokens, under ``max_batch_tokens``), merging sparse neighbouring
length queues when that pays. A batch is padded to the smallest grid batch size that holds
it, so backends only ever see grid shapes.

Fairness is by request, not by item: requests take turns. Within each length queue items
wait grouped by request, in turn order, and a request that had items in a batch goes to the
back of every queue it is in. Once the request whose turn it is has waited ``max_delay_s``
(since it arrived or was last served), the next batch must include its items, however
efficient other batches would be. So a small request waits for at most one batch of each
request ahead of it, never for the whole of a large one; many small requests still share
batches, since a batch takes every request in turn order until it is full.

Everything here runs on the event loop and is O(items) bookkeeping; the backend work
happens in :class:`~trt_async.core.runner.BatchRunner`'s threads. This module knows no
backend library.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from trt_async.backends.base import Lanes
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.core.errors import BackendFailure, OverCapacity, Overloaded, Unavailable
from trt_async.core.multivector import Head
from trt_async.core.runner import BatchAbandoned, BatchOutput
from trt_async.core.tokenizer import Encoding

log = logging.getLogger(__name__)


class Runner(Protocol):
    lanes: Lanes

    async def run(
        self,
        bucket: Bucket,
        items: Sequence[Encoding],
        heads: Collection[Head] = (),
        abandoned: Callable[[], bool] | None = None,
        solo: bool = False,
    ) -> BatchOutput: ...


@dataclass(frozen=True, slots=True)
class QueueLimits:
    max_items: int = 8192
    max_tokens: int = 2_000_000
    #: Seconds a request may wait before its first item starts; then it fails with 503.
    timeout_s: float = 30.0
    #: Waiting this long doubles a length queue's claim on the next batch, and makes the
    #: request whose turn it is part of the next batch (see Scheduler._pick).
    max_delay_s: float = 0.05


@dataclass(frozen=True, slots=True)
class ScheduleResult:
    """Rows in input order, with where the request's time went."""

    rows: np.ndarray
    tokens: int
    queue_s: float
    inference_s: float
    #: Per head asked for at submit, one value per item, in input order.
    heads: Mapping[Head, list[object]] = field(default_factory=dict)


@dataclass(slots=True)
class SchedulerStats:
    """Counters a metrics layer reads; all monotonic except the queue gauges."""

    queued_items: int = 0
    queued_tokens: int = 0
    running_batches: int = 0
    batches: Counter[Bucket] = field(default_factory=Counter)
    items_run: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    cancelled_items: int = 0
    rejected_requests: int = 0
    timed_out_requests: int = 0
    failed_batches: int = 0
    consecutive_failures: int = 0

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


class BatchObserver(Protocol):
    def batch_done(
        self, bucket: Bucket, items: int, real_tokens: int, seconds: float, ok: bool
    ) -> None: ...


class _Request:
    __slots__ = (
        "deadline_handle",
        "enqueued",
        "extras",
        "first_start",
        "future",
        "heads",
        "items",
        "last_end",
        "queued",
        "remaining",
        "rows",
        "size",
        "tokens",
        "turn_since",
    )

    def __init__(
        self,
        future: asyncio.Future[None],
        n: int,
        tokens: int,
        now: float,
        heads: frozenset[Head] = frozenset(),
    ) -> None:
        self.future = future
        self.rows: np.ndarray | None = None
        self.heads = heads
        self.extras: dict[Head, list[object]] = {head: [None] * n for head in heads}
        self.items: list[_Item] = []
        self.size = n
        self.remaining = n
        self.queued = n
        self.tokens = tokens
        self.enqueued = now
        self.first_start: float | None = None
        self.last_end = now
        self.deadline_handle: asyncio.TimerHandle | None = None
        #: When it arrived or last had items taken into a batch: its place in the turns.
        self.turn_since = now

    @property
    def dead(self) -> bool:
        return self.future.done()


@dataclass(slots=True, eq=False)
class _Item:
    request: _Request
    index: int
    encoding: Encoding
    #: The length queue it waits in.
    length: int
    #: True while it is counted as queued. A dead request's items are uncounted at once but
    #: leave their deque lazily, whenever a pick reaches them.
    counted: bool = True


class _LengthQueue:
    """The items of one padded length, grouped by request in turn order, FIFO within each.

    Used like a deque of items (``append``, ``popleft``, truth); ``to_back`` moves a
    request behind the others when it has been served.
    """

    __slots__ = ("_turns",)

    def __init__(self) -> None:
        self._turns: OrderedDict[_Request, deque[_Item]] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._turns)

    def __contains__(self, request: _Request) -> bool:
        return request in self._turns

    def append(self, item: _Item) -> None:
        items = self._turns.get(item.request)
        if items is None:
            items = self._turns[item.request] = deque()
        items.append(item)

    def first(self) -> _Request:
        """The request whose turn it is in this queue (the queue must not be empty)."""
        return next(iter(self._turns))

    def drop_first(self) -> deque[_Item]:
        return self._turns.popitem(last=False)[1]

    def popleft(self) -> _Item:
        items = self._turns[self.first()]
        item = items.popleft()
        if not items:
            self._turns.popitem(last=False)
        return item

    def to_back(self, request: _Request) -> None:
        if request in self._turns:
            self._turns.move_to_end(request)


class Scheduler:
    """Groups items into grid buckets and keeps the runner's lanes busy.

    A batch picked when nothing runs and nothing else waits runs alone, on the solo lane
    if the runner has one; the next pick waits for it. Otherwise batches go to the
    parallel lanes, one per lane, and beyond the busy lanes ``ahead`` more batches may be
    picked early to wait for a lane.
    """

    def __init__(
        self,
        runner: Runner,
        grid: BucketGrid,
        limits: QueueLimits | None = None,
        *,
        ahead: int = 0,
        batch_overhead_tokens: int = 32,
        lookahead_tokens: float | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self.grid = grid
        self.limits = limits or QueueLimits()
        self.stats = SchedulerStats()
        self._runner = runner
        self._lanes = runner.lanes
        self._ahead = ahead
        #: Batches on the solo lane (0 or 1).
        self._on_solo = 0
        self._observer = observer
        self._queues = {length: _LengthQueue() for length in grid.lengths}
        self._live: dict[int, int] = dict.fromkeys(grid.lengths, 0)
        self._live_tokens: dict[int, int] = dict.fromkeys(grid.lengths, 0)
        self._overhead = float(batch_overhead_tokens)
        #: Least padded tokens of a batch picked while another runs (default: 4x overhead).
        self._lookahead_tokens = (
            4.0 * self._overhead if lookahead_tokens is None else float(lookahead_tokens)
        )
        self._max_delay = max(self.limits.max_delay_s, 1e-6)
        self._capacity = {length: grid.capacity(length) for length in grid.lengths}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- public API -----------------------------------------------------------------------

    async def submit(
        self, encodings: Sequence[Encoding], heads: Collection[Head] = ()
    ) -> ScheduleResult:
        """Run ``encodings`` and return one output row per item, in order.

        ``heads`` are token-level results wanted besides the rows (bge-m3's sparse weights
        or ColBERT vectors, token vectors); a batch computes the heads any of its items'
        requests want, and each request gets only its own.

        Raises (see :meth:`admit`) at once when the queue bounds would be exceeded, and
        :class:`Unavailable` if the request waits past the queue timeout or the scheduler
        is closing. If the awaiting task is cancelled (client gone), its queued items leave
        the queue and are never computed.
        """
        n = len(encodings)
        tokens = sum(len(e) for e in encodings)
        self.admit(n, tokens)
        stats = self.stats
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        request = _Request(loop.create_future(), n, tokens, now, frozenset(heads))
        for index, encoding in enumerate(encodings):
            length = self.grid.length_for(len(encoding))
            item = _Item(request, index, encoding, length)
            request.items.append(item)
            self._queues[length].append(item)
            self._live[length] += 1
            self._live_tokens[length] += len(encoding)
        stats.queued_items += n
        stats.queued_tokens += tokens
        self._idle.clear()
        if self.limits.timeout_s > 0:
            request.deadline_handle = loop.call_later(self.limits.timeout_s, self._expire, request)
        self._dispatch()
        try:
            await request.future
        except asyncio.CancelledError:
            self._end(request, asyncio.CancelledError())  # abandoned: the client went away
            raise
        assert request.rows is not None
        start = request.first_start if request.first_start is not None else request.last_end
        return ScheduleResult(
            rows=request.rows,
            tokens=tokens,
            queue_s=start - request.enqueued,
            inference_s=request.last_end - start,
            heads=request.extras,
        )

    def admit(self, items: int, tokens: int = 0) -> None:
        """Raise now if a request of this size cannot be queued.

        :class:`OverCapacity` when it is larger than the queue itself (it never fits),
        :class:`Overloaded` when it does not fit next to what is queued now. Callers may
        ask before tokenising, with ``tokens`` 0, to refuse a flood without that work.
        """
        if self._closed is not None:
            raise Unavailable(self._closed)
        limits, stats = self.limits, self.stats
        if items > limits.max_items:
            raise OverCapacity("queue items", items, limits.max_items, "max_queue_items")
        if tokens > limits.max_tokens:
            raise OverCapacity("tokens", tokens, limits.max_tokens, "max_queue_tokens")
        if (
            stats.queued_items + items > limits.max_items
            or stats.queued_tokens + tokens > limits.max_tokens
        ):
            stats.rejected_requests += 1
            raise Overloaded(
                f"queue full ({stats.queued_items} items, {stats.queued_tokens} tokens queued; "
                f"limits {limits.max_items} items, {limits.max_tokens} tokens); retry later",
                retry_after_s=1.0,
            )

    async def drain(self) -> None:
        """Wait until every queued and running item is done."""
        await self._idle.wait()

    def close(self, reason: str) -> None:
        """Refuse new work, and fail what is still queued (running batches finish)."""
        self._closed = reason
        for queue in self._queues.values():
            while queue:
                item = queue.popleft()
                self._end(item.request, Unavailable(reason))
        self._update_idle()

    # -- internals ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        stats = self.stats
        parallel = self._lanes.parallel
        # A batch alone on the solo lane has every thread: what arrives meanwhile waits for
        # it, then runs on the parallel lanes if more than one batch's worth is queued.
        while stats.queued_items > 0 and not self._on_solo:
            running = stats.running_batches
            if running >= parallel + self._ahead:
                break
            # A batch beyond the busy lanes waits in the runner's queue, so a thread starts
            # it the moment a lane frees instead of waiting for the loop to pick; picking
            # early pays only when the batch already amortises its overhead.
            early = running >= parallel
            picked = self._take_batch(self._lookahead_tokens if early else 0.0)
            if picked is None:
                break
            bucket, items = picked
            solo = self._lanes.solo and running == 0 and stats.queued_items == 0
            stats.running_batches += 1
            self._on_solo += solo
            task = asyncio.get_running_loop().create_task(self._run(bucket, items, solo))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._update_idle()

    def _pick(self, now: float, min_tokens: float = 0.0) -> tuple[int, int] | None:
        """The next batch as (padded length, shortest queue merged into it).

        A candidate batch at length ``L`` takes queue ``L`` first and may fill up from the
        next shorter queues, down to ``L / 2`` at most (so a merged item is padded at most
        2x); every merge depth, including none, is a candidate of its own. Its cost is
        modelled as ``overhead + batch * L`` token-equivalents and the candidate with the
        most real tokens per unit of cost wins: on the CPU (small overhead) that keeps
        lengths exact unless queues are sparse, on the GPU (large per-launch overhead) it
        fills batches. A candidate's score grows with how long the request first in turn in
        queue ``L`` has waited, relative to ``max_delay_s``. Candidates of fewer than
        ``min_tokens`` padded tokens are left out.

        Fairness bounds that choice: once the request whose turn it is (the one that has
        waited longest since it arrived or was last served) has waited ``max_delay_s``,
        only candidates that reach one of its queues may win. It is first in every queue it
        is in, so the batch takes its items.
        """
        live = [length for length in self.grid.lengths if self._live[length] > 0]
        turn: _Request | None = None
        for length in live:
            queue = self._queues[length]
            # Cancelled requests' items are dropped lazily here rather than searched for.
            while queue and queue.first().dead:
                for item in queue.drop_first():
                    self._uncount(item, cancelled=True)
            if queue and (turn is None or queue.first().turn_since < turn.turn_since):
                turn = queue.first()
        if turn is None:
            return None
        due: set[int] = set()
        if now - turn.turn_since >= self._max_delay:
            due = {length for length in live if turn in self._queues[length]}
        best: tuple[int, int] | None = None
        best_score = -1.0
        for i in range(len(live) - 1, -1, -1):
            target = live[i]
            queue = self._queues[target]
            if not queue:
                continue
            urgency = 1.0 + (now - queue.first().turn_since) / self._max_delay
            room = self._capacity[target]
            count = 0
            tokens = 0.0
            fair = not due
            for length in live[i::-1]:
                if length * 2 < target or room == 0:
                    break
                take = min(room, self._live[length])
                tokens += self._live_tokens[length] * take / self._live[length]
                count += take
                room -= take
                fair = fair or length in due
                padded = self.grid.batch_for(count) * target
                if padded < min_tokens:
                    continue
                score = tokens / (self._overhead + padded) * urgency
                if fair and score > best_score:
                    best, best_score = (target, length), score
        return best

    def _take_batch(self, min_tokens: float = 0.0) -> tuple[Bucket, list[_Item]] | None:
        picked = self._pick(time.perf_counter(), min_tokens)
        if picked is None:
            return None
        length, shortest = picked
        room = self._capacity[length]
        items: list[_Item] = []
        for source in reversed(self.grid.lengths[: self.grid.lengths.index(length) + 1]):
            if source < shortest or len(items) == room:
                break
            queue = self._queues[source]
            while queue and len(items) < room:
                item = queue.popleft()
                if item.request.dead:
                    self._uncount(item, cancelled=True)
                    continue
                self._uncount(item, cancelled=False)
                items.append(item)
        start = time.perf_counter()
        for request in dict.fromkeys(item.request for item in items):
            if request.first_start is None:
                request.first_start = start
            # Served: its turn ends, behind everyone now waiting in each queue it is in.
            request.turn_since = start
            if request.queued:
                for queue in self._queues.values():
                    queue.to_back(request)
        return Bucket(self.grid.batch_for(len(items)), length), items

    async def _run(self, bucket: Bucket, items: list[_Item], solo: bool = False) -> None:
        stats = self.stats
        real = sum(len(item.encoding) for item in items)
        start = time.perf_counter()
        ok = ran = False
        try:
            heads: frozenset[Head] = frozenset().union(*(item.request.heads for item in items))
            output = await self._runner.run(
                bucket,
                [item.encoding for item in items],
                heads,
                # A batch picked ahead must not start after close(): the drain deadline
                # has passed, so its requests get 503 like the ones still queued.
                abandoned=lambda: self._closed is not None,
                solo=solo,
            )
            ran = True
        except BatchAbandoned:
            for item in items:
                self._end(item.request, Unavailable(self._closed or "the model was closed"))
        except Exception:
            ran = True
            error_id = uuid.uuid4().hex[:12]
            log.exception(
                "batch failed: error_id=%s bucket=%dx%d items=%d",
                error_id,
                bucket.batch,
                bucket.length,
                len(items),
            )
            stats.failed_batches += 1
            stats.consecutive_failures += 1
            for item in items:
                self._end(item.request, BackendFailure(error_id))
        else:
            ok = True
            stats.consecutive_failures = 0
            end = time.perf_counter()
            for position, (row, item) in enumerate(zip(output.rows, items, strict=False)):
                request = item.request
                if request.dead:
                    continue
                if request.rows is None:
                    request.rows = np.empty((request.size, *row.shape), dtype=row.dtype)
                request.rows[item.index] = row
                for head, values in request.extras.items():
                    values[item.index] = output.heads[head][position]
                request.remaining -= 1
                request.last_end = end
                if request.remaining == 0:
                    self._end(request, None)
        finally:
            seconds = time.perf_counter() - start
            stats.running_batches -= 1
            self._on_solo -= solo
            if ran:
                stats.batches[bucket] += 1
                stats.items_run += len(items)
                stats.real_tokens += real
                stats.padded_tokens += bucket.tokens
                if self._observer is not None:
                    self._observer.batch_done(bucket, len(items), real, seconds, ok)
            self._dispatch()

    def _expire(self, request: _Request) -> None:
        if request.dead or request.first_start is not None:
            return  # already running: a started request is allowed to finish
        self.stats.timed_out_requests += 1
        self._end(
            request,
            Unavailable(
                f"request waited {self.limits.timeout_s:g} s in the queue without starting; "
                "the server is overloaded, retry later"
            ),
        )

    def _end(self, request: _Request, outcome: BaseException | None) -> None:
        """The one way a request ends: done (``outcome`` None), failed, expired or closed
        (the error to raise), or abandoned (``CancelledError``: the awaiting task was
        cancelled). The first end wins; every end uncounts what is still queued (those items
        leave their queues lazily) and stops the queue-timeout timer."""
        future = request.future
        if not future.done():
            if outcome is None:
                future.set_result(None)
            elif isinstance(outcome, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(outcome)
                # Nobody may await a request failed during close(); don't warn about it.
                future.add_done_callback(_consume_exception)
        if request.deadline_handle is not None:
            request.deadline_handle.cancel()
        if request.queued:
            for item in request.items:
                self._uncount(item, cancelled=True)
        self._update_idle()

    def _uncount(self, item: _Item, *, cancelled: bool) -> None:
        """Take ``item`` out of the queue counters, once, whichever path gets there first."""
        if not item.counted:
            return
        item.counted = False
        n = len(item.encoding)
        self._live[item.length] -= 1
        self._live_tokens[item.length] -= n
        self.stats.queued_items -= 1
        self.stats.queued_tokens -= n
        item.request.queued -= 1
        if cancelled:
            self.stats.cancelled_items += 1

    def _update_idle(self) -> None:
        if self.stats.queued_items == 0 and self.stats.running_batches == 0:
            self._idle.set()


def _consume_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
