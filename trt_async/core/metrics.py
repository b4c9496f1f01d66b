"""Prometheus metrics for the whole server, on one ``CollectorRegistry``.

Counters that the scheduler already keeps (queue depth, tokens, failures, graph replays)
are read at scrape time by a custom collector, so the hot path pays nothing for them.
Distributions (batch sizes, durations) and request counts are observed as they happen, into
plain numbers the event loop alone writes (:class:`Series`), read at scrape time too.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from trt_async.backends.shapes import Bucket
from trt_async.core.inference_stats import InferenceStats, Statistics
from trt_async.core.vision import image_series

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


class Series:
    """A counter or histogram observed from the event loop only, read at scrape time.

    prometheus_client's metrics take a lock for every observation, two for a histogram's
    (its sum and its bucket): five metrics a request made ten lock round trips on the event
    loop. These are plain numbers, written by one thread; a scrape reads them on that same
    thread (``/metrics`` runs on the loop), so no lock is needed.
    """

    __slots__ = ("bounds", "buckets", "created", "sum")

    def __init__(self, bounds: tuple[float, ...] = ()) -> None:
        self.bounds = bounds
        #: Observations per bucket (not cumulative); the last is +Inf's.
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def inc(self) -> None:
        self.buckets[0] += 1

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus's buckets: ``le`` bounds with cumulative counts, +Inf last."""
        out = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self.buckets, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), float(total)))
        return out


class _Family:
    """One metric family of :class:`Series`, by label values."""

    __slots__ = ("bounds", "help", "labels", "name", "series")

    def __init__(
        self, name: str, help: str, labels: tuple[str, ...], bounds: tuple[float, ...] = ()
    ) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.bounds = bounds
        self.series: dict[tuple[str, ...], Series] = {}

    def get(self, *values: str) -> Series:
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = Series(self.bounds)
        return found

    def forget(self, model: str) -> None:
        index = self.labels.index("model")
        self.series = {k: v for k, v in self.series.items() if k[index] != model}

    def collect(self) -> Metric:
        if self.bounds:
            histogram = HistogramMetricFamily(self.name, self.help, labels=self.labels)
            for values, series in self.series.items():
                histogram.add_metric(list(values), series.cumulative(), series.sum)
            return histogram
        counter = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for values, series in self.series.items():
            counter.add_metric(list(values), series.count, created=series.created)
        return counter


class Metrics:
    """Every metric family of the server; ``render()`` gives the exposition text."""

    def __init__(self, models: Callable[[], Iterable[ServedModel]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

        def family(
            name: str, help: str, labels: tuple[str, ...], bounds: tuple[float, ...] = ()
        ) -> _Family:
            return _Family(f"{PREFIX}_{name}", help, labels, bounds)

        self.requests = family(
            "requests", "HTTP requests by route, model and status", ("route", "model", "status")
        )
        self.request_seconds = family(
            "request_duration_seconds", "Request time in the server", ("route", "model"),
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self.queue_seconds = family(
            "queue_duration_seconds", "Time from enqueue to the first batch start", ("model",),
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self.tokenize_seconds = family(
            "tokenization_duration_seconds", "Tokenisation time per request", ("model",),
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self.inference_seconds = family(
            "inference_duration_seconds",
            "Time from a request's first batch start to its last batch end",
            ("model",),
            _LATENCY_BUCKETS,
        )
        self.batch_seconds = family(
            "batch_duration_seconds", "Backend time per batch (pack, run, pool)", ("model",),
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_size = family(
            "batch_size", "Real items per batch", ("model",), _BATCH_BUCKETS
        )  # fmt: skip
        self.batch_length = family(
            "batch_padded_length", "Padded sequence length per batch", ("model",),
            _LENGTH_BUCKETS,
        )  # fmt: skip
        self._families = (
            self.requests, self.request_seconds, self.queue_seconds, self.tokenize_seconds,
            self.inference_seconds, self.batch_seconds, self.batch_size, self.batch_length,
        )  # fmt: skip
        self.registry.register(_SeriesCollector(self._families))
        self.registry.register(_SchedulerCollector(models))
        #: Each model's requests in Triton's shape (the JSON form of ``GET /metrics``).
        self.inference = InferenceStats()
        self._models = models
        #: The series a request observes, by (route, model, status) and by model: looking
        #: a series up by its labels costs more than the observation itself.
        self._request_series: dict[tuple[str, str, int], tuple[Series, Series]] = {}
        self._timing_series: dict[str, tuple[Series, Series, Series]] = {}

    def batch_observer(self, model: str) -> _BatchObserver:
        return _BatchObserver(self, model)

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        series = self._request_series.get((route, model, status))
        if series is None:
            series = (
                self.requests.get(route, model, str(status)),
                self.request_seconds.get(route, model),
            )
            self._request_series[(route, model, status)] = series
        series[0].inc()
        series[1].observe(seconds)

    def forget_model(self, model: str) -> None:
        """Drop every series labelled with ``model`` (it was unloaded), its image batches'
        too."""
        self._request_series = {
            key: value for key, value in self._request_series.items() if key[1] != model
        }
        self._timing_series.pop(model, None)
        self.inference.forget(model)
        for name in (model, image_series(model)):
            for family in self._families:
                family.forget(name)

    def observe_timings(self, model: str, timings: Timings) -> None:
        series = self._timing_series.get(model)
        if series is None:
            series = (
                self.queue_seconds.get(model),
                self.tokenize_seconds.get(model),
                self.inference_seconds.get(model),
            )
            self._timing_series[model] = series
        series[0].observe(timings.queue_s)
        series[1].observe(timings.tokenize_s)
        series[2].observe(timings.inference_s)

    def statistics(self) -> Statistics:
        """Every served model's inference statistics, in Triton's shape."""
        return self.inference.statistics(
            (m.name, m.capabilities.embeds_images) for m in self._models()
        )

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
        self._seconds = metrics.batch_seconds.get(model)
        self._size = metrics.batch_size.get(model)
        self._length = metrics.batch_length.get(model)

    def batch_done(
        self, bucket: Bucket, items: int, real_tokens: int, seconds: float, ok: bool
    ) -> None:
        self._seconds.observe(seconds)
        self._size.observe(items)
        self._length.observe(bucket.length)


class _SeriesCollector(Collector):
    """The loop's own counters and histograms, at scrape time."""

    def __init__(self, families: tuple[_Family, ...]) -> None:
        self._families = families

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()


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
