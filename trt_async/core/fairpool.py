"""A small thread pool that takes turns between owners, for blocking work such as tokenising.

One FIFO pool lets whoever submits most take every thread: a flood of large tokenisation
jobs for one model made a one-word request to another model wait for all of them. Here each
owner (a model runtime) has its own queue, and a free thread takes the next job of the owner
with the fewest jobs running, owners with equal counts in turn (one that just had a job
started goes to the back). An owner alone still gets every thread; with others waiting, a
job waits for at most the jobs already running plus one job of each owner ahead of it.

Results reach the awaiting task through its event loop; a job whose awaiting task was
cancelled before it started is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class FairPool:
    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one thread")
        self._workers = workers
        self._name = name
        self._threads: list[threading.Thread] = []
        self._ready = threading.Condition()
        self._waiting: OrderedDict[Hashable, deque[_Job]] = OrderedDict()
        self._running: dict[Hashable, int] = {}

    async def run(self, owner: Hashable, fn: Callable[[], T]) -> T:
        """``fn()`` on one of the pool's threads, in ``owner``'s turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._ready:
            if len(self._threads) < self._workers:
                self._start_thread()
            self._waiting.setdefault(owner, deque()).append((fn, future, loop))
            self._ready.notify()
        return await future

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _next(self) -> tuple[Hashable, _Job]:
        """The next job (called holding the lock, with something waiting)."""
        owner = min(self._waiting, key=lambda o: self._running.get(o, 0))
        jobs = self._waiting[owner]
        job = jobs.popleft()
        if jobs:
            self._waiting.move_to_end(owner)
        else:
            del self._waiting[owner]
        self._running[owner] = self._running.get(owner, 0) + 1
        return owner, job

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                owner, (fn, future, loop) = self._next()
            try:
                if not future.cancelled():  # a stale read only costs running fn in vain
                    _settle_from_thread(loop, future, fn)
            finally:
                with self._ready:
                    self._running[owner] -= 1
                    if not self._running[owner]:
                        del self._running[owner]


def _settle_from_thread(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], fn: Callable[[], Any]
) -> None:
    try:
        result = fn()
    except BaseException as exc:  # handed to the awaiting task, as an executor does
        outcome: tuple[Any, BaseException | None] = (None, exc)
    else:
        outcome = (result, None)
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
