"""Many requests' work in one thread hop: the mechanism tokenisation and image decoding share.

Handing a short piece of work to a thread and its result back costs the event loop about as
much as the work itself, and under load that hop was paid for every request. Here requests
wait in one queue per model; when no hop is out, or fewer than ``hops`` are and at least
``spread_from`` units of work wait, one takes every request waiting (up to ``max_per_hop``
units of work, and at least one request) and runs them with one call on the pool. Alone, a
request still gets a hop of its own at once; under load, the loop pays one hop for all the
requests that arrived while the previous hop ran, and a little work waits for that hop
rather than paying a hop beside it, for ``spread_after_s`` at most (a long hop, a flood's
tokenisation, does not hold a short query back). The loop itself never does the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from trt_async.core.errors import InvalidInput
from trt_async.core.fairpool import FairPool

J = TypeVar("J")
R = TypeVar("R")

#: Whether the request at an index of a hop's jobs is still wanted (its client may have
#: left while the hop ran): work may skip it, answering None.
Wanted = Callable[[int], bool]
#: One hop's work, on a pool thread: a result, or the request's own 4xx, or None for a
#: request no longer wanted, per job and in order.
HopWork = Callable[[Sequence[J], Wanted], Sequence[R | InvalidInput | None]]


class SharedHops(Generic[J, R]):
    """Jobs of many requests, run in shared hops of ``work`` on ``pool``."""

    def __init__(
        self,
        pool: FairPool,
        owner: Hashable,
        work: HopWork[J, R],
        *,
        size: Callable[[J], int],
        max_per_hop: int,
        hops: int = 2,
        spread_from: int = 1,
        spread_after_s: float = 0.002,
    ) -> None:
        self._pool = pool
        self._owner = owner
        self._work = work
        self._size = size
        self._max_per_hop = max_per_hop
        self._hops = hops
        #: Units of work waiting that pay for a hop beside one already out: less waits for
        #: that hop to end and goes with the next, so short jobs share hops.
        self._spread_from = spread_from
        #: The longest that less work waits for a running hop before it gets a hop beside
        #: it: a one-text query must not wait for a flood's tokenisation.
        self._spread_after_s = spread_after_s
        self._spread_timer: asyncio.TimerHandle | None = None
        self._out = 0
        self._waiting: list[tuple[J, asyncio.Future[R]]] = []
        self._waiting_size = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, job: J) -> R:
        """``job``'s result, from the next hop with room; its own
        :class:`~trt_async.core.errors.InvalidInput` is raised here."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, future))
        self._waiting_size += self._size(job)
        if self._room():
            self._launch()
        else:
            self._spread_later()
        return await future

    @property
    def idle(self) -> bool:
        """No job waits and no hop is out."""
        return self._out == 0 and not self._waiting

    def _room(self) -> bool:
        """Whether a hop may start now: none is out, or another pays for what waits."""
        return self._out == 0 or (
            self._out < self._hops and self._waiting_size >= self._spread_from
        )

    def _spread_later(self) -> None:
        """Give what waits a hop of its own ``spread_after_s`` from now, if it still waits
        then and there is room beside the running hops."""
        if self._spread_timer is None and self._out < self._hops:
            self._spread_timer = asyncio.get_running_loop().call_later(
                self._spread_after_s, self._spread_now
            )

    def _spread_now(self) -> None:
        self._spread_timer = None
        if self._waiting and self._out < self._hops:
            self._launch()

    def _launch(self) -> None:
        if self._spread_timer is not None:
            self._spread_timer.cancel()
            self._spread_timer = None
        taken, count = 0, 0
        waiting = self._waiting
        while taken < len(waiting) and (count == 0 or count < self._max_per_hop):
            count += self._size(waiting[taken][0])
            taken += 1
        jobs, self._waiting = waiting[:taken], waiting[taken:]
        self._waiting_size -= count
        self._out += 1
        task = asyncio.ensure_future(self._hop(jobs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hop(self, jobs: list[tuple[J, asyncio.Future[R]]]) -> None:
        # A request cancelled while waiting (its client left) is not worked on.
        live = [(job, future) for job, future in jobs if not future.done()]
        futures = [future for _, future in live]
        work, hop_jobs = self._work, [job for job, _ in live]

        def wanted(index: int) -> bool:
            # Read from the pool's thread: a stale answer only costs the work.
            return not futures[index].done()

        try:
            results = await self._pool.run(self._owner, lambda: work(hop_jobs, wanted))
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
        else:
            for future, result in zip(futures, results, strict=True):
                if future.done() or result is None:
                    continue
                if isinstance(result, InvalidInput):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._out -= 1
            if self._waiting:
                if self._room():
                    self._launch()
                else:
                    self._spread_later()
