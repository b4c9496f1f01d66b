"""The load generator: one asyncio loop, one ``aiohttp`` session with a connection pool.

Two ways to load a server, both bounded by a request count and a duration:

* closed loop: ``concurrency`` workers each send the next request as soon as their last
  one answered (throughput found, latency at a fixed number in flight);
* open loop: requests arrive as a Poisson process of a given rate whatever the server
  does (latency at a fixed offered load, queueing shows), with a cap on how many may be
  outstanding so an overloaded server cannot make the generator grow without bound.

Each request's outcome is a :class:`Record`: when it started and ended, its status, how
many items and tokens it carried, and the server's own time split from the ``x-*-time``
response headers.

The requests go out through aiohttp rather than httpx: on a small machine the generator
shares the cores with the server, and httpx spends about 8 ms of CPU a request against
aiohttp's 0.2 ms (64 clients, single-text embeddings, same server), so with httpx the
generator, not the server, set the throughput.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import msgspec
from yarl import URL

from trt_async.bench.workload import RequestSpec

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
    #: Seconds the phase's rates are computed over. Closed loop with a warm-up: the answers'
    #: summed time over the clients (Little's law, see ``run_closed``); without one, from the
    #: first request sent to the last answer. Open loop: from the start of the arrival
    #: schedule to its end or to the last answer, whichever is later (the drain counts).
    wall_s: float
    #: CPU seconds the generator's process used during the phase.
    client_cpu_s: float
    #: Open loop only: arrivals not sent because ``max_outstanding`` were in flight.
    dropped: int = 0
    #: Requests sent before the measurement window opened (closed loop: those answered
    #: inside it are in ``records`` all the same).
    warmup_requests: int = 0
    #: Open loop only: the schedule's arrivals per second (arrivals over the window).
    offered_per_s: float | None = None


class LoadClient:
    """A pooled aiohttp session bound to one base URL; use it as ``async with``.

    The session is created on entry (aiohttp wants a running loop). Paths are appended to
    the base URL as they are, so a base URL with a path prefix (``http://host/api``) keeps
    it, as with httpx's ``base_url``.
    """

    def __init__(
        self,
        base_url: str,
        connections: int,
        timeout_s: float = 120.0,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connections = connections
        self.timeout_s = timeout_s
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    async def __aenter__(self) -> LoadClient:
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("LoadClient used outside 'async with'")
        return self._session

    def url(self, path: str) -> URL:
        """The absolute URL of ``path`` (parsed once per path)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.base_url + path)
        return url

    async def get(self, path: str) -> tuple[int, bytes]:
        """``GET path``: status and body (a control or round-trip request)."""
        async with self.session.get(self.url(path)) as response:
            return response.status, await response.read()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """``POST path`` with a JSON body: status and body (a control request)."""
        async with self.session.post(self.url(path), data=body) as response:
            return response.status, await response.read()


def make_client(
    base_url: str, connections: int, timeout_s: float = 120.0, api_key: str | None = None
) -> LoadClient:
    """A pooled client; the pool is as large as the most requests in flight."""
    return LoadClient(base_url, connections, timeout_s, api_key)


def _parse_header(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


async def send(client: LoadClient, spec: RequestSpec) -> Record:
    """Send one request and describe what came back (never raises for HTTP errors)."""
    url = client.url(spec.path)
    start = time.perf_counter()
    try:
        async with client.session.post(url, data=spec.body) as response:
            content = await response.read()
            status = response.status
            headers = response.headers
    except TimeoutError:
        return Record(start, time.perf_counter(), 0, spec.items, error="timeout")
    except aiohttp.ClientError as exc:
        return Record(start, time.perf_counter(), 0, spec.items, error=type(exc).__name__)
    end = time.perf_counter()
    record = Record(start, end, status, spec.items)
    for key, header in TIMING_HEADERS.items():
        value = _parse_header(headers.get(header))
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
        record.error = f"HTTP {status}"
    return record


def _cycle(requests: Sequence[RequestSpec]) -> itertools.cycle[RequestSpec]:
    if not requests:
        raise ValueError("no requests to send")
    return itertools.cycle(requests)


async def run_closed(
    client: LoadClient,
    requests: Sequence[RequestSpec],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    warmup_s: float = 0.0,
) -> PhaseResult:
    """``concurrency`` workers sending back to back; the rate is measured over a window.

    With a warm-up, the window opens once ``warmup_s`` has passed *and* every worker has had
    an answer (the pipeline is full: a server whose answers take longer than the warm-up is
    measured in its steady state, not while its first requests are still queued). It closes
    after ``duration_s`` (at least twice the slowest warm-up answer), or once
    ``max_requests`` requests sent in it have been answered. What counts is what was
    *answered* inside the window, whenever it was sent, and the rate is Little's law's
    (clients over the mean answer time: ``wall_s`` is the answers' summed time over the
    clients): counting only requests sent inside
    it, and waiting for them, made a server whose answers take longer than the window look
    many times slower than it is (infinity-emb on 32-text requests read 0.5-6 items/s that
    way). Requests still out when the window closes are awaited (so the next phase starts on
    an idle server) but not counted. Without a warm-up, every request counts, from the first
    sent to the last answer. The request list is reused from the start when it runs out.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    stream = _cycle(requests)
    answered: list[Record] = []
    cpu0 = time.process_time()
    window = [math.inf, math.inf]  # [opens, closes]
    started_in_window = 0
    answers_per_worker = [0] * concurrency
    stop = asyncio.Event()
    steady = asyncio.Event()

    async def worker(me: int) -> None:
        nonlocal started_in_window
        while not stop.is_set():
            now = time.perf_counter()
            if now >= window[0]:
                if started_in_window >= max_requests:
                    return
                started_in_window += 1
            record = await send(client, next(stream))
            answered.append(record)
            answers_per_worker[me] += 1
            if all(answers_per_worker):
                steady.set()

    async def clock() -> None:
        length = duration_s
        if warmup_s > 0:
            await asyncio.sleep(warmup_s)
            await steady.wait()
            # A window shorter than the answers' time would catch a lockstep closed loop's
            # answers zero or one times: it spans at least two of the slowest warm-up ones.
            length = max(duration_s, 2 * max(r.end - r.start for r in answered))
        window[0] = time.perf_counter()
        window[1] = window[0] + length
        await asyncio.sleep(length)
        stop.set()

    timer = asyncio.ensure_future(clock())
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    timer.cancel()
    if warmup_s <= 0:
        # No steady state asked for: every request counts, from the first sent to the last
        # answer (what a phase of a few requests, or one checked item by item, needs).
        return _result(answered, cpu0, warmup=0)
    if not stop.is_set():  # stopped by max_requests: the window closes with its last answer
        window[1] = max((r.end for r in answered if r.start >= window[0]), default=window[0])
    opens, closes = window
    counted = [r for r in answered if opens <= r.end <= closes]
    warmup = sum(1 for r in answered if r.start < opens)
    result = _result(counted, cpu0, warmup=warmup)
    # Little's law for a closed loop: answers per second = clients / mean answer time. A
    # count over a fixed window rounds by a whole step when the clients' answers come in
    # step (every client at once), which a server batching them all does.
    busy = sum(r.end - r.start for r in counted)
    result.wall_s = busy / concurrency if counted else 0.0
    return result


def poisson_schedule(rate: float, window_s: float, rng: random.Random) -> list[float]:
    """Arrival times (seconds from the start) of a Poisson process of ``rate`` over
    ``window_s``, conditioned on its count being ``round(rate * window_s)`` (at least one).

    Given their count, the arrivals of a Poisson process are independent and uniform over
    the window, so sorted uniform draws have the exponential gaps of Poisson arrivals while
    the schedule offers exactly the rate asked for: a free count (exponential gaps until the
    deadline) varies by ±√N around it, ±20 % for a phase of 25 requests.
    """
    count = max(1, round(rate * window_s))
    return sorted(rng.uniform(0.0, window_s) for _ in range(count))


async def run_open(
    client: LoadClient,
    requests: Sequence[RequestSpec],
    *,
    rate: float,
    duration_s: float,
    max_requests: int,
    seed: int = 0,
    max_outstanding: int = 1024,
) -> PhaseResult:
    """Poisson arrivals at ``rate`` requests/s for ``duration_s`` or ``max_requests`` arrivals.

    The schedule (:func:`poisson_schedule`, seeded) spans ``duration_s``, or less when
    ``max_requests`` arrivals at ``rate`` take less, so it offers ``rate`` either way. An
    arrival that finds ``max_outstanding`` requests in flight is dropped and counted (the
    server is far past saturation then). Rates are over the whole schedule plus the drain
    (:attr:`PhaseResult.wall_s`), so the achieved rate never exceeds the offered one.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    if max_requests < 1:
        raise ValueError("max_requests must be at least 1")
    stream = _cycle(requests)
    window = min(duration_s, max_requests / rate)
    schedule = poisson_schedule(rate, window, random.Random(seed))
    records: list[Record] = []
    tasks: set[asyncio.Task[None]] = set()
    dropped = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()

    async def one(spec: RequestSpec) -> None:
        records.append(await send(client, spec))

    for at in schedule:
        delay = t0 + at - time.perf_counter()
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
    last = max((r.end for r in records), default=t0)
    records.sort(key=lambda r: r.start)
    return PhaseResult(
        records,
        max(window, last - t0),
        time.process_time() - cpu0,
        dropped,
        0,
        offered_per_s=len(schedule) / window,
    )


def _result(records: list[Record], cpu0: float, *, warmup: int) -> PhaseResult:
    records.sort(key=lambda r: r.start)
    wall = (max(r.end for r in records) - records[0].start) if records else 0.0
    return PhaseResult(records, wall, time.process_time() - cpu0, 0, warmup)
