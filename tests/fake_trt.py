"""Faithful fakes of ``cuda.bindings.runtime`` and ``tensorrt`` for tests without a GPU.

They follow the documented behaviour the backend relies on:

* CUDA calls return ``(cudaError_t, *values)`` tuples; a failed call also becomes the
  thread's sticky "last error" until ``cudaGetLastError`` reads it.
* Memory is real (ctypes buffers) with real addresses, 256-byte aligned as ``cudaMalloc``
  guarantees; copies move bytes, and a copy or a kernel that touches memory outside an
  allocation of the right kind fails.
* The current device is per host thread (0 until ``cudaSetDevice``); device memory, streams
  and events belong to the device current when they were made, and an engine to the device
  current when it was deserialised: a kernel on another device's stream or memory fails.
* ``cudaGraph_t`` and ``cudaGraphExec_t`` are different handles: destroying, instantiating
  or launching the wrong one is ``cudaErrorInvalidValue``.
* Work on a stream is deferred until the stream or an event is synchronised, so a missing
  wait shows up as stale data.
* While a stream captures, its work is recorded instead of run; ``cudaGraphLaunch``
  replays the recording with the pointers and shapes fixed at capture time. Allocating or
  synchronising during capture invalidates it, as in CUDA; the legacy stream 0 cannot
  capture. Capture modes follow CUDA's rules: an unsafe call (allocation, synchronisation)
  is refused on the capturing thread in Global and ThreadLocal mode, and on *any* thread
  while another thread captures in Global mode; only the thread that began a non-Relaxed
  capture may end it.
* The engine needs every input shape and every tensor address before ``execute_async_v3``
  (it returns False otherwise), rejects shapes outside its optimisation profile, needs
  user-managed device memory when created that way, and its first enqueue after a shape
  change cannot be captured. Its scratch ("device memory") grows with the tokens of the
  shapes it runs: a context needs the profile maximum's size unless
  ``update_device_memory_size_for_shapes`` sized it for its current shapes. Its "network"
  is an embedding lookup: ``last_hidden_state`` = ``table[ids] * mask``,
  ``sentence_embedding`` = masked mean of that, ``logits`` = the masked mean times a matrix.
  An engine of one fixed-shape input (a vision tower's ``pixel_values``, ``(batch, 3, H,
  W)``) has a profile over batch sizes of that item shape, and its network is the ONNX
  graph its plan was built from, run by ONNX Runtime on the bytes bound to the input.
* A graph depends on its execution context's state at capture: replaying it after that
  context's shapes, addresses or scratch memory changed is undefined in TensorRT; here it
  records a violation and writes NaN, so a test sees it.
* ``tensorrt`` follows the version it is created with: 11.x has no precision builder flags
  (``BuilderFlag.FP16`` is an ``AttributeError``), both refuse ``nptype(BF16)``.
* Capture can be made to fail for chosen (batch, length) shapes, either by the enqueue
  returning False, by invalidating the capture so that ``cudaStreamEndCapture`` fails, or by
  raising from ``execute_async_v3``.
"""

from __future__ import annotations

import ctypes
import enum
import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------
# CUDA runtime


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorIllegalAddress = 700
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureWrongThread = 908


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(enum.IntEnum):
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


#: ``cudaMalloc`` returns memory "suitably aligned for any kind of variable", 256 bytes in
#: practice (CUDA programming guide, device memory); TensorRT requires 256-byte aligned
#: tensor addresses and scratch memory (``IExecutionContext::setTensorAddress`` /
#: ``setDeviceMemory`` documentation).
ALIGNMENT = 256


_OK = cudaError_t.cudaSuccess


class FakeStream:
    def __init__(self, handle: int, device: int = 0) -> None:
        self.handle = handle
        self.device = device
        self.pending: list[Callable[[], None]] = []
        self.capture: list[Callable[[], None]] | None = None
        self.capture_invalid = False
        self.capture_thread: int | None = None
        self.capture_mode = cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        self.destroyed = False

    def __int__(self) -> int:
        return self.handle


@dataclass
class FakeGraph:
    """A ``cudaGraph_t``: what ``cudaStreamEndCapture`` returns."""

    ops: list[Callable[[], None]]
    destroyed: bool = False


@dataclass
class FakeGraphExec:
    """A ``cudaGraphExec_t``: what ``cudaGraphInstantiate`` returns and ``cudaGraphLaunch``
    takes. A separate type from :class:`FakeGraph`, as in CUDA."""

    ops: list[Callable[[], None]]
    destroyed: bool = False


@dataclass
class FakeEvent:
    stream: FakeStream | None = None
    marker: int = 0
    destroyed: bool = False
    device: int = 0


@dataclass
class FakeDeviceProp:
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int


class FakeCudaRuntime:
    """Stands in for the ``cuda.bindings.runtime`` module."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamCaptureStatus = cudaStreamCaptureStatus
    cudaHostAllocDefault = 0
    cudaStreamNonBlocking = 1
    cudaEventBlockingSync = 1
    cudaEventDisableTiming = 2

    def __init__(
        self,
        *,
        devices: int = 1,
        name: str = "NVIDIA H100 80GB HBM3",
        capability: tuple[int, int] = (9, 0),
        total_memory: int = 80 << 30,
    ) -> None:
        self.devices = devices
        self.name = name
        self.capability = capability
        self.total_memory = total_memory
        self.used = 0
        #: Allocations by (aligned) address: (backing ctypes buffer, size in bytes).
        self.host: dict[int, tuple[Any, int]] = {}
        self.device: dict[int, tuple[Any, int]] = {}
        #: The device each device allocation was made on.
        self.device_of: dict[int, int] = {}
        self.streams: dict[int, FakeStream] = {}
        self._next_stream = 0x1000
        self._local = threading.local()
        self.calls: Counter[str] = Counter()
        self.graphs: list[FakeGraphExec] = []
        #: The CUDA driver's and runtime's versions (1000 * major + 10 * minor).
        self.driver_version = 13000
        self.runtime_version = 13000

    # -- helpers -------------------------------------------------------------------------
    @property
    def last_error(self) -> cudaError_t:
        return getattr(self._local, "last", _OK)

    def _fail(self, err: cudaError_t, *values: Any) -> tuple[Any, ...]:
        self._local.last = err
        return (err, *values)

    def _capturing_here(self) -> FakeStream | None:
        me = threading.get_ident()
        return next(
            (s for s in self.streams.values() if s.capture is not None and s.capture_thread == me),
            None,
        )

    def _unsafe_during_capture(self) -> tuple[Any, ...] | None:
        """Refuse a potentially unsafe call (allocation, synchronisation) where CUDA does.

        CUDA runtime API, ``cudaThreadExchangeStreamCaptureMode``: in Global mode "if the
        local thread has an ongoing capture sequence that was not initiated with
        cudaStreamCaptureModeRelaxed ..., or if any other thread has a concurrent capture
        sequence initiated with cudaStreamCaptureModeGlobal, this thread is prohibited from
        potentially unsafe API calls"; ThreadLocal captures ignore other threads. The
        prohibited call fails and invalidates the capture sequence it collided with.
        """
        me = threading.get_ident()
        relaxed = cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed
        glob = cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        hit = [
            s
            for s in self.streams.values()
            if s.capture is not None
            and s.capture_mode != relaxed
            and (s.capture_thread == me or s.capture_mode == glob)
        ]
        if not hit:
            return None
        for stream in hit:
            stream.capture_invalid = True
        return self._fail(cudaError_t.cudaErrorStreamCaptureUnsupported)

    @staticmethod
    def _within(registry: dict[int, tuple[Any, int]], ptr: int, nbytes: int) -> bool:
        return any(
            base <= ptr and ptr + nbytes <= base + size for base, (_, size) in registry.items()
        )

    def check_device_range(self, ptr: int, nbytes: int, device: int | None = None) -> bool:
        """``[ptr, ptr + nbytes)`` lies in one device allocation (made on ``device``)."""
        for base, (_, size) in self.device.items():
            if base <= ptr and ptr + nbytes <= base + size:
                return device is None or self.device_of[base] == device
        return False

    def current_device(self) -> int:
        """The calling thread's current device: "the current device is 0 by default" for a
        host thread until it calls ``cudaSetDevice`` (CUDA programming guide, device
        selection); the setting is per thread."""
        return int(getattr(self._local, "device", 0))

    def _stream(self, stream: Any) -> FakeStream:
        """cuda-bindings takes a ``cudaStream_t`` or its integer handle alike."""
        return stream if isinstance(stream, FakeStream) else self.streams[int(stream)]

    def stream_by_handle(self, handle: int) -> FakeStream | None:
        return self.streams.get(handle)

    def submit(self, stream: Any, op: Callable[[], None]) -> cudaError_t:
        """Queue ``op`` on ``stream``: recorded while capturing, deferred otherwise."""
        s = self.streams.get(int(stream))
        if s is None or s.destroyed:
            return self._fail(cudaError_t.cudaErrorInvalidResourceHandle)[0]
        if s.capture is not None:
            if s.capture_invalid:
                return self._fail(cudaError_t.cudaErrorStreamCaptureInvalidated)[0]
            s.capture.append(op)
        else:
            s.pending.append(op)
        return _OK

    def invalidate_capture(self, stream: FakeStream) -> None:
        stream.capture_invalid = True
        self._local.last = cudaError_t.cudaErrorStreamCaptureInvalidated

    def _drain(self, s: FakeStream, upto: int | None = None) -> None:
        n = len(s.pending) if upto is None else upto
        ops, s.pending = s.pending[:n], s.pending[n:]
        for op in ops:
            op()

    # -- errors and devices --------------------------------------------------------------
    def cudaGetErrorName(self, err: cudaError_t) -> tuple[Any, bytes]:
        return (_OK, err.name.encode())

    def cudaGetErrorString(self, err: cudaError_t) -> tuple[Any, bytes]:
        return (_OK, f"fake description of {err.name}".encode())

    def cudaGetLastError(self) -> tuple[Any]:
        err = self.last_error
        self._local.last = _OK
        return (err,)

    def cudaGetDeviceCount(self) -> tuple[Any, int]:
        if self.driver_version < self.runtime_version:
            # A CUDA 13 runtime (cuda-bindings 13) on a driver older than R580 answers
            # cudaErrorInsufficientDriver: "the installed NVIDIA CUDA driver is older than
            # the CUDA runtime library" (CUDA runtime API, error types).
            return self._fail(cudaError_t.cudaErrorInsufficientDriver, 0)
        if self.devices == 0:
            return self._fail(cudaError_t.cudaErrorNoDevice, 0)
        return (_OK, self.devices)

    def cudaDriverGetVersion(self) -> tuple[Any, int]:
        return (_OK, self.driver_version)

    def cudaRuntimeGetVersion(self) -> tuple[Any, int]:
        return (_OK, self.runtime_version)

    def cudaSetDevice(self, index: int) -> tuple[Any]:
        if not 0 <= index < self.devices:
            return self._fail(cudaError_t.cudaErrorInvalidDevice)
        self._local.device = index
        self.calls["cudaSetDevice"] += 1
        return (_OK,)

    def cudaGetDeviceProperties(self, index: int) -> tuple[Any, Any]:
        if not 0 <= index < self.devices:
            return self._fail(cudaError_t.cudaErrorInvalidDevice, None)
        name = self.name.encode() + b"\0" * 8
        return (_OK, FakeDeviceProp(name, *self.capability, self.total_memory))

    def cudaMemGetInfo(self) -> tuple[Any, int, int]:
        return (_OK, self.total_memory - self.used, self.total_memory)

    # -- memory --------------------------------------------------------------------------
    def _alloc(self, registry: dict[int, Any], nbytes: int, device: bool) -> tuple[Any, ...]:
        bad = self._unsafe_during_capture()
        if bad is not None:
            return (*bad, 0)
        if device and self.used + nbytes > self.total_memory:
            return self._fail(cudaError_t.cudaErrorMemoryAllocation, 0)
        buf = (ctypes.c_byte * (nbytes + ALIGNMENT))()
        ptr = -(-ctypes.addressof(buf) // ALIGNMENT) * ALIGNMENT
        registry[ptr] = (buf, nbytes)
        if device:
            self.used += nbytes
            # cudaMalloc "allocates memory on the current device" (per host thread).
            self.device_of[ptr] = self.current_device()
        return (_OK, ptr)

    def cudaMalloc(self, nbytes: int) -> tuple[Any, ...]:
        self.calls["cudaMalloc"] += 1
        return self._alloc(self.device, nbytes, device=True)

    def cudaHostAlloc(self, nbytes: int, flags: int) -> tuple[Any, ...]:
        self.calls["cudaHostAlloc"] += 1
        return self._alloc(self.host, nbytes, device=False)

    def cudaFree(self, ptr: int) -> tuple[Any]:
        entry = self.device.pop(ptr, None)
        if entry is None:
            return self._fail(cudaError_t.cudaErrorInvalidValue)
        self.device_of.pop(ptr, None)
        self.used -= entry[1]
        return (_OK,)

    def cudaFreeHost(self, ptr: int) -> tuple[Any]:
        if self.host.pop(ptr, None) is None:
            return self._fail(cudaError_t.cudaErrorInvalidValue)
        return (_OK,)

    def cudaMemcpyAsync(
        self, dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: Any
    ) -> tuple[Any]:
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            ok = self._within(self.device, dst, count) and self._within(self.host, src, count)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            ok = self._within(self.host, dst, count) and self._within(self.device, src, count)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToDevice:
            ok = self._within(self.device, dst, count) and self._within(self.device, src, count)
        else:
            ok = False
        if not ok:
            return self._fail(cudaError_t.cudaErrorInvalidValue)
        err = self.submit(stream, lambda: ctypes.memmove(dst, src, count))
        self.calls["cudaMemcpyAsync"] += 1
        return (err,)

    # -- streams and events --------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[Any, FakeStream]:
        self._next_stream += 0x10
        # A stream belongs to the device current at its creation (CUDA programming guide,
        # "Stream and Event Behavior").
        s = FakeStream(self._next_stream, self.current_device())
        self.streams[s.handle] = s
        return (_OK, s)

    def cudaStreamDestroy(self, stream: FakeStream) -> tuple[Any]:
        stream = self._stream(stream)
        stream.destroyed = True
        self.streams.pop(stream.handle, None)
        return (_OK,)

    def cudaStreamSynchronize(self, stream: FakeStream) -> tuple[Any]:
        stream = self._stream(stream)
        if stream.capture is not None:
            stream.capture_invalid = True
            return self._fail(cudaError_t.cudaErrorStreamCaptureUnsupported)
        self._drain(stream)
        return (_OK,)

    def cudaEventCreateWithFlags(self, flags: int) -> tuple[Any, FakeEvent]:
        return (_OK, FakeEvent(device=self.current_device()))

    def cudaEventRecord(self, event: FakeEvent, stream: FakeStream) -> tuple[Any]:
        stream = self._stream(stream)
        if event.device != stream.device:
            # "cudaEventRecord() will fail if the input event and input stream are
            # associated to different devices" (CUDA programming guide, stream and event
            # behavior).
            return self._fail(cudaError_t.cudaErrorInvalidResourceHandle)
        if stream.capture is not None:
            # Legal in CUDA, but only visible inside the graph: the backend must not rely on it.
            return (self.submit(stream, lambda: None),)
        event.stream, event.marker = stream, len(stream.pending)
        return (_OK,)

    def cudaEventSynchronize(self, event: FakeEvent) -> tuple[Any]:
        bad = self._unsafe_during_capture()
        if bad is not None:
            return bad
        if event.stream is not None:
            self._drain(event.stream, event.marker)
            event.marker = 0
        self.calls["cudaEventSynchronize"] += 1
        return (_OK,)

    def cudaEventDestroy(self, event: FakeEvent) -> tuple[Any]:
        event.destroyed = True
        return (_OK,)

    # -- graphs --------------------------------------------------------------------------
    def cudaStreamBeginCapture(self, stream: FakeStream, mode: cudaStreamCaptureMode) -> tuple[Any]:
        stream = self._stream(stream)
        if int(stream) == 0 or stream.capture is not None:
            return self._fail(cudaError_t.cudaErrorStreamCaptureUnsupported)
        stream.capture, stream.capture_invalid = [], False
        stream.capture_thread = threading.get_ident()
        stream.capture_mode = cudaStreamCaptureMode(mode)
        self.calls["cudaStreamBeginCapture"] += 1
        return (_OK,)

    def cudaStreamIsCapturing(self, stream: FakeStream) -> tuple[Any, cudaStreamCaptureStatus]:
        stream = self._stream(stream)
        if stream.capture is None:
            return (_OK, cudaStreamCaptureStatus.cudaStreamCaptureStatusNone)
        if stream.capture_invalid:
            return (_OK, cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated)
        return (_OK, cudaStreamCaptureStatus.cudaStreamCaptureStatusActive)

    def cudaStreamEndCapture(self, stream: FakeStream) -> tuple[Any, FakeGraph | None]:
        stream = self._stream(stream)
        if stream.capture is None:
            return self._fail(cudaError_t.cudaErrorIllegalState, None)
        if (
            stream.capture_mode != cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed
            and stream.capture_thread != threading.get_ident()
        ):
            # cudaErrorStreamCaptureWrongThread: "A stream capture sequence not initiated
            # with the cudaStreamCaptureModeRelaxed argument to cudaStreamBeginCapture was
            # passed to cudaStreamEndCapture in a different thread." (CUDA runtime API)
            # Seen on an H200 (CUDA 13): the sequence is over after that; the capturing
            # thread's own cudaStreamEndCapture then fails with cudaErrorIllegalState.
            stream.capture, stream.capture_invalid, stream.capture_thread = None, False, None
            return self._fail(cudaError_t.cudaErrorStreamCaptureWrongThread, None)
        ops, invalid = stream.capture, stream.capture_invalid
        stream.capture, stream.capture_invalid, stream.capture_thread = None, False, None
        if invalid:
            return self._fail(cudaError_t.cudaErrorStreamCaptureInvalidated, None)
        return (_OK, FakeGraph(list(ops)))

    # cudaGraphInstantiate and cudaGraphDestroy take a cudaGraph_t; cudaGraphLaunch and
    # cudaGraphExecDestroy a cudaGraphExec_t. Handing one where the other belongs is
    # cudaErrorInvalidValue at best (CUDA runtime API, graph management): the driver reads
    # the handle as the other object.
    def cudaGraphInstantiate(
        self, graph: FakeGraph, flags: int
    ) -> tuple[Any, FakeGraphExec | None]:
        if not isinstance(graph, FakeGraph) or graph.destroyed:
            return self._fail(cudaError_t.cudaErrorInvalidValue, None)
        exe = FakeGraphExec(list(graph.ops))
        self.graphs.append(exe)
        return (_OK, exe)

    def cudaGraphDestroy(self, graph: FakeGraph) -> tuple[Any]:
        if not isinstance(graph, FakeGraph) or graph.destroyed:
            return self._fail(cudaError_t.cudaErrorInvalidValue)
        graph.destroyed = True
        return (_OK,)

    def cudaGraphExecDestroy(self, graph: FakeGraphExec) -> tuple[Any]:
        if not isinstance(graph, FakeGraphExec) or graph.destroyed:
            return self._fail(cudaError_t.cudaErrorInvalidValue)
        graph.destroyed = True
        return (_OK,)

    def cudaGraphLaunch(self, graph: FakeGraphExec, stream: FakeStream) -> tuple[Any]:
        if not isinstance(graph, FakeGraphExec) or graph.destroyed:
            return self._fail(cudaError_t.cudaErrorInvalidValue)
        ops = list(graph.ops)

        def replay() -> None:
            for op in ops:
                op()

        self.calls["cudaGraphLaunch"] += 1
        return (self.submit(stream, replay),)


# ---------------------------------------------------------------------------------------
# TensorRT


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    """The member names of ``tensorrt.DataType`` in 10.x and 11.x (values are arbitrary)."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11


_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT32: np.int32,
    DataType.INT64: np.int64,
}
_FROM_NP = {np.dtype(v): k for k, v in _NP.items()}
_FLOAT_TYPES = {"float32": DataType.FLOAT, "float16": DataType.HALF, "bfloat16": DataType.BF16}


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class BuilderFlag10(enum.Enum):
    """``tensorrt.BuilderFlag`` of 10.x (10.13 documentation): weakly typed networks take
    reduced precision from FP16/BF16/INT8/FP8 flags."""

    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7
    SAFETY_SCOPE = 8
    OBEY_PRECISION_CONSTRAINTS = 9
    PREFER_PRECISION_CONSTRAINTS = 10
    DIRECT_IO = 11
    REJECT_EMPTY_ALGORITHMS = 12
    VERSION_COMPATIBLE = 13
    EXCLUDE_LEAN_RUNTIME = 14
    FP8 = 15
    ERROR_ON_TIMING_CACHE_MISS = 16
    BF16 = 17
    DISABLE_COMPILATION_CACHE = 18
    WEIGHTLESS = 19
    STRIP_PLAN = 20
    REFIT_IDENTICAL = 21
    WEIGHT_STREAMING = 22
    INT4 = 23
    REFIT_INDIVIDUAL = 24
    STRICT_NANS = 25
    MONITOR_MEMORY = 26
    FP4 = 27
    EDITABLE_TIMING_CACHE = 28


class BuilderFlag11(enum.Enum):
    """``tensorrt.BuilderFlag`` of 11.x, member for member as in the real 11.4 bindings
    (checked by a test against ``tensorrt_lean_bindings``): networks are always strongly
    typed, so there is no FP16, BF16, INT8 or FP8 flag; precision comes from the graph."""

    DEBUG = 0
    GPU_FALLBACK = 1
    REFIT = 2
    DISABLE_TIMING_CACHE = 3
    EDITABLE_TIMING_CACHE = 4
    TF32 = 5
    SPARSE_WEIGHTS = 6
    SAFETY_SCOPE = 7
    DIRECT_IO = 8
    VERSION_COMPATIBLE = 9
    EXCLUDE_LEAN_RUNTIME = 10
    ERROR_ON_TIMING_CACHE_MISS = 11
    DISABLE_COMPILATION_CACHE = 12
    STRIP_PLAN = 13
    REFIT_IDENTICAL = 14
    WEIGHT_STREAMING = 15
    REFIT_INDIVIDUAL = 16
    STRICT_NANS = 17
    MONITOR_MEMORY = 18
    DISTRIBUTIVE_INDEPENDENCE = 19


BuilderFlag = BuilderFlag10


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class IProgressMonitor:
    def __init__(self) -> None:
        pass


_MAGIC = b"FAKETRT1"


@dataclass
class EngineSpec:
    """What a fake plan holds: the network's IO and the numbers its kernel computes with."""

    inputs: list[str]
    output: str
    input_dtype: str = "int64"
    hidden: int = 8
    labels: int = 3
    vocab: int = 64
    seed: int = 0
    profile_min: list[int] = field(default_factory=lambda: [1, 1])
    profile_opt: list[int] = field(default_factory=lambda: [4, 32])
    profile_max: list[int] = field(default_factory=lambda: [32, 512])
    version: str = "10.13.0.35"
    table: list[list[float]] | None = None
    extra_outputs: list[str] = field(default_factory=list)
    #: Output dtypes other than float32, by name ("float16" or "bfloat16").
    output_dtypes: dict[str, str] = field(default_factory=dict)
    #: Float element types of the graph's weights (what a strongly typed build runs in).
    weight_types: list[str] = field(default_factory=lambda: ["float32"])
    #: Scratch bytes per token and hidden unit (see :meth:`scratch_bytes`).
    scratch_factor: int = 8
    #: The float type the kernel's two stages run in, as the build chose: ``tokens`` (the
    #: table lookup and mask) and ``reduce`` (the sums of the masked mean).
    compute_dtypes: dict[str, str] = field(default_factory=dict)
    #: A fixed-shape input's item shape (a vision tower's ``(3, H, W)``), else None. Such an
    #: engine's profile shapes are ``(batch, *item_shape)`` and its "network" is the ONNX
    #: graph it was built from (``graph``), run by ONNX Runtime on the bound input's bytes.
    item_shape: list[int] | None = None
    graph: str | None = None

    def units(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(batch, length) of an input shape; an item counts as one row of
        ``prod(item_shape)`` units, for the scratch rule and the capture bookkeeping."""
        if self.item_shape is None:
            return int(shape[0]), int(shape[1])
        return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))

    def scratch_bytes(self, batch: int, length: int) -> int:
        """The fake's rule for an engine's activation scratch at one shape: linear in the
        tokens (``batch * length * hidden * scratch_factor``). Real engines with fused
        attention grow about so; what matters here is that it depends on the shape, as
        ``IExecutionContext.update_device_memory_size_for_shapes`` reports it."""
        return batch * length * self.hidden * self.scratch_factor

    def serialize(self) -> bytes:
        return _MAGIC + json.dumps(asdict(self)).encode()

    def embedding_table(self) -> np.ndarray:
        if self.table is not None:
            return np.asarray(self.table, dtype=np.float32)
        return embedding_table(self.seed, self.vocab, self.hidden)

    def classifier(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1)
        return rng.standard_normal((self.hidden, self.labels)).astype(np.float32)


def embedding_table(seed: int, vocab: int, hidden: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((vocab, hidden)).astype(np.float32)


def _rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` (float32) rounded to ``dtype`` and back: fp16 as numpy does it (inf past
    65504), bf16 to nearest even on the top 16 bits."""
    values = np.asarray(values, np.float32)
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        bits = values.view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
        return bits.astype(np.uint32).view(np.float32)
    return values


def _kind(output: str) -> str:
    if output in ("last_hidden_state", "token_embeddings"):
        return "tokens"
    return "logits" if output == "logits" else "pooled"


class FakeEngine:
    def __init__(self, spec: EngineSpec, module: FakeTensorRT, device: int = 0) -> None:
        self.spec = spec
        self.module = module
        self.table = spec.embedding_table()
        self.outputs = [spec.output, *spec.extra_outputs]
        #: "Each ICudaEngine object is bound to a specific GPU when it is instantiated,
        #: either by the builder or on deserialization" (TensorRT developer guide, FAQ on
        #: multiple GPUs): the device current on the deserialising thread.
        self.device = device
        self._session: Any = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.spec.inputs) + len(self.outputs)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def _activation_bytes(self) -> int:
        b, n = self.spec.units(tuple(self.spec.profile_max))
        return self.spec.scratch_bytes(b, n)

    @property
    def device_memory_size_v2(self) -> int:
        return self._activation_bytes()

    def get_device_memory_size_for_profile_v2(self, profile: int) -> int:
        assert profile == 0
        return self._activation_bytes()

    def get_tensor_name(self, index: int) -> str:
        return [*self.spec.inputs, *self.outputs][index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        if name in self.spec.inputs:
            return TensorIOMode.INPUT
        return TensorIOMode.OUTPUT if name in self.outputs else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        if name in self.spec.inputs:
            return _FROM_NP[np.dtype(self.spec.input_dtype)]
        return _FLOAT_TYPES[self.spec.output_dtypes.get(name, "float32")]

    def output_shape(self, name: str, batch: int, length: int) -> tuple[int, ...]:
        kind = _kind(name)
        if kind == "tokens":
            return (batch, length, self.spec.hidden)
        return (batch, self.spec.labels if kind == "logits" else self.spec.hidden)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.spec.inputs:
            return (-1, *self.spec.item_shape) if self.spec.item_shape else (-1, -1)
        return self.output_shape(name, -1, -1)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        if name not in self.spec.inputs or profile != 0:
            raise RuntimeError(f"{name} is not an input of profile {profile}")
        s = self.spec
        return (tuple(s.profile_min), tuple(s.profile_opt), tuple(s.profile_max))

    def create_execution_context(
        self,
        strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC,
    ) -> FakeContext:
        return FakeContext(self, strategy)

    def run_graph(self, name: str, items: np.ndarray) -> np.ndarray:
        """A fixed-shape input's network: the ONNX graph the plan was built from."""
        if self._session is None:
            import onnxruntime

            assert self.spec.graph is not None
            self._session = onnxruntime.InferenceSession(
                self.spec.graph, providers=["CPUExecutionProvider"]
            )
        (out,) = self._session.run([name], {self.spec.inputs[0]: items})
        return np.asarray(out, np.float32)

    def compute(self, name: str, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The network's outputs, each stage rounded to the type the build ran it in: fp16
        overflows past 65504 to inf, as the GPU's would."""
        m = np.ones(ids.shape, np.float32) if mask is None else mask.astype(np.float32)
        dtypes = self.spec.compute_dtypes
        tok, red = dtypes.get("tokens", "float32"), dtypes.get("reduce", "float32")
        with np.errstate(over="ignore", invalid="ignore"):
            tokens = _rounded(_rounded(self.table[ids], tok) * m[..., None], tok)
            kind = _kind(name)
            if kind == "tokens":
                return tokens.astype(np.float32)
            if red == "float16":
                summed = tokens.astype(np.float16).sum(1, dtype=np.float16).astype(np.float32)
            else:
                summed = _rounded(tokens.sum(1), red)
            pooled = _rounded(summed / np.maximum(m.sum(1, keepdims=True), 1.0), red)
        return pooled @ self.spec.classifier() if kind == "logits" else pooled


class FakeContext:
    def __init__(self, engine: FakeEngine, strategy: ExecutionContextAllocationStrategy) -> None:
        self.engine = engine
        self.strategy = strategy
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.device_memory: tuple[int, int] | None = None
        #: Scratch bytes the context's activation partition needs: the profile maximum
        #: until update_device_memory_size_for_shapes sizes it for the current shapes.
        self.partition = engine.get_device_memory_size_for_profile_v2(0)
        self._warm: tuple[tuple[str, tuple[int, ...]], ...] | None = None
        #: Bumped by every change of a shape or an address: a graph captured at one
        #: generation must not be replayed at another.
        self.generation = 0
        engine.module.contexts.append(self)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        s = self.engine.spec
        # IExecutionContext::setInputShape returns false for a rank other than the input's
        # and for dimensions outside the optimisation profile (a fixed-shape input's item
        # dimensions are a one-point range in its profile).
        if name not in s.inputs or len(shape) != len(s.profile_min):
            return False
        bounds = zip(s.profile_min, shape, s.profile_max, strict=True)
        if not all(lo <= d <= hi for lo, d, hi in bounds):
            return False  # TensorRT logs an error and refuses shapes outside the profile
        new = tuple(int(d) for d in shape)
        if self.shapes.get(name) != new:
            self.generation += 1
            # A partition sized for other shapes no longer holds.
            self.partition = self.engine.get_device_memory_size_for_profile_v2(0)
        self.shapes[name] = new
        return True

    def update_device_memory_size_for_shapes(self) -> int:
        """NvInferRuntime.h, ``IExecutionContext::updateDeviceMemorySizeForShapes``:
        "Recompute the internal activation buffer sizes based on the current input shapes,
        and return the total amount of memory required ... Must specify all input shapes
        and the optimization profile to use before calling this function, otherwise the
        partition will be invalidated"; it returns 0 on error."""
        spec = self.engine.spec
        if set(self.shapes) != set(spec.inputs):
            self.partition = self.engine.get_device_memory_size_for_profile_v2(0)
            return 0
        b, n = spec.units(self.shapes[spec.inputs[0]])
        self.partition = spec.scratch_bytes(b, n)
        return self.partition

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.spec.inputs:
            return self.shapes.get(name, (-1, -1))
        if len(self.shapes) < len(self.engine.spec.inputs):
            return self.engine.get_tensor_shape(name)
        b, n = self.engine.spec.units(self.shapes[self.engine.spec.inputs[0]])
        return self.engine.output_shape(name, b, n)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        # The real call returns False (and logs) for a name that is not an I/O tensor and
        # for a pointer without 256-byte alignment; the backend must check the bool.
        if name not in (*self.engine.spec.inputs, *self.engine.outputs):
            return False
        if int(ptr) % ALIGNMENT or name in self.engine.module.refuse_addresses:
            return False
        if self.addresses.get(name) != int(ptr):
            self.generation += 1
        self.addresses[name] = int(ptr)
        return True

    def set_device_memory(self, memory: int, size: int) -> None:
        # "memory: 256-byte aligned device memory" (IExecutionContext.set_device_memory doc);
        # NvInferRuntime.h, setDeviceMemoryV2: "its size must be large enough for performing
        # inference with the given network inputs. getDeviceMemorySize() and
        # getDeviceMemorySizeForProfile() report upper bounds of the size" -- the exact need
        # is the partition, which update_device_memory_size_for_shapes sizes for the shapes.
        need = self.partition
        cuda = self.engine.module.cuda
        if (
            size < need
            or not cuda.check_device_range(memory, size, self.engine.device)
            or memory % ALIGNMENT
        ):
            raise RuntimeError(
                f"device memory {size} < {need}, unaligned or not device memory of "
                f"cuda:{self.engine.device}"
            )
        if self.strategy is not ExecutionContextAllocationStrategy.USER_MANAGED:
            raise RuntimeError("set_device_memory needs a USER_MANAGED context")
        if self.device_memory != (memory, size):
            # A captured graph baked in the old scratch address.
            self.generation += 1
        self.device_memory = (memory, size)

    def execute_async_v3(self, stream_handle: int) -> bool:
        module = self.engine.module
        cuda = module.cuda
        spec = self.engine.spec
        stream = cuda.stream_by_handle(int(stream_handle))
        if stream is None:
            return False
        device = self.engine.device
        if cuda.current_device() != device or stream.device != device:
            # "Each IExecutionContext is bound to the same GPU as the engine from which it
            # was created. When calling execute() or enqueue(), ensure that the thread is
            # associated with the correct device by calling cudaSetDevice()" (TensorRT
            # developer guide); a kernel on another device's stream fails (CUDA
            # programming guide, stream and event behavior).
            return False
        if set(self.shapes) != set(spec.inputs):
            return False  # "not all input shapes are specified"
        names = [*spec.inputs, *self.engine.outputs]
        if any(n not in self.addresses for n in names):
            return False  # "address is not set for tensor"
        if self.strategy is ExecutionContextAllocationStrategy.USER_MANAGED and (
            self.device_memory is None or self.device_memory[1] < self.partition
        ):
            return False  # no scratch, or less than the current shapes need
        shapes = tuple(sorted(self.shapes.items()))
        b, n = spec.units(self.shapes[spec.inputs[0]])
        item = spec.item_shape
        # Bookkeeping by bucket: an item engine's buckets have length 1.
        key_n = 1 if item is not None else n
        if stream.capture is not None:
            if shapes != self._warm:
                cuda.invalidate_capture(stream)  # set-up work of a new shape is not capturable
                return False
            if module.on_capture is not None:
                module.on_capture(b, key_n)
            mode = module.fail_capture.get((b, key_n))
            if mode == "raise":
                raise RuntimeError(f"enqueue of {b}x{n} raised during capture")
            if mode == "enqueue":
                cuda.invalidate_capture(stream)
                return False
            if mode == "invalidate":
                cuda.invalidate_capture(stream)
                return True
        itemsize = np.dtype(spec.input_dtype).itemsize
        in_ptrs = {name: self.addresses[name] for name in spec.inputs}
        out_ptrs = {name: self.addresses[name] for name in self.engine.outputs}
        for ptr in in_ptrs.values():
            # TensorRT reads volume x element size bytes from the bound address whatever
            # the caller allocated there: a buffer sized for another dtype or shape is an
            # out-of-bounds access (cudaErrorIllegalAddress on a GPU); refused here.
            if not cuda.check_device_range(ptr, b * n * itemsize, device):
                return False
        out_shapes = {name: self.engine.output_shape(name, b, n) for name in out_ptrs}
        out_types = {name: spec.output_dtypes.get(name, "float32") for name in out_ptrs}
        for name, ptr in out_ptrs.items():
            size = int(np.prod(out_shapes[name])) * (4 if out_types[name] == "float32" else 2)
            if not cuda.check_device_range(ptr, size, device):
                return False
        engine = self.engine
        capturing = stream.capture is not None
        generation = self.generation

        def kernel() -> None:
            def view(ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
                count = int(np.prod(shape))
                raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(ptr)
                return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

            # TensorRT's developer guide: a graph's replay after its context's shapes (or
            # bindings) changed, or after enqueues of other shapes, is undefined. Make it
            # visible: record it and produce NaN instead of numbers.
            stale = capturing and self.generation != generation
            if stale:
                module.violations.append(f"graph {b}x{n} replayed after its context changed")
            if item is not None:
                pixels = view(in_ptrs[spec.inputs[0]], (b, *item), spec.input_dtype).copy()
            else:
                ids = view(in_ptrs["input_ids"], (b, n), spec.input_dtype)
                mask = (
                    view(in_ptrs["attention_mask"], (b, n), spec.input_dtype)
                    if "attention_mask" in in_ptrs
                    else None
                )
            for name, ptr in out_ptrs.items():
                values = (
                    engine.run_graph(name, pixels)
                    if item is not None
                    else engine.compute(name, ids, mask)
                )
                if stale:
                    values = np.full_like(values, np.nan)
                if out_types[name] == "bfloat16":
                    bits = values.astype(np.float32).view(np.uint32) >> 16
                    view(ptr, out_shapes[name], np.uint16)[...] = bits.astype(np.uint16)
                else:
                    view(ptr, out_shapes[name], out_types[name])[...] = values
            module.kernel_runs[(b, key_n)] += 1

        err = cuda.submit(stream, kernel)
        if err != _OK:
            return False
        if stream.capture is None:
            self._warm = shapes
        module.enqueues[(b, key_n)] += 1
        return True


class FakeRuntime:
    def __init__(self, module: FakeTensorRT, logger: Logger) -> None:
        self.module = module

    def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
        data = bytes(plan)
        if not data.startswith(_MAGIC):
            return None
        spec = EngineSpec(**json.loads(data[len(_MAGIC) :]))
        if spec.version != self.module.__version__:
            return None  # TensorRT refuses plans from another version
        self.module.deserialized += 1
        return FakeEngine(spec, self.module, self.module.cuda.current_device())


@dataclass
class FakeTensor:
    name: str
    shape: tuple[int, ...]
    dtype: DataType


class LayerType(enum.Enum):
    """The ``tensorrt.LayerType`` members the fake parser makes (names as in 10.x/11.x)."""

    ACTIVATION = 0
    SOFTMAX = 1
    CONCATENATION = 2
    ELEMENTWISE = 3
    UNARY = 4
    SHUFFLE = 5
    REDUCE = 6
    GATHER = 7
    MATRIX_MULTIPLY = 8
    CONSTANT = 9
    IDENTITY = 10
    SLICE = 11
    SHAPE = 12
    SELECT = 13
    FILL = 14
    NORMALIZATION = 15
    CAST = 16
    SQUEEZE = 17
    UNSQUEEZE = 18
    CUMULATIVE = 19
    CONVOLUTION = 20
    TOPK = 21


class UnaryOperation(enum.Enum):
    EXP = 0
    LOG = 1
    SQRT = 2
    RECIP = 3
    ABS = 4
    NEG = 5
    SIN = 6
    COS = 7
    ERF = 8
    NOT = 9
    ISNAN = 10
    TANH = 11


class ElementWiseOperation(enum.Enum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    DIV = 5
    POW = 6
    AND = 7
    OR = 8
    EQUAL = 9
    GREATER = 10
    LESS = 11
    FLOOR_DIV = 12


_E, _U = ElementWiseOperation, UnaryOperation
#: ONNX op type -> the TensorRT layer onnx-tensorrt's importer makes for it (one layer per
#: node here; the real importer sometimes adds shuffles or casts around it).
_ONNX_LAYERS: dict[str, tuple[LayerType, Any]] = {
    **{
        op: (LayerType.ELEMENTWISE, e)
        for op, e in [
            ("Add", _E.SUM),
            ("Sub", _E.SUB),
            ("Mul", _E.PROD),
            ("Div", _E.DIV),
            ("Pow", _E.POW),
            ("Max", _E.MAX),
            ("Min", _E.MIN),
            ("And", _E.AND),
            ("Or", _E.OR),
            ("Equal", _E.EQUAL),
            ("Greater", _E.GREATER),
            ("Less", _E.LESS),
            ("LessOrEqual", _E.LESS),
            ("GreaterOrEqual", _E.GREATER),
            # onnx-tensorrt imports an integer Mod as a - floor_div(a, b) * b.
            ("Mod", _E.FLOOR_DIV),
        ]
    },
    **{
        op: (LayerType.UNARY, u)
        for op, u in [
            ("Exp", _U.EXP),
            ("Log", _U.LOG),
            ("Sqrt", _U.SQRT),
            ("Reciprocal", _U.RECIP),
            ("Abs", _U.ABS),
            ("Neg", _U.NEG),
            ("Sin", _U.SIN),
            ("Cos", _U.COS),
            ("Erf", _U.ERF),
            ("Not", _U.NOT),
            ("IsNaN", _U.ISNAN),
        ]
    },
    **{
        op: (LayerType.REDUCE, None)
        for op in (
            "ReduceMean",
            "ReduceSum",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceSumSquare",
            "ReduceL2",
        )
    },
    **{op: (LayerType.SHUFFLE, None) for op in ("Reshape", "Transpose", "Flatten")},
    **{op: (LayerType.ACTIVATION, None) for op in ("Relu", "Sigmoid", "Tanh", "Gelu")},
    "Softmax": (LayerType.SOFTMAX, None),
    "LayerNormalization": (LayerType.NORMALIZATION, None),
    "MatMul": (LayerType.MATRIX_MULTIPLY, None),
    "Gemm": (LayerType.MATRIX_MULTIPLY, None),
    "Gather": (LayerType.GATHER, None),
    "GatherElements": (LayerType.GATHER, None),
    "Concat": (LayerType.CONCATENATION, None),
    "Slice": (LayerType.SLICE, None),
    "Expand": (LayerType.SLICE, None),
    # onnx-tensorrt imports Tile as a slice layer in wrap mode.
    "Tile": (LayerType.SLICE, None),
    "Conv": (LayerType.CONVOLUTION, None),
    # onnx-tensorrt imports ArgMax as a TopK layer (k = 1) and takes its indices.
    "ArgMax": (LayerType.TOPK, None),
    "Split": (LayerType.SLICE, None),
    "Where": (LayerType.SELECT, None),
    "Shape": (LayerType.SHAPE, None),
    "Range": (LayerType.FILL, None),
    "ConstantOfShape": (LayerType.FILL, None),
    "Constant": (LayerType.CONSTANT, None),
    "Identity": (LayerType.IDENTITY, None),
    "Cast": (LayerType.CAST, None),
    "Unsqueeze": (LayerType.UNSQUEEZE, None),
    "Squeeze": (LayerType.SQUEEZE, None),
    "CumSum": (LayerType.CUMULATIVE, None),
}
_DTYPE_NAMES = {DataType.FLOAT: "float32", DataType.HALF: "float16", DataType.BF16: "bfloat16"}


class ILayer:
    """A parsed layer as ``INetworkDefinition.get_layer`` hands it out: the base class.
    Type-specific members (``op`` of unary and element-wise layers) need the Python object
    recast to its subclass first (``layer.__class__ = trt.IUnaryLayer``), as with the real
    bindings, which return ``ILayer``."""

    def __init__(
        self,
        network: FakeNetwork,
        name: str,
        kind: LayerType,
        inputs: list[FakeTensor],
        outputs: list[FakeTensor],
        op: Any = None,
    ) -> None:
        self.network = network
        self.name = name
        self.type = kind
        self._inputs, self._outputs, self._op = inputs, outputs, op
        self._precision = DataType.FLOAT
        self.precision_is_set = False
        self.output_types: dict[int, DataType] = {}

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, i: int) -> FakeTensor:
        return self._inputs[i]

    def get_output(self, i: int) -> FakeTensor:
        return self._outputs[i]

    @property
    def precision(self) -> DataType:
        return self._precision

    @precision.setter
    def precision(self, dtype: DataType) -> None:
        # NvInfer.h, ILayer::setPrecision: "Set the preferred or required computational
        # precision of this layer in a weakly-typed network"; strongly typed networks (all
        # of 11.x) refuse it, and the build then fails.
        self.network.precision_calls.append(self.name)
        self._precision, self.precision_is_set = dtype, True

    def set_output_type(self, index: int, dtype: DataType) -> None:
        if not 0 <= index < len(self._outputs):
            raise IndexError(index)
        self.network.precision_calls.append(self.name)
        self.output_types[index] = dtype


class IUnaryLayer(ILayer):
    @property
    def op(self) -> UnaryOperation:
        return self._op  # type: ignore[no-any-return]


class IElementWiseLayer(ILayer):
    @property
    def op(self) -> ElementWiseOperation:
        return self._op  # type: ignore[no-any-return]


class FakeNetwork:
    def __init__(self) -> None:
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []
        self.layers: list[ILayer] = []
        self.table: np.ndarray | None = None
        self.weight_types: set[str] = set()
        #: The ONNX file parsed into this network.
        self.source: str | None = None
        #: Layers whose precision or output type was set (by name).
        self.precision_calls: list[str] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_input(self, i: int) -> FakeTensor:
        return self.inputs[i]

    def get_output(self, i: int) -> FakeTensor:
        return self.outputs[i]

    def get_layer(self, i: int) -> ILayer:
        layer = self.layers[i]
        layer.__class__ = ILayer  # handed out as the base class, whatever it was recast to
        return layer


class FakeOnnxParser:
    """Reads a real ONNX file with the onnx package: its IO, an ``embeddings`` initializer,
    and one layer per node (constants for initializers), typed by ONNX shape inference."""

    def __init__(self, network: FakeNetwork, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.load(path)
        except Exception as exc:
            self.errors.append(f"cannot read {path}: {exc}")
            return False
        elem = {
            onnx.TensorProto.INT64: DataType.INT64,
            onnx.TensorProto.INT32: DataType.INT32,
            onnx.TensorProto.FLOAT: DataType.FLOAT,
            onnx.TensorProto.FLOAT16: DataType.HALF,
            onnx.TensorProto.BFLOAT16: DataType.BF16,
            onnx.TensorProto.BOOL: DataType.BOOL,
        }
        floats = {
            onnx.TensorProto.FLOAT: "float32",
            onnx.TensorProto.FLOAT16: "float16",
            onnx.TensorProto.BFLOAT16: "bfloat16",
        }

        def tensor(v: Any) -> FakeTensor:
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim
            )
            return FakeTensor(v.name, dims, elem[v.type.tensor_type.elem_type])

        self.network.source = path
        inits = {i.name for i in model.graph.initializer}
        self.network.inputs = [tensor(v) for v in model.graph.input if v.name not in inits]
        self.network.outputs = [tensor(v) for v in model.graph.output]
        for init in model.graph.initializer:
            if init.data_type in floats:
                self.network.weight_types.add(floats[init.data_type])
            if init.name == "embeddings":
                self.network.table = numpy_helper.to_array(init).astype(np.float32)

        types: dict[str, DataType] = {t.name: t.dtype for t in self.network.inputs}
        types.update({t.name: t.dtype for t in self.network.outputs})
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
        except Exception:
            inferred = []
        for v in [*model.graph.value_info, *inferred]:
            kind = elem.get(v.type.tensor_type.elem_type)
            if kind is not None:
                types.setdefault(v.name, kind)
        for i in model.graph.initializer:
            types[i.name] = elem.get(i.data_type, DataType.FLOAT)
        tensors: dict[str, FakeTensor] = {t.name: t for t in self.network.inputs}

        def use(name: str) -> FakeTensor:
            if name not in tensors:
                tensors[name] = FakeTensor(name, (), types.get(name, DataType.FLOAT))
            return tensors[name]

        net = self.network
        for init in model.graph.initializer:
            net.layers.append(ILayer(net, init.name, LayerType.CONSTANT, [], [use(init.name)]))
        for i, node in enumerate(model.graph.node):
            entry = _ONNX_LAYERS.get(node.op_type)
            if entry is None:
                # onnx-tensorrt: "No importer registered for op: <op>".
                self.errors.append(f"No importer registered for op: {node.op_type}")
                return False
            kind, op = entry
            cls = {LayerType.UNARY: IUnaryLayer, LayerType.ELEMENTWISE: IElementWiseLayer}.get(
                kind, ILayer
            )
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        types[node.output[0]] = elem.get(attr.t.data_type, DataType.FLOAT)
            layer = cls(
                net,
                node.name or f"{node.op_type}_{i}",
                kind,
                [use(n) for n in node.input if n],
                [use(n) for n in node.output],
                op,
            )
            net.layers.append(layer)
        for t in net.outputs:
            tensors.setdefault(t.name, t)
        return True


class FakeProfile:
    def __init__(self, network: FakeNetwork | None = None) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        self.network = network

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
        # The real binding raises ValueError when setDimensions answers false: min <= opt
        # <= max must hold with no negative extent, and "the rank does not match another
        # dimension that was previously set for the same input" (NvInferRuntime.h,
        # IOptimizationProfile::setDimensions); also for a dimension the network fixes
        # while min/opt/max differ from it. The input's own rank is checked at build time.
        lo, mid, hi = tuple(min), tuple(opt), tuple(max)
        if (
            not (len(lo) == len(mid) == len(hi))
            or any(d < 0 for d in lo)
            or not all(a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True))
        ):
            raise ValueError(f"invalid profile for {name}: {lo} / {mid} / {hi}")
        fixed = (
            next((t.shape for t in self.network.inputs if t.name == name), None)
            if (self.network is not None)
            else None
        )
        if fixed is not None:
            for d, a, c in zip(fixed, lo, hi, strict=False):
                if d >= 0 and (a != d or c != d):
                    raise ValueError(f"{name}: dimension fixed at {d} but profile gives {a}..{c}")
        self.shapes[name] = (lo, mid, hi)


_CACHE_MAGIC = b"FAKETC1"


@dataclass
class FakeTimingCache:
    """Tactic timings by layer key, for one TensorRT version and GPU."""

    version: str
    device: str
    entries: set[str] = field(default_factory=set)

    def serialize(self) -> bytes:
        body = {"version": self.version, "device": self.device, "entries": sorted(self.entries)}
        return _CACHE_MAGIC + json.dumps(body).encode()


class FakeBuilderConfig:
    def __init__(self, module: FakeTensorRT) -> None:
        self.module = module
        self.flags: set[BuilderFlag] = set()
        self.pools: dict[MemoryPoolType, int] = {}
        self.profiles: list[FakeProfile] = []
        self.progress_monitor: Any = None
        self.timing_cache: FakeTimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    # IBuilderConfig timing-cache API: create_timing_cache(serialized) -> ITimingCache,
    # set_timing_cache(cache, ignore_mismatch) -> bool, get_timing_cache().
    def create_timing_cache(self, serialized: bytes) -> FakeTimingCache | None:
        data = bytes(serialized)
        here = FakeTimingCache(self.module.__version__, self.module.cuda.name)
        if not data:
            return here  # an empty buffer makes an empty cache
        if not data.startswith(_CACHE_MAGIC):
            return None  # not a timing cache: TensorRT logs an error, no cache
        body = json.loads(data[len(_CACHE_MAGIC) :])
        if body["version"] != self.module.__version__:
            # ITimingCache.combine: "The input cache must be generated by a TensorRT build
            # of exact same version"; another version's timings are not reused.
            return here
        return FakeTimingCache(body["version"], body["device"], set(body["entries"]))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        # A cache from another device is refused unless ignore_mismatch is set.
        if cache.device != self.module.cuda.name and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.timing_cache


def _lowest(dtypes: list[str]) -> str:
    """The least precise of some float types (what a stage's worst layer runs in)."""
    for name in ("float16", "bfloat16"):
        if name in dtypes:
            return name
    return "float32"


class FakeBuilder:
    def __init__(self, module: FakeTensorRT, logger: Logger) -> None:
        self.module = module
        self.network: FakeNetwork | None = None

    def create_network(self, flags: int = 0) -> FakeNetwork:
        self.network = FakeNetwork()
        return self.network

    def create_builder_config(self) -> FakeBuilderConfig:
        return FakeBuilderConfig(self.module)

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile(self.network)

    def _run_dtypes(self, network: FakeNetwork, config: FakeBuilderConfig) -> dict[str, str]:
        """The float type each float layer runs in.

        11.x (strongly typed): the type of the layer's float inputs, as the graph declares
        them. 10.x (weakly typed): with FP16/BF16 set the builder may pick that type for
        any layer; a layer whose precision was set runs in it when OBEY (or PREFER)
        PRECISION_CONSTRAINTS is set (NvInfer.h, BuilderFlag::kOBEY_PRECISION_CONSTRAINTS:
        "Require that layers execute in specified precisions").
        """
        flags = {f.name for f in config.flags}
        reduced = "float16" if "FP16" in flags else "bfloat16" if "BF16" in flags else "float32"
        obey = bool({"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"} & flags)
        result: dict[str, str] = {}
        for layer in network.layers:
            if layer.type in (LayerType.CONSTANT, LayerType.SHAPE):
                continue
            float_ins = [t.dtype for t in layer._inputs if t.dtype in _DTYPE_NAMES]
            float_outs = [t.dtype for t in layer._outputs if t.dtype in _DTYPE_NAMES]
            if not float_ins and not float_outs:
                continue
            if self.module.strongly_typed:
                result[layer.name] = _DTYPE_NAMES[(float_ins or float_outs)[0]]
            elif layer.precision_is_set and obey:
                result[layer.name] = _DTYPE_NAMES.get(layer.precision, "float32")
            else:
                result[layer.name] = reduced
        return result

    def build_serialized_network(
        self, network: FakeNetwork, config: FakeBuilderConfig
    ) -> bytes | None:
        if not config.profiles:
            return None  # dynamic inputs need an optimisation profile
        profile = config.profiles[0]
        for t in network.inputs:
            if -1 in t.shape and t.name not in profile.shapes:
                return None
            # "a full validation is performed at engine build time": a profile whose rank
            # differs from the input's fails the build.
            if t.name in profile.shapes and len(profile.shapes[t.name][0]) != len(t.shape):
                return None
        if self.module.strongly_typed and network.precision_calls:
            # Strongly typed networks take types from the graph: layer precision and output
            # type constraints are errors there (TensorRT developer guide, strong typing).
            return None
        monitor = config.progress_monitor
        phases = [("Building engine", None, 2), ("Tactic selection", "Building engine", 3)]
        if monitor is not None:
            monitor.phase_start(*phases[0])
            monitor.phase_start(*phases[1])
            for step in range(3):
                if not monitor.step_complete("Tactic selection", step):
                    return None
            monitor.phase_finish("Tactic selection")
            monitor.step_complete("Building engine", 0)
            monitor.step_complete("Building engine", 1)
            monitor.phase_finish("Building engine")
        run = self._run_dtypes(network, config)
        # Each layer's tactics are timed unless the timing cache already holds them.
        keys = {f"{name}:{dtype}" for name, dtype in run.items()}
        cache = config.timing_cache
        timed = keys - (cache.entries if cache is not None else set())
        if cache is not None:
            cache.entries |= keys
        table_layers = [
            run[layer.name]
            for layer in network.layers
            if layer.type == LayerType.GATHER
            and layer.name in run
            and any(t.name == "embeddings" for t in layer._inputs)
        ]
        reduce_layers = [
            run[layer.name]
            for layer in network.layers
            if layer.type == LayerType.REDUCE and layer.name in run
        ]
        compute = {"tokens": _lowest(table_layers), "reduce": _lowest(reduce_layers)}
        first = profile.shapes[network.inputs[0].name]
        out = network.outputs[0]
        # A single input of rank > 2 is a batch of fixed-shape items (images).
        rank = len(network.inputs[0].shape)
        item = list(network.inputs[0].shape[1:]) if rank > 2 else None
        weights = sorted(network.weight_types) or ["float32"]
        hidden = out.shape[-1]
        spec = EngineSpec(
            inputs=[t.name for t in network.inputs],
            output=out.name,
            input_dtype=np.dtype(_NP[network.inputs[0].dtype]).name,
            hidden=hidden,
            vocab=network.table.shape[0] if network.table is not None else 64,
            profile_min=list(first[0]),
            profile_opt=list(first[1]),
            profile_max=list(first[2]),
            version=self.module.__version__,
            table=network.table.tolist() if network.table is not None else None,
            extra_outputs=[t.name for t in network.outputs[1:]],
            weight_types=weights,
            compute_dtypes=compute,
            item_shape=item,
            graph=network.source if item is not None else None,
        )
        self.module.builds.append(
            {
                "flags": set(config.flags),
                "profile": first,
                "weight_types": weights,
                "run_dtypes": run,
                "pinned": sorted(
                    {layer.name for layer in network.layers if layer.precision_is_set}
                ),
                "timed": len(timed),
                "compute": compute,
            }
        )
        return spec.serialize()


class FakeTensorRT(SimpleNamespace):
    """Stands in for the ``tensorrt`` module; bound to one fake CUDA runtime."""

    TensorIOMode = TensorIOMode
    DataType = DataType
    ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
    MemoryPoolType = MemoryPoolType
    Logger = Logger
    IProgressMonitor = IProgressMonitor
    LayerType = LayerType
    UnaryOperation = UnaryOperation
    ElementWiseOperation = ElementWiseOperation
    IUnaryLayer = IUnaryLayer
    IElementWiseLayer = IElementWiseLayer
    float32 = DataType.FLOAT
    float16 = DataType.HALF
    bfloat16 = DataType.BF16

    def __init__(self, cuda: FakeCudaRuntime, version: str = "10.13.0.35") -> None:
        super().__init__()
        self.cuda = cuda
        self.__version__ = version
        # 11.x dropped the precision flags (strongly typed networks only).
        self.strongly_typed = int(version.split(".")[0]) >= 11
        self.BuilderFlag = BuilderFlag11 if self.strongly_typed else BuilderFlag10
        #: Tensor names whose set_tensor_address the fake refuses (returns False).
        self.refuse_addresses: set[str] = set()
        #: Called as ``on_capture(batch, length)`` inside a captured ``execute_async_v3``.
        self.on_capture: Callable[[int, int], None] | None = None
        #: Every execution context created, and every undefined graph replay seen.
        self.contexts: list[FakeContext] = []
        self.violations: list[str] = []
        #: (batch, length) -> "enqueue" | "invalidate" | "raise": how capture fails there.
        self.fail_capture: dict[tuple[int, int], str] = {}
        self.enqueues: Counter[tuple[int, int]] = Counter()
        self.kernel_runs: Counter[tuple[int, int]] = Counter()
        self.builds: list[dict[str, Any]] = []
        self.deserialized = 0

    @staticmethod
    def nptype(dtype: DataType) -> type:
        if dtype not in _NP:
            # The real binding: "Could not resolve TensorRT datatype to an equivalent numpy
            # datatype." (TypeError) for BF16, FP8, ...
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return _NP[dtype]

    def Runtime(self, logger: Logger) -> FakeRuntime:
        return FakeRuntime(self, logger)

    def Builder(self, logger: Logger) -> FakeBuilder:
        return FakeBuilder(self, logger)

    def OnnxParser(self, network: FakeNetwork, logger: Logger) -> FakeOnnxParser:
        return FakeOnnxParser(network, logger)


def write_plan(path: Path, spec: EngineSpec) -> Path:
    path.write_bytes(spec.serialize())
    return path
