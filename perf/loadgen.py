"""The load generator: one asyncio loop, one ``httpx.AsyncClient`` with a connection pool.

Two ways to load a server, both bounded by a request count and a duration:

* closed loop: ``concurrency`` workers each send the next request as soon as their last
  one answered (throughput found, latency at a fixed number in flight);
* open loop: requests arrive as a Poisson process of a given rate whatever the server
  does (latency at a fixed offered load, queueing shows), with a cap on how many may be
  outstanding so an overloaded server cannot make the generator grow without bound.

Each request's outcome is a :class:`Record`: when it started and ended, its status, how
many items and tokens it carried, and the server's own time split from the ``x-*-time``
response headers.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import msgspec

from perf.workload import RequestSpec

#: Response headers carrying the server's time split (milliseconds).
TIMING_HEADERS = {
    "queue": "x-queue-time",
    "tokenize": "x-tokenization-time",
    "inference": "x-inference-time",
    "total": "x-total-time",
}


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    total_tokens: int | None = None


class _Body(msgspec.Struct):
    """Just enough of any answer to count its rows; the vectors themselves are skipped."""

    data: list[msgspec.Raw] | None = None
    results: list[msgspec.Raw] | None = None
    embeddings: list[msgspec.Raw] | None = None
    scores: list[msgspec.Raw] | None = None
    predictions: list[msgspec.Raw] | None = None
    usage: _Usage | None = None

    def rows(self) -> int | None:
        for value in (self.data, self.results, self.embeddings, self.scores, self.predictions):
            if value is not None:
                return len(value)
        return None


_DECODER = msgspec.json.Decoder(_Body)


@dataclass(slots=True)
class Record:
    """One request's outcome. Times are seconds on the generator's monotonic clock."""

    start: float
    end: float
    status: int
    items: int
    tokens: int | None = None
    #: Server-side split in milliseconds, by :data:`TIMING_HEADERS` key, when sent.
    server: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


@dataclass(slots=True)
class PhaseResult:
    """Everything one load phase produced."""

    records: list[Record]
    #: Seconds from the first request sent to the last answer received.
    wall_s: float
    #: CPU seconds the generator's process used during the phase.
    client_cpu_s: float
    #: Open loop only: arrivals not sent because ``max_outstanding`` were in flight.
    dropped: int = 0
    #: Requests sent before the warm-up ended; they are not in ``records``.
    warmup_requests: int = 0


def make_client(
    base_url: str, connections: int, timeout_s: float = 120.0, api_key: str | None = None
) -> httpx.AsyncClient:
    """A pooled client; the pool is as large as the most requests in flight."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(timeout_s),
    )


def _parse_header(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


async def send(client: httpx.AsyncClient, spec: RequestSpec) -> Record:
    """Send one request and describe what came back (never raises for HTTP errors)."""
    start = time.perf_counter()
    try:
        response = await client.post(spec.path, content=spec.body)
        content = response.content
    except httpx.TimeoutException:
        return Record(start, time.perf_counter(), 0, spec.items, error="timeout")
    except httpx.HTTPError as exc:
        return Record(start, time.perf_counter(), 0, spec.items, error=type(exc).__name__)
    end = time.perf_counter()
    record = Record(start, end, response.status_code, spec.items)
    for key, header in TIMING_HEADERS.items():
        value = _parse_header(response.headers.get(header))
        if value is not None:
            record.server[key] = value
    if record.ok:
        try:
            body = _DECODER.decode(content)
        except msgspec.DecodeError:
            record.error = "unreadable body"
            return record
        rows = body.rows()
        if rows is not None and rows != spec.items:
            record.error = f"{rows} rows for {spec.items} items"
        if body.usage is not None:
            record.tokens = body.usage.total_tokens or body.usage.prompt_tokens
    else:
        record.error = f"HTTP {response.status_code}"
    return record


def _cycle(requests: Sequence[RequestSpec]) -> itertools.cycle[RequestSpec]:
    if not requests:
        raise ValueError("no requests to send")
    return itertools.cycle(requests)


async def run_closed(
    client: httpx.AsyncClient,
    requests: Sequence[RequestSpec],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    warmup_s: float = 0.0,
) -> PhaseResult:
    """``concurrency`` workers sending back to back until ``duration_s`` or ``max_requests``.

    The request list is reused from the start when it runs out. Requests started during the
    first ``warmup_s`` seconds are sent but not recorded (nor counted in ``max_requests``).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    stream = _cycle(requests)
    records: list[Record] = []
    started = 0
    warmup_count = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    measure_from = t0 + warmup_s
    deadline = measure_from + duration_s

    async def worker() -> None:
        nonlocal started, warmup_count
        while True:
            now = time.perf_counter()
            if now >= deadline:
                return
            warm = now < measure_from
            if not warm:
                if started >= max_requests:
                    return
                started += 1
            else:
                warmup_count += 1
            record = await send(client, next(stream))
            if not warm:
                records.append(record)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _result(records, cpu0, dropped=0, warmup=warmup_count)


async def run_open(
    client: httpx.AsyncClient,
    requests: Sequence[RequestSpec],
    *,
    rate: float,
    duration_s: float,
    max_requests: int,
    seed: int = 0,
    max_outstanding: int = 1024,
) -> PhaseResult:
    """Poisson arrivals at ``rate`` requests/s for ``duration_s`` or ``max_requests`` arrivals.

    Inter-arrival gaps are drawn from a seeded exponential distribution, so the schedule is
    the same on every run. An arrival that finds ``max_outstanding`` requests in flight is
    dropped and counted (the server is far past saturation then).
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    stream = _cycle(requests)
    rng = random.Random(seed)
    records: list[Record] = []
    tasks: set[asyncio.Task[None]] = set()
    dropped = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + duration_s
    next_at = t0

    async def one(spec: RequestSpec) -> None:
        records.append(await send(client, spec))

    for _ in range(max_requests):
        next_at += rng.expovariate(rate)
        if next_at >= deadline:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        spec = next(stream)
        if len(tasks) >= max_outstanding:
            dropped += 1
            continue
        task = asyncio.create_task(one(spec))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return _result(records, cpu0, dropped=dropped, warmup=0)


def _result(records: list[Record], cpu0: float, *, dropped: int, warmup: int) -> PhaseResult:
    records.sort(key=lambda r: r.start)
    wall = (max(r.end for r in records) - records[0].start) if records else 0.0
    return PhaseResult(records, wall, time.process_time() - cpu0, dropped, warmup)
