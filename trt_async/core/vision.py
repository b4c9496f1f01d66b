"""A vision tower's runtime: images in, one vector each, through the same scheduler and runner
as every text model.

An image is one item of one fixed shape (``pixel_values`` ``(3, H, W)``), so its bucket grid
has a single "length", 1, and its buckets differ in batch size only: the scheduler queues
and batches images as it queues and batches texts of one padded length, and the runner
packs each image's row into the bucket's input (:func:`pack_rows`) where it packs token ids
for a text model.

Decoding and preprocessing run off the event loop, in shared hops as tokenisation does
(:class:`ImageQueue`): requests wait in one queue per model, and one hop on the image
pool takes every request waiting and turns all their images into one ``pixel_values``
array per request. The pool's threads bound how many images are decoded at once (an image
at the default pixel cap decodes to 192 MiB).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import overload

import numpy as np

from trt_async.backends.base import Backend
from trt_async.backends.modelfiles import ImagePreprocessing, ModelDirError
from trt_async.backends.shapes import BucketGrid
from trt_async.core.config import ConfigError, ModelConfig
from trt_async.core.errors import InvalidInput, Part
from trt_async.core.fairpool import FairPool
from trt_async.core.heads import make_reducer
from trt_async.core.images import ImagePreprocessor
from trt_async.core.runner import BatchRunner, Item
from trt_async.core.scheduler import (
    BatchObserver,
    Prepared,
    QueueLimits,
    Scheduler,
    ScheduleResult,
)
from trt_async.core.shared_hops import SharedHops, Wanted

#: One pool for every model's image decoding and preprocessing (Pillow releases the GIL while
#: it decodes and resizes); its threads are also the bound on images decoded at once.
IMAGE_POOL = FairPool(2, "images")
#: Images one hop takes at most: at a few ms each, a hop's requests are not held up long.
MAX_IMAGES_PER_HOP = 16
#: Most bytes of preprocessed pixel values one model holds queued (224 x 224 images: ~1780).
MAX_QUEUED_PIXEL_BYTES = 1 << 30
#: An image batch's fixed cost in images, for choosing batches: a batch's launch costs
#: little beside one image's forward pass (tens to hundreds of milliseconds on the CPU).
IMAGE_BATCH_OVERHEAD = 1
#: The grid's one length: an image is one item of one shape, counted as one token.
IMAGE_LENGTH = 1


def image_series(model: str) -> str:
    """The name an image-text model's image batches are observed under in the metrics (a
    model's own name never holds a '/')."""
    return f"{model}/image"


class Rows(Sequence[np.ndarray]):
    """The rows of one request's ``(n, ...)`` array as the scheduler's items, without a
    Python object per item until the runner packs them."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.array)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> Rows: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | Rows:
        if isinstance(index, slice):
            return Rows(self.array[index])
        row: np.ndarray = self.array[index]
        return row


def prepare_rows(array: np.ndarray) -> Prepared:
    """A request's fixed-shape items grouped for the scheduler: one chunk of length 1."""
    n = int(array.shape[0])
    sizes = [IMAGE_LENGTH] * n
    return Prepared(Rows(array), sizes, n, [(IMAGE_LENGTH, list(range(n)), sizes)])


def pack_rows(buffers: Mapping[str, np.ndarray], items: Sequence[Item], pad_id: int) -> np.ndarray:
    """Write a batch's fixed-shape items into the bucket's one input (a
    :data:`~trt_async.core.runner.Packer`). Rows past the items keep what the last batch
    left there; their outputs are dropped. The mask, read by no reducer of such a model,
    marks every row."""
    (pixels,) = buffers.values()
    for row, item in enumerate(items):
        pixels[row] = item
    return np.ones((pixels.shape[0], 1), dtype=np.int64)


_Job = tuple[Sequence[bytes], Sequence[int] | None, Part]


class ImageQueue:
    """The images of one model's requests, decoded and preprocessed in shared hops on
    ``pool`` (:class:`~trt_async.core.shared_hops.SharedHops`, as tokenisation runs)."""

    def __init__(
        self, preprocessor: ImagePreprocessor, pool: FairPool, owner: Hashable, hops: int = 2
    ) -> None:
        self._preprocessor = preprocessor
        self._hops: SharedHops[_Job, Prepared] = SharedHops(
            pool,
            owner,
            self._work,
            size=lambda job: len(job[0]),
            max_per_hop=MAX_IMAGES_PER_HOP,
            hops=hops,
        )

    async def prepare(
        self,
        images: Sequence[bytes],
        indices: Sequence[int] | None = None,
        part: Part = Part.IMAGES,
    ) -> Prepared:
        """``images`` (encoded) as one ``pixel_values`` array grouped for the scheduler; a
        bad image raises its :class:`~trt_async.core.errors.InvalidImage` naming
        ``indices[i]`` (default ``i``), where it sits in the request."""
        return await self._hops.run((images, indices, part))

    def _work(self, jobs: Sequence[_Job], wanted: Wanted) -> list[Prepared | InvalidInput | None]:
        # Request by request: an image costs milliseconds, so one whose client left is skipped.
        out: list[Prepared | InvalidInput | None] = []
        for i, (images, indices, part) in enumerate(jobs):
            if not wanted(i):
                out.append(None)
                continue
            try:
                out.append(prepare_rows(self._preprocessor.pixels(images, indices, part)))
            except InvalidInput as exc:
                out.append(exc)
        return out


class VisionRuntime:
    """A vision tower: its backend, runner, scheduler and image queue.

    ``start()`` prepares every bucket and runs one image through; ``close()`` frees the
    backend. Its batches run on the same :class:`~trt_async.core.runner.BatchRunner` and
    :class:`~trt_async.core.scheduler.Scheduler` as text models, over a grid of batch sizes
    and the one length :data:`IMAGE_LENGTH`.
    """

    def __init__(
        self,
        backend: Backend,
        preprocessing: ImagePreprocessing,
        config: ModelConfig,
        *,
        max_image_pixels: int,
        observer: BatchObserver | None = None,
        label: str = "model",
    ) -> None:
        io = backend.io
        expected = (3, preprocessing.height, preprocessing.width)
        if io.item_shape is None or len(io.inputs) != 1:
            raise ModelDirError(
                f"{label}: the vision graph takes {list(io.inputs)}, not one fixed-shape "
                "pixel_values input; re-export with trt-async export"
            )
        if io.item_shape != expected:
            raise ModelDirError(
                f"{label}: the vision graph takes images of shape {io.item_shape}, the "
                f"preprocessing makes {expected}; re-export with trt-async export"
            )
        self.backend = backend
        self.spec = spec = backend.spec()
        batch_sizes = config.batch_sizes or spec.batch_sizes
        try:
            self.grid = BucketGrid(batch_sizes, [IMAGE_LENGTH], max(batch_sizes))
        except ValueError as exc:
            raise ConfigError(f"{label}: bucket grid: {exc}") from None
        self.runner = BatchRunner(
            backend, make_reducer("none"), 0, f"{label}-image", units=True, pack=pack_rows
        )
        image_bytes = 4 * int(np.prod(expected))
        most = min(
            config.max_queue_items, max(self.grid.max_batch, MAX_QUEUED_PIXEL_BYTES // image_bytes)
        )
        self.scheduler = Scheduler(
            self.runner,
            self.grid,
            QueueLimits(
                max_items=most,
                max_tokens=most,
                timeout_s=config.queue_timeout_s,
                max_delay_s=config.max_queue_delay_ms / 1000,
            ),
            batch_overhead_tokens=IMAGE_BATCH_OVERHEAD,
            ahead=1,
            observer=observer,
        )
        self.preprocessor = ImagePreprocessor(preprocessing, max_pixels=max_image_pixels)
        self.queue = ImageQueue(self.preprocessor, IMAGE_POOL, self)
        self.output_dim: int | None = None

    async def start(self) -> None:
        """Prepare every bucket on a backend thread, then run one (blank) image as a check."""
        grid = self.grid
        await self.runner.call(lambda: self.backend.prepare(grid))
        probe = np.zeros((1, *self.preprocessor.shape), dtype=np.float32)
        result = await self.scheduler.submit(prepare_rows(probe))
        self.output_dim = int(result.rows.shape[-1])

    async def embed(self, prepared: Prepared, *, unit: bool) -> ScheduleResult:
        """One row per image of ``prepared`` (L2-normalised with ``unit``)."""
        return await self.scheduler.submit(prepared, unit=unit)

    def failing(self, after: int) -> str | None:
        failures = self.scheduler.stats.consecutive_failures
        if failures >= after:
            return f"{failures} consecutive image batches failed; see the server log"
        return None

    async def close(self, reason: str) -> None:
        self.scheduler.close(reason)
        await self.runner.drain()
        await self.runner.call(self.backend.close)
        self.runner.shutdown()
