"""A thin typed boundary over ``cuda.bindings.runtime`` (cuda-python 13).

cuda-bindings returns ``(cudaError_t, *values)`` tuples instead of raising; every call here
checks the code and raises :class:`CudaError` naming the CUDA error, so the backend reads
like ordinary Python. The runtime module is injectable so tests can drive the backend with
a fake that follows the same conventions.
"""

from __future__ import annotations

import ctypes
import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Codes meaning "there is no usable GPU here" rather than "the call was wrong".
_NO_DEVICE_ERRORS = frozenset(
    {
        "cudaErrorNoDevice",
        "cudaErrorInsufficientDriver",
        "cudaErrorInitializationError",
        "cudaErrorSystemDriverMismatch",
        "cudaErrorCompatNotSupportedOnDevice",
        "cudaErrorDevicesUnavailable",
    }
)


class CudaError(RuntimeError):
    """A CUDA runtime call failed; ``name`` is the cudaError_t name."""

    def __init__(self, call: str, code: int, name: str, description: str) -> None:
        super().__init__(f"{call} failed: {name} ({description})")
        self.call = call
        self.code = code
        self.name = name


class NoCudaDevice(CudaError):
    """No GPU, no driver, or a driver too old for this CUDA runtime."""

    def __init__(self, call: str, code: int, name: str, description: str, hint: str = "") -> None:
        super().__init__(call, code, name, description)
        self.args = (f"no CUDA device: {call} answered {name} ({description}){hint}",)


def _cuda_version(value: int) -> str:
    """``12080`` -> ``12.8`` (CUDA's 1000 * major + 10 * minor)."""
    return f"{value // 1000}.{value % 1000 // 10}"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str
    total_memory: int


def load_runtime() -> Any:
    """The real ``cuda.bindings.runtime`` module (cuda-python 13; 12.x spelled it differently)."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError as exc:
        raise ImportError(
            "cuda-python is not installed: pip install 'trt-async[gpu]' (cuda-python>=12.6)"
        ) from exc


class Cuda:
    """The CUDA runtime calls the TensorRT backend makes, with errors raised."""

    def __init__(self, runtime: Any | None = None) -> None:
        self.rt: Any = runtime if runtime is not None else load_runtime()

    # -- error handling -------------------------------------------------------------------
    def _error_text(self, err: Any) -> tuple[str, str]:
        name = getattr(err, "name", None) or f"cudaError {int(err)}"
        try:
            code, desc = self.rt.cudaGetErrorString(err)
            text = desc.decode() if isinstance(desc, bytes) and int(code) == 0 else ""
        except Exception:  # describing an error must never hide it
            text = ""
        return str(name), text or "no description"

    def check(self, result: Any, call: str) -> Any:
        """Unpack a cuda-bindings result tuple, raising on a non-success code.

        Returns ``None`` for calls without values, the value for one, a tuple for more.
        """
        if isinstance(result, tuple):
            err, values = result[0], result[1:]
        else:
            err, values = result, ()
        if int(err) != 0:
            name, desc = self._error_text(err)
            cls = NoCudaDevice if name in _NO_DEVICE_ERRORS else CudaError
            raise cls(call, int(err), name, desc)
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def get_last_error(self) -> int:
        """Read and clear the thread's last error (capture failures leave one behind)."""
        (err,) = self.rt.cudaGetLastError()
        return int(err)

    # -- devices --------------------------------------------------------------------------
    def device_count(self) -> int:
        try:
            result = self.rt.cudaGetDeviceCount()
        except RuntimeError as exc:
            # cuda-python 12.x raises when libcuda.so.1 cannot be loaded (no driver); 13.x
            # returns cudaErrorInsufficientDriver. Both mean the same here.
            raise NoCudaDevice(
                "cudaGetDeviceCount", 35, "cudaErrorInsufficientDriver", str(exc)
            ) from None
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            name, desc = self._error_text(err)
            if name == "cudaErrorInsufficientDriver":
                hint = self._driver_hint()
                raise NoCudaDevice("cudaGetDeviceCount", int(err), name, desc, hint)
        count = self.check(result, "cudaGetDeviceCount")
        if not count:
            raise NoCudaDevice("cudaGetDeviceCount", 100, "cudaErrorNoDevice", "0 devices")
        return int(count)

    def _driver_hint(self) -> str:
        """Why the driver is "insufficient": none at all, or older than this runtime (a
        CUDA 13 runtime, i.e. cuda-python 13, needs an R580+ driver; R535-R575 drivers
        run CUDA 12)."""
        try:
            driver = int(self.check(self.rt.cudaDriverGetVersion(), "cudaDriverGetVersion"))
            runtime = int(self.check(self.rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))
        except Exception:  # describing the failure must never hide it
            return ""
        if driver == 0:
            return "; no NVIDIA driver is loaded"
        if driver >= runtime:
            return ""
        return (
            f"; the driver runs CUDA up to {_cuda_version(driver)} but cuda-python links the "
            f"CUDA {_cuda_version(runtime)} runtime: install the CUDA "
            f"{driver // 1000} wheels (pip install 'trt-async[gpu]' for CUDA 12) or a newer "
            "driver"
        )

    def set_device(self, index: int) -> None:
        count = self.device_count()
        if index >= count:
            raise CudaError(
                "cudaSetDevice",
                101,
                "cudaErrorInvalidDevice",
                f"device {index} requested but only {count} visible (check CUDA_VISIBLE_DEVICES)",
            )
        self.check(self.rt.cudaSetDevice(index), "cudaSetDevice")

    def device_info(self, index: int) -> DeviceInfo:
        props = self.check(self.rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        raw = props.name
        name = raw.split(b"\0", 1)[0].decode() if isinstance(raw, bytes) else str(raw)
        return DeviceInfo(
            index=index,
            name=name,
            compute_capability=f"{props.major}.{props.minor}",
            total_memory=int(props.totalGlobalMem),
        )

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self.check(self.rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free), int(total)

    # -- memory ---------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr), "cudaFree")

    def host_alloc(self, nbytes: int) -> int:
        """Page-locked host memory: required for truly asynchronous copies inside a graph."""
        flags = self.rt.cudaHostAllocDefault
        return int(self.check(self.rt.cudaHostAlloc(max(nbytes, 1), flags), "cudaHostAlloc"))

    def free_host(self, ptr: int) -> None:
        self.check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(H2D)")

    def memcpy_dtoh_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(D2H)")

    def memcpy_dtod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(D2D)")

    # -- streams and events ---------------------------------------------------------------
    def stream_create(self) -> Any:
        # Non-blocking: the legacy default stream synchronises implicitly and cannot be captured.
        flags = self.rt.cudaStreamNonBlocking
        return self.check(self.rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")

    def stream_destroy(self, stream: Any) -> None:
        self.check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_synchronize(self, stream: Any) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def event_create(self) -> Any:
        # Blocking sync lets the waiting worker thread sleep instead of spinning a core.
        flags = self.rt.cudaEventBlockingSync | self.rt.cudaEventDisableTiming
        return self.check(self.rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")

    def event_record(self, event: Any, stream: Any) -> None:
        self.check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_synchronize(self, event: Any) -> None:
        self.check(self.rt.cudaEventSynchronize(event), "cudaEventSynchronize")

    def event_destroy(self, event: Any) -> None:
        self.check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    # -- graphs ---------------------------------------------------------------------------
    def begin_capture(self, stream: Any, mode: str = "ThreadLocal") -> None:
        """Start capturing ``stream``. ThreadLocal (the default): other threads' unrelated
        CUDA calls neither fail nor invalidate this capture, as they would in Global mode."""
        value = getattr(self.rt.cudaStreamCaptureMode, f"cudaStreamCaptureMode{mode}")
        self.check(self.rt.cudaStreamBeginCapture(stream, value), "cudaStreamBeginCapture")

    def is_capturing(self, stream: Any) -> bool:
        status = self.check(self.rt.cudaStreamIsCapturing(stream), "cudaStreamIsCapturing")
        return int(status) != 0

    def end_capture(self, stream: Any) -> Any:
        return self.check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")

    def graph_instantiate(self, graph: Any) -> Any:
        return self.check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def graph_destroy(self, graph: Any) -> None:
        self.check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self.check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def graph_exec_destroy(self, graph_exec: Any) -> None:
        self.check(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")


def host_array(ptr: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """A numpy array over ``ptr`` (pinned host memory); it does not own the memory."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
    flat: np.ndarray[Any, Any] = np.frombuffer(memoryview(raw).cast("B"), np.uint8, nbytes)
    return flat.view(dtype).reshape(shape)
