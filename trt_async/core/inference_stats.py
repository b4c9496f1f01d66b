"""Per-model inference statistics in Triton's shape (its ``/v2/models/stats``), which the
seed that wraps Triton answers on ``GET /metrics`` as JSON.

Each served model has one entry, an image-text model two (``<name>_text_encoder`` and
``<name>_image_encoder``, as the seed names its CLIP towers), each with Triton's durations:
``success`` (requests answered and their whole time), ``fail`` (requests that failed and
their time until then), ``queue`` (waiting for a batch), ``compute_input`` (tokenising, or
fetching, decoding and preprocessing images), ``compute_infer`` (first batch start to last
batch end), ``compute_output`` (the rest: finishing the rows) and ``cache_hit`` /
``cache_miss`` (always 0: there is no response cache). Counts are requests; durations
nanoseconds. Plain numbers written by the event loop only, like the Prometheus series.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from trt_async.core.requests import Timings

#: Which tower of a model a request ran on (``text`` for every model without images).
Tower = Literal["text", "image"]


class StatDuration(msgspec.Struct):
    """A count and a total duration in nanoseconds."""

    count: int = 0
    ns: int = 0


class InferStatistics(msgspec.Struct):
    success: StatDuration
    fail: StatDuration
    queue: StatDuration
    compute_input: StatDuration
    compute_infer: StatDuration
    compute_output: StatDuration
    cache_hit: StatDuration
    cache_miss: StatDuration


class ModelStatistics(msgspec.Struct):
    name: str
    version: str
    inference_stats: InferStatistics


class Statistics(msgspec.Struct):
    """The answer of ``GET /metrics`` with ``Accept: application/json``."""

    model_stats: list[ModelStatistics]


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class _Counts:
    __slots__ = (
        "fail_count",
        "fail_ns",
        "infer_ns",
        "input_ns",
        "output_ns",
        "queue_ns",
        "success_count",
        "success_ns",
    )

    def __init__(self) -> None:
        self.success_count = self.success_ns = 0
        self.fail_count = self.fail_ns = 0
        self.queue_ns = self.input_ns = self.infer_ns = self.output_ns = 0

    def answered(self, timings: Timings) -> None:
        self.success_count += 1
        self.success_ns += _ns(timings.total_s)
        self.queue_ns += _ns(timings.queue_s)
        self.input_ns += _ns(timings.tokenize_s)
        self.infer_ns += _ns(timings.inference_s)
        rest = timings.total_s - timings.tokenize_s - timings.queue_s - timings.inference_s
        self.output_ns += _ns(max(rest, 0.0))

    def failed(self, seconds: float) -> None:
        self.fail_count += 1
        self.fail_ns += _ns(seconds)

    def statistics(self) -> InferStatistics:
        n = self.success_count
        return InferStatistics(
            success=StatDuration(n, self.success_ns),
            fail=StatDuration(self.fail_count, self.fail_ns),
            queue=StatDuration(n, self.queue_ns),
            compute_input=StatDuration(n, self.input_ns),
            compute_infer=StatDuration(n, self.infer_ns),
            compute_output=StatDuration(n, self.output_ns),
            cache_hit=StatDuration(),
            cache_miss=StatDuration(),
        )


class InferenceStats:
    """Triton-style statistics per served model and tower."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[tuple[str, Tower], _Counts] = {}

    def _of(self, model: str, tower: Tower) -> _Counts:
        found = self._counts.get((model, tower))
        if found is None:
            found = self._counts[(model, tower)] = _Counts()
        return found

    def answered(self, model: str, tower: Tower, timings: Timings) -> None:
        self._of(model, tower).answered(timings)

    def failed(self, model: str, tower: Tower, seconds: float) -> None:
        self._of(model, tower).failed(seconds)

    def forget(self, model: str) -> None:
        """Drop ``model``'s counts (it was unloaded)."""
        self._counts = {key: value for key, value in self._counts.items() if key[0] != model}

    def statistics(self, models: Iterable[tuple[str, bool]]) -> Statistics:
        """Entries for ``(name, has an image tower)`` of every served model, in order."""
        out: list[ModelStatistics] = []
        for name, images in models:
            towers: list[tuple[str, Tower]] = (
                [(f"{name}_image_encoder", "image"), (f"{name}_text_encoder", "text")]
                if images
                else [(name, "text")]
            )
            for shown, tower in towers:
                counts = self._counts.get((name, tower)) or _Counts()
                out.append(ModelStatistics(shown, "1", counts.statistics()))
        return Statistics(out)
