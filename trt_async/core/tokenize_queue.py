"""Tokenisation of many requests in one thread hop.

Handing a short text to a tokenizer thread and its result back costs the event loop about
as much as tokenising it, and under load that hop was paid for every request. Here requests
wait in one queue per model; whenever fewer than ``hops`` hops are out, one takes every
request waiting and tokenises their texts with one call per truncation setting. Alone, a
request still gets a hop of its own at once; under load, the loop pays one hop for all the
requests that arrived while the previous hop ran. The loop itself never tokenises. Requests
with an embedding prompt share the hops too (one tokenizer call for all of them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from trt_async.core.errors import InvalidInput, Part
from trt_async.core.fairpool import FairPool
from trt_async.core.prompting import PromptedRequest, encode_each
from trt_async.core.tokenizer import (
    Direction,
    Encoding,
    TextInput,
    TextRequest,
    TextTokenizer,
)

T = TypeVar("T")
AnyTextRequest = TextRequest | PromptedRequest

#: Texts one hop takes at most: a hop's result must not wait for a flood behind it.
MAX_TEXTS_PER_HOP = 4096


class TokenizeQueue(Generic[T]):
    """The texts of one model's requests, tokenised in shared hops on ``pool``."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        pool: FairPool,
        owner: Hashable,
        finish: Callable[[list[Encoding]], T],
        hops: int = 2,
    ) -> None:
        self._tokenizer = tokenizer
        #: What each request's encodings become on the thread (grouped for the scheduler).
        self._finish = finish
        self._pool = pool
        self._owner = owner
        self._hops = hops
        self._out = 0
        self._waiting: list[tuple[AnyTextRequest, asyncio.Future[T]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def encode(
        self,
        texts: Sequence[TextInput],
        *,
        truncate: bool,
        direction: Direction = "right",
        prompt: str = "",
        prompt_part: Part = Part.PROMPT_NAME,
    ) -> T:
        """``texts`` tokenised (as :meth:`TextTokenizer.encode` does, with its errors), and
        finished. A ``prompt`` goes before each text (as
        :func:`~trt_async.core.prompting.encode_prompted` puts it; ``prompt_part`` says
        where it came from); such texts must be strings."""
        request: AnyTextRequest
        if prompt:
            strings = [t for t in texts if isinstance(t, str)]
            if len(strings) != len(texts):
                raise TypeError("a prompt goes before single texts, not before pairs")
            request = PromptedRequest(strings, prompt, truncate, direction, prompt_part)
        else:
            request = TextRequest(texts, truncate, direction)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._out < self._hops:
            self._launch()
        return await future

    def _launch(self) -> None:
        taken, count = 0, 0
        waiting = self._waiting
        while taken < len(waiting) and (count == 0 or count < MAX_TEXTS_PER_HOP):
            count += len(waiting[taken][0].texts)
            taken += 1
        jobs, self._waiting = waiting[:taken], waiting[taken:]
        self._out += 1
        task = asyncio.ensure_future(self._hop(jobs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hop(self, jobs: list[tuple[AnyTextRequest, asyncio.Future[T]]]) -> None:
        # A request cancelled while waiting (its client left) is not tokenised.
        live = [(request, future) for request, future in jobs if not future.done()]
        try:
            tokenizer, finish = self._tokenizer, self._finish
            requests = [request for request, _ in live]

            def work() -> list[T | InvalidInput]:
                return [
                    r if isinstance(r, InvalidInput) else finish(r)
                    for r in encode_each(tokenizer, requests)
                ]

            results = await self._pool.run(self._owner, work)
        except asyncio.CancelledError:
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, InvalidInput):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._out -= 1
            if self._waiting and self._out < self._hops:
                self._launch()
