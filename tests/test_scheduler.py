"""The length-bucket scheduler, driven through the real runner with a fake backend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Collection, Mapping

import numpy as np
import pytest

from tests.fake_backend import FakeBackend
from trt_async.backends.base import Lanes
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.core.errors import BackendFailure, EmptyInput, Overloaded, Part, Unavailable
from trt_async.core.heads import make_reducer
from trt_async.core.multivector import Head
from trt_async.core.runner import BatchOutput, BatchRunner
from trt_async.core.scheduler import Prepared, QueueLimits, Scheduler, prepare
from trt_async.core.tokenizer import Encoding

GRID = BucketGrid([1, 2, 4, 8], [8, 16, 32, 64], max_batch_tokens=128)


def make(limits: QueueLimits | None = None, backend: FakeBackend | None = None):
    backend = backend or FakeBackend()
    backend.prepare(GRID)
    runner = BatchRunner(backend, make_reducer("none"), pad_id=0, name="test")
    return Scheduler(runner, GRID, limits), backend


def item(tag: int, length: int) -> Encoding:
    """An item whose first token is ``tag`` (so tests can see where it ran)."""
    return Encoding([tag] + [1] * (length - 1))


def expected_row(enc: Encoding) -> tuple[float, float]:
    return float(sum(enc.ids)), float(len(enc.ids))


async def wait_started(backend: FakeBackend) -> None:
    for _ in range(500):
        if backend.started.is_set():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the backend never started")


async def test_lone_request_runs_at_once_as_batch_one() -> None:
    scheduler, backend = make()
    result = await asyncio.wait_for(scheduler.submit([item(7, 5)]), timeout=2)
    assert len(backend.executed) == 1
    bucket, _ = backend.executed[0]
    assert (bucket.batch, bucket.length) == (1, 8)
    assert tuple(result.rows[0, :2]) == expected_row(item(7, 5))
    assert result.tokens == 5


async def test_burst_fills_batches_within_max_batch_tokens_and_keeps_order() -> None:
    scheduler, backend = make()
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    # While the backend is busy, 40 single-item requests of mixed lengths arrive.
    requests = [[item(100 + i, [3, 12, 30, 60][i % 4])] for i in range(40)]
    tasks = [asyncio.ensure_future(scheduler.submit(r)) for r in requests]
    await asyncio.sleep(0.01)
    assert scheduler.stats.queued_items == 40
    backend.gate.set()
    results = await asyncio.gather(first, *tasks)
    for req, res in zip(requests, results[1:], strict=True):
        assert tuple(res.rows[0, :2]) == expected_row(req[0])
    batches = backend.executed[1:]
    for bucket, _ in batches:
        assert bucket.tokens <= GRID.max_batch_tokens
    # 10 items per length; capacity is 8 at lengths <= 16, 4 at 32, 2 at 64. Without
    # merging that is 2 + 2 + 3 + 5 batches; leftovers of neighbouring lengths may share one.
    sizes = sorted(b.batch for b, _ in batches)
    assert max(sizes) == 8
    assert 10 <= len(batches) <= 12
    assert sum(len([t for t in tags if t >= 100]) for _, tags in batches) == 40


async def test_a_batch_picked_ahead_does_not_start_after_close() -> None:
    """close() (the drain deadline, an unload) lets the running batch finish; a batch that
    was picked ahead and still waits for the worker is not run: its requests get 503 like
    the ones still queued, and the backend never sees it."""
    backend = FakeBackend()
    backend.prepare(GRID)
    runner = BatchRunner(backend, make_reducer("none"), pad_id=0, name="test")
    scheduler = Scheduler(runner, GRID, ahead=1, batch_overhead_tokens=0, lookahead_tokens=0)
    backend.gate.clear()
    running = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    ahead = asyncio.ensure_future(scheduler.submit([item(2, 3)]))
    await asyncio.sleep(0.01)
    assert scheduler.stats.running_batches == 2 and scheduler.stats.queued_items == 0
    scheduler.close("the drain deadline passed")
    backend.gate.set()
    done = await asyncio.wait_for(running, timeout=5)
    assert tuple(done.rows[0, :2]) == expected_row(item(1, 3))
    with pytest.raises(Unavailable, match="drain deadline"):
        await asyncio.wait_for(ahead, timeout=5)
    assert [tags for _, tags in backend.executed] == [[1]]
    await asyncio.wait_for(scheduler.drain(), timeout=5)
    assert scheduler.stats.running_batches == 0
    assert sum(scheduler.stats.batches.values()) == 1


async def test_next_batch_is_picked_ahead_only_when_it_amortises_its_overhead() -> None:
    backend = FakeBackend()
    backend.prepare(GRID)
    runner = BatchRunner(backend, make_reducer("none"), pad_id=0, name="test")
    scheduler = Scheduler(runner, GRID, ahead=1, batch_overhead_tokens=8, lookahead_tokens=32)
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    # One 8-token batch would not amortise the overhead: it waits for the loop's next pick.
    lone = asyncio.ensure_future(scheduler.submit([item(2, 3)]))
    await asyncio.sleep(0.01)
    assert scheduler.stats.queued_items == 1
    assert scheduler.stats.running_batches == 1
    # Five items of the 8-token queue (40 padded tokens) do: they are picked ahead.
    burst = asyncio.ensure_future(scheduler.submit([item(10 + i, 6) for i in range(4)]))
    await asyncio.sleep(0.01)
    assert scheduler.stats.queued_items == 0
    assert scheduler.stats.running_batches == 2
    backend.gate.set()
    _, alone, together = await asyncio.gather(first, lone, burst)
    assert tuple(alone.rows[0, :2]) == expected_row(item(2, 3))
    for i in range(4):
        assert tuple(together.rows[i, :2]) == expected_row(item(10 + i, 6))
    # The ahead batch ran right after the first one, all five items at once.
    assert [(b.batch, b.length) for b, _ in backend.executed] == [(1, 8), (8, 8)]
    assert sorted(t for t in backend.executed[1][1] if t) == [2, 10, 11, 12, 13]


async def test_sparse_neighbouring_lengths_share_a_batch() -> None:
    scheduler, backend = make()
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    # Two items of 12 tokens (queue 16) and two of 7 (queue 8): one batch of 4 at length 16
    # costs less than two batches of 2, and pads each short item at most 2x.
    tasks = [
        asyncio.ensure_future(scheduler.submit([item(200 + i, n)]))
        for i, n in enumerate([12, 7, 12, 7])
    ]
    await asyncio.sleep(0.01)
    backend.gate.set()
    await first
    results = await asyncio.gather(*tasks)
    assert [b for b, _ in backend.executed[1:]] == [Bucket(4, 16)]
    for i, (res, n) in enumerate(zip(results, [12, 7, 12, 7], strict=True)):
        assert tuple(res.rows[0, :2]) == expected_row(item(200 + i, n))


async def test_oversize_request_is_split_and_reassembled_in_order() -> None:
    scheduler, backend = make()
    encodings = [item(10 + i, 1 + (i * 7) % 60) for i in range(50)]
    result = await scheduler.submit(encodings)
    assert result.rows.shape == (50, 4)
    for enc, row in zip(encodings, result.rows, strict=True):
        assert tuple(row[:2]) == expected_row(enc)
    assert len(backend.executed) > 1
    assert all(b.batch <= GRID.max_batch for b, _ in backend.executed)


async def test_padding_rows_never_leak_into_results() -> None:
    scheduler, backend = make()
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    tasks = [asyncio.ensure_future(scheduler.submit([item(50 + i, 4)])) for i in range(3)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    await first
    results = await asyncio.gather(*tasks)
    bucket, _ = backend.executed[1]
    assert bucket.batch == 4  # three items padded to the grid's batch 4
    assert [tuple(r.rows[0, :2]) for r in results] == [(50.0 + i + 3, 4.0) for i in range(3)]


async def test_cancelled_request_items_never_run() -> None:
    scheduler, backend = make()
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    doomed = asyncio.ensure_future(scheduler.submit([item(900 + i, 5) for i in range(6)]))
    kept = asyncio.ensure_future(scheduler.submit([item(500, 5)]))
    await asyncio.sleep(0.01)
    assert scheduler.stats.queued_items == 7
    doomed.cancel()
    await asyncio.sleep(0)
    assert scheduler.stats.queued_items == 1
    assert scheduler.stats.cancelled_items == 6
    backend.gate.set()
    await first
    assert tuple((await kept).rows[0, :2]) == expected_row(item(500, 5))
    ran = {tag for _, tags in backend.executed for tag in tags}
    assert not ran & set(range(900, 906))
    with pytest.raises(asyncio.CancelledError):
        await doomed


async def test_backend_failure_fails_only_that_batch() -> None:
    backend = FakeBackend(fail_when=lambda ids: bool((ids[:, 0] == 666).any()))
    scheduler, backend = make(backend=backend)
    with pytest.raises(BackendFailure) as info:
        await scheduler.submit([item(666, 40)])
    assert info.value.error_id and info.value.error_id in info.value.message
    good = await scheduler.submit([item(5, 3)])
    assert tuple(good.rows[0, :2]) == expected_row(item(5, 3))
    assert scheduler.stats.failed_batches == 1
    assert scheduler.stats.consecutive_failures == 0


async def test_full_queue_answers_overloaded_immediately() -> None:
    scheduler, backend = make(QueueLimits(max_items=4, max_tokens=10_000))
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    queued = asyncio.ensure_future(scheduler.submit([item(2, 3) for _ in range(4)]))  # noqa: RUF006 (awaited below)
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await scheduler.submit([item(3, 3)])
    assert scheduler.stats.rejected_requests == 1
    backend.gate.set()
    await first
    assert (await queued).rows.shape[0] == 4


async def test_queue_timeout_answers_unavailable() -> None:
    scheduler, backend = make(QueueLimits(timeout_s=0.05))
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    with pytest.raises(Unavailable, match="waited"):
        await scheduler.submit([item(2, 3)])
    assert scheduler.stats.queued_items == 0
    backend.gate.set()
    await first


async def test_old_long_item_is_not_starved_by_short_ones() -> None:
    scheduler, backend = make(QueueLimits(max_delay_s=0.0))
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    long_one = asyncio.ensure_future(scheduler.submit([item(77, 60)]))
    await asyncio.sleep(0.005)
    shorts = [asyncio.ensure_future(scheduler.submit([item(2, 3)])) for _ in range(16)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, long_one, *shorts)
    # The long item waited longest, so it runs right after the first batch.
    assert backend.executed[1][1][0] == 77


async def test_close_fails_queued_work_with_unavailable() -> None:
    scheduler, backend = make()
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    queued = asyncio.ensure_future(scheduler.submit([item(2, 3)]))
    await asyncio.sleep(0.01)
    scheduler.close("shutting down")
    backend.gate.set()
    assert (await first).rows.shape == (1, 4)  # running work finishes
    with pytest.raises(Unavailable, match="shutting down"):
        await queued
    with pytest.raises(Unavailable):
        await scheduler.submit([item(3, 3)])


def test_grid_capacity_and_buckets() -> None:
    assert GRID.capacity(8) == 8
    assert GRID.capacity(32) == 4
    assert GRID.capacity(64) == 2
    assert GRID.length_for(9) == 16
    assert GRID.batch_for(3) == 4
    assert all(b.tokens <= 128 for b in GRID.buckets())
    with pytest.raises(ValueError):
        BucketGrid([2, 4], [8], 64)  # no batch size 1
    with pytest.raises(ValueError):
        GRID.batch_for(9)


class GatedRunner:
    """A runner that finishes a batch when told to, in the same loop turn as other events."""

    lanes = Lanes()

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def run(
        self,
        bucket: Bucket,
        items: list[Encoding],
        heads: Collection[Head] = (),
        abandoned: Callable[[], bool] | None = None,
        solo: bool = False,
    ) -> BatchOutput:
        await self.gate.wait()
        return BatchOutput(np.zeros((len(items), 2), np.float32), 0.0)


async def test_cancellation_racing_a_batch_end_leaves_no_phantom_tokens() -> None:
    # The client's task is cancelled in the same loop turn as a batch ends: the next pick
    # meets the dead item before the cancelled submit() has cleaned up after itself.
    runner = GatedRunner()
    scheduler = Scheduler(runner, GRID, QueueLimits(max_tokens=1000, timeout_s=0))
    for _ in range(200):
        runner.gate = asyncio.Event()
        a = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
        await asyncio.sleep(0)
        b = asyncio.ensure_future(scheduler.submit([item(2, 5)]))
        await asyncio.sleep(0)
        runner.gate.set()
        b.cancel()
        await asyncio.gather(a, b, return_exceptions=True)
    await asyncio.sleep(0.01)
    stats = scheduler.stats
    assert (stats.queued_items, stats.queued_tokens, stats.running_batches) == (0, 0, 0)
    assert stats.cancelled_items == 200
    assert (await scheduler.submit([item(3, 3)])).rows.shape == (1, 2)


async def test_close_and_mass_cancellation_keep_counters_exact() -> None:
    runner = GatedRunner()
    scheduler = Scheduler(runner, GRID, QueueLimits(timeout_s=0))
    first = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await asyncio.sleep(0)
    queued = [
        asyncio.ensure_future(scheduler.submit([item(2, 3), item(3, 20)])) for _ in range(500)
    ]
    await asyncio.sleep(0)
    assert scheduler.stats.queued_items == 1000
    for task in queued[:250]:
        task.cancel()
    await asyncio.sleep(0)
    assert (scheduler.stats.queued_items, scheduler.stats.queued_tokens) == (500, 250 * 23)
    scheduler.close("closing")
    assert (scheduler.stats.queued_items, scheduler.stats.queued_tokens) == (0, 0)
    runner.gate.set()
    await first
    results = await asyncio.gather(*queued[250:], return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)


class SlowBackend(FakeBackend):
    """Each batch takes ``batch_s`` of wall time, as a real model's batch does."""

    def __init__(self, batch_s: float) -> None:
        super().__init__()
        self.batch_s = batch_s

    def execute(
        self, bucket: Bucket, extra: Collection[str] = (), lane: int = 0
    ) -> Mapping[str, np.ndarray]:
        time.sleep(self.batch_s)
        return super().execute(bucket, extra, lane)


def batch_of(backend: FakeBackend, tag: int) -> int:
    """The index of the batch that ran the item tagged ``tag``."""
    return next(i for i, (_, tags) in enumerate(backend.executed) if tag in tags)


@pytest.mark.parametrize(
    ("small_length", "overhead"),
    [(12, 32), (3, 32), (3, 100_000)],
    ids=["same-length", "other-length", "other-length-gpu-overhead"],
)
async def test_small_request_waits_for_at_most_one_batch_of_a_large_one(
    small_length: int, overhead: int
) -> None:
    # A large request of 64 items (8 full batches) starts; a 1-item request arrives while
    # its first batch runs. Whether it shares the large one's length queue or waits in a
    # cheaper-to-skip one, and however much a full batch is worth more than a lone item
    # (the per-batch overhead), it runs in the third batch at the latest: after the
    # running one and one more of the large request.
    backend = SlowBackend(batch_s=0.03)
    backend.prepare(GRID)
    runner = BatchRunner(backend, make_reducer("none"), pad_id=0, name="test")
    limits = QueueLimits(max_delay_s=0.01)
    scheduler = Scheduler(runner, GRID, limits, batch_overhead_tokens=overhead)
    big_items = [item(1000 + i, 12) for i in range(64)]
    big = asyncio.ensure_future(scheduler.submit(big_items))
    await asyncio.sleep(0)
    small = await asyncio.wait_for(scheduler.submit([item(7, small_length)]), timeout=5)
    assert tuple(small.rows[0, :2]) == expected_row(item(7, small_length))
    assert not big.done()
    assert batch_of(backend, 7) <= 2
    rows = (await asyncio.wait_for(big, timeout=5)).rows
    for enc, row in zip(big_items, rows, strict=True):
        assert tuple(row[:2]) == expected_row(enc)
    assert len(backend.executed) == 9  # fairness cost no batch: 8 full ones and the lone item


async def test_small_requests_behind_a_large_one_still_share_a_batch() -> None:
    # Eight 1-item requests arriving behind a large one take one batch together, not one
    # batch each: turns are by request, and a batch takes every request in turn order.
    backend = SlowBackend(batch_s=0.03)
    backend.prepare(GRID)
    runner = BatchRunner(backend, make_reducer("none"), pad_id=0, name="test")
    scheduler = Scheduler(runner, GRID, QueueLimits(max_delay_s=0.01))
    big = asyncio.ensure_future(scheduler.submit([item(1000 + i, 12) for i in range(64)]))
    await asyncio.sleep(0)
    smalls = [asyncio.ensure_future(scheduler.submit([item(10 + i, 12)])) for i in range(8)]
    await asyncio.wait_for(asyncio.gather(*smalls), timeout=5)
    assert not big.done()
    assert {batch_of(backend, 10 + i) for i in range(8)} == {2}
    await asyncio.wait_for(big, timeout=5)


def make_lanes(ahead: int = 1) -> tuple[Scheduler, FakeBackend]:
    backend = FakeBackend(lanes=Lanes(2, solo=True))
    backend.prepare(GRID)
    runner = BatchRunner(backend, make_reducer("none"), pad_id=0, name="test")
    scheduler = Scheduler(runner, GRID, ahead=ahead, batch_overhead_tokens=0, lookahead_tokens=0)
    return scheduler, backend


async def test_a_lone_batch_runs_on_the_solo_lane_and_a_queue_on_the_parallel_ones() -> None:
    scheduler, backend = make_lanes()
    result = await asyncio.wait_for(scheduler.submit([item(7, 5)]), timeout=2)
    assert tuple(result.rows[0, :2]) == expected_row(item(7, 5))
    assert backend.executed_lanes == [2]  # the solo lane: nothing else was waiting
    # A request of several lengths is more than one batch: its batches share the lanes.
    backend.executed_lanes.clear()
    request = [item(10 + i, [3, 12, 30, 60][i % 4]) for i in range(8)]
    result = await asyncio.wait_for(scheduler.submit(request), timeout=2)
    for i, enc in enumerate(request):
        assert tuple(result.rows[i, :2]) == expected_row(enc)
    assert set(backend.executed_lanes) <= {0, 1} and len(backend.executed_lanes) >= 2


async def test_parallel_lanes_run_at_once_and_the_solo_lane_never_overlaps_them() -> None:
    scheduler, backend = make_lanes()
    backend.gate.clear()
    # Two lengths queued at once (one request): two batches, one per parallel lane, at once.
    request = [item(i, 3) for i in range(1, 5)] + [item(i, 60) for i in range(5, 7)]
    tasks = [asyncio.ensure_future(scheduler.submit(request))]
    await wait_started(backend)
    for _ in range(200):
        if backend.most_at_once == 2:
            break
        await asyncio.sleep(0.005)
    assert backend.most_at_once == 2
    # One more batch is picked ahead, to wait for whichever lane frees first.
    late = asyncio.ensure_future(scheduler.submit([item(9, 20)]))
    await asyncio.sleep(0.01)
    assert scheduler.stats.running_batches == 3 and scheduler.stats.queued_items == 0
    backend.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks, late), timeout=5)
    assert 2 not in backend.executed_lanes
    assert backend.most_at_once == 2  # the fake refuses a lane entered twice at once


async def test_work_arriving_during_a_solo_batch_waits_for_it() -> None:
    """The solo lane has every thread: a second batch alongside it would take them back."""
    scheduler, backend = make_lanes()
    backend.gate.clear()
    alone = asyncio.ensure_future(scheduler.submit([item(1, 3)]))
    await wait_started(backend)
    # Three rows of length 64 (two fit a batch): more than one batch's worth.
    later = [asyncio.ensure_future(scheduler.submit([item(i, 60)])) for i in (2, 3, 4)]
    await asyncio.sleep(0.02)
    assert scheduler.stats.running_batches == 1 and scheduler.stats.queued_items == 3
    assert backend.most_at_once == 1
    backend.gate.set()
    await asyncio.wait_for(asyncio.gather(alone, *later), timeout=5)
    assert backend.executed_lanes[0] == 2
    # What waited was more than one batch: it ran on the parallel lanes.
    assert len(backend.executed_lanes) == 3 and set(backend.executed_lanes[1:]) <= {0, 1}


# -- a request that arrives when nothing waits or runs -----------------------------------------


def made_on(thread_names: list[str], items: list[Encoding]) -> Callable[[], Prepared]:
    """A ``make`` that records the thread it ran on."""

    def make_items() -> Prepared:
        thread_names.append(threading.current_thread().name)
        return prepare(items, GRID)

    return make_items


async def test_a_request_alone_is_made_and_run_on_the_lane_with_one_handoff() -> None:
    scheduler, backend = make_lanes()
    assert scheduler.alone()
    threads: list[str] = []
    alone = await asyncio.wait_for(
        scheduler.run_alone(made_on(threads, [item(7, 5)]), unit=False), timeout=2
    )
    assert alone.result is not None
    assert tuple(alone.result.rows[0, :2]) == expected_row(item(7, 5))
    assert alone.result.tokens == 5 and alone.made_s >= 0
    # Made on the solo lane's thread, and run there: the lane a batch alone gets.
    assert threads == ["batch-test-solo-0"]
    assert backend.executed_lanes == [2]
    assert [(b.batch, b.length) for b, _ in backend.executed] == [(1, 8)]
    stats = scheduler.stats
    assert (stats.items_run, stats.real_tokens, stats.padded_tokens) == (1, 5, 8)
    assert stats.batches == {Bucket(1, 8): 1}
    assert scheduler.alone() and stats.running_batches == 0


async def test_items_alone_merge_as_the_queue_would_or_come_back_unrun() -> None:
    scheduler, backend = make()
    # 5 and 12 tokens pad to 8 and 16: within 2x, one batch at 16, rows in input order.
    pair = [item(1, 12), item(2, 5)]
    alone = await scheduler.run_alone(made_on([], pair))
    assert alone.result is not None
    assert [(b.batch, b.length) for b, _ in backend.executed] == [(2, 16)]
    for i, enc in enumerate(pair):
        assert tuple(alone.result.rows[i, :2]) == expected_row(enc)
    # 5 and 40 tokens pad to 8 and 64: the queue would not merge them, nor does this.
    backend.executed.clear()
    apart = [item(3, 40), item(4, 5)]
    unrun = await scheduler.run_alone(made_on([], apart))
    assert unrun.result is None and backend.executed == []
    assert scheduler.alone()
    result = await scheduler.submit(unrun.prepared)
    for i, enc in enumerate(apart):
        assert tuple(result.rows[i, :2]) == expected_row(enc)


async def test_a_requests_own_error_alone_is_raised_as_is_and_a_backend_failure_as_one() -> None:
    backend = FakeBackend(fail_when=lambda ids: bool((ids[:, 0] == 666).any()))
    scheduler, backend = make(backend=backend)

    def bad_text() -> Prepared:
        raise EmptyInput(Part.INPUTS, 0)

    with pytest.raises(EmptyInput):
        await scheduler.run_alone(bad_text)
    assert scheduler.stats.failed_batches == 0 and backend.executed == []
    with pytest.raises(BackendFailure):
        await scheduler.run_alone(made_on([], [item(666, 5)]))
    assert scheduler.stats.failed_batches == 1
    assert scheduler.alone()
    good = await scheduler.run_alone(made_on([], [item(5, 3)]))
    assert good.result is not None and scheduler.stats.consecutive_failures == 0


async def test_work_arriving_while_a_request_runs_alone_queues_behind_it() -> None:
    scheduler, backend = make_lanes()
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.run_alone(made_on([], [item(1, 3)])))
    await wait_started(backend)
    assert not scheduler.alone()
    later = [asyncio.ensure_future(scheduler.submit([item(i, 60)])) for i in (2, 3, 4)]
    await asyncio.sleep(0.02)
    assert scheduler.stats.queued_items == 3 and backend.most_at_once == 1
    backend.gate.set()
    done = await asyncio.wait_for(asyncio.gather(first, *later), timeout=5)
    for i, result in zip((2, 3, 4), done[1:], strict=True):
        assert tuple(result.rows[0, :2]) == expected_row(item(i, 60))
    assert backend.executed_lanes[0] == 2 and set(backend.executed_lanes[1:]) <= {0, 1}
    await scheduler.drain()
    assert scheduler.alone()


async def test_a_request_cancelled_while_alone_leaves_its_batch_counted_until_it_ends() -> None:
    scheduler, backend = make_lanes()
    backend.gate.clear()
    first = asyncio.ensure_future(scheduler.run_alone(made_on([], [item(1, 3)])))
    await wait_started(backend)
    first.cancel()  # the client left: its batch is already on the solo lane
    await asyncio.sleep(0.01)
    assert scheduler.stats.running_batches == 1 and not scheduler.alone()
    late = asyncio.ensure_future(scheduler.submit([item(2, 60)]))
    await asyncio.sleep(0.02)
    assert scheduler.stats.queued_items == 1 and backend.most_at_once == 1
    backend.gate.set()
    result = await asyncio.wait_for(late, timeout=5)
    assert tuple(result.rows[0, :2]) == expected_row(item(2, 60))
    with pytest.raises(asyncio.CancelledError):
        await first
    assert backend.most_at_once == 1  # the later batch waited for the cancelled one's
    assert scheduler.stats.items_run == 2 and scheduler.alone()
