"""Tokenisation of many requests in one thread hop (:mod:`trt_async.core.shared_hops`).

Requests wait in one queue per model, and one hop on the tokenizer pool tokenises every
waiting request's texts with one call per truncation setting. Requests with an embedding
prompt share the hops too (one tokenizer call for all of them). A request with nothing to
share a hop or a batch with is tokenised on its batch's thread instead (:meth:`encode_now`,
:meth:`~trt_async.core.scheduler.Scheduler.run_alone`). The loop itself never tokenises.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from trt_async.core.errors import InvalidInput, Part
from trt_async.core.fairpool import FairPool
from trt_async.core.prompting import PromptedRequest, encode_each
from trt_async.core.shared_hops import SharedHops, Wanted
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
#: Texts waiting that start a second hop beside a running one: fewer (a few short texts,
#: tens of microseconds to tokenise) cost less waiting for the running hop than a hop of
#: their own, whose thread handoffs cost about as much as their tokenisation.
TEXTS_TO_SPREAD = 32


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
        self._hops: SharedHops[AnyTextRequest, T] = SharedHops(
            pool,
            owner,
            self._work,
            size=lambda request: len(request.texts),
            max_per_hop=MAX_TEXTS_PER_HOP,
            hops=hops,
            spread_from=TEXTS_TO_SPREAD,
        )

    @staticmethod
    def request(
        texts: Sequence[TextInput],
        *,
        truncate: bool,
        direction: Direction = "right",
        prompt: str = "",
        prompt_part: Part = Part.PROMPT_NAME,
    ) -> AnyTextRequest:
        """One request's texts as the queue takes them. A ``prompt`` goes before each text
        (as :func:`~trt_async.core.prompting.encode_prompted` puts it; ``prompt_part`` says
        where it came from); such texts must be strings."""
        if prompt:
            strings = [t for t in texts if isinstance(t, str)]
            if len(strings) != len(texts):
                raise TypeError("a prompt goes before single texts, not before pairs")
            return PromptedRequest(strings, prompt, truncate, direction, prompt_part)
        return TextRequest(texts, truncate, direction)

    async def run(self, request: AnyTextRequest) -> T:
        """``request`` tokenised and finished in the next shared hop; its own
        :class:`~trt_async.core.errors.InvalidInput` is raised here."""
        return await self._hops.run(request)

    def encode_now(self, request: AnyTextRequest) -> T:
        """``request`` tokenised and finished on the calling thread (never the event loop's),
        as a hop would; its own :class:`~trt_async.core.errors.InvalidInput` is raised."""
        (result,) = self._work([request], _always)
        if isinstance(result, InvalidInput):
            raise result
        return result

    @property
    def idle(self) -> bool:
        """No request waits for a hop and none is out."""
        return self._hops.idle

    def _work(self, requests: Sequence[AnyTextRequest], wanted: Wanted) -> list[T | InvalidInput]:
        # One tokenizer call for the whole hop: a request that left meanwhile costs its texts.
        finish = self._finish
        return [
            r if isinstance(r, InvalidInput) else finish(r)
            for r in encode_each(self._tokenizer, requests)
        ]


def _always(index: int) -> bool:
    return True
