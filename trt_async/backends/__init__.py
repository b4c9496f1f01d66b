"""Executors for one bucket at a time: ONNX Runtime on the CPU, TensorRT on the GPU.

This module is the registry: the one place that knows the backends by name. The core asks
it to resolve ``backend: auto`` and to create a backend; everything else it learns from
the backend's :class:`~trt_async.backends.base.BackendSpec`. Backends are imported lazily,
so the core never loads onnxruntime, tensorrt or cuda-python unless a model asks for them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Literal

from trt_async.backends.base import (
    Backend,
    BackendInfo,
    BackendOptions,
    BackendSpec,
    BackendUnavailable,
    ModelIO,
    Progress,
)
from trt_async.backends.modelfiles import ModelFiles

__all__ = [
    "Backend",
    "BackendInfo",
    "BackendName",
    "BackendOptions",
    "BackendSpec",
    "BackendUnavailable",
    "ModelIO",
    "Progress",
    "backend_spec",
    "create_backend",
    "replace_backend",
    "resolve_backend",
]

#: What a model config may ask for; ``auto`` picks TensorRT where it can run.
BackendName = Literal["onnxruntime", "tensorrt", "auto"]
BackendFactory = Callable[[ModelFiles, BackendOptions], Backend]


def _onnxruntime() -> BackendFactory:
    from trt_async.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend


def _tensorrt() -> BackendFactory:
    from trt_async.backends.tensorrt import TensorRTBackend

    return TensorRTBackend


def _onnxruntime_spec() -> BackendSpec:
    from trt_async.backends.onnxruntime import ONNXRUNTIME_SPEC

    return ONNXRUNTIME_SPEC


def _tensorrt_spec() -> BackendSpec:
    from trt_async.backends.tensorrt.spec import TENSORRT_SPEC

    return TENSORRT_SPEC


#: name -> (the backend class, its spec), each imported on first use.
_REGISTRY: dict[str, tuple[Callable[[], BackendFactory], Callable[[], BackendSpec]]] = {
    "onnxruntime": (_onnxruntime, _onnxruntime_spec),
    "tensorrt": (_tensorrt, _tensorrt_spec),
}


def tensorrt_available() -> bool:
    """True when TensorRT imports and a CUDA device answers."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return False
    err, count = cudart.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


def resolve_backend(name: str, files: ModelFiles) -> str:
    """The concrete backend for ``name``; ``auto`` is TensorRT for a plan or a usable GPU,
    for any graph both backends run (token inputs, or a vision tower's pixel values)."""
    if name != "auto":
        return name
    if files.plan is not None and files.onnx is None:
        return "tensorrt"
    if files.manifest is not None and files.manifest.quantization is not None:
        return "onnxruntime"  # an int8 export: TensorRT cannot build it
    return "tensorrt" if tensorrt_available() else "onnxruntime"


def _entry(name: str) -> tuple[Callable[[], BackendFactory], Callable[[], BackendSpec]]:
    entry = _REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(_REGISTRY))
        raise BackendUnavailable(f"unknown backend {name!r}; use {known} or auto")
    return entry


def create_backend(name: str, files: ModelFiles, options: BackendOptions) -> Backend:
    """Instantiate backend ``name`` for a model; its library is imported only here."""
    return _entry(name)[0]()(files, options)


def replace_backend(name: str, factory: BackendFactory) -> Callable[[], None]:
    """Create backend ``name`` with ``factory`` from now on, in this process; its spec is
    kept. For checks that run the whole server on a stand-in engine. Returns the undo."""
    previous = _entry(name)
    _REGISTRY[name] = (lambda: factory, previous[1])

    def undo() -> None:
        _REGISTRY[name] = previous

    return undo


def backend_spec(name: str) -> BackendSpec:
    """What backend ``name`` declares about itself, without creating one."""
    return _entry(name)[1]()
