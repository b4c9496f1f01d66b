"""The event loop never waits on tokenising, a model or a large body beyond a stated bound.

Everything a request costs in proportion to its texts runs off the loop: tokenising (shared
hops on the tokenizer threads), batches (the runner's lane threads), log lines (the log
writer). What stays on the loop per request is bounded by the body's size: decoding it,
queueing its items by length, encoding the answer. Under a mixed load of small requests and
the largest ones the server takes, a 1 ms ticker on the app's own loop must keep running on
time: its 99th percentile late by at most :data:`P99_BOUND_S` and never more than
:data:`MAX_BOUND_S`. (Checked to catch what it is for: with each request tokenised on the
loop instead, the same load stalled the ticker 0.53 s at worst on a 2-core machine; as
served, 0.06-0.14 s with other jobs on the machine.)

The app runs in the test's loop here (httpx's ASGI transport), with its lifespan driven by
hand: Litestar's test client runs the app on a loop of its own in another thread and blocks
the caller's loop on every request, so a ticker beside it would time the client.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest_asyncio
from litestar import Litestar

from tests.http_fixtures import EMBEDDER, MAX_CLIENT_BATCH, http_config
from tests.models import ExportedModel
from trt_async.app import create_app

#: How late a 1 ms tick may be at the 99th percentile, and at worst, under the load below.
P99_BOUND_S = 0.025
MAX_BOUND_S = 0.300

SHORT = "a short sentence to embed"
LONG = " ".join(["the long document keeps going with more words"] * 28)  # ~250 tokens


@pytest_asyncio.fixture(loop_scope="session")
async def app_in_this_loop(
    minilm_model_dir: Path,
    bert_rerank_dir: ExportedModel,
    bert_nli_dir: ExportedModel,
    xlmr_nli_dir: ExportedModel,
) -> AsyncIterator[Litestar]:
    config = http_config(minilm_model_dir, bert_rerank_dir, bert_nli_dir, xlmr_nli_dir)
    app = create_app(config)
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)  # type: ignore[arg-type]
    )
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    yield app
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await lifespan


async def test_the_loop_keeps_time_under_mixed_load_with_the_largest_requests(
    app_in_this_loop: Litestar,
) -> None:
    bodies = itertools.cycle(
        [
            ("/v1/embeddings", {"model": EMBEDDER, "input": SHORT}),
            ("/v1/embeddings", {"model": EMBEDDER, "input": [SHORT] * 8}),
            ("/v1/embeddings", {"model": EMBEDDER, "input": [LONG] * MAX_CLIENT_BATCH}),
            ("/v1/rerank", {"model": "bert-rerank", "query": SHORT, "documents": [LONG] * 16}),
            ("/embed", {"inputs": [SHORT, LONG]}),
        ]
    )
    transport = httpx.ASGITransport(app=app_in_this_loop)
    answered: list[int] = []
    lateness: list[float] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://loop.test") as client:
        stop = time.perf_counter() + 4.0

        async def worker() -> None:
            while time.perf_counter() < stop:
                path, body = next(bodies)
                r = await client.post(path, json=body, timeout=60)
                answered.append(r.status_code)

        async def ticker() -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                await asyncio.sleep(0.001)
                lateness.append(time.perf_counter() - start - 0.001)

        await asyncio.gather(ticker(), *(worker() for _ in range(32)))
    assert answered and set(answered) == {200}, set(answered)
    p99, worst = float(np.percentile(lateness, 99)), max(lateness)
    shown = f"p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms over {len(lateness)} ticks"
    print(f"loop lateness: {shown}, {len(answered)} answers")
    assert len(lateness) > 200, shown
    assert p99 < P99_BOUND_S, shown
    assert worst < MAX_BOUND_S, shown
