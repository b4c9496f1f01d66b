"""TensorRT on the GPU: plan build and validity checks, and the CUDA-graph backend.

Importing this package does not import ``tensorrt`` or ``cuda-python``; they are loaded
when a backend first needs them.
"""

from trt_async.backends.tensorrt.cuda import CudaError, NoCudaDevice
from trt_async.backends.tensorrt.runtime import (
    MemoryBudgetExceeded,
    PlanMismatch,
    TensorRTBackend,
    TensorRTError,
)

__all__ = [
    "CudaError",
    "MemoryBudgetExceeded",
    "NoCudaDevice",
    "PlanMismatch",
    "TensorRTBackend",
    "TensorRTError",
]
