"""A TensorRT-free check of the real CUDA machinery behind the TensorRT backend.

Runs the project's own ``cuda.py`` and ``TensorRTBackend`` with a stand-in engine whose
``execute_async_v3`` does device-to-device copies through the shared scratch memory
(``input_ids`` -> scratch -> the read output, ``attention_mask`` -> the second output), so
every output can be checked exactly. What it exercises: pinned host buffers, the
non-blocking stream, ThreadLocal capture (and what Global mode and a wrong-thread end do),
H2D + work + D2H captured in one graph, instantiate, launch, completion events, a capture
that really fails (an allocation inside it) falling back to plain enqueues for that bucket
only, random interleaved replays and plain enqueues compared bit for bit, and teardown
without leaked device memory.

On a GPU machine it needs only numpy, msgspec and cuda-python (no TensorRT):

    python perf/gpu_smoke.py

The tests run the same code against the fake CUDA runtime. Exit status 1 if a check fails,
2 if no CUDA device answers.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trt_async.backends.base import BackendOptions
from trt_async.backends.modelfiles import ModelFiles
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.backends.tensorrt.cuda import (
    Cuda,
    CudaError,
    NoCudaDevice,
    host_array,
    load_runtime,
)
from trt_async.backends.tensorrt.runtime import TensorRTBackend

GRID = BucketGrid([1, 2, 4, 8], [16, 64, 256], max_batch_tokens=2048)
#: The bucket whose capture is made to fail for real.
FAILING = Bucket(2, 64)
INPUTS = ("input_ids", "attention_mask")
#: The read output (ids through the scratch) and a second output (the mask): an extra
#: output, bound always (TensorRT requires it) and copied back only when a batch asks.
OUTPUTS = ("sentence_embedding", "token_embeddings")
_MiB = 1 << 20


# -- the stand-in for the tensorrt module ---------------------------------------------------


class _Enum:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class _Namespace:
    def __init__(self, *names: str) -> None:
        for n in names:
            setattr(self, n, _Enum(n))


class StandInEngine:
    """Shapes: inputs (batch, length) int32; both outputs (batch, length) int32."""

    def __init__(self, module: StandInTensorRT, spec: dict[str, Any]) -> None:
        self.module = module
        self.max_batch, self.max_length = spec["profile_max"]

    num_io_tensors = len(INPUTS) + len(OUTPUTS)
    num_optimization_profiles = 1

    @property
    def device_memory_size_v2(self) -> int:
        return self.max_batch * self.max_length * 4

    def get_device_memory_size_for_profile_v2(self, profile: int) -> int:
        return self.device_memory_size_v2

    def get_tensor_name(self, index: int) -> str:
        return (*INPUTS, *OUTPUTS)[index]

    def get_tensor_mode(self, name: str) -> Any:
        io = self.module.TensorIOMode
        return io.INPUT if name in INPUTS else io.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return self.module.DataType.INT32

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, -1)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, int], ...]:
        return ((1, 1), (1, 1), (self.max_batch, self.max_length))

    def create_execution_context(self, strategy: Any = None) -> StandInContext:
        ctx = StandInContext(self)
        self.module.contexts.append(ctx)
        return ctx


class StandInContext:
    def __init__(self, engine: StandInEngine) -> None:
        self.engine = engine
        self.shape: tuple[int, int] | None = None
        self.addresses: dict[str, int] = {}
        self.scratch: tuple[int, int] | None = None

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        b, n = shape
        if b > self.engine.max_batch or n > self.engine.max_length:
            return False
        self.shape = (b, n)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shape if self.shape is not None else (-1, -1)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if int(ptr) % 256:
            return False
        self.addresses[name] = int(ptr)
        return True

    def update_device_memory_size_for_shapes(self) -> int:
        # Its work passes input_ids through the scratch: one int32 per token.
        if self.shape is None:
            return 0
        return self.shape[0] * self.shape[1] * 4

    def set_device_memory(self, memory: int, size: int) -> None:
        if self.shape is not None and size < self.shape[0] * self.shape[1] * 4:
            raise RuntimeError(f"scratch of {size} bytes is too small for {self.shape}")
        self.scratch = (int(memory), int(size))

    def execute_async_v3(self, stream_handle: int) -> bool:
        module = self.engine.module
        cu = module.cuda
        if self.shape is None or self.scratch is None:
            return False
        if set(self.addresses) != {*INPUTS, *OUTPUTS}:
            return False
        b, n = self.shape
        if (b, n) == (FAILING.batch, FAILING.length) and cu.is_capturing(stream_handle):
            # A real capture failure: allocating on the capturing thread is prohibited in
            # ThreadLocal mode; CUDA refuses the call and invalidates the capture.
            try:
                cu.free(cu.malloc(256))
            except CudaError as exc:
                module.refused.append(exc.name)
            return False
        nbytes = b * n * 4
        a = self.addresses
        scratch = self.scratch[0]
        cu.memcpy_dtod_async(scratch, a["input_ids"], nbytes, stream_handle)
        cu.memcpy_dtod_async(a["sentence_embedding"], scratch, nbytes, stream_handle)
        cu.memcpy_dtod_async(a["token_embeddings"], a["attention_mask"], nbytes, stream_handle)
        module.enqueues += 1
        return True


class StandInRuntime:
    def __init__(self, module: StandInTensorRT) -> None:
        self.module = module

    def deserialize_cuda_engine(self, plan: bytes) -> StandInEngine:
        return StandInEngine(self.module, json.loads(plan))


class StandInTensorRT:
    """Just the part of the ``tensorrt`` module the backend's runtime path touches."""

    __version__ = "stand-in"
    TensorIOMode = _Namespace("NONE", "INPUT", "OUTPUT")
    DataType = _Namespace("FLOAT", "HALF", "INT32", "INT64", "BF16")
    ExecutionContextAllocationStrategy = _Namespace("STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED")

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            pass

    def __init__(self, cuda: Cuda) -> None:
        self.cuda = cuda
        self.contexts: list[StandInContext] = []
        self.refused: list[str] = []
        self.enqueues = 0

    def Runtime(self, logger: Any) -> StandInRuntime:
        return StandInRuntime(self)


class CountingRuntime:
    """Delegates to a CUDA runtime module, counting the calls made through it."""

    def __init__(self, rt: Any) -> None:
        self._rt = rt
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._rt, name)
        if not name.startswith("cuda") or inspect.isclass(attr) or not callable(attr):
            return attr

        def call(*args: Any) -> Any:
            self.calls[name] += 1
            return attr(*args)

        return call


# -- checks ---------------------------------------------------------------------------------


class Smoke:
    def __init__(self, runtime: Any, out: Any) -> None:
        self.rt = CountingRuntime(runtime)
        self.cu = Cuda(self.rt)
        self.out = out
        self.results: list[tuple[str, bool, str]] = []
        self.rng = np.random.default_rng(0)

    def check(self, name: str, fn: Callable[[], str]) -> bool:
        started = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
            traceback.print_exc(file=self.out)
        ms = (time.perf_counter() - started) * 1e3
        self.results.append((name, ok, detail))
        self.out.write(f"[{'PASS' if ok else 'FAIL'}] {name} ({ms:.0f} ms): {detail}\n")
        self.out.flush()
        return ok

    def backend(self, folder: Path) -> tuple[TensorRTBackend, StandInTensorRT]:
        plan = folder / "model.plan"
        plan.write_text(json.dumps({"profile_max": [GRID.max_batch, GRID.max_length]}))
        files = ModelFiles(root=folder, tokenizer=folder / "tokenizer.json", plan=plan)
        trt = StandInTensorRT(self.cu)
        backend = TensorRTBackend(files, BackendOptions(), trt_module=trt, cuda_runtime=self.rt)
        backend._cuda = self.cu  # share the counting boundary with the stand-in
        return backend, trt

    def fill(self, backend: TensorRTBackend, bucket: Bucket) -> tuple[np.ndarray, np.ndarray]:
        bufs = backend.inputs(bucket)
        ids = self.rng.integers(0, 1 << 30, (bucket.batch, bucket.length), dtype=np.int32)
        mask = self.rng.integers(0, 2, (bucket.batch, bucket.length), dtype=np.int32)
        bufs["input_ids"][...] = ids
        bufs["attention_mask"][...] = mask
        return ids, mask

    def device_read(self, backend: TensorRTBackend, name: str, shape: tuple[int, int]) -> Any:
        """Copy a device tensor back through a pinned buffer of our own."""
        nbytes = shape[0] * shape[1] * 4
        ptr = self.cu.host_alloc(nbytes)
        try:
            stream = backend._dev.stream
            self.cu.memcpy_dtoh_async(ptr, backend._dev.tensors[name], nbytes, stream)
            self.cu.stream_synchronize(stream)
            return host_array(ptr, shape, np.dtype(np.int32)).copy()
        finally:
            self.cu.free_host(ptr)

    def run(self) -> int:
        try:
            count = self.cu.device_count()
            info = self.cu.device_info(0)
        except NoCudaDevice as exc:
            self.out.write(f"gpu_smoke: {exc}\n")
            return 2
        self.out.write(
            f"device: {info.name} (sm {info.compute_capability}, "
            f"{info.total_memory / (1 << 30):.1f} GiB, {count} visible)\n"
        )
        self.cu.set_device(0)
        with tempfile.TemporaryDirectory() as tmp:
            self.checks(Path(tmp))
        failed = [name for name, ok, _ in self.results if not ok]
        self.out.write(
            f"\nsummary: {len(self.results) - len(failed)} of {len(self.results)} checks passed"
            + (f"; FAILED: {', '.join(failed)}\n" if failed else "\n")
        )
        return 1 if failed else 0

    def checks(self, folder: Path) -> None:
        buckets = list(GRID.buckets())
        state: dict[str, Any] = {}

        def prepare() -> str:
            free_before = self.cu.mem_get_info()[0]
            backend, trt = self.backend(folder)
            before = Counter(self.rt.calls)
            backend.prepare(GRID)
            calls = self.rt.calls - before
            state.update(backend=backend, trt=trt, free_before=free_before)
            details = backend.info().details
            assert details["buckets"] == len(buckets), details
            assert len(trt.contexts) == len(buckets), "one execution context per bucket"
            scratch = {ctx.scratch for ctx in trt.contexts}
            assert len(scratch) == 1, "all contexts share one scratch allocation"
            pinned = calls["cudaHostAlloc"]
            assert pinned == len(buckets) * (len(INPUTS) + len(OUTPUTS)), pinned
            assert calls["cudaStreamCreateWithFlags"] == 1
            assert calls["cudaStreamBeginCapture"] == len(buckets)
            return (
                f"{len(buckets)} buckets, {details['graphs']} graphs, {len(trt.contexts)} "
                f"contexts on one scratch, {pinned} pinned buffers, "
                f"{calls['cudaMalloc']} device allocations"
            )

        if not self.check("prepare: pinned buffers, stream, one context per bucket", prepare):
            return
        backend: TensorRTBackend = state["backend"]
        trt: StandInTensorRT = state["trt"]

        def fallback() -> str:
            fallbacks = backend.info().details["graph_fallbacks"]
            key = f"{FAILING.batch}x{FAILING.length}"
            assert isinstance(fallbacks, dict) and set(fallbacks) == {key}, fallbacks
            assert trt.refused, "the allocation inside the capture was not refused"
            assert self.cu.get_last_error() == 0, "a sticky error was left behind"
            assert not self.cu.is_capturing(backend._dev.stream)
            ids, _ = self.fill(backend, FAILING)
            before = Counter(self.rt.calls)
            out = backend.execute(FAILING)[backend.io.output]
            calls = self.rt.calls - before
            assert np.array_equal(out, ids), "plain enqueue output differs"
            # 2 H2D copies, 3 device-to-device copies of the stand-in's work, 1 D2H copy.
            assert calls["cudaGraphLaunch"] == 0 and calls["cudaMemcpyAsync"] == 6, calls
            return (
                f"bucket {key}: allocation in capture refused ({trt.refused[0]}), capture "
                f"ended ({fallbacks[key][:70]}...), runs as plain enqueue, output exact"
            )

        self.check("forced capture failure -> per-bucket fallback", fallback)

        def replays() -> str:
            graphs = [b for b in buckets if b != FAILING]
            for b in graphs:
                ids, mask = self.fill(backend, b)
                before = Counter(self.rt.calls)
                out = backend.execute(b)[backend.io.output]
                calls = self.rt.calls - before
                # One launch holds the H2D copies, the work and the D2H copy.
                assert calls["cudaGraphLaunch"] == 1 and calls["cudaMemcpyAsync"] == 0, calls
                assert calls["cudaEventRecord"] == 1 and calls["cudaEventSynchronize"] == 1
                assert np.array_equal(out, ids), f"{b}: graph output differs from its input"
                second = self.device_read(backend, "token_embeddings", (b.batch, b.length))
                assert np.array_equal(second, mask), f"{b}: second output not written"
                # Asked for, the extra output comes back by one copy queued after the launch.
                ids, mask = self.fill(backend, b)
                before = Counter(self.rt.calls)
                both = backend.execute(b, ["token_embeddings"])
                calls = self.rt.calls - before
                assert calls["cudaGraphLaunch"] == 1 and calls["cudaMemcpyAsync"] == 1, calls
                assert np.array_equal(both[backend.io.output], ids), f"{b}: output differs"
                extra = both["token_embeddings"]
                assert np.array_equal(extra, mask.astype(extra.dtype)), f"{b}: extra differs"
            return (
                f"{len(graphs)} graphs: one cudaGraphLaunch each (no copies outside), fresh "
                "inputs in, exact outputs back in pinned memory, second output written and "
                "copied back only when asked"
            )

        self.check("graph replay: H2D + work + D2H in one graph, completion event", replays)

        def interleaved() -> str:
            expected: dict[Bucket, np.ndarray] = {}
            inputs: dict[Bucket, tuple[np.ndarray, np.ndarray]] = {}
            for b in buckets:
                inputs[b] = self.fill(backend, b)
                expected[b] = backend.execute_plain(b).copy()
            modes = Counter()
            for _ in range(300):
                b = buckets[int(self.rng.integers(len(buckets)))]
                bufs = backend.inputs(b)
                bufs["input_ids"][...], bufs["attention_mask"][...] = inputs[b]
                graph = bool(self.rng.random() < 0.5)
                out = backend.execute(b)[backend.io.output] if graph else backend.execute_plain(b)
                modes["graph" if graph and b != FAILING else "plain"] += 1
                assert out.tobytes() == expected[b].tobytes(), f"{b} differs"
            return f"300 runs in random order ({dict(modes)}), all bit for bit equal"

        self.check("interleaved replays and plain enqueues, random order", interleaved)

        def worker_thread() -> str:
            b = buckets[-1]
            ids, _ = self.fill(backend, b)
            result: list[Any] = []

            def work() -> None:
                try:
                    result.append(backend.execute(b)[backend.io.output].copy())
                except Exception as exc:
                    result.append(exc)

            t = threading.Thread(target=work)
            t.start()
            t.join(30)
            assert result and isinstance(result[0], np.ndarray), result
            assert np.array_equal(result[0], ids)
            return f"bucket {b.batch}x{b.length} replayed from a second thread, output exact"

        self.check("replay from another thread (device selected per thread)", worker_thread)

        def capture_modes() -> str:
            stream = self.cu.stream_create()
            seen: dict[str, Any] = {}

            def alloc_elsewhere(key: str) -> None:
                def run() -> None:
                    try:
                        self.cu.free(self.cu.malloc(1 << 16))
                        seen[key] = "ok"
                    except CudaError as exc:
                        seen[key] = exc.name

                t = threading.Thread(target=run)
                t.start()
                t.join(30)

            try:
                self.cu.begin_capture(stream, "ThreadLocal")
                alloc_elsewhere("threadlocal")
                graph = self.cu.end_capture(stream)
                self.cu.graph_destroy(graph)
                assert seen["threadlocal"] == "ok", seen

                self.cu.begin_capture(stream, "Global")
                alloc_elsewhere("global")
                try:
                    self.cu.graph_destroy(self.cu.end_capture(stream))
                    seen["global_end"] = "ok"
                except CudaError as exc:
                    seen["global_end"] = exc.name
                self.cu.get_last_error()
                assert seen["global"] != "ok", seen

                self.cu.begin_capture(stream, "ThreadLocal")
                ended: list[str] = []

                def end_elsewhere() -> None:
                    try:
                        self.cu.end_capture(stream)
                        ended.append("ok")
                    except CudaError as exc:
                        ended.append(exc.name)

                t = threading.Thread(target=end_elsewhere)
                t.start()
                t.join(30)
                try:
                    self.cu.graph_destroy(self.cu.end_capture(stream))
                    seen["own_end"] = "ok"
                except CudaError as exc:
                    seen["own_end"] = exc.name
                self.cu.get_last_error()
                assert ended == ["cudaErrorStreamCaptureWrongThread"], ended
            finally:
                if self.cu.is_capturing(stream):
                    with contextlib.suppress(CudaError):
                        self.cu.end_capture(stream)
                self.cu.get_last_error()
                self.cu.stream_destroy(stream)
            return (
                "other thread's cudaMalloc during ThreadLocal capture: ok; during Global "
                f"capture: {seen['global']} (end: {seen['global_end']}); end from another "
                f"thread: {ended[0]} (then own end: {seen['own_end']})"
            )

        self.check("capture modes: ThreadLocal vs Global, wrong-thread end", capture_modes)

        def teardown() -> str:
            backend.close()
            free_after = [self.cu.mem_get_info()[0]]
            for _ in range(2):
                again, _ = self.backend(folder)
                again.prepare(GRID)
                again.close()
                free_after.append(self.cu.mem_get_info()[0])
            fake = getattr(self.rt._rt, "device", None)
            if fake is not None:
                assert not fake and not self.rt._rt.host, "fake runtime still holds memory"
            drift = [(state["free_before"] - f) / _MiB for f in free_after]
            # The first cycle may keep driver-side allocations (module loading, graph
            # pools); later cycles must give back exactly what they took.
            assert abs(free_after[2] - free_after[1]) <= 2 * _MiB, drift
            assert drift[0] <= 64, drift
            return "free device memory vs before prepare, after 3 prepare/close cycles: " + (
                ", ".join(f"{d:+.1f} MiB" for d in drift)
            )

        self.check("teardown without leaks", teardown)


def main(argv: list[str] | None = None, runtime: Any | None = None, out: Any = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    out = out if out is not None else sys.stdout
    if runtime is None:
        try:
            runtime = load_runtime()
        except ImportError as exc:
            out.write(f"gpu_smoke: {exc}\n")
            return 2
    return Smoke(runtime, out).run()


if __name__ == "__main__":
    sys.exit(main())
