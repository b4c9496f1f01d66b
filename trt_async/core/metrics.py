"""Prometheus metrics for the whole server, on one ``CollectorRegistry``.

Counters that the scheduler already keeps (queue depth, tokens, failures, graph replays)
are read at scrape time by a custom collector, so the hot path pays nothing for them.
Distributions (batch sizes, durations) are observed as they happen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from trt_async.backends.shapes import Bucket

if TYPE_CHECKING:
    from trt_async.core.requests import Timings
    from trt_async.core.tasks import ServedModel

PREFIX = "trt_async"

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
    0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
_LENGTH_BUCKETS = (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 8192)


class Metrics:
    """Every metric family of the server; ``render()`` gives the exposition text."""

    def __init__(self, models: Callable[[], Iterable[ServedModel]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by route, model and status",
            ["route", "model", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds", "Request time in the server",
            ["route", "model"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            f"{PREFIX}_queue_duration_seconds", "Time from enqueue to the first batch start",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokenize_seconds = Histogram(
            f"{PREFIX}_tokenization_duration_seconds", "Tokenisation time per request",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            f"{PREFIX}_inference_duration_seconds",
            "Time from a request's first batch start to its last batch end",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_duration_seconds", "Backend time per batch (pack, run, pool)",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Real items per batch",
            ["model"], buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_length = Histogram(
            f"{PREFIX}_batch_padded_length", "Padded sequence length per batch",
            ["model"], buckets=_LENGTH_BUCKETS, registry=r,
        )  # fmt: skip
        r.register(_SchedulerCollector(models))
        #: (route, status) pairs seen per model, so a model's series can be removed.
        self._request_series: dict[str, set[tuple[str, str]]] = {}
        #: The children a request observes, by (route, model, status) and by model: looking
        #: a child up by its labels costs more than the observation itself.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._timing_children: dict[str, tuple[Any, Any, Any]] = {}

    def batch_observer(self, model: str) -> _BatchObserver:
        return _BatchObserver(self, model)

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, model, status))
        if children is None:
            children = (
                self.requests.labels(route, model, str(status)),
                self.request_seconds.labels(route, model),
            )
            self._request_children[(route, model, status)] = children
            self._request_series.setdefault(model, set()).add((route, str(status)))
        children[0].inc()
        children[1].observe(seconds)

    def forget_model(self, model: str) -> None:
        """Drop every series labelled with ``model`` (it was unloaded)."""
        self._request_children = {
            key: value for key, value in self._request_children.items() if key[1] != model
        }
        self._timing_children.pop(model, None)
        routes: set[str] = set()
        for route, status in self._request_series.pop(model, set()):
            self.requests.remove(route, model, status)
            routes.add(route)
        for route in routes:
            self.request_seconds.remove(route, model)
        for family in (
            self.queue_seconds, self.tokenize_seconds, self.inference_seconds,
            self.batch_seconds, self.batch_size, self.batch_length,
        ):  # fmt: skip
            with contextlib.suppress(KeyError):
                family.remove(model)

    def observe_timings(self, model: str, timings: Timings) -> None:
        children = self._timing_children.get(model)
        if children is None:
            children = (
                self.queue_seconds.labels(model),
                self.tokenize_seconds.labels(model),
                self.inference_seconds.labels(model),
            )
            self._timing_children[model] = children
        children[0].observe(timings.queue_s)
        children[1].observe(timings.tokenize_s)
        children[2].observe(timings.inference_s)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    def negotiate(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition and its content type, in the format the ``Accept`` header asks
        for: OpenMetrics when a scraper asks for it, else Prometheus text (as chosen by
        prometheus-client's own negotiation)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _BatchObserver:
    """Feeds one runtime's batches into the histograms (a scheduler ``BatchObserver``)."""

    __slots__ = ("_length", "_seconds", "_size")

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._seconds = metrics.batch_seconds.labels(model)
        self._size = metrics.batch_size.labels(model)
        self._length = metrics.batch_length.labels(model)

    def batch_done(
        self, bucket: Bucket, items: int, real_tokens: int, seconds: float, ok: bool
    ) -> None:
        self._seconds.observe(seconds)
        self._size.observe(items)
        self._length.observe(bucket.length)


class _SchedulerCollector(Collector):
    """Reads scheduler and backend counters at scrape time."""

    def __init__(self, models: Callable[[], Iterable[ServedModel]]) -> None:
        self._models = models

    def describe(self) -> Iterator[Metric]:
        # Collected lazily: the models are not loaded when the collector is registered.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        p = PREFIX
        queue_items = GaugeMetricFamily(f"{p}_queue_items", "Items waiting", labels=["model"])
        queue_tokens = GaugeMetricFamily(f"{p}_queue_tokens", "Tokens waiting", labels=["model"])
        running = GaugeMetricFamily(f"{p}_running_batches", "Batches running", labels=["model"])
        efficiency = GaugeMetricFamily(
            f"{p}_padding_efficiency", "Real tokens over padded tokens run", labels=["model"]
        )
        healthy = GaugeMetricFamily(
            f"{p}_model_healthy", "1 when the model is ready and healthy", labels=["model"]
        )
        tokens = CounterMetricFamily(
            f"{p}_tokens", "Tokens run, real or padded", labels=["model", "kind"]
        )
        batches = CounterMetricFamily(
            f"{p}_batches", "Batches run per bucket", labels=["model", "batch", "length"]
        )
        items = CounterMetricFamily(f"{p}_items", "Items run", labels=["model"])
        events = CounterMetricFamily(
            f"{p}_scheduler_events",
            "Cancelled items, rejected (429) and timed-out (503) requests, failed batches",
            labels=["model", "event"],
        )
        # Families of the counters the backends declare, created as first seen.
        backend: dict[str, CounterMetricFamily] = {}
        seen: set[int] = set()
        for model in self._models():
            name = model.name
            healthy.add_metric([name], 1.0 if model.state.value == "ready" else 0.0)
            runtime = model.runtime
            if id(runtime) in seen:
                continue  # names sharing a runtime share its queue: count it once
            seen.add(id(runtime))
            s = runtime.scheduler.stats
            queue_items.add_metric([name], s.queued_items)
            queue_tokens.add_metric([name], s.queued_tokens)
            running.add_metric([name], s.running_batches)
            efficiency.add_metric([name], s.padding_efficiency)
            tokens.add_metric([name, "real"], s.real_tokens)
            tokens.add_metric([name, "padded"], s.padded_tokens)
            items.add_metric([name], s.items_run)
            for bucket, count in sorted(s.batches.items()):
                batches.add_metric([name, str(bucket.batch), str(bucket.length)], count)
            events.add_metric([name, "cancelled_items"], s.cancelled_items)
            events.add_metric([name, "rejected_requests"], s.rejected_requests)
            events.add_metric([name, "timed_out_requests"], s.timed_out_requests)
            events.add_metric([name, "failed_batches"], s.failed_batches)
            for counter, value in runtime.backend.counters().items():
                family = backend.get(counter.family)
                if family is None:
                    labels = ["model", *(k for k, _ in counter.labels)]
                    family = CounterMetricFamily(
                        f"{p}_{counter.family}", counter.help, labels=labels
                    )
                    backend[counter.family] = family
                family.add_metric([name, *(v for _, v in counter.labels)], value)
        yield from (
            queue_items, queue_tokens, running, efficiency, healthy,
            tokens, batches, items, events, *backend.values(),
        )  # fmt: skip
