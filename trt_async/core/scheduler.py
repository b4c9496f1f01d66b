"""The length-bucket scheduler: one per served model runtime.

Requests become items (one per text or pair). Items wait in one FIFO per padded length of
the bucket grid. Whenever a lane of the backend is free a batch starts at once: no fixed
batching delay, so a lone request runs as batch 1 (on the solo lane, where the backend has
one), and one that finds nothing waiting or running is even tokenised on that lane's thread
(:meth:`Scheduler.run_alone`: one thread handoff instead of two). While the lanes are busy
items accumulate, and
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
import bisect
import itertools
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar, overload

import numpy as np

from trt_async.backends.base import Lanes
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.core.errors import BackendFailure, OverCapacity, Overloaded, Unavailable
from trt_async.core.heads import l2_normalize
from trt_async.core.multivector import Head
from trt_async.core.runner import BatchAbandoned, BatchOutput, Item
from trt_async.core.tokenizer import Encoding

log = logging.getLogger(__name__)


M = TypeVar("M")


class Runner(Protocol):
    lanes: Lanes

    async def run(
        self,
        bucket: Bucket,
        items: Sequence[Item],
        heads: Collection[Head] = (),
        abandoned: Callable[[], bool] | None = None,
        solo: bool = False,
    ) -> BatchOutput: ...

    def run_made(
        self,
        make: Callable[[], M],
        batch_of: Callable[[M], tuple[Bucket, Sequence[Item]] | None],
        solo: bool = False,
    ) -> asyncio.Future[tuple[M, BatchOutput | None, float]]: ...


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


class Prepared(NamedTuple):
    """A request's items as the scheduler queues them: their token counts, and their
    indices grouped by padded length. Made off the event loop where the items are made
    (:func:`prepare`), so the loop's work for a request is per length, not per item."""

    encodings: Sequence[Item]
    sizes: list[int]
    tokens: int
    #: ``(padded length, item indices, their token counts)`` per length the items span.
    groups: list[tuple[int, list[int], list[int]]]


def prepare(encodings: Sequence[Encoding], grid: BucketGrid) -> Prepared:
    """``encodings`` grouped by the padded length each takes in ``grid``."""
    sizes = [len(e.ids) for e in encodings]
    lengths = grid.lengths
    if len(sizes) == 1:
        length = lengths[bisect.bisect_left(lengths, sizes[0])] if sizes[0] <= lengths[-1] else -1
        groups = [(length, [0], sizes)]
    else:
        by_length: dict[int, tuple[list[int], list[int]]] = {}
        for index, size in enumerate(sizes):
            i = bisect.bisect_left(lengths, size)
            length = lengths[i] if i < len(lengths) else -1
            found = by_length.get(length)
            if found is None:
                found = by_length[length] = ([], [])
            found[0].append(index)
            found[1].append(size)
        groups = [(length, found[0], found[1]) for length, found in by_length.items()]
    return Prepared(encodings, sizes, sum(sizes), groups)


class Alone(NamedTuple):
    """What :meth:`Scheduler.run_alone` made of a request, and its rows if it ran."""

    prepared: Prepared
    #: Seconds making the items took (tokenising), on the lane's thread.
    made_s: float
    #: None when the items did not fit one batch: :meth:`Scheduler.submit` ``prepared``.
    result: ScheduleResult | None


class _AloneJob:
    """One :meth:`Scheduler.run_alone` job, as its lane's thread and the loop see it."""

    __slots__ = ("_one_batch", "batch", "error_id", "seconds", "start", "tokens")

    def __init__(
        self,
        one_batch: Callable[[Prepared], tuple[Bucket, Sequence[Item]] | None],
        start: float,
    ) -> None:
        self._one_batch = one_batch
        self.start = start
        #: The batch its items made (set on the lane's thread, read on the loop once the
        #: job's result is back): None while unmade, or when they did not fit one.
        self.batch: tuple[Bucket, Sequence[Item]] | None = None
        self.tokens = 0
        self.seconds = 0.0
        self.error_id: str | None = None

    def batch_of(self, prepared: Prepared) -> tuple[Bucket, Sequence[Item]] | None:
        self.batch = self._one_batch(prepared)
        self.tokens = prepared.tokens
        return self.batch


class _Request:
    __slots__ = (
        "chunks",
        "encodings",
        "enqueued",
        "extras",
        "first_start",
        "future",
        "heads",
        "last_end",
        "queued",
        "remaining",
        "rows",
        "size",
        "tokens",
        "turn_since",
        "unit",
    )

    def __init__(
        self,
        future: asyncio.Future[None],
        encodings: Sequence[Item],
        tokens: int,
        now: float,
        heads: frozenset[Head] = frozenset(),
        unit: bool = False,
    ) -> None:
        n = len(encodings)
        self.future = future
        self.encodings = encodings
        self.rows: np.ndarray | None = None
        self.heads = heads
        #: Whether it wants its rows L2-normalised (the runner's ``units``), not as pooled.
        self.unit = unit
        self.extras: dict[Head, list[object]] = {head: [None] * n for head in heads}
        self.chunks: list[_Chunk] = []
        self.size = n
        self.remaining = n
        self.queued = n
        self.tokens = tokens
        self.enqueued = now
        self.first_start: float | None = None
        self.last_end = now
        #: When it arrived or last had items taken into a batch: its place in the turns.
        self.turn_since = now

    @property
    def dead(self) -> bool:
        return self.future.done()


class _Chunk:
    """A request's items of one padded length, in input order, taken from the front.

    Items wait in chunks, not one by one: the loop's bookkeeping for a request of many
    texts is per length it spans, not per text.
    """

    __slots__ = ("indices", "length", "pos", "prefix", "request")

    def __init__(
        self, request: _Request, length: int, indices: list[int], sizes: list[int]
    ) -> None:
        self.request = request
        self.length = length
        self.indices = indices
        #: ``prefix[k]``: tokens of the first k items.
        self.prefix = [0, *itertools.accumulate(sizes)]
        #: Items before this position were taken into batches (or dropped).
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.indices) - self.pos

    def tokens_of(self, count: int) -> int:
        """Tokens of the next ``count`` items."""
        return self.prefix[self.pos + count] - self.prefix[self.pos]


class _Part(NamedTuple):
    """Items of one request in a batch, in the batch's order."""

    request: _Request
    indices: list[int]
    tokens: int


class BatchItems(Sequence[Item]):
    """A batch's items as the runner packs them, gathered from its parts on the worker
    thread (the loop only slices index lists)."""

    __slots__ = ("_count", "_parts")

    def __init__(self, parts: list[_Part], count: int) -> None:
        self._parts = parts
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Item]:
        for request, indices, _ in self._parts:
            encodings = request.encodings
            for i in indices:
                yield encodings[i]

    @overload
    def __getitem__(self, index: int) -> Item: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Item]: ...

    def __getitem__(self, index: int | slice) -> Item | Sequence[Item]:
        items = list(self)
        return items[index]


class _LengthQueue:
    """The chunks of one padded length, one per request, in turn order.

    ``to_back`` moves a request behind the others when it has been served.
    """

    __slots__ = ("_turns",)

    def __init__(self) -> None:
        self._turns: OrderedDict[_Request, _Chunk] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._turns)

    def __contains__(self, request: _Request) -> bool:
        return request in self._turns

    def append(self, chunk: _Chunk) -> None:
        self._turns[chunk.request] = chunk

    def first(self) -> _Request:
        """The request whose turn it is in this queue (the queue must not be empty)."""
        return next(iter(self._turns))

    def first_chunk(self) -> _Chunk:
        return next(iter(self._turns.values()))

    def drop_first(self) -> _Chunk:
        return self._turns.popitem(last=False)[1]

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
        #: A dispatch is scheduled for the end of the loop's current turn.
        self._dispatch_due = False
        #: Requests no batch has started yet, in arrival order, and the one timer that fails
        #: those that wait past the queue timeout.
        self._unstarted: dict[_Request, None] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._closed: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- public API -----------------------------------------------------------------------

    async def submit(
        self,
        encodings: Sequence[Encoding] | Prepared,
        heads: Collection[Head] = (),
        *,
        unit: bool = False,
    ) -> ScheduleResult:
        """Run ``encodings`` and return one output row per item, in order.

        ``heads`` are token-level results wanted besides the rows (bge-m3's sparse weights
        or ColBERT vectors, token vectors); a batch computes the heads any of its items'
        requests want, and each request gets only its own. ``unit``: the rows L2-normalised
        (computed with the batch, where the runner gives them). ``encodings`` may come
        :func:`prepare`-d off the loop.

        Raises (see :meth:`admit`) at once when the queue bounds would be exceeded, and
        :class:`Unavailable` if the request waits past the queue timeout or the scheduler
        is closing. If the awaiting task is cancelled (client gone), its queued items leave
        the queue and are never computed.
        """
        ready = encodings if isinstance(encodings, Prepared) else prepare(encodings, self.grid)
        n = len(ready.sizes)
        tokens = ready.tokens
        longest = max(ready.sizes, default=0)
        if longest > self.grid.max_length:
            raise ValueError(
                f"{longest} tokens exceed the grid's longest length {self.grid.max_length}"
            )
        self.admit(n, tokens)
        stats = self.stats
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        request = _Request(
            loop.create_future(), ready.encodings, tokens, now, frozenset(heads), unit
        )
        for length, indices, chunk_sizes in ready.groups:
            self._enqueue(_Chunk(request, length, indices, chunk_sizes))
        stats.queued_items += n
        stats.queued_tokens += tokens
        self._idle.clear()
        if self.limits.timeout_s > 0:
            self._unstarted[request] = None
            if self._expiry is None:
                self._arm_expiry(request.enqueued + self.limits.timeout_s)
        if not self._dispatch_due:
            # Picked at the end of this turn of the loop, not now: requests that arrive in
            # the same turn (a tokenisation hop answers many at once) share a batch.
            self._dispatch_due = True
            loop.call_soon(self._dispatch)
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

    def alone(self) -> bool:
        """Whether nothing waits or runs: a request now would be a batch of its own, at once
        (then :meth:`run_alone` spares it a thread handoff)."""
        stats = self.stats
        return not stats.queued_items and not stats.running_batches and self._closed is None

    async def run_alone(self, make: Callable[[], Prepared], *, unit: bool = False) -> Alone:
        """A request that arrived when :meth:`alone`: its items made by ``make`` (tokenised)
        and, if they fit one batch as :meth:`submit` would have run them, run at once, all
        with one handoff to the lane's thread where a tokenisation hop and a batch take
        two. It runs as a batch that runs alone does (on the solo lane, if the runner has
        one; what arrives meanwhile queues behind it), and is counted as one until it ends,
        even if its request is cancelled meanwhile. What ``make`` raises (the request's 4xx)
        is raised here; items that do not fit one batch come back unrun, to :meth:`submit`.
        """
        stats = self.stats
        solo = self._lanes.solo
        stats.running_batches += 1
        self._on_solo += solo
        self._idle.clear()
        job = _AloneJob(self._one_batch, time.perf_counter())
        running = self._runner.run_made(make, job.batch_of, solo=solo)
        running.add_done_callback(lambda done: self._alone_ended(job, done, solo))
        try:
            # Shielded: a cancelled request leaves the batch running, counted until it ends.
            prepared, output, made_s = await asyncio.shield(running)
        except Exception as exc:
            if job.error_id is None:
                raise  # the request's own error, from make, as a tokenisation hop raises it
            raise BackendFailure(job.error_id) from exc
        if output is None:
            return Alone(prepared, made_s, None)
        rows = output.rows
        if unit:
            rows = output.units if output.units is not None else l2_normalize(rows)
        inference_s = job.seconds - made_s
        return Alone(prepared, made_s, ScheduleResult(rows, prepared.tokens, 0.0, inference_s, {}))

    def _alone_ended(
        self,
        job: _AloneJob,
        done: asyncio.Future[tuple[Prepared, BatchOutput | None, float]],
        solo: bool,
    ) -> None:
        """The end of :meth:`run_alone`'s job: counted, and the next batch picked."""
        stats = self.stats
        stats.running_batches -= 1
        self._on_solo -= solo
        job.seconds = time.perf_counter() - job.start
        error = None if done.cancelled() else done.exception()  # retrieved, whoever waits
        # A batch was found (its items made) unless make failed or they did not fit one.
        if job.batch is not None and not done.cancelled():
            bucket, items = job.batch
            if error is not None:
                job.error_id = self._batch_failed(bucket, len(items), error)
            else:
                stats.consecutive_failures = 0
            self._batch_ran(bucket, len(items), job.tokens, job.seconds, ok=error is None)
        self._dispatch()

    def _batch_failed(self, bucket: Bucket, count: int, error: BaseException) -> str:
        """Log and count a batch that raised; its error id, for the requests' answers."""
        error_id = uuid.uuid4().hex[:12]
        log.error(
            "batch failed: error_id=%s bucket=%dx%d items=%d",
            error_id,
            bucket.batch,
            bucket.length,
            count,
            exc_info=error,
        )
        self.stats.failed_batches += 1
        self.stats.consecutive_failures += 1
        return error_id

    def _batch_ran(self, bucket: Bucket, count: int, real: int, seconds: float, ok: bool) -> None:
        stats = self.stats
        stats.batches[bucket] += 1
        stats.items_run += count
        stats.real_tokens += real
        stats.padded_tokens += bucket.tokens
        if self._observer is not None:
            self._observer.batch_done(bucket, count, real, seconds, ok)

    def _one_batch(self, prepared: Prepared) -> tuple[Bucket, Sequence[Item]] | None:
        """The batch ``prepared``'s items make on their own, in input order: at the
        longest padded length they span, if the shortest is at least half of it (the
        scheduler merges queues that far) and they fit one batch there. Read on the lane's
        thread: it reads only the grid."""
        lengths = [length for length, _, _ in prepared.groups]
        if not lengths:
            return None
        target = max(lengths)
        count = len(prepared.sizes)
        if min(lengths) < 0 or min(lengths) * 2 < target or count > self._capacity[target]:
            return None
        return Bucket(self.grid.batch_for(count), target), prepared.encodings

    def _enqueue(self, chunk: _Chunk) -> None:
        chunk.request.chunks.append(chunk)
        self._queues[chunk.length].append(chunk)
        self._live[chunk.length] += len(chunk.indices)
        self._live_tokens[chunk.length] += chunk.prefix[-1]

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
                chunk = queue.drop_first()
                self._end(chunk.request, Unavailable(reason))
        self._update_idle()

    # -- internals ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._dispatch_due = False
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
            bucket, parts, count = picked
            solo = self._lanes.solo and running == 0 and stats.queued_items == 0
            stats.running_batches += 1
            self._on_solo += solo
            task = asyncio.get_running_loop().create_task(self._run(bucket, parts, count, solo))
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
                self._uncount(queue.drop_first(), cancelled=True)
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

    def _take_batch(self, min_tokens: float = 0.0) -> tuple[Bucket, list[_Part], int] | None:
        picked = self._pick(time.perf_counter(), min_tokens)
        if picked is None:
            return None
        length, shortest = picked
        room = self._capacity[length]
        parts: list[_Part] = []
        taken = 0
        for source in reversed(self.grid.lengths[: self.grid.lengths.index(length) + 1]):
            if source < shortest or taken == room:
                break
            queue = self._queues[source]
            while queue and taken < room:
                chunk = queue.first_chunk()
                if chunk.request.dead:
                    self._uncount(queue.drop_first(), cancelled=True)
                    continue
                take = min(room - taken, chunk.left)
                indices = chunk.indices[chunk.pos : chunk.pos + take]
                parts.append(_Part(chunk.request, indices, chunk.tokens_of(take)))
                self._uncount(chunk, cancelled=False, count=take)
                taken += take
                if not chunk.left:
                    queue.drop_first()
        start = time.perf_counter()
        for request in dict.fromkeys(part.request for part in parts):
            if request.first_start is None:
                request.first_start = start
                self._unstarted.pop(request, None)
            # Served: its turn ends, behind everyone now waiting in each queue it is in.
            request.turn_since = start
            if request.queued:
                for chunk in request.chunks:
                    if chunk.left:
                        self._queues[chunk.length].to_back(request)
        return Bucket(self.grid.batch_for(taken), length), parts, taken

    async def _run(
        self, bucket: Bucket, parts: list[_Part], count: int, solo: bool = False
    ) -> None:
        stats = self.stats
        items = BatchItems(parts, count)
        real = sum(part.tokens for part in parts)
        start = time.perf_counter()
        ok = ran = False
        try:
            heads: frozenset[Head] = frozenset().union(*(part.request.heads for part in parts))
            output = await self._runner.run(
                bucket,
                items,
                heads,
                # A batch picked ahead must not start after close(): the drain deadline
                # has passed, so its requests get 503 like the ones still queued.
                abandoned=lambda: self._closed is not None,
                solo=solo,
            )
            ran = True
        except BatchAbandoned:
            for part in parts:
                self._end(part.request, Unavailable(self._closed or "the model was closed"))
        except Exception as exc:
            ran = True
            error_id = self._batch_failed(bucket, count, exc)
            for part in parts:
                self._end(part.request, BackendFailure(error_id))
        else:
            ok = True
            stats.consecutive_failures = 0
            end = time.perf_counter()
            position = 0
            for request, indices, _ in parts:
                n = len(indices)
                first, position = position, position + n
                if request.dead:
                    continue
                rows = output.rows[first:position]
                if request.unit:
                    # Normalised with the batch where the runner did; else here.
                    rows = (
                        output.units[first:position]
                        if output.units is not None
                        else l2_normalize(rows)
                    )
                if request.rows is None:
                    request.rows = np.empty((request.size, *rows.shape[1:]), dtype=rows.dtype)
                if n == 1:
                    request.rows[indices[0]] = rows[0]
                else:
                    request.rows[indices] = rows
                for head, values in request.extras.items():
                    found = output.heads[head]
                    for offset, index in enumerate(indices):
                        values[index] = found[first + offset]
                request.remaining -= n
                request.last_end = end
                if request.remaining == 0:
                    self._end(request, None)
        finally:
            seconds = time.perf_counter() - start
            stats.running_batches -= 1
            self._on_solo -= solo
            if ran:
                self._batch_ran(bucket, count, real, seconds, ok)
            self._dispatch()

    def _arm_expiry(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        # perf_counter's clock against the loop's: both are monotonic seconds.
        self._expiry = loop.call_at(loop.time() + (when - time.perf_counter()), self._expire)

    def _expire(self) -> None:
        """Fail the requests that waited ``timeout_s`` without starting, oldest first.

        One timer for the whole queue, armed for the oldest request not yet started (they
        wait in arrival order, so the rest expire later): a timer per request cost the loop
        a timer's start and cancel for every request.
        """
        self._expiry = None
        now = time.perf_counter()
        timeout = self.limits.timeout_s
        while self._unstarted:
            request = next(iter(self._unstarted))
            if request.enqueued + timeout > now:
                self._arm_expiry(request.enqueued + timeout)
                return
            self.stats.timed_out_requests += 1
            self._end(
                request,
                Unavailable(
                    f"request waited {timeout:g} s in the queue without starting; the server "
                    "is overloaded, retry later"
                ),
            )

    def _end(self, request: _Request, outcome: BaseException | None) -> None:
        """The one way a request ends: done (``outcome`` None), failed, expired or closed
        (the error to raise), or abandoned (``CancelledError``: the awaiting task was
        cancelled). The first end wins; every end uncounts what is still queued (those
        chunks leave their queues lazily) and leaves the queue-timeout watch."""
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
        self._unstarted.pop(request, None)
        if request.queued:
            for chunk in request.chunks:
                self._uncount(chunk, cancelled=True)
        self._update_idle()

    def _uncount(self, chunk: _Chunk, *, cancelled: bool, count: int | None = None) -> None:
        """Take ``count`` items from the front of ``chunk`` out of the queue counters (all
        that are left when None), whichever path gets there first."""
        left = chunk.left
        take = left if count is None else min(count, left)
        if take <= 0:
            return
        tokens = chunk.tokens_of(take)
        chunk.pos += take
        self._live[chunk.length] -= take
        self._live_tokens[chunk.length] -= tokens
        self.stats.queued_items -= take
        self.stats.queued_tokens -= tokens
        chunk.request.queued -= take
        if cancelled:
            self.stats.cancelled_items += take

    def _update_idle(self) -> None:
        if self.stats.queued_items == 0 and self.stats.running_batches == 0:
            self._idle.set()


def _consume_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
