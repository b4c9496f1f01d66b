"""The shared hops tokenisation and image decoding both run on: requests waiting together
share one hop, each gets its own result or 4xx, one that left is not worked on, and a hop
takes at most its share of work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from trt_async.core.errors import InvalidInput
from trt_async.core.fairpool import FairPool
from trt_async.core.shared_hops import SharedHops, Wanted


class Doubler:
    """Work that doubles each job's numbers, refuses negative ones, and records its hops;
    the first hop waits for ``gate`` so that the next requests queue behind it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.hops: list[list[list[int]]] = []
        self.skipped: list[list[int]] = []

    def __call__(
        self, jobs: Sequence[list[int]], wanted: Wanted
    ) -> list[list[int] | InvalidInput | None]:
        if not self.hops:
            self.gate.wait(timeout=5)
        self.hops.append(list(jobs))
        out: list[list[int] | InvalidInput | None] = []
        for i, job in enumerate(jobs):
            if not wanted(i):
                self.skipped.append(job)
                out.append(None)
            elif any(x < 0 for x in job):
                out.append(InvalidInput(f"negative number in {job}"))
            else:
                out.append([2 * x for x in job])
        return out


async def test_requests_waiting_together_share_one_hop_and_get_their_own_answers() -> None:
    work = Doubler()
    hops: SharedHops[list[int], list[int]] = SharedHops(
        FairPool(2, "test"), "m", work, size=len, max_per_hop=100, hops=1
    )
    first = asyncio.ensure_future(hops.run([1]))
    await asyncio.sleep(0.05)  # the first hop is out and waits on the gate
    rest = [asyncio.ensure_future(hops.run(job)) for job in ([2, 3], [-1], [4])]
    await asyncio.sleep(0)
    work.gate.set()
    assert await first == [2]
    assert await rest[0] == [4, 6]
    with pytest.raises(InvalidInput, match="negative number"):
        await rest[1]
    assert await rest[2] == [8]
    # One hop for the first request, one for the three that waited behind it.
    assert work.hops == [[[1]], [[2, 3], [-1], [4]]]


async def test_a_request_that_left_is_not_worked_on() -> None:
    work = Doubler()
    hops: SharedHops[list[int], list[int]] = SharedHops(
        FairPool(1, "test"), "m", work, size=len, max_per_hop=100, hops=1
    )
    first = asyncio.ensure_future(hops.run([1]))
    await asyncio.sleep(0.05)
    gone = asyncio.ensure_future(hops.run([5]))
    kept = asyncio.ensure_future(hops.run([6]))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    work.gate.set()
    assert await first == [2] and await kept == [12]
    assert work.hops == [[[1]], [[6]]]  # cancelled before its hop: never handed to the work


async def test_a_hop_takes_at_most_its_share_and_at_least_one_request() -> None:
    work = Doubler()
    hops: SharedHops[list[int], list[int]] = SharedHops(
        FairPool(1, "test"), "m", work, size=len, max_per_hop=3, hops=1
    )
    first = asyncio.ensure_future(hops.run([0]))
    await asyncio.sleep(0.05)
    waiting = [asyncio.ensure_future(hops.run(job)) for job in ([1, 1, 1, 1], [2], [3], [4])]
    await asyncio.sleep(0)
    work.gate.set()
    await asyncio.gather(first, *waiting)
    # A request over the share goes alone; then requests until the share is reached.
    assert work.hops == [[[0]], [[1, 1, 1, 1]], [[2], [3], [4]]]


async def test_a_failing_hop_fails_its_requests_and_the_next_hop_runs() -> None:
    calls = 0

    def flaky(jobs: Sequence[int], wanted: Wanted) -> list[int | InvalidInput | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("tokenizer crashed")
        return list(jobs)

    hops: SharedHops[int, int] = SharedHops(
        FairPool(1, "test"), "m", flaky, size=lambda _: 1, max_per_hop=10, hops=1
    )
    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        await hops.run(1)
    assert await hops.run(2) == 2


async def test_a_second_hop_starts_beside_a_running_one_only_for_enough_work() -> None:
    gate = threading.Event()
    seen: list[list[list[int]]] = []

    def work(jobs: Sequence[list[int]], wanted: Wanted) -> list[list[int]]:
        if [1] in jobs:
            gate.wait(timeout=5)  # the first hop stays out until the test opens the gate
        seen.append(list(jobs))
        return [[2 * x for x in job] for job in jobs]

    hops: SharedHops[list[int], list[int]] = SharedHops(
        FairPool(2, "test"),
        "m",
        work,
        size=len,
        max_per_hop=100,
        hops=2,
        spread_from=3,
        spread_after_s=10.0,
    )
    first = asyncio.ensure_future(hops.run([1]))
    await asyncio.sleep(0.05)
    small = [asyncio.ensure_future(hops.run([n])) for n in (2, 3)]
    await asyncio.sleep(0.05)
    # Two units wait: less than spread_from, so no hop beside the running one.
    assert seen == [] and not any(t.done() for t in small)
    large = asyncio.ensure_future(hops.run([4]))
    await asyncio.sleep(0.05)
    # Three units now: a second hop takes all three requests while the first still runs.
    assert seen == [[[2], [3], [4]]]
    assert [await t for t in small] == [[4], [6]] and await large == [8]
    # Below spread_from, a request waits for the running hop and goes with the next.
    late = asyncio.ensure_future(hops.run([5]))
    await asyncio.sleep(0.05)
    assert not late.done()
    gate.set()
    assert await first == [2] and await late == [10]
    assert seen == [[[2], [3], [4]], [[1]], [[5]]]


async def test_little_work_waits_for_a_long_hop_at_most_spread_after_s() -> None:
    gate = threading.Event()

    def work(jobs: Sequence[int], wanted: Wanted) -> list[int]:
        if 1 in jobs:
            gate.wait(timeout=5)  # a long hop: a flood's tokenisation
        return [2 * job for job in jobs]

    hops: SharedHops[int, int] = SharedHops(
        FairPool(2, "test"),
        "m",
        work,
        size=lambda _: 1,
        max_per_hop=100,
        hops=2,
        spread_from=32,
        spread_after_s=0.05,
    )
    long = asyncio.ensure_future(hops.run(1))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    # One unit is less than spread_from: it waits, but only spread_after_s, not for the hop.
    assert await hops.run(2) == 4
    assert 0.04 <= loop.time() - start < 1.0 and not long.done()
    gate.set()
    assert await long == 2
