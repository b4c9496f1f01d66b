"""Images through the one scheduler and runner: fixed-shape items, shared preprocessing hops,
and the TensorRT backend's refusal of vision graphs (no model export needed here; the tiny
CLIP and SigLIP run end to end in tests/test_image_http.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np
import pytest

from trt_async.backends.base import BackendSpec, Lanes, ModelIO
from trt_async.backends.modelfiles import ImagePreprocessing
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.core.config import ModelConfig
from trt_async.core.errors import InvalidImage, Part
from trt_async.core.heads import make_reducer
from trt_async.core.images import ImagePreprocessor
from trt_async.core.runner import BatchRunner
from trt_async.core.scheduler import Scheduler
from trt_async.core.vision import ImageQueue, Rows, VisionRuntime, pack_rows, prepare_rows

T = TypeVar("T")
ITEM = (3, 2, 2)


class RowsBackend:
    """A backend of one fixed-shape input: each item's vector is its pixels, flattened, times
    its batch size (so a test sees which batch an item ran in)."""

    def __init__(self) -> None:
        self._io = ModelIO(("pixel_values",), "image_embeds", np.dtype(np.float32), item_shape=ITEM)
        self.batches: list[int] = []
        self._inputs: dict[Bucket, np.ndarray] = {}

    @property
    def io(self) -> ModelIO:
        return self._io

    def spec(self) -> BackendSpec:
        return BackendSpec("rows", (), (1, 2, 4, 8), 0)

    def lanes(self) -> Lanes:
        return Lanes(1)

    def prepare(self, grid: BucketGrid, progress: Any = None) -> None:
        assert grid.lengths == (1,)

    def inputs(self, bucket: Bucket, lane: int = 0) -> Mapping[str, np.ndarray]:
        assert bucket.length == 1
        found = self._inputs.setdefault(bucket, np.full((bucket.batch, *ITEM), np.nan, np.float32))
        return {"pixel_values": found}

    def execute(
        self, bucket: Bucket, extra: Collection[str] = (), lane: int = 0
    ) -> Mapping[str, np.ndarray]:
        self.batches.append(bucket.batch)
        pixels = self._inputs[bucket]
        return {"image_embeds": pixels.reshape(bucket.batch, -1) * bucket.batch}

    def counters(self) -> dict[Any, int]:
        return {}

    def info(self) -> Any:
        return SimpleNamespace(name="rows", device="cpu", memory={})

    def close(self) -> None:
        pass


def test_rows_are_one_chunk_of_length_one() -> None:
    array = np.arange(4 * 12, dtype=np.float32).reshape(4, *ITEM)
    rows = Rows(array)
    assert len(rows) == 4 and np.array_equal(rows[2], array[2])
    assert isinstance(rows[1:3], Rows) and len(rows[1:3]) == 2
    prepared = prepare_rows(array)
    assert prepared.sizes == [1, 1, 1, 1] and prepared.tokens == 4
    assert prepared.groups == [(1, [0, 1, 2, 3], [1, 1, 1, 1])]
    buffer = np.zeros((8, *ITEM), dtype=np.float32)
    mask = pack_rows({"pixel_values": buffer}, rows[:3], 0)
    assert np.array_equal(buffer[:3], array[:3]) and not buffer[3:].any()
    assert mask.shape == (8, 1) and mask.all()


async def test_images_of_several_requests_share_a_batch() -> None:
    """While one batch runs, the images of the requests that arrive wait and then run
    together, each request getting its own rows back in order."""
    backend = RowsBackend()
    runner = BatchRunner(backend, make_reducer("none"), 0, "t", units=False, pack=pack_rows)
    scheduler = Scheduler(runner, BucketGrid([1, 2, 4, 8], [1], 8), batch_overhead_tokens=1)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, *ITEM)).astype(np.float32) for n in (1, 2, 3, 1)]
    try:
        results = await asyncio.gather(*(scheduler.submit(prepare_rows(a)) for a in arrays))
    finally:
        runner.shutdown()
    # All four requests were queued before the first batch started: one batch of 7 (padded
    # to the grid's 8) holds them all.
    assert backend.batches == [8]
    for array, result in zip(arrays, results, strict=True):
        np.testing.assert_array_equal(result.rows, array.reshape(len(array), -1) * 8)
        assert result.tokens == len(array)


class CountingPool:
    """The pool's interface: runs each job in a thread and counts the hops."""

    def __init__(self) -> None:
        self.hops = 0

    async def run(self, owner: object, fn: Callable[[], T]) -> T:
        self.hops += 1
        return await asyncio.to_thread(fn)


class StubPreprocessor:
    """Makes one row per image from its bytes; an image of b"bad" is refused as the real
    preprocessor refuses one (InvalidImage naming its index)."""

    def __init__(self) -> None:
        self.calls = 0

    def pixels(
        self,
        images: Sequence[bytes],
        indices: Sequence[int] | None = None,
        part: Part = Part.IMAGES,
    ) -> np.ndarray:
        self.calls += 1
        out = np.empty((len(images), *ITEM), dtype=np.float32)
        for i, data in enumerate(images):
            if data == b"bad":
                raise InvalidImage(indices[i] if indices else i, "is not an image", part=part)
            out[i] = len(data)
        return out


async def test_preprocessing_hops_are_shared() -> None:
    pool, stub = CountingPool(), StubPreprocessor()
    queue = ImageQueue(stub, pool, owner="m")  # type: ignore[arg-type]
    requests = [[b"a" * (i + 1)] * (i % 3 + 1) for i in range(8)]
    requests[5] = [b"ok", b"bad"]
    results = await asyncio.gather(
        *(queue.prepare(r, [10 + j for j in range(len(r))]) for r in requests),
        return_exceptions=True,
    )
    # Two hops start at once with the first two requests; the third takes the six others.
    assert pool.hops == 3 and stub.calls == 8
    for i, (request, result) in enumerate(zip(requests, results, strict=True)):
        if i == 5:
            assert isinstance(result, InvalidImage) and result.index == 11
            continue
        assert not isinstance(result, BaseException)
        assert len(result.sizes) == len(request)
        assert result.encodings[0][0, 0, 0] == len(request[0])


def test_vision_runtime_checks_the_graph_against_the_preprocessing() -> None:
    backend = RowsBackend()
    spec = ImagePreprocessing(height=2, width=2)
    runtime = VisionRuntime(backend, spec, ModelConfig(model_path="/m"), max_image_pixels=100)
    try:
        assert runtime.grid.lengths == (1,) and runtime.grid.batch_sizes == (1, 2, 4, 8)
        assert isinstance(runtime.preprocessor, ImagePreprocessor)
    finally:
        runtime.runner.shutdown()
    with pytest.raises(Exception, match=r"takes images of shape \(3, 2, 2\), the preprocessing"):
        VisionRuntime(
            RowsBackend(), ImagePreprocessing(height=4, width=4), ModelConfig(model_path="/m"),
            max_image_pixels=100,
        )  # fmt: skip


def test_tensorrt_refuses_a_vision_graph_with_the_fix() -> None:
    """The TensorRT backend serves token inputs only: an engine of ``pixel_values`` is
    refused naming the setting that serves the model."""
    from trt_async.backends.tensorrt.loader import PlanLoader, TensorRTError

    files = SimpleNamespace(manifest=None, root=Path("/m"))
    loader = PlanLoader.__new__(PlanLoader)
    loader.files = files  # type: ignore[assignment]
    with pytest.raises(TensorRTError, match=r"vision tower.*backend: auto"):
        loader._make_io(["pixel_values"], ["image_embeds"], None, {"image_embeds"})
    # Token graphs are unaffected.
    io = loader._make_io(
        ["input_ids", "attention_mask"], ["sentence_embedding"], np.dtype(np.int64), set()
    )
    assert io.inputs == ("input_ids", "attention_mask")
