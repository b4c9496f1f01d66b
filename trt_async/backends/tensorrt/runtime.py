"""The TensorRT backend: one execution context and one CUDA graph per bucket.

Finding, rebuilding and deserialising the plan and reading its IO are
:class:`~trt_async.backends.tensorrt.loader.PlanLoader`'s; this module executes.
``prepare`` has the loader deserialise (or first build) the plan, allocates every buffer up
front and,
for each bucket of the grid, creates an execution context, binds its input shapes and the
address of every I/O tensor once, runs one plain enqueue (TensorRT does set-up work on the
first enqueue after a shape change, which must not be captured), then captures H2D copies +
``execute_async_v3`` + D2H copies into a CUDA graph. ``execute`` replays the graph and waits
on an event in the calling worker thread; nothing is re-bound between replays.

A vision tower's engine takes ``pixel_values`` of one fixed image shape: its buckets are
batch sizes only (length 1) and its inputs ``(batch, *item_shape)`` float32; everything
else (a context and a graph per bucket, every tensor bound) is as for token inputs.

Why a context per bucket: a captured graph depends on the context's internal state as it
was at capture; NVIDIA's developer guide says a later shape change or an enqueue with other
shapes on the same context makes the graph's replay undefined, and recommends one context
per graph. The contexts are created ``USER_MANAGED`` and share one activation scratch.

Memory: device buffers (one per I/O tensor, sized for the largest bucket) and the scratch
(sized for the bucket whose shapes need most, as each context reports it) are shared by
all buckets; pinned host buffers are per bucket, so a bucket's output view
stays valid until that bucket runs again. Sharing is safe because all buckets run on one
stream, strictly one at a time: ``execute`` must only be called from one worker thread at a
time (the core's :class:`~trt_async.core.runner.BatchRunner` guarantees this; a lock
enforces it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trt_async.backends.base import (
    BackendInfo,
    BackendOptions,
    BackendSpec,
    BackendUnavailable,
    CounterSpec,
    Lanes,
    ModelIO,
    Progress,
)
from trt_async.backends.modelfiles import ModelFiles
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.backends.tensorrt.cuda import Cuda, CudaError, DeviceInfo, host_array
from trt_async.backends.tensorrt.loader import (
    PlanLoader,
    PlanMismatch,
    TensorRTError,
    host_dtype,
)
from trt_async.backends.tensorrt.plan import graphs_dir, grid_outside_profile
from trt_async.backends.tensorrt.spec import GRAPH_REPLAYS, PLAIN_ENQUEUES, TENSORRT_SPEC
from trt_async.backends.tensorrt.trt_api import (
    IExecutionContext,
    dims,
    itemsize,
    load_tensorrt,
)

__all__ = ["MemoryBudgetExceeded", "PlanMismatch", "TensorRTBackend", "TensorRTError"]

log = logging.getLogger(__name__)

_GIB = float(1 << 30)


class MemoryBudgetExceeded(TensorRTError):
    """The grid's buffers do not fit ``gpu_memory_budget_gib``."""


class _CaptureFailed(Exception):
    pass


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def shared_scratch(per_bucket: Mapping[Bucket, int], profile_max: int) -> int:
    """Bytes of the one activation scratch every bucket's context shares.

    Each context reports what its own shapes need
    (``update_device_memory_size_for_shapes``, as trtexec's runtime allocation strategy
    does); the scratch is the largest of those, not the profile's batch x length corner,
    which the token budget keeps every bucket away from. A context that cannot answer
    (0 is TensorRT's error value) falls back to the profile's upper bound.
    """
    if not per_bucket or any(size <= 0 for size in per_bucket.values()):
        return profile_max
    return max(per_bucket.values())


@dataclass
class _BucketState:
    bucket: Bucket
    context: IExecutionContext
    inputs: dict[str, np.ndarray]
    input_ptrs: dict[str, int]
    input_nbytes: dict[str, int]
    output: np.ndarray
    output_ptr: int
    output_nbytes: int
    #: Pinned host copies of the engine's extra outputs (``io.extra_outputs``), by name:
    #: (array, pointer, bytes). They are copied back only for batches that ask for them.
    extras: dict[str, tuple[np.ndarray, int, int]] = field(default_factory=dict)
    graph: Any | None = None
    fallback: str | None = None


@dataclass
class _Device:
    """Everything allocated on the device or pinned, for orderly release."""

    stream: Any | None = None
    event: Any | None = None
    scratch: int | None = None
    #: One device buffer per I/O tensor, by tensor name.
    tensors: dict[str, int] = field(default_factory=dict)
    pinned: list[int] = field(default_factory=list)


class TensorRTBackend:
    """Runs fixed-shape buckets through a TensorRT engine, by CUDA graph replay when possible.

    ``trt_module`` and ``cuda_runtime`` replace the ``tensorrt`` and
    ``cuda.bindings.runtime`` modules (tests pass faithful fakes); by default both are
    imported on first use.
    """

    def __init__(
        self,
        files: ModelFiles,
        config: BackendOptions,
        *,
        trt_module: Any | None = None,
        cuda_runtime: Any | None = None,
        plans_dir: str | Path | None = None,
        build_progress: bool = True,
    ) -> None:
        self.files = files
        self.config = config
        self._trt_module = trt_module
        self._cuda_runtime = cuda_runtime
        self._cuda: Cuda | None = None
        self.loader = PlanLoader(
            files,
            config,
            plans_dir=Path(plans_dir)
            if plans_dir is not None
            else files.plans_dir or graphs_dir() / files.root.name,
            trt=lambda: self.trt,
            cuda=lambda: self.cuda,
            gpu=self._gpu_info,
            use_device=self._ensure_thread_device,
            build_progress=build_progress,
        )
        self._gpu: DeviceInfo | None = None
        self._states: dict[Bucket, _BucketState] = {}
        self._dev = _Device()
        self._memory: dict[str, int] = {}
        self._scratch_profile_max = 0
        self._lock = threading.Lock()
        self._thread = threading.local()
        self._closed = False
        #: Batches served by CUDA graph replay and by plain ``execute_async_v3``.
        self.replays = 0
        self.enqueues = 0

    # -- module access ----------------------------------------------------------------
    @property
    def trt(self) -> Any:
        if self._trt_module is None:
            try:
                self._trt_module = load_tensorrt()
            except ImportError as exc:
                raise BackendUnavailable(str(exc)) from None
        return self._trt_module

    @property
    def cuda(self) -> Cuda:
        if self._cuda is None:
            try:
                self._cuda = Cuda(self._cuda_runtime)
            except ImportError as exc:
                raise BackendUnavailable(str(exc)) from None
        return self._cuda

    def _gpu_info(self) -> DeviceInfo:
        if self._gpu is None:
            self._ensure_thread_device()
            self._gpu = self.cuda.device_info(self.config.device)
        return self._gpu

    def _ensure_thread_device(self) -> None:
        """Make ``config.device`` current on the calling thread, once per thread.

        The current device is per host thread, and an engine, its contexts, streams and
        buffers belong to the device current where they were made: the loader thread that
        deserialises, the runner thread that prepares and the worker that executes may all
        differ, so each selects the device itself rather than trusting a cached answer.
        """
        if getattr(self._thread, "device", None) != self.config.device:
            self.cuda.set_device(self.config.device)
            self._thread.device = self.config.device

    # -- the plan and its IO (loader.py) -------------------------------------------------
    @property
    def io(self) -> ModelIO:
        """The graph's IO (see :attr:`PlanLoader.io`)."""
        return self.loader.io

    @property
    def plans_dir(self) -> Path:
        return self.loader.plans_dir

    @property
    def rebuilt_because(self) -> list[str]:
        """Why the plan was rebuilt at start-up (empty when it was used as is)."""
        return self.loader.rebuilt_because

    # -- preparation -------------------------------------------------------------------
    def prepare(self, grid: BucketGrid, progress: Progress | None = None) -> None:
        if self._closed:
            raise TensorRTError("backend is closed")
        if self._states:
            raise TensorRTError("prepare() was already called")
        try:
            self._prepare(grid, progress)
        except BaseException:
            self.close()
            raise

    def _prepare(self, grid: BucketGrid, progress: Progress | None) -> None:
        cu, trt = self.cuda, self.trt
        self._ensure_thread_device()
        self._gpu_info()
        engine, io = self.loader.load(grid)
        self._check_profile(engine, io, grid)

        # One context per bucket, all USER_MANAGED so that they share one activation scratch
        # that we allocate and account for (TensorRT >= 10.1).
        if not hasattr(trt, "ExecutionContextAllocationStrategy"):
            raise TensorRTError(
                f"TensorRT {trt.__version__} lacks user-managed context memory; install "
                "TensorRT 10.1 or newer (pip install 'trt-async[gpu]')"
            )
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        profile_scratch = int(engine.get_device_memory_size_for_profile_v2(0))

        # Contexts and shapes first, so the budget check sees every size before anything
        # is allocated. Each context gets its bucket's shapes here, once.
        buckets = list(grid.buckets())
        contexts: dict[Bucket, IExecutionContext] = {}
        shapes: dict[Bucket, dict[str, tuple[int, ...]]] = {}
        bucket_scratch: dict[Bucket, int] = {}
        for b in buckets:
            context = engine.create_execution_context(strategy)
            if context is None:
                raise TensorRTError("TensorRT could not create an execution context")
            contexts[b] = context
            shapes[b] = self._set_shapes(context, b, io.inputs)
            bucket_scratch[b] = int(context.update_device_memory_size_for_shapes())
        scratch = shared_scratch(bucket_scratch, profile_scratch)
        tensors = [*io.inputs, *self.loader.outputs]
        sizes = {n: itemsize(engine.get_tensor_dtype(n)) for n in tensors}
        tensor_bytes = {n: max(sizes[n] * _volume(shapes[b][n]) for b in buckets) for n in tensors}
        out_dtype = host_dtype(engine.get_tensor_dtype(io.output), io.output)
        in_dtypes = {n: host_dtype(engine.get_tensor_dtype(n), n) for n in io.inputs}
        host_side = (*io.inputs, *io.outputs)
        pinned = sum(sum(sizes[n] * _volume(shapes[b][n]) for n in host_side) for b in buckets)
        device_buffers = sum(tensor_bytes.values())
        self._scratch_profile_max = profile_scratch
        self._memory = {
            "engine": self.loader.plan_bytes,
            "activations": scratch,
            "device_buffers": device_buffers,
            "pinned_buffers": pinned,
            "total_device": self.loader.plan_bytes + scratch + device_buffers,
        }
        self._check_budget()

        dev = self._dev
        dev.stream = cu.stream_create()
        dev.event = cu.event_create()
        dev.scratch = cu.malloc(scratch)
        for n in tensors:
            dev.tensors[n] = cu.malloc(tensor_bytes[n])

        for b in buckets:
            st = self._allocate_bucket(b, contexts[b], in_dtypes, shapes[b][io.output], out_dtype)
            for n in io.extra_outputs:
                st.extras[n] = self._pinned_output(
                    shapes[b][n], host_dtype(engine.get_tensor_dtype(n), n)
                )
            self._states[b] = st
        total = len(buckets)
        for i, b in enumerate(buckets):
            self._prepare_bucket(self._states[b], scratch)
            if progress is not None:
                how = "graph" if self._states[b].graph is not None else "plain"
                progress(i + 1, total, f"bucket {b.batch}x{b.length} ({how})")

        fallbacks = {b: st.fallback for b, st in self._states.items() if st.fallback}
        if fallbacks:
            log.warning(
                "CUDA graph capture failed for %d of %d buckets, which run as plain enqueues: %s",
                len(fallbacks),
                total,
                "; ".join(f"{b.batch}x{b.length}: {why}" for b, why in fallbacks.items()),
            )
        log.info(
            "TensorRT ready on %s: %d buckets, %d graphs, %.2f GiB device memory",
            self._gpu.name if self._gpu else "?",
            total,
            total - len(fallbacks),
            self._memory["total_device"] / _GIB,
        )

    def _check_profile(self, engine: Any, io: ModelIO, grid: BucketGrid) -> None:
        """Every bucket of ``grid`` must lie inside the engine's optimisation profile: a
        shape outside it is refused by ``set_input_shape``, with a less helpful message."""
        plan = self.loader.plan_path
        first = io.inputs[0]
        lo, _, hi = (dims(d) for d in engine.get_tensor_profile_shape(first, 0))
        if io.item_shape is not None:
            # A fixed-shape input: its profile varies the batch only, over one item shape.
            if lo[1:] != io.item_shape or hi[1:] != io.item_shape:
                raise TensorRTError(
                    f"{plan}: the profile of {first} ({lo}..{hi}) is not over items of "
                    f"shape {io.item_shape}; rebuild the plan with trt-async build"
                )
            lo, hi = (lo[0], 1), (hi[0], 1)
        outside = grid_outside_profile(grid, (lo[0], lo[1]), (hi[0], hi[1]))
        if outside:
            what = "batch" if io.item_shape is not None else "batch x length"
            raise TensorRTError(
                f"{plan}: buckets {', '.join(outside)} ({what}) fall outside the "
                f"engine's optimisation profile {lo[0]}x{lo[1]}..{hi[0]}x{hi[1]}; keep "
                "batch_sizes/lengths within it or rebuild the plan for this grid"
            )

    def _check_budget(self) -> None:
        budget = self.config.gpu_memory_budget_gib
        need = self._memory["total_device"]
        if budget is None or need <= budget * _GIB:
            return
        m = self._memory
        raise MemoryBudgetExceeded(
            f"the bucket grid needs {need / _GIB:.3f} GiB on cuda:{self.config.device} "
            f"(engine {m['engine'] / _GIB:.3f} + activations {m['activations'] / _GIB:.3f} + "
            f"I/O buffers {m['device_buffers'] / _GIB:.3f}) but gpu_memory_budget_gib is "
            f"{budget}; lower max_batch_tokens, batch_sizes or lengths, or raise the budget"
        )

    def _allocate_bucket(
        self,
        b: Bucket,
        context: IExecutionContext,
        in_dtypes: Mapping[str, np.dtype[Any]],
        out_shape: tuple[int, ...],
        out_dtype: np.dtype[Any],
    ) -> _BucketState:
        cu = self.cuda
        arrays: dict[str, np.ndarray] = {}
        ptrs: dict[str, int] = {}
        sizes: dict[str, int] = {}
        shape = self._input_shape(b)
        for n, dt in in_dtypes.items():
            sizes[n] = _volume(shape) * dt.itemsize
            ptrs[n] = cu.host_alloc(sizes[n])
            self._dev.pinned.append(ptrs[n])
            arrays[n] = host_array(ptrs[n], shape, dt)
            # Warm-up content: a live mask everywhere avoids 0/0 in pooled graphs.
            arrays[n].fill(1 if n == "attention_mask" else 0)
        output, out_ptr, out_nbytes = self._pinned_output(out_shape, out_dtype)
        return _BucketState(b, context, arrays, ptrs, sizes, output, out_ptr, out_nbytes)

    def _pinned_output(
        self, shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> tuple[np.ndarray, int, int]:
        nbytes = _volume(shape) * dtype.itemsize
        ptr = self.cuda.host_alloc(nbytes)
        self._dev.pinned.append(ptr)
        return host_array(ptr, shape, dtype), ptr, nbytes

    def _set_shapes(
        self, context: IExecutionContext, b: Bucket, inputs: tuple[str, ...]
    ) -> dict[str, tuple[int, ...]]:
        """Bind ``b``'s input shapes on ``context``; the shape of every I/O tensor."""
        shape = self._input_shape(b)
        for n in inputs:
            if not context.set_input_shape(n, shape):
                raise TensorRTError(f"TensorRT refused shape {shape} for {n}")
        shapes: dict[str, tuple[int, ...]] = {n: shape for n in inputs}
        for n in self.loader.outputs:
            shape = dims(context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise TensorRTError(f"output {n} shape {shape} unresolved for {b}")
            shapes[n] = shape
        return shapes

    def _input_shape(self, b: Bucket) -> tuple[int, ...]:
        """Every input's shape in bucket ``b``: ``(batch, length)`` of tokens, or
        ``(batch, *item_shape)`` for a fixed-shape input (whose buckets have length 1)."""
        item = self.io.item_shape
        return (b.batch, b.length) if item is None else (b.batch, *item)

    def _bind_addresses(self, st: _BucketState, scratch: int) -> None:
        """Scratch memory and the address of every I/O tensor, read or not (TensorRT
        refuses to enqueue with any tensor unbound)."""
        assert self._dev.scratch is not None
        st.context.set_device_memory(self._dev.scratch, scratch)
        for n, ptr in self._dev.tensors.items():
            if not st.context.set_tensor_address(n, ptr):
                raise TensorRTError(f"TensorRT refused the device address of tensor {n}")

    def _enqueue(self, st: _BucketState) -> bool:
        """H2D copies, inference, D2H copy on the stream; False when TensorRT refuses."""
        cu, dev = self.cuda, self._dev
        assert dev.stream is not None
        for n, ptr in st.input_ptrs.items():
            cu.memcpy_htod_async(dev.tensors[n], ptr, st.input_nbytes[n], dev.stream)
        if not st.context.execute_async_v3(int(dev.stream)):
            return False
        cu.memcpy_dtoh_async(
            st.output_ptr, dev.tensors[self.io.output], st.output_nbytes, dev.stream
        )
        return True

    def _wait(self) -> None:
        # Recorded after the launch: an event recorded inside a graph is not visible outside.
        self.cuda.event_record(self._dev.event, self._dev.stream)
        self.cuda.event_synchronize(self._dev.event)

    def _prepare_bucket(self, st: _BucketState, scratch: int) -> None:
        self._bind_addresses(st, scratch)
        # The first enqueue after a shape change does set-up work that must not be captured.
        if not self._enqueue(st):
            raise TensorRTError(
                f"execute_async_v3 failed for bucket {st.bucket.batch}x{st.bucket.length}"
            )
        self._wait()
        if not self.config.graphs:
            return
        try:
            st.graph = self._capture(st)
            self.cuda.graph_launch(st.graph, self._dev.stream)  # prove the graph runs
            self._wait()
        except (_CaptureFailed, CudaError) as exc:
            # A failed capture leaves a sticky error behind; clear it before going on.
            self.cuda.get_last_error()
            if st.graph is not None:
                self._destroy_graph(st)
            st.fallback = str(exc)

    def _capture(self, st: _BucketState) -> Any:
        cu, stream = self.cuda, self._dev.stream
        cu.begin_capture(stream)
        failure: str | None = None
        try:
            if not self._enqueue(st):
                failure = "execute_async_v3 returned False during capture"
        except Exception as exc:  # whatever failed, the capture must be ended below
            failure = f"{type(exc).__name__}: {exc}"
        # Capture must always be ended, or the stream stays in capture mode.
        try:
            graph = cu.end_capture(stream)
        except CudaError as exc:
            raise _CaptureFailed(f"{failure}; {exc}" if failure else str(exc)) from None
        try:
            if failure is not None:
                raise _CaptureFailed(failure)
            return cu.graph_instantiate(graph)
        finally:
            if graph is not None:
                cu.graph_destroy(graph)

    # -- execution ---------------------------------------------------------------------
    def inputs(self, bucket: Bucket, lane: int = 0) -> Mapping[str, np.ndarray]:
        self._check_lane(lane)
        return self._state(bucket).inputs

    @staticmethod
    def _check_lane(lane: int) -> None:
        # One stream and one set of pinned buffers per bucket: a single lane.
        if lane != 0:
            raise TensorRTError(f"lane {lane}: this backend has one lane (0)")

    def _state(self, bucket: Bucket) -> _BucketState:
        st = self._states.get(bucket)
        if st is None:
            raise TensorRTError(f"bucket {bucket.batch}x{bucket.length} was not prepared")
        return st

    def execute(
        self, bucket: Bucket, extra: Collection[str] = (), lane: int = 0
    ) -> Mapping[str, np.ndarray]:
        self._check_lane(lane)
        st = self._state(bucket)
        wanted = [n for n in extra if n != self.io.output]
        unknown = [n for n in wanted if n not in st.extras]
        if unknown:
            raise TensorRTError(
                f"this engine has no output {', '.join(unknown)}; its outputs: "
                f"{', '.join(self.io.outputs)}"
            )
        with self._lock:
            self._ensure_thread_device()
            if st.graph is not None:
                # Shapes and addresses were bound on this bucket's own context before the
                # capture and never change: re-binding would itself alter the captured state.
                self.cuda.graph_launch(st.graph, self._dev.stream)
                self.replays += 1
            else:
                self._run_plain(st)
            # Extra outputs stay in their device buffers after the batch; only a batch that
            # asks for one pays its copy back (queued on the same stream, so in order).
            for n in wanted:
                _, ptr, nbytes = st.extras[n]
                self.cuda.memcpy_dtoh_async(ptr, self._dev.tensors[n], nbytes, self._dev.stream)
            self._wait()
        return {self.io.output: st.output, **{n: st.extras[n][0] for n in wanted}}

    def execute_plain(self, bucket: Bucket) -> np.ndarray:
        """Run ``bucket`` without its graph (for measuring what the graph saves)."""
        st = self._state(bucket)
        with self._lock:
            self._ensure_thread_device()
            self._run_plain(st)
            self._wait()
        return st.output

    def _run_plain(self, st: _BucketState) -> None:
        if not self._enqueue(st):
            raise TensorRTError(
                f"execute_async_v3 failed for bucket {st.bucket.batch}x{st.bucket.length}"
            )
        self.enqueues += 1

    # -- reporting and teardown ----------------------------------------------------------
    def spec(self) -> BackendSpec:
        return TENSORRT_SPEC

    def lanes(self) -> Lanes:
        return Lanes()

    def counters(self) -> dict[CounterSpec, int]:
        return {GRAPH_REPLAYS: self.replays, PLAIN_ENQUEUES: self.enqueues}

    def info(self) -> BackendInfo:
        gpu = self._gpu
        fallbacks = {
            f"{b.batch}x{b.length}": st.fallback for b, st in self._states.items() if st.fallback
        }
        details: dict[str, object] = {
            "precision": self.config.precision,
            "plan": str(self.loader.plan_path) if self.loader.plan_path else None,
            "graphs": sum(1 for st in self._states.values() if st.graph is not None),
            "buckets": len(self._states),
            "contexts": len(self._states),
            "graph_fallbacks": fallbacks,
            # What the scratch would be if sized for the profile's batch x length corner.
            "activations_profile_max": self._scratch_profile_max,
            "replays": self.replays,
            "enqueues": self.enqueues,
        }
        if self._trt_module is not None:
            details["tensorrt"] = str(self._trt_module.__version__)
        if gpu is not None:
            details["compute_capability"] = gpu.compute_capability
        if self.rebuilt_because:
            details["rebuilt_because"] = list(self.rebuilt_because)
        if self.loader.manifest is not None:
            details["plan_built_at"] = self.loader.manifest.built_at
        device = f"cuda:{self.config.device}" + (f" ({gpu.name})" if gpu else "")
        return BackendInfo(
            name="tensorrt", device=device, memory=dict(self._memory), details=details
        )

    def _destroy_graph(self, st: _BucketState) -> None:
        graph, st.graph = st.graph, None
        try:
            self.cuda.graph_exec_destroy(graph)
        except CudaError as exc:
            log.warning("releasing a CUDA graph failed: %s", exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._cuda is None:
            return
        cu, dev = self._cuda, self._dev
        with self._lock:
            try:
                self._ensure_thread_device()
            except CudaError as exc:
                log.warning(
                    "selecting cuda:%d to release its memory failed: %s", self.config.device, exc
                )
            for st in self._states.values():
                if st.graph is not None:
                    self._destroy_graph(st)
            self._states.clear()  # drops the contexts before their scratch memory goes
            releases: list[tuple[Any, Any]] = [(cu.free_host, p) for p in dev.pinned]
            releases += [(cu.free, p) for p in dev.tensors.values()]
            releases += [(cu.free, p) for p in (dev.scratch,) if p is not None]
            if dev.event is not None:
                releases.append((cu.event_destroy, dev.event))
            if dev.stream is not None:
                releases.append((cu.stream_destroy, dev.stream))
            for release, handle in releases:
                try:
                    release(handle)
                except CudaError as exc:
                    log.warning("releasing CUDA resources failed: %s", exc)
            self._dev = _Device()
            self.loader.release()
