"""The contract between the scheduler and an executor.

A backend is synchronous and single-minded: it owns one preallocated set of input and
output buffers per bucket and runs one bucket at a time when asked. Threads, queues and
cancellation belong to the core (``trt_async.core.runner`` and the scheduler), so the
same scheduler drives every backend and a fake backend is a few lines in a test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from trt_async.core.buckets import Bucket, BucketGrid

#: Called as ``progress(done, total, what)`` during long preparation (graph capture, warm-up).
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True, slots=True)
class ModelIO:
    """What the graph takes and gives, by tensor name.

    ``inputs`` is a subset of ``input_ids``, ``attention_mask``, ``token_type_ids`` in the
    graph's order; ``output`` is the one output the heads read (``last_hidden_state``,
    ``sentence_embedding`` or ``logits``).
    """

    inputs: tuple[str, ...]
    output: str
    input_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.int64))


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
    ``inputs(bucket)`` / ``execute(bucket)`` pairs from one worker thread, then ``close()``.
    """

    @property
    def io(self) -> ModelIO: ...

    def prepare(self, grid: BucketGrid, progress: Progress | None = None) -> None:
        """Allocate every bucket's buffers and warm (or capture) each bucket once."""

    def inputs(self, bucket: Bucket) -> Mapping[str, np.ndarray]:
        """Writable input arrays of exactly ``(bucket.batch, bucket.length)`` for ``bucket``.

        The caller fills them in place and then calls :meth:`execute`; on the GPU these are
        the pinned host buffers the bucket's CUDA graph copies from.
        """

    def execute(self, bucket: Bucket) -> np.ndarray:
        """Run ``bucket`` on the current contents of its inputs; block until done.

        Returns the output array (a view of the bucket's output buffer, valid until the
        bucket runs again): ``(batch, length, hidden)``, ``(batch, hidden)`` or
        ``(batch, labels)``.
        """

    def info(self) -> BackendInfo: ...

    def close(self) -> None:
        """Release device memory and sessions. Idempotent."""
