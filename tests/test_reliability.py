"""Reliability and observability: backpressure, client disconnects, backend faults and
readiness, graceful shutdown on SIGTERM, Prometheus metrics, request ids.

In-process tests run a dedicated app whose one model has a :class:`FakeBackend` (a gate to
hold a batch running, failures on chosen batches) behind the real tokenizer, scheduler,
registry and HTTP layer; the metrics and request-id tests use the shared app with the real
models. The disconnect and SIGTERM tests run ``trt-async serve`` (granian) over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from litestar import Litestar
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_backend import FakeBackend
from tests.http_fixtures import (
    BASE_URL,
    EMBEDDER,
    assert_error,
    free_port,
    start,
    wait_ready,
)
from trt_async.app import create_app
from trt_async.backends.modelfiles import ModelFiles
from trt_async.core.config import Config, ModelConfig
from trt_async.core.registry import ModelRegistry
from trt_async.core.runtime import ModelRuntime, create_runtime
from trt_async.http.observability import KeyValueFormatter

pytest_plugins = ["tests.http_fixtures"]
#: The in-process tests run on the loop the fake app was started on.
session_loop = pytest.mark.asyncio(loop_scope="session")

FAKE = "fake-embed"
QUEUE_ITEMS = 4
UNHEALTHY_AFTER = 2
ERROR_ID = re.compile(r"error id ([0-9a-f]{12})")


@dataclass
class FakeApp:
    backend: FakeBackend
    registry: ModelRegistry
    client: httpx.AsyncClient


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)


class LifespanTask:
    """Runs an app's lifespan in a task of its own (anyio scopes must exit where entered)."""

    def __init__(self, app: Litestar) -> None:
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(app))

    async def _run(self, app: Litestar) -> None:
        async with app.lifespan():
            self._ready.set()
            await self._stop.wait()

    @classmethod
    async def start(cls, app: Litestar) -> LifespanTask:
        self = cls(app)
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            self._task.result()  # start-up failed: raise its error
        return self

    async def stop(self) -> None:
        self._stop.set()
        await self._task


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fake_app(minilm_model_dir: Path) -> AsyncIterator[FakeApp]:
    """An app serving ``fake-embed``: MiniLM's tokenizer in front of a FakeBackend."""
    backend = FakeBackend()
    config = Config()
    config.embedding_models[FAKE] = ModelConfig(
        model_path=os.fspath(minilm_model_dir),
        max_length=64,
        batch_sizes=[1, 2, 4, 8],
        lengths=[16, 64],
        max_queue_items=QUEUE_ITEMS,
        queue_timeout_s=20,
    )
    config.server.unhealthy_after_failures = UNHEALTHY_AFTER
    config.server.drain_seconds = 2
    original = ModelRegistry._build_runtime

    def build(self: ModelRegistry, name: str, cfg: ModelConfig) -> ModelRuntime:
        if name != FAKE:
            return original(self, name, cfg)
        files = ModelFiles.resolve(Path(cfg.model_path), cfg.tokenizer_path)
        observer = self._observer_factory(name) if self._observer_factory else None
        return create_runtime(files, cfg, backend=backend, observer=observer, label=name)

    app = create_app(config)
    with pytest.MonkeyPatch.context() as patch:
        # Only while the lifespan loads the registry.
        patch.setattr(ModelRegistry, "_build_runtime", build)
        lifespan = await LifespanTask.start(app)
    # httpx's ASGI transport runs the app on this loop, so requests can overlap (Litestar's
    # test client runs each one to completion through a blocking portal).
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=30) as client:
            yield FakeApp(backend, app.state["registry"], client)
    finally:
        backend.gate.set()
        await lifespan.stop()


# -- (a) backpressure ---------------------------------------------------------------------------


@session_loop
async def test_full_queue_answers_429_while_admitted_requests_complete(fake_app: FakeApp) -> None:
    backend, client = fake_app.backend, fake_app.client
    stats = fake_app.registry.get(FAKE).runtime.scheduler.stats
    rejected = stats.rejected_requests
    backend.started.clear()
    backend.gate.clear()  # the next batch blocks in the backend until the gate opens
    try:
        running = asyncio.create_task(
            client.post("/v1/embeddings", json={"model": FAKE, "input": ["run one", "run two"]})
        )
        assert await asyncio.to_thread(backend.started.wait, 10)
        queued = asyncio.create_task(
            client.post("/embed", json={"inputs": [f"queued {i}" for i in range(QUEUE_ITEMS)]})
        )
        await wait_until(lambda: stats.queued_items == QUEUE_ITEMS)

        over = await client.post("/v1/embeddings", json={"model": FAKE, "input": "one more"})
        err = assert_error(over, 429, "openai")
        assert err["type"] == "rate_limit_error" and "queue full" in err["message"]
        assert int(over.headers["retry-after"]) >= 1
        tei = await client.post("/embed", json={"inputs": "one more"})
        assert "queue full" in assert_error(tei, 429, "tei", "Overloaded")["error"]
        assert int(tei.headers["retry-after"]) >= 1
        seed = await client.post(f"/infer/{FAKE}", json={"documents": ["one more"]})
        assert "queue full" in assert_error(seed, 429, "detail")["detail"]
        assert "retry-after" in seed.headers

        assert stats.rejected_requests == rejected + 3
        assert not running.done() and not queued.done()
    finally:
        backend.gate.set()
    first, second = await running, await queued
    assert first.status_code == 200 and len(first.json()["data"]) == 2
    assert second.status_code == 200 and len(second.json()) == QUEUE_ITEMS
    assert stats.queued_items == 0
    after = await client.post("/v1/embeddings", json={"model": FAKE, "input": "after the burst"})
    assert after.status_code == 200


# -- (c) backend faults and readiness -------------------------------------------------------------


@pytest.fixture
def core_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for the ``trt_async`` loggers (they do not propagate to the root logger)."""
    logger = logging.getLogger("trt_async")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@session_loop
async def test_failing_batches_fail_only_their_requests_and_readiness_follows(
    fake_app: FakeApp, core_log: pytest.LogCaptureFixture
) -> None:
    backend, client = fake_app.backend, fake_app.client
    model = fake_app.registry.get(FAKE)
    tokenizer = model.runtime.tokenizer
    poison = tokenizer.encode(["poison"], truncate=True)[0].ids[1]
    assert poison not in tokenizer.encode(["fine text"], truncate=True)[0].ids
    backend.fail_when = lambda ids: bool((ids == poison).any())
    try:
        bad = await client.post("/v1/embeddings", json={"model": FAKE, "input": ["ok", "poison"]})
        err = assert_error(bad, 500, "openai")
        assert err["code"] == "backend_error" and err["type"] == "server_error"
        found = ERROR_ID.search(err["message"])
        assert found is not None, err
        for secret in ("Traceback", "RuntimeError", "injected", "File "):
            assert secret not in bad.text
        # The id leads to the logged traceback.
        logged = [r for r in core_log.records if found.group(1) in r.getMessage()]
        assert logged and logged[0].exc_info is not None
        assert "injected backend failure" in str(logged[0].exc_info[1])

        # Only the poisoned batch failed: the next request is served, the model stays ready.
        ok = await client.post("/v1/embeddings", json={"model": FAKE, "input": ["fine text"]})
        assert ok.status_code == 200
        assert (await client.get("/ready")).status_code == 200

        for _ in range(UNHEALTHY_AFTER):
            tei = await client.post("/embed", json={"inputs": "poison"})
            assert ERROR_ID.search(assert_error(tei, 424, "tei", "Backend")["error"])
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "not ready",
            "models": {
                FAKE: f"unhealthy: {UNHEALTHY_AFTER} consecutive batches failed; see the server log"
            },
        }
        listing = (await client.get("/models/status")).json()
        (described,) = listing["models"]
        assert listing["ready"] is False and described["state"] == "unhealthy"
        assert described["stats"]["failed_batches"] >= UNHEALTHY_AFTER + 1
        assert (await client.get("/health")).status_code == 200

        # An unhealthy model still takes requests; one success makes it ready again.
        healed = await client.post(f"/infer/{FAKE}", json={"documents": ["fine text"]})
        assert healed.status_code == 200 and len(healed.json()["embeddings"]) == 1
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["models"] == {FAKE: "ready"}
    finally:
        backend.fail_when = None


# -- (e) metrics ----------------------------------------------------------------------------------


@dataclass
class Scrape:
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum over every sample of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lbl), v in self.samples.items() if n == name and want <= lbl)


async def scrape(client: Any) -> Scrape:
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = Scrape()
    for family in text_string_to_metric_families(r.text):
        out.types[family.name] = family.type
        for sample in family.samples:
            out.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


@session_loop
async def test_metrics_move_with_requests_and_follow_prometheus_conventions(client: Any) -> None:
    before = await scrape(client)
    texts = [["metrics one", "a second, longer text for the metrics"], ["metrics three"]]
    tokens = 0
    for batch in texts:
        r = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": batch})
        assert r.status_code == 200
        tokens += r.json()["usage"]["prompt_tokens"]
    missing = await client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert missing.status_code == 404
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    route = "/v1/embeddings"
    assert delta("trt_async_requests_total", route=route, model=EMBEDDER, status="200") == 2
    assert delta("trt_async_requests_total", route=route, model="", status="404") == 1
    assert delta("trt_async_request_duration_seconds_count", route=route, model=EMBEDDER) == 2
    for stage in ("queue", "tokenization", "inference"):
        assert delta(f"trt_async_{stage}_duration_seconds_count", model=EMBEDDER) == 2, stage
    real = delta("trt_async_tokens_total", model=EMBEDDER, kind="real")
    assert real == tokens
    assert delta("trt_async_tokens_total", model=EMBEDDER, kind="padded") >= real
    assert delta("trt_async_items_total", model=EMBEDDER) == 3
    batches = delta("trt_async_batches_total", model=EMBEDDER)
    assert 1 <= batches <= 3
    for histogram in ("batch_duration_seconds", "batch_size", "batch_padded_length"):
        assert delta(f"trt_async_{histogram}_count", model=EMBEDDER) == batches, histogram
    assert delta("trt_async_batch_size_sum", model=EMBEDDER) == 3
    for gauge in ("queue_items", "queue_tokens", "running_batches"):
        assert (f"trt_async_{gauge}", frozenset({("model", EMBEDDER)})) in after.samples, gauge
        assert after.types[f"trt_async_{gauge}"] == "gauge"
    assert after.value("trt_async_queue_items", model=EMBEDDER) == 0
    assert after.value("trt_async_model_healthy", model=EMBEDDER) == 1
    assert after.value("process_resident_memory_bytes") > 10 * 2**20

    # Conventions: counters expose ``_total`` samples, durations are ``_seconds``, names
    # are snake case, and only counters end in ``_total``.
    # (prometheus_client writes each counter's and histogram's creation time as a separate
    # ``*_created`` gauge in this format.)
    ours = {
        name: kind
        for name, kind in after.types.items()
        if name.startswith("trt_async_") and not name.endswith("_created")
    }
    assert len(ours) >= 15
    for name, kind in ours.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert not name.endswith("_total"), name
        if "duration" in name:
            assert name.endswith("_seconds") and kind == "histogram", name
    for (sample, _), _value in after.samples.items():
        family = next((n for n in ours if sample.startswith(n)), None)
        if family is not None and ours[family] == "counter":
            assert sample in (f"{family}_total", f"{family}_created"), sample


# -- (f) request ids ------------------------------------------------------------------------------


@session_loop
async def test_request_ids_are_echoed_generated_and_logged(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    access = logging.getLogger("trt_async.access")
    access.addHandler(caplog.handler)
    try:
        body = {"model": EMBEDDER, "input": "request ids"}
        sent = await client.post("/v1/embeddings", json=body, headers={"x-request-id": "trace-42"})
        assert sent.status_code == 200 and sent.headers["x-request-id"] == "trace-42"
        fresh = await client.post("/v1/embeddings", json=body)
        generated = fresh.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        # An unusable id (too long) is replaced, not echoed.
        odd = await client.post("/v1/embeddings", json=body, headers={"x-request-id": "x" * 300})
        assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])
        # Errors carry one too.
        failed = await client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
        assert failed.status_code == 404 and failed.headers["x-request-id"]
    finally:
        access.removeHandler(caplog.handler)

    by_id = {getattr(r, "request_id", None): r for r in caplog.records}
    record = by_id["trace-42"]
    assert record.name == "trt_async.access"
    assert (record.status, record.route, record.model) == (200, "/v1/embeddings", EMBEDDER)
    assert "request_id=trace-42" in KeyValueFormatter().format(record)
    assert by_id[generated].status == 200
    assert by_id[failed.headers["x-request-id"]].status == 404


# -- against a real granian process ---------------------------------------------------------------


def write_minilm_config(
    path: Path, model_dir: Path, drain_seconds: float = 3, **options: Any
) -> Path:
    lines = ["embedding_models:", "  mini:", f"    model_path: {os.fspath(model_dir)!r}"]
    lines += [f"    {key}: {value}" for key, value in options.items()]
    lines += ["server:", f"  drain_seconds: {drain_seconds}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def minilm_server(
    tmp_path: Path, minilm_model_dir: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    options: dict[str, Any] = getattr(request, "param", {})
    config = write_minilm_config(tmp_path / "config.yaml", minilm_model_dir, **options)
    port, log = free_port(), tmp_path / "server.log"
    proc = start(config, port, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def model_stats(url: str) -> dict[str, Any]:
    listing = httpx.get(f"{url}/models/status", timeout=10).json()
    (model,) = listing["models"]
    stats: dict[str, Any] = model["stats"]
    return stats


def long_text(i: int, words: int) -> str:
    return f"text {i}: " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(words))


# (b): one thread for ONNX Runtime makes the big batch last seconds on any CPU; with no
# queue delay the oldest items (the big request's) always run first.
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    "minilm_server", [{"intra_op_threads": 1, "max_queue_delay_ms": 0}], indirect=True
)
def test_clients_that_disconnect_while_queued_cost_no_compute(
    minilm_server: tuple[subprocess.Popen[str], str, Path],
) -> None:
    proc, url, log = minilm_server
    big_items, small_requests, small_items = 32, 5, 2
    before = model_stats(url)
    big: dict[str, Any] = {}

    def send_big() -> None:
        body = {"model": "mini", "input": [long_text(i, 200) for i in range(big_items)]}
        with httpx.Client(timeout=120) as http:
            big["response"] = http.post(f"{url}/v1/embeddings", json=body)

    big_thread = threading.Thread(target=send_big)
    big_thread.start()
    deadline = time.monotonic() + 20
    while model_stats(url)["running_batches"] == 0:
        assert time.monotonic() < deadline, "the big request never started"
        time.sleep(0.02)

    outcomes: list[str] = []

    def send_small(i: int) -> None:
        body = {"model": "mini", "input": [f"small {i} a", f"small {i} b"]}
        try:
            with httpx.Client(timeout=0.5) as http:
                outcomes.append(str(http.post(f"{url}/v1/embeddings", json=body).status_code))
        except httpx.TimeoutException:
            outcomes.append("abandoned")  # the client closes the connection

    smalls = [threading.Thread(target=send_small, args=(i,)) for i in range(small_requests)]
    for t in smalls:
        t.start()
    for t in smalls:
        t.join(timeout=10)
    assert outcomes == ["abandoned"] * small_requests, (
        f"the small requests were answered ({outcomes}): the big batch finished too soon"
    )
    expected = small_requests * small_items
    deadline = time.monotonic() + 10
    while model_stats(url)["cancelled_items"] - before["cancelled_items"] < expected:
        assert time.monotonic() < deadline, "the server never dropped the abandoned items"
        time.sleep(0.05)
    assert "response" not in big, "the big request ended before the drops were seen"

    big_thread.join(timeout=120)
    assert big["response"].status_code == 200
    assert len(big["response"].json()["data"]) == big_items
    after = model_stats(url)
    assert after["cancelled_items"] - before["cancelled_items"] == expected
    assert after["items"] - before["items"] == big_items  # the abandoned items never ran
    assert after["queued_items"] == 0 and after["running_batches"] == 0
    still = httpx.post(f"{url}/v1/embeddings", json={"model": "mini", "input": "still here"})
    assert still.status_code == 200
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert log.read_text(encoding="utf-8").count("status=499") == small_requests


SIGTERM_DRAIN_S = 1.0


# One ONNX Runtime thread: the 20 requests are several seconds of work on any CPU, so the
# drain deadline passes with work still queued.
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    "minilm_server", [{"drain_seconds": SIGTERM_DRAIN_S, "intra_op_threads": 1}], indirect=True
)
def test_sigterm_answers_every_open_request_and_exits_within_the_drain(
    minilm_server: tuple[subprocess.Popen[str], str, Path],
) -> None:
    proc, url, log = minilm_server
    drain_s = SIGTERM_DRAIN_S
    count = 20
    sizes = [1 + (i % 5) * 4 for i in range(count)]
    sent = [threading.Event() for _ in range(count)]
    results: list[Any] = [None] * count

    def send(i: int) -> None:
        def trace(event: str, info: Any) -> None:
            if event == "http11.send_request_body.complete":
                sent[i].set()

        texts = [long_text(i * 100 + j, 20 + 30 * (i % 4)) for j in range(sizes[i])]
        try:
            with httpx.Client(timeout=60) as http:
                results[i] = http.post(
                    f"{url}/v1/embeddings",
                    json={"model": "mini", "input": texts},
                    extensions={"trace": trace},
                )
        except httpx.HTTPError as exc:
            results[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    assert all(e.wait(10) for e in sent), "not every request was sent"
    time.sleep(0.2)  # let the server read them all: each is now tokenising, queued or running
    in_flight = model_stats(url)
    assert in_flight["queued_items"] + in_flight["running_batches"] > 0, in_flight
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    returncode = proc.wait(timeout=60)
    took = time.monotonic() - signalled
    output = log.read_text(encoding="utf-8")
    assert returncode == 0, output

    served = unavailable = 0
    for i, r in enumerate(results):
        assert isinstance(r, httpx.Response), f"request {i}: {r!r} (a transport error)"
        if r.status_code == 200:
            assert len(r.json()["data"]) == sizes[i]
            served += 1
        else:
            assert_error(r, 503, "openai")
            unavailable += 1
    # Work that ended within the deadline was answered; what was still queued got 503.
    assert served >= 1 and unavailable >= 1, (served, unavailable)
    assert "drain deadline" in output
    # The drain deadline, plus the batch running when it passed, plus process exit.
    assert took < drain_s + 8, f"exit took {took:.1f} s"
    print(f"SIGTERM: {served} served, {unavailable} answered 503, exit after {took:.1f} s")


@session_loop
async def test_shared_app_still_serves(client: Any) -> None:
    r = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": "still here"})
    assert r.status_code == 200
    vector = np.array(r.json()["data"][0]["embedding"])
    assert np.isfinite(vector).all()
