"""The runtime factory: model files + config (+ a backend) -> a model ready to serve.

:func:`create_runtime` is the one composition root for a model folder: it chooses and
creates the backend (through the backend registry, by the config's ``backend``), the
tokenizer, the bucket grid (defaults from the backend's spec), the runner and the
scheduler. The server's registry and the benchmarks both call it, so what is measured is
what is served. Nothing here knows a backend by name.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from trt_async.backends import create_backend, resolve_backend
from trt_async.backends.base import (
    KNOWN_INPUTS,
    Backend,
    BackendInfo,
    BackendOptions,
    BackendSpec,
)
from trt_async.backends.modelfiles import (
    ImageTextManifest,
    ModelDirError,
    ModelFiles,
    default_max_length,
    position_limit,
)
from trt_async.backends.shapes import BucketGrid
from trt_async.core import heads, quantize
from trt_async.core.config import ConfigError, ModelConfig, Pooling
from trt_async.core.fairpool import FairPool
from trt_async.core.multivector import make_head_reducers
from trt_async.core.runner import BatchRunner
from trt_async.core.scheduler import BatchObserver, QueueLimits, Scheduler, prepare
from trt_async.core.tokenize_queue import TokenizeQueue
from trt_async.core.tokenizer import TextTokenizer
from trt_async.core.vision import VisionRuntime

log = logging.getLogger(__name__)

#: One pool for all tokenisation: tokenizers parallelises inside a call, so a couple of
#: threads keep the loop free without oversubscribing the cores. Model runtimes take turns
#: on it, so one model's flood cannot stall another model's requests.
TOKENIZE_POOL = FairPool(2, "tokenize")


def backend_options(config: ModelConfig) -> BackendOptions:
    """The options of ``config`` that a backend reads."""
    return BackendOptions(
        intra_op_threads=config.intra_op_threads,
        parallel_batches=config.parallel_batches,
        device=config.device,
        graphs=config.graphs,
        precision=config.precision,
        rebuild=config.rebuild,
        gpu_memory_budget_gib=config.gpu_memory_budget_gib,
    )


def model_max_length(config: ModelConfig, files: ModelFiles) -> int:
    if config.max_length is not None:
        return config.max_length
    return default_max_length(files)


def label_map(config: ModelConfig, files: ModelFiles) -> dict[int, str]:
    if config.labels is not None:
        return dict(config.labels)
    if files.manifest is not None and files.manifest.id2label:
        return dict(files.manifest.id2label)
    raw = files.hf_config.get("id2label") or {}
    return {int(k): str(v) for k, v in raw.items()}


def pooling_for(config: ModelConfig, files: ModelFiles, output: str) -> Pooling:
    """The pooling of the graph's ``output``: configured, else none for pooled outputs, else
    what the export manifest or sentence-transformers' config says, else CLS."""
    if config.pooling is not None:
        return config.pooling
    if output in ("sentence_embedding", "logits"):
        return "none"
    if files.manifest is not None and files.manifest.pooling != "none":
        return files.manifest.pooling
    return files.st_pooling or "cls"


def bucket_grid(config: ModelConfig, spec: BackendSpec, max_length: int) -> BucketGrid:
    """The grid a model serves: the config's batch sizes, lengths and token budget, else the
    backend's defaults; lengths never pass ``max_length``, which is always one of them."""
    lengths = config.lengths or spec.lengths(max_length)
    if max(lengths) < max_length:
        lengths = [*lengths, max_length]
    lengths = [n for n in lengths if n <= max_length]
    return BucketGrid(
        config.batch_sizes or spec.batch_sizes,
        lengths,
        max(config.max_batch_tokens or spec.max_batch_tokens, max(lengths)),
        spec.max_batch_attention,
    )


class ModelRuntime:
    """Tokenizer, backend, runner and scheduler for one model folder.

    Built by :func:`create_runtime`; ``start()`` prepares every bucket and runs one real
    item through, ``close()`` frees the backend.
    """

    #: Image-text models (CLIP, SigLIP): this runtime is the text tower, ``vision`` the
    #: image tower beside it, and ``image_text`` the folder's manifest (set by
    #: :func:`~trt_async.core.image_text.create_image_text_runtime`).
    vision: VisionRuntime | None = None
    image_text: ImageTextManifest | None = None

    def __init__(
        self,
        files: ModelFiles,
        config: ModelConfig,
        backend: Backend,
        *,
        observer: BatchObserver | None = None,
        label: str = "model",
    ) -> None:
        self.files = files
        self.config = config
        self.backend = backend
        self.spec = spec = backend.spec()
        self.max_length = model_max_length(config, files)
        io = backend.io
        unknown = [name for name in io.inputs if name not in KNOWN_INPUTS]
        if "input_ids" not in io.inputs or unknown:
            raise ModelDirError(
                f"{files.onnx or files.plan}: graph inputs {list(io.inputs)} are not what the "
                f"server feeds ({', '.join(KNOWN_INPUTS)}); re-export with trt-async export"
            )
        self.io = io
        self.task = files.manifest.task if files.manifest is not None else None
        self.pooling = pooling_for(config, files, io.output)
        score = files.manifest.score if files.manifest is not None else None
        # An LLM reranker's token logits become one logit per pair, as a cross-encoder's.
        self.reduce = (
            heads.make_score_reducer(score.formula)
            if score is not None
            else heads.make_reducer(self.pooling)
        )
        self.labels = label_map(config, files)
        self.tokenizer = TextTokenizer(
            files.tokenizer, self.max_length, with_type_ids="token_type_ids" in io.inputs
        )
        limit = position_limit(files.hf_config)
        if config.max_length is not None and limit is not None and config.max_length > limit:
            raise ConfigError(
                f"{label}: max_length {config.max_length} is more than the model's position "
                f"table allows ({limit} tokens, from {files.root.name}/config.json); lower it"
            )
        try:
            self.grid = bucket_grid(config, spec, self.max_length)
        except ValueError as exc:
            raise ConfigError(f"{label}: bucket grid: {exc}") from None
        grid = self.grid
        self.tokenize_queue = TokenizeQueue(
            self.tokenizer, TOKENIZE_POOL, self, lambda encodings: prepare(encodings, grid)
        )
        skip_ids = files.manifest.sparse_skip_ids if files.manifest is not None else None
        self.head_reducers = make_head_reducers(io.outputs, skip_ids or ())
        self.runner = BatchRunner(
            self.backend,
            self.reduce,
            self.tokenizer.pad_id,
            label,
            self.head_reducers,
            units=self.is_embedder,
        )
        self.scheduler = Scheduler(
            self.runner,
            self.grid,
            QueueLimits(
                max_items=config.max_queue_items,
                max_tokens=config.max_queue_tokens,
                timeout_s=config.queue_timeout_s,
                max_delay_s=config.max_queue_delay_ms / 1000,
            ),
            batch_overhead_tokens=(
                config.batch_overhead_tokens
                if config.batch_overhead_tokens is not None
                else spec.batch_overhead_tokens
            ),
            # Batches run on every lane while one more waits in the runner's queue (picked
            # ahead only when it amortises its overhead): no lane idles while the loop picks.
            ahead=1,
            observer=observer,
        )
        self.output_dim: int | None = None
        self._calibration: np.ndarray | None = None
        self._calibration_lock = asyncio.Lock()

    @property
    def backend_name(self) -> str:
        return self.spec.name

    @property
    def dtype(self) -> str:
        """What the model computes in (TEI's ``model_dtype``)."""
        return self.spec.dtype(self.config.precision)

    @property
    def is_embedder(self) -> bool:
        """True when the graph gives vectors (hidden states or pooled embeddings), not logits."""
        return self.io.output != "logits" and self.task not in ("rerank", "nli")

    def failing(self, after: int) -> str | None:
        """Why the runtime is unhealthy (its last ``after`` or more batches failed), or None.

        Reads the scheduler's failure streak, which is updated where each batch ends.
        """
        failures = self.scheduler.stats.consecutive_failures
        if failures >= after:
            return f"{failures} consecutive batches failed; see the server log"
        return self.vision.failing(after) if self.vision is not None else None

    async def start(self) -> None:
        """Prepare every bucket on a backend thread, then run one real item as a check."""
        await self.runner.call(lambda: self.backend.prepare(self.grid))
        probe = self.tokenizer.encode(["warm up"], truncate=True)
        result = await self.scheduler.submit(probe)
        self.output_dim = int(result.rows.shape[-1])
        if self.vision is not None:
            await self.vision.start()
            if self.vision.output_dim != self.output_dim:
                raise ModelDirError(
                    f"{self.files.root.parent}: the text tower gives {self.output_dim} "
                    f"dimensions and the vision tower {self.vision.output_dim}; re-export"
                )

    async def drain(self) -> None:
        """Wait until every queued and running item is done (both towers)."""
        await self.scheduler.drain()
        if self.vision is not None:
            await self.vision.scheduler.drain()

    async def calibration(self) -> np.ndarray:
        """Raw vectors of :data:`~trt_async.core.quantize.CALIBRATION_TEXTS` for int8/uint8
        ranges: read from the model folder, else computed once with this model and stored."""
        async with self._calibration_lock:
            if self._calibration is not None:
                return self._calibration
            sha = self.files.manifest.onnx_sha256 if self.files.manifest is not None else None
            root, dim = self.files.root, int(self.output_dim or 0)
            vectors = await TOKENIZE_POOL.run(
                self, lambda: quantize.load_calibration(root, sha, dim)
            )
            if vectors is None:
                tok = self.tokenizer
                encodings = await TOKENIZE_POOL.run(
                    self, lambda: tok.encode(quantize.CALIBRATION_TEXTS, truncate=True)
                )
                rows = (await self.scheduler.submit(encodings)).rows.astype(np.float32)
                await TOKENIZE_POOL.run(self, lambda: quantize.save_calibration(root, sha, rows))
                vectors = rows
            self._calibration = vectors
            return vectors

    async def close(self, reason: str = "the model was unloaded") -> None:
        if self.vision is not None:
            await self.vision.close(reason)
        self.scheduler.close(reason)
        # Batches already on a lane finish; those waiting for one see the close and stop.
        await self.runner.drain()
        await self.runner.call(self.backend.close)
        self.runner.shutdown()

    def info(self) -> BackendInfo:
        return self.backend.info()


def create_runtime(
    files: ModelFiles,
    config: ModelConfig,
    *,
    backend: Backend | None = None,
    observer: BatchObserver | None = None,
    label: str = "model",
) -> ModelRuntime:
    """A runtime for the model in ``files`` as ``config`` asks, not started yet.

    Without ``backend``, the registry resolves ``config.backend`` (``auto`` included) and
    creates it. ``observer`` hears of every batch; ``label`` names the model in errors and
    thread names. Blocking (it loads the graph): call it off the event loop.
    """
    if backend is None:
        name = resolve_backend(config.backend, files)
        backend = create_backend(name, files, backend_options(config))
    return ModelRuntime(files, config, backend, observer=observer, label=label)
