"""The disconnect watch of the request middleware, against a fake ASGI server.

A request starts watching for its client's disconnect only once it has run for the watch's
delay after its body arrived: a quick request never asks the server for the disconnect
future (granian then pays nothing for it), a slow one is cancelled when its client leaves,
also when the client left before the watch began.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from trt_async.core.metrics import Metrics
from trt_async.http.observability import CLIENT_CLOSED, RequestContextMiddleware


class FakeServer:
    """``receive`` and ``send`` for one POST: the body, then a disconnect once ``leave``
    is called (a server's ``receive`` after the body only ever yields that)."""

    def __init__(self) -> None:
        self.receives = 0
        self.sent: list[dict[str, Any]] = []
        self._gone = asyncio.Event()

    def leave(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        if self.receives == 1:
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def handler(work_s: float, outcome: dict[str, Any]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            await asyncio.sleep(work_s)
        except asyncio.CancelledError:
            outcome["cancelled_after_s"] = time.perf_counter() - outcome["start"]
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def post_scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": []}


def statuses(metrics: Metrics) -> dict[str, int]:
    """Requests counted per status."""
    return {values[2]: series.count for values, series in metrics.requests.series.items()}


class Setup:
    """The middleware around a handler that works ``work_s``, and what it saw."""

    def __init__(self, work_s: float, watch_after_s: float) -> None:
        self.metrics = Metrics(list)
        self.outcome: dict[str, Any] = {"start": time.perf_counter()}
        self.middleware = RequestContextMiddleware(
            handler(work_s, self.outcome), metrics=self.metrics, watch_after_s=watch_after_s
        )

    async def serve(self, server: FakeServer) -> None:
        await asyncio.wait_for(self.middleware(post_scope(), server.receive, server.send), 5)


async def test_a_quick_request_never_asks_for_the_disconnect() -> None:
    setup = Setup(0.0, 0.2)
    server = FakeServer()
    await setup.serve(server)
    assert server.receives == 1  # the body only: no disconnect future was asked for
    assert server.sent[0]["status"] == 200
    await asyncio.sleep(0.3)  # the watch's time passes after the request ended
    assert server.receives == 1
    assert "cancelled_after_s" not in setup.outcome


async def test_a_slow_request_is_cancelled_when_its_client_leaves() -> None:
    setup = Setup(30.0, 0.05)
    server = FakeServer()
    asyncio.get_running_loop().call_later(0.2, server.leave)
    await setup.serve(server)
    assert server.receives == 2
    assert 0.2 <= setup.outcome["cancelled_after_s"] < 2.0
    assert server.sent == []  # nobody to answer
    assert statuses(setup.metrics) == {str(CLIENT_CLOSED): 1}


async def test_a_client_gone_before_the_watch_begins_is_seen_when_it_does() -> None:
    setup = Setup(30.0, 0.15)
    server = FakeServer()
    server.leave()
    await setup.serve(server)
    assert 0.15 <= setup.outcome["cancelled_after_s"] < 2.0
    assert statuses(setup.metrics) == {str(CLIENT_CLOSED): 1}


async def test_many_requests_share_one_timer_and_leave_nothing_behind() -> None:
    setup = Setup(0.1, 0.05)
    servers = [FakeServer() for _ in range(20)]
    await asyncio.gather(*(setup.serve(s) for s in servers))
    # Each ran past the delay, so each asked for its disconnect future; each was answered.
    assert [s.receives for s in servers] == [2] * 20
    assert all(s.sent[0]["status"] == 200 for s in servers)
    assert statuses(setup.metrics) == {"200": 20}
    await asyncio.sleep(0)
    # Their pending disconnect futures were cancelled with their requests.
    assert not [t for t in asyncio.all_tasks() if "FakeServer.receive" in repr(t)]
