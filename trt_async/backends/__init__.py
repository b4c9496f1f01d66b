"""Executors for one bucket at a time: ONNX Runtime on the CPU, TensorRT on the GPU.

Backends are imported lazily by name so that the core never loads onnxruntime,
tensorrt or cuda-python unless a model asks for them.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from trt_async.backends.base import Backend, BackendInfo, ModelIO, Progress

if TYPE_CHECKING:
    from trt_async.core.config import ModelConfig
    from trt_async.core.modeldir import ModelFiles

__all__ = ["Backend", "BackendInfo", "ModelIO", "Progress", "create_backend", "resolve_backend"]

#: Input tensor names a graph may take, and output names the heads know, in preference order.
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
KNOWN_OUTPUTS = ("sentence_embedding", "logits", "last_hidden_state", "token_embeddings")


class BackendUnavailable(RuntimeError):
    """The backend a model asks for cannot run here (library or device missing)."""


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


def resolve_backend(config: ModelConfig, files: ModelFiles) -> str:
    """The concrete backend for ``backend: auto``: TensorRT for a plan or when a GPU is usable."""
    if config.backend != "auto":
        return config.backend
    if files.plan is not None and files.onnx is None:
        return "tensorrt"
    return "tensorrt" if tensorrt_available() else "onnxruntime"


def create_backend(name: str, files: ModelFiles, config: ModelConfig) -> Backend:
    """Instantiate backend ``name`` for a model; its library is imported only here."""
    if name == "onnxruntime":
        from trt_async.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(files, config)
    if name == "tensorrt":
        from trt_async.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(files, config)
    raise BackendUnavailable(f"unknown backend {name!r}; use onnxruntime, tensorrt or auto")
