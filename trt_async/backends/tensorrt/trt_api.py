"""Typed views of the TensorRT 10/11 Python objects this package calls.

The published ``tensorrt-stubs`` do not type-check, so the few calls the backend and the
build tool make are described here as Protocols. The module itself is loaded lazily by
:func:`load_tensorrt` (or injected, which is how the tests run without a GPU).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

#: A TensorRT ``Dims``: iterable of ints (``-1`` marks a dynamic dimension).
Dims = Iterable[int]


class ICudaEngine(Protocol):
    @property
    def num_io_tensors(self) -> int: ...
    @property
    def num_optimization_profiles(self) -> int: ...
    @property
    def device_memory_size_v2(self) -> int: ...

    def get_tensor_name(self, index: int) -> str: ...
    def get_tensor_mode(self, name: str) -> Any: ...
    def get_tensor_dtype(self, name: str) -> Any: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[Dims, Dims, Dims]: ...
    def get_device_memory_size_for_profile_v2(self, profile: int) -> int: ...
    def create_execution_context(self, strategy: Any = ...) -> IExecutionContext | None: ...


class IExecutionContext(Protocol):
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    def set_tensor_address(self, name: str, ptr: int) -> bool: ...
    def execute_async_v3(self, stream_handle: int) -> bool: ...
    def set_device_memory(self, memory: int, size: int) -> None: ...
    def update_device_memory_size_for_shapes(self) -> int: ...


class IRuntime(Protocol):
    def deserialize_cuda_engine(self, plan: bytes) -> ICudaEngine | None: ...


class ITensor(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> Dims: ...
    @property
    def dtype(self) -> Any: ...


class INetworkDefinition(Protocol):
    @property
    def num_inputs(self) -> int: ...
    @property
    def num_outputs(self) -> int: ...

    def get_input(self, index: int) -> ITensor: ...
    def get_output(self, index: int) -> ITensor: ...


class IOnnxParser(Protocol):
    @property
    def num_errors(self) -> int: ...

    def parse_from_file(self, path: str) -> bool: ...
    def get_error(self, index: int) -> Any: ...


class IOptimizationProfile(Protocol):
    def set_shape(self, name: str, min: Dims, opt: Dims, max: Dims) -> None: ...


class IBuilderConfig(Protocol):
    progress_monitor: Any

    def set_memory_pool_limit(self, pool: Any, size: int) -> None: ...
    def set_flag(self, flag: Any) -> None: ...
    def add_optimization_profile(self, profile: IOptimizationProfile) -> int: ...
    def create_timing_cache(self, serialized: bytes) -> Any | None: ...
    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool: ...
    def get_timing_cache(self) -> Any | None: ...


class IBuilder(Protocol):
    def create_network(self, flags: int = 0) -> INetworkDefinition: ...
    def create_builder_config(self) -> IBuilderConfig: ...
    def create_optimization_profile(self) -> IOptimizationProfile: ...
    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> Any | None: ...


def load_tensorrt() -> Any:
    """Import ``tensorrt``, turning a missing install into an actionable message."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise ImportError(
            "TensorRT is not installed or its libraries are missing: on a GPU machine run "
            "pip install 'trt-async[gpu]' (tensorrt-cu12/cu13 from NVIDIA's index); "
            f"import failed with: {exc}"
        ) from exc


#: TensorRT ``DataType`` member name -> (numpy dtype name, bytes per element). numpy has no
#: bfloat16 or fp8, and ``trt.nptype(DataType.BF16)`` raises ``TypeError`` in the real
#: bindings, so sizes and names come from this table rather than from ``nptype``.
_DTYPES: dict[str, tuple[str, int]] = {
    "FLOAT": ("float32", 4),
    "HALF": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "INT8": ("int8", 1),
    "INT32": ("int32", 4),
    "INT64": ("int64", 8),
    "BOOL": ("bool", 1),
    "UINT8": ("uint8", 1),
    "FP8": ("float8", 1),
}
_NOT_NUMPY = frozenset({"bfloat16", "float8"})


def _dtype_entry(dtype: Any) -> tuple[str, int]:
    name = str(getattr(dtype, "name", dtype))
    entry = _DTYPES.get(name)
    if entry is None:
        raise TypeError(f"TensorRT data type {name} is not supported for I/O tensors")
    return entry


def dtype_name(dtype: Any) -> str:
    """``float32``, ``bfloat16``, ... for a TensorRT ``DataType`` (bf16 included)."""
    return _dtype_entry(dtype)[0]


def itemsize(dtype: Any) -> int:
    return _dtype_entry(dtype)[1]


def numpy_dtype(dtype: Any, tensor: str) -> np.dtype[Any]:
    """The numpy dtype of a tensor the host reads or writes; bf16/fp8 have none."""
    name = dtype_name(dtype)
    if name in _NOT_NUMPY:
        raise TypeError(
            f"tensor {tensor} is {name}, which numpy cannot hold; export the graph with "
            "float32 inputs and outputs (reduced precision inside the graph only)"
        )
    return np.dtype(name)


def io_mode_is_input(trt: Any, mode: Any) -> bool:
    return bool(mode == trt.TensorIOMode.INPUT)


def dims(d: Dims) -> tuple[int, ...]:
    return tuple(int(x) for x in d)
