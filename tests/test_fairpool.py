"""The tokeniser pool: owners take turns, an owner alone still uses every thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from trt_async.core.fairpool import FairPool


async def test_an_owner_alone_uses_every_thread() -> None:
    pool = FairPool(2, "test")
    barrier = threading.Barrier(2, timeout=5)  # breaks unless both jobs run at once
    results = await asyncio.gather(pool.run("a", barrier.wait), pool.run("a", barrier.wait))
    assert sorted(results) == [0, 1]


async def test_owners_take_turns_and_errors_reach_the_caller() -> None:
    pool = FairPool(1, "test")
    gate = threading.Event()
    order: list[str] = []

    def job(name: str) -> str:
        order.append(name)
        if name == "a0":
            gate.wait(timeout=5)
        return name

    first = asyncio.ensure_future(pool.run("a", lambda: job("a0")))
    await asyncio.sleep(0.05)
    later = [asyncio.ensure_future(pool.run("a", lambda i=i: job(f"a{i}"))) for i in (1, 2)]
    await asyncio.sleep(0)
    b = asyncio.ensure_future(pool.run("b", lambda: job("b0")))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, b, *later)
    assert order == ["a0", "a1", "b0", "a2"]  # b waits for one queued job of a at most

    def fail() -> None:
        raise ValueError("bad text")

    with pytest.raises(ValueError, match="bad text"):
        await pool.run("a", fail)


async def test_a_job_cancelled_while_waiting_never_runs() -> None:
    pool = FairPool(1, "test")
    gate = threading.Event()
    ran: list[int] = []
    blocker = asyncio.ensure_future(pool.run("a", lambda: gate.wait(timeout=5)))
    await asyncio.sleep(0.05)
    doomed = asyncio.ensure_future(pool.run("a", lambda: ran.append(1)))
    await asyncio.sleep(0)
    doomed.cancel()
    gate.set()
    await blocker
    assert await pool.run("a", lambda: 7) == 7
    assert ran == []
