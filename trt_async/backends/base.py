"""The contract between the core and an executor, and what each executor says about itself.

A backend is synchronous: it owns preallocated input and output buffers per bucket and
runs a bucket when asked, one at a time on each of its lanes (:class:`Lanes`). Threads,
queues and cancellation belong to the core (its runner and scheduler), so the same
scheduler drives every backend and a fake backend is a few lines in a test.

This module, :mod:`~trt_async.backends.shapes` and :mod:`~trt_async.backends.modelfiles`
are the base layer: they import nothing else of the project. Whatever differs between
backends (default bucket grid, per-batch cost, precision names, counters) is declared in a
:class:`BackendSpec` here, so nothing above ``backends/`` asks which backend it has.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from trt_async.backends.shapes import Bucket, BucketGrid

#: Called as ``progress(done, total, what)`` during long preparation (graph capture, warm-up).
Progress = Callable[[int, int, str], None]

Precision = Literal["fp32", "fp16", "bf16"]

#: Input tensor names a graph may take, and output names the heads know, in preference order.
#: ``pixel_values`` is a vision tower's only input (see :attr:`ModelIO.item_shape`).
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
KNOWN_OUTPUTS = (
    "sentence_embedding",
    "logits",
    "last_hidden_state",
    "token_embeddings",
    "image_embeds",
)
#: Further outputs a graph may carry besides the one every batch reads: bge-m3's sparse
#: weights and ColBERT vectors (``trt-async export`` of a folder with FlagEmbedding's heads),
#: and per-token hidden states.
SPARSE_OUTPUT = "sparse_weights"
COLBERT_OUTPUT = "colbert_vecs"
TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
EXTRA_OUTPUTS = (SPARSE_OUTPUT, COLBERT_OUTPUT, *TOKEN_OUTPUTS)


class BackendUnavailable(RuntimeError):
    """The backend a model asks for cannot run here (library or device missing)."""


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """The model options a backend reads; the core fills them from the model's config."""

    #: ONNX Runtime: intra-op threads (default: one per core).
    intra_op_threads: int | None = None
    #: ONNX Runtime: batches run side by side under load (default: one per thread).
    parallel_batches: int | None = None
    #: TensorRT: CUDA device ordinal.
    device: int = 0
    #: TensorRT: capture one CUDA graph per bucket (``False`` runs plain enqueues).
    graphs: bool = True
    precision: Precision = "fp16"
    #: TensorRT: rebuild a plan that does not match, or refuse to start.
    rebuild: Literal["auto", "never"] = "auto"
    gpu_memory_budget_gib: float | None = None


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """One monotonic counter a backend exports, as a labelled sample of a metric family.

    ``family`` is the metric's name without the server's prefix; counters of one family
    differ in ``labels`` (e.g. ``gpu_launches{mode="graph"}`` and ``{mode="enqueue"}``).
    """

    family: str
    help: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """What a backend declares about itself, for the core to size and schedule by."""

    name: str
    #: Padded lengths to offer below a model's max length (which is always added).
    length_steps: tuple[int, ...]
    #: Default batch sizes of the bucket grid.
    batch_sizes: tuple[int, ...]
    #: Fixed cost of one batch in token-equivalents, for choosing batches.
    batch_overhead_tokens: int
    #: Most padded tokens (rows x length) one batch holds by default.
    max_batch_tokens: int = 16384
    #: Most rows x length² one batch holds by default (see ``BucketGrid``); None: no bound.
    max_batch_attention: int | None = None
    #: The dtype the model computes in, by configured precision (TEI's ``model_dtype``).
    dtypes: Mapping[str, str] = field(default_factory=dict)
    #: Counters :meth:`Backend.counters` reports values for.
    counters: tuple[CounterSpec, ...] = ()

    def lengths(self, max_length: int) -> list[int]:
        """The default padded lengths for a model of ``max_length`` tokens."""
        return [*(n for n in self.length_steps if n < max_length), max_length]

    def dtype(self, precision: str) -> str:
        return self.dtypes.get(precision, "float32")


@dataclass(frozen=True, slots=True)
class Lanes:
    """How many batches one backend instance runs at once, and where.

    Lanes ``0 .. parallel - 1`` run batches side by side, each from its own thread. The
    solo lane, when there is one (index ``parallel``), is for a batch that runs alone:
    faster for that one batch than a parallel lane, and not meant to overlap other work
    (ONNX Runtime: every thread on one batch, against one thread per batch under load).
    """

    parallel: int = 1
    solo: bool = False

    @property
    def alone(self) -> int:
        """The lane a batch that runs alone takes: the solo lane, else lane 0."""
        return self.parallel if self.solo else 0

    @property
    def count(self) -> int:
        return self.parallel + int(self.solo)


@dataclass(frozen=True, slots=True)
class ModelIO:
    """What the graph takes and gives, by tensor name.

    ``inputs`` is a subset of ``input_ids``, ``attention_mask``, ``token_type_ids`` in the
    graph's order, or a vision tower's ``pixel_values`` alone; ``output`` is the output
    every batch reads (``last_hidden_state``, ``sentence_embedding``, ``logits`` or
    ``image_embeds``); ``extra_outputs`` are further outputs of the same graph (bge-m3's
    sparse weights and ColBERT vectors, token vectors) that a batch reads only when one of
    its requests asks for them.
    """

    inputs: tuple[str, ...]
    output: str
    input_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.int64))
    extra_outputs: tuple[str, ...] = ()
    #: The shape of one item of a fixed-shape input (a vision tower's ``(3, H, W)``), or
    #: None for token inputs. A fixed-shape input's buckets vary in batch size only: their
    #: ``length`` is 1, and :meth:`Backend.inputs` gives ``(batch, *item_shape)`` arrays.
    item_shape: tuple[int, ...] | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.output, *self.extra_outputs)


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What a backend reports at start-up and on the model listing."""

    name: str
    device: str
    #: Bytes by purpose, e.g. ``{"engine": ..., "buffers": ..., "activations": ...}``.
    memory: Mapping[str, int] = field(default_factory=dict)
    #: Free-form facts worth showing (provider, precision, graphs captured, ...).
    details: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A synchronous executor of fixed-shape buckets.

    Lifecycle: ``prepare(grid)`` once (allocate, capture, warm up), then any number of
    ``inputs(bucket, lane)`` / ``execute(bucket, extra, lane)`` pairs, each lane from one
    thread at a time (different lanes from different threads at once), then ``close()``.
    """

    @property
    def io(self) -> ModelIO: ...

    def spec(self) -> BackendSpec:
        """What this backend declares about itself (the same for every instance)."""

    def prepare(self, grid: BucketGrid, progress: Progress | None = None) -> None:
        """Allocate every bucket's buffers and warm (or capture) each bucket once."""

    def lanes(self) -> Lanes:
        """The lanes this instance runs batches on (see :class:`Lanes`)."""

    def inputs(self, bucket: Bucket, lane: int = 0) -> Mapping[str, np.ndarray]:
        """Writable input arrays of exactly ``(bucket.batch, bucket.length)`` for ``bucket``
        on ``lane`` (``(bucket.batch, *io.item_shape)`` for a fixed-shape input).

        The caller fills them in place and then calls :meth:`execute`; on the GPU these are
        the pinned host buffers the bucket's CUDA graph copies from.
        """

    def execute(
        self, bucket: Bucket, extra: Collection[str] = (), lane: int = 0
    ) -> Mapping[str, np.ndarray]:
        """Run ``bucket`` on the current contents of its inputs on ``lane``; block until
        done.

        Returns ``io.output`` and each of ``extra`` (names from ``io.extra_outputs``) by
        name: views of the bucket's output buffers, valid until the bucket runs again,
        shaped ``(batch, length, ...)`` per token or ``(batch, ...)`` per item. Outputs not
        asked for need not be copied back (a backend may skip them).
        """

    def counters(self) -> Mapping[CounterSpec, int]:
        """Current values of the counters :meth:`spec` declares."""

    def info(self) -> BackendInfo: ...

    def close(self) -> None:
        """Release device memory and sessions. Idempotent."""
