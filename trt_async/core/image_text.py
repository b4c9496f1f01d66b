"""Image-text models (CLIP, SigLIP): two towers whose vectors share one space.

An image-text folder (``trt-async export`` of a CLIP or SigLIP checkpoint) is served as one
model: its text tower is an ordinary :class:`~trt_async.core.runtime.ModelRuntime` (so every
text route works on it unchanged), and its vision tower a
:class:`~trt_async.core.vision.VisionRuntime` beside it (``runtime.vision``). The tasks
that use the images are here: embedding texts and images in one request, and zero-shot
image classification as transformers' pipeline computes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from trt_async.backends import create_backend, resolve_backend
from trt_async.backends.modelfiles import (
    ImageTextFiles,
    ImageTextManifest,
    ModelFiles,
    resolve_model_folder,
)
from trt_async.core import heads
from trt_async.core.config import DEFAULT_MAX_IMAGE_PIXELS, ConfigError, ModelConfig
from trt_async.core.errors import (
    DimensionsOutOfRange,
    EmptyInput,
    InputTooLong,
    InvalidTemplate,
    Part,
    Unavailable,
)
from trt_async.core.image_inputs import ImageFetcher, load_images
from trt_async.core.requests import Timings
from trt_async.core.runtime import ModelRuntime, backend_options, create_runtime
from trt_async.core.scheduler import BatchObserver
from trt_async.core.tasks import (
    MAX_HYPOTHESES_CHARS,
    ModelState,
    ServedModel,
    _template_filler,
)
from trt_async.core.vision import VisionRuntime

# -- loading --------------------------------------------------------------------------------


def load_runtime(
    config: ModelConfig,
    *,
    observer: BatchObserver | None = None,
    image_observer: BatchObserver | None = None,
    label: str = "model",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ModelRuntime:
    """The runtime of ``config``'s folder: an image-text folder's text tower with its
    vision tower beside it, else the one graph. Blocking: call it off the event loop."""
    files = resolve_model_folder(Path(config.model_path), config.tokenizer_path)
    if isinstance(files, ModelFiles):
        return create_runtime(files, config, observer=observer, label=label)
    return create_image_text_runtime(
        files,
        config,
        observer=observer,
        image_observer=image_observer,
        label=label,
        max_image_pixels=max_image_pixels,
    )


def create_image_text_runtime(
    files: ImageTextFiles,
    config: ModelConfig,
    *,
    observer: BatchObserver | None = None,
    image_observer: BatchObserver | None = None,
    label: str = "model",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ModelRuntime:
    """Both towers of an image-text folder, not started yet.

    The text tower runs at the lengths its graph takes: SigLIP's exactly
    ``pad_to_length`` (64) tokens per row, so its grid's only length is that. The vision
    tower runs on the backend the same rule picks for it (``backend: auto``: TensorRT where
    it has a plan or a GPU, each tower with its own engine)."""
    manifest = files.manifest
    pad_to = manifest.text.pad_to_length
    text_config = config
    if pad_to is not None:
        if config.lengths is not None and sorted(set(config.lengths)) != [pad_to]:
            raise ConfigError(
                f"{label}: lengths: this {manifest.family} text tower takes exactly {pad_to} "
                f"tokens per text; leave lengths out or write [{pad_to}]"
            )
        if config.max_length is not None and config.max_length != pad_to:
            raise ConfigError(
                f"{label}: max_length: this {manifest.family} text tower takes exactly "
                f"{pad_to} tokens per text; leave max_length out or write {pad_to}"
            )
        text_config = msgspec.structs.replace(config, lengths=[pad_to], max_length=pad_to)
    runtime = create_runtime(files.text, text_config, observer=observer, label=label)
    try:
        vision_files = files.vision()
        name = resolve_backend(config.backend, vision_files)
        backend = create_backend(name, vision_files, backend_options(config))
        runtime.vision = VisionRuntime(
            backend,
            manifest.preprocessing,
            config,
            max_image_pixels=max_image_pixels,
            observer=image_observer,
            label=label,
        )
    except BaseException:
        runtime.runner.shutdown()
        runtime.backend.close()
        raise
    runtime.image_text = manifest
    return runtime


# -- tasks ----------------------------------------------------------------------------------


def _check_ready(model: ServedModel) -> None:
    if model.state not in (ModelState.READY, ModelState.UNHEALTHY):
        reason = f": {model.reason}" if model.reason else ""
        raise Unavailable(f"model {model.name!r} is {model.state.value}{reason}")


def _vision(model: ServedModel) -> VisionRuntime:
    model.capabilities.require_embeds_images(model.name)
    vision = model.runtime.vision
    assert vision is not None  # the capability says so
    return vision


def _image_text(model: ServedModel) -> ImageTextManifest:
    manifest = model.runtime.image_text
    assert manifest is not None
    return manifest


async def embed_images(
    model: ServedModel,
    images: Sequence[str],
    fetcher: ImageFetcher | None,
    *,
    positions: Sequence[int] | None = None,
    normalize: bool | None = None,
    dimensions: int | None = None,
) -> tuple[np.ndarray, Timings]:
    """One vector per image (a URL, ``data:`` URI or base64), finished as :meth:`~trt_async.
    core.tasks.ServedModel.embed` finishes text vectors; errors name ``positions[i]``.

    URLs are fetched on the event loop; decoding and preprocessing happen in a shared hop
    off it (:class:`~trt_async.core.vision.ImageQueue`), then the images queue for the
    vision tower's batches."""
    vision = _vision(model)
    _check_ready(model)
    if not images:
        raise EmptyInput(Part.IMAGES)
    dim = vision.output_dim
    if dimensions is not None and (dimensions < 1 or (dim is not None and dimensions > dim)):
        raise DimensionsOutOfRange(model.name, dimensions, dim)
    # Refuse what cannot be queued before fetching or decoding anything.
    vision.scheduler.admit(len(images))
    start = time.perf_counter()
    encoded = await load_images(images, fetcher, indices=positions, part=Part.IMAGES)
    prepared = await vision.queue.prepare(encoded, positions, Part.IMAGES)
    prepare_s = time.perf_counter() - start
    norm = model.config.normalize if normalize is None else normalize
    unit = norm and dimensions is None
    result = await vision.embed(prepared, unit=unit)
    rows = (
        result.rows
        if unit
        else heads.finish_embeddings(result.rows, normalize=norm, dimensions=dimensions)
    )
    timings = Timings(
        tokenize_s=prepare_s,
        queue_s=result.queue_s,
        inference_s=result.inference_s,
        total_s=time.perf_counter() - start,
    )
    return rows.astype(np.float32, copy=False), timings


async def embed_texts(
    model: ServedModel,
    texts: Sequence[str],
    *,
    positions: Sequence[int] | None = None,
    normalize: bool | None = None,
    dimensions: int | None = None,
    truncate: bool | None = None,
) -> tuple[np.ndarray, int, Timings]:
    """The text tower's vectors, texts as sent (no prompt); errors name ``positions[i]``."""
    try:
        result = await model.embed(
            texts, normalize=normalize, dimensions=dimensions, truncate=truncate
        )
    except InputTooLong as exc:
        if positions is None:
            raise
        at = positions[exc.index]
        raise exc.about(at, Part.INPUTS, f"input {at}") from None
    except EmptyInput as exc:
        if positions is None or exc.index is None or exc.part is not Part.INPUTS:
            raise
        raise EmptyInput(Part.INPUTS, positions[exc.index]) from None
    return result.vectors, result.tokens, result.timings


async def side_by_side(*tasks: asyncio.Future[Any]) -> None:
    """Wait for ``tasks``; the first to fail cancels the others and its error is raised
    (a client told of one bad item need not wait for the rest)."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()


def merged_timings(*parts: Timings, total_s: float) -> Timings:
    """Timings of steps that ran side by side: each stage's longest."""
    return Timings(
        tokenize_s=max(t.tokenize_s for t in parts),
        queue_s=max(t.queue_s for t in parts),
        inference_s=max(t.inference_s for t in parts),
        total_s=total_s,
    )


_NO_TIME = Timings(0.0, 0.0, 0.0, 0.0)


async def embed_texts_and_images(
    model: ServedModel,
    texts: Sequence[str],
    images: Sequence[str],
    fetcher: ImageFetcher | None,
    *,
    text_positions: Sequence[int] | None = None,
    image_positions: Sequence[int] | None = None,
    normalize: bool | None = None,
    dimensions: int | None = None,
    truncate: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, int, Timings, Timings]:
    """Text and image vectors of one request, both towers at once: ``(text vectors, image
    vectors, text tokens, text timings, image timings)``."""
    if not texts and not images:
        raise EmptyInput(Part.INPUTS)
    dim = model.runtime.output_dim or 0
    empty = np.zeros((0, dim), dtype=np.float32)
    if not images:
        rows, tokens, timings = await embed_texts(
            model, texts, positions=text_positions, normalize=normalize,
            dimensions=dimensions, truncate=truncate,
        )  # fmt: skip
        return rows, empty[:, : rows.shape[-1]], tokens, timings, _NO_TIME
    if not texts:
        image_rows, image_timings = await embed_images(
            model, images, fetcher, positions=image_positions, normalize=normalize,
            dimensions=dimensions,
        )  # fmt: skip
        return empty[:, : image_rows.shape[-1]], image_rows, 0, _NO_TIME, image_timings
    text_task = asyncio.ensure_future(
        embed_texts(
            model, texts, positions=text_positions, normalize=normalize,
            dimensions=dimensions, truncate=truncate,
        )
    )  # fmt: skip
    image_task = asyncio.ensure_future(
        embed_images(
            model, images, fetcher, positions=image_positions, normalize=normalize,
            dimensions=dimensions,
        )
    )  # fmt: skip
    await side_by_side(text_task, image_task)
    text_rows, tokens, text_timings = text_task.result()
    image_rows, image_timings = image_task.result()
    return text_rows, image_rows, tokens, text_timings, image_timings


async def zero_shot_images(
    model: ServedModel,
    images: Sequence[str],
    labels: Sequence[str],
    fetcher: ImageFetcher | None,
    *,
    template: str | None = None,
) -> tuple[np.ndarray, int, Timings, Timings]:
    """``(images, labels)`` scores as transformers' zero-shot-image-classification pipeline
    gives them: each label's text is ``template`` filled with it, both sides are
    normalised, ``logit_scale * cosine (+ logit_bias)``, then a softmax over the labels
    (CLIP) or a sigmoid per label (SigLIP). Returns the scores, the text tokens and the
    text and image timings."""
    _vision(model)
    manifest = _image_text(model)
    if not labels:
        raise EmptyInput(Part.LABELS)
    if not images:
        raise EmptyInput(Part.IMAGES)
    template = manifest.hypothesis_template if template is None else template
    fill = _template_filler(template)
    expanded = sum(len(template) + template.count("{}") * len(label) for label in labels)
    if expanded > MAX_HYPOTHESES_CHARS:
        raise InvalidTemplate(size=expanded, limit=MAX_HYPOTHESES_CHARS)
    hypotheses = [fill(label) for label in labels]
    text_task = asyncio.ensure_future(model.embed(hypotheses, normalize=True))
    image_task = asyncio.ensure_future(embed_images(model, images, fetcher, normalize=True))
    await side_by_side(text_task, image_task)
    text_part = text_task.result()
    image_rows, image_timings = image_task.result()
    cosines = image_rows.astype(np.float64) @ text_part.vectors.astype(np.float64).T
    logits = manifest.logit_scale * cosines + (manifest.logit_bias or 0.0)
    if manifest.zero_shot_activation == "sigmoid":
        scores = heads.sigmoid(logits)
    else:
        scores = heads.softmax(logits)
    return scores, text_part.tokens, text_part.timings, image_timings
