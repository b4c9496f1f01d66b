"""The served model moved: the runtime factory to :mod:`trt_async.core.runtime`, the tasks
to :mod:`trt_async.core.tasks`.

This alias module remains only for the benchmark code that still imports from here; it goes
once that code calls :func:`trt_async.core.runtime.create_runtime`.
"""

from trt_async.backends import backend_spec
from trt_async.core.runtime import backend_options, model_max_length
from trt_async.core.tasks import ServedModel


def default_lengths(backend: str, max_length: int) -> list[int]:
    """Backend ``backend``'s default padded lengths (see ``BackendSpec.lengths``)."""
    return backend_spec(backend).lengths(max_length)


def default_batch_sizes(backend: str) -> list[int]:
    return list(backend_spec(backend).batch_sizes)


__all__ = [
    "ServedModel",
    "backend_options",
    "default_batch_sizes",
    "default_lengths",
    "model_max_length",
]
