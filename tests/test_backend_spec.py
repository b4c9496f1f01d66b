"""Backends describe themselves: the core sizes grids and batches from the spec, and the
metrics export the counters a backend declares, with no backend named above ``backends/``."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.fake_backend import EXECUTED, FAKE_SPEC, FakeBackend
from trt_async.backends import BackendUnavailable, backend_spec, create_backend, replace_backend
from trt_async.backends.base import Backend, BackendOptions, Lanes
from trt_async.backends.modelfiles import ModelFiles
from trt_async.backends.onnxruntime import RACE_BELOW_S, threads_pay
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.backends.tensorrt.spec import TENSORRT_SPEC
from trt_async.core.config import ModelConfig, ModelKind
from trt_async.core.metrics import Metrics
from trt_async.core.runtime import ModelRuntime, create_runtime
from trt_async.core.tasks import ServedModel
from trt_async.core.tokenizer import Encoding


def test_default_lengths_end_at_the_models_max_length() -> None:
    assert TENSORRT_SPEC.lengths(512) == [16, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    assert TENSORRT_SPEC.lengths(100) == [16, 32, 48, 64, 96, 100]
    cpu = backend_spec("onnxruntime")
    # Every 8 tokens up to 128, every 16 up to 256, every 32 beyond.
    assert cpu.lengths(300)[:3] == [8, 16, 24]
    assert cpu.lengths(300)[-4:] == [240, 256, 288, 300]
    assert cpu.batch_sizes == tuple(range(1, 33))


def test_dtype_follows_the_precision_only_where_the_backend_has_precisions() -> None:
    assert TENSORRT_SPEC.dtype("fp16") == "float16"
    assert TENSORRT_SPEC.dtype("bf16") == "bfloat16"
    assert TENSORRT_SPEC.dtype("fp32") == "float32"
    assert backend_spec("onnxruntime").dtype("fp16") == "float32"


def test_unknown_backend_names_the_known_ones(minilm_model_dir: Path) -> None:
    files = ModelFiles.resolve(minilm_model_dir)
    with pytest.raises(
        BackendUnavailable, match="unknown backend 'cuda'; use onnxruntime, tensorrt"
    ):
        create_backend("cuda", files, BackendOptions())


def test_a_replaced_backend_comes_from_its_factory_until_undone(tmp_path: Path) -> None:
    """What perf/gpu_model.py does to serve a stand-in engine: the factory makes the backend,
    the spec stays the backend's own, and the undo brings the real class back."""
    from trt_async.backends.tensorrt import TensorRTBackend

    files = ModelFiles(root=tmp_path, tokenizer=tmp_path / "tokenizer.json")
    options = BackendOptions(intra_op_threads=1)
    made: list[tuple[ModelFiles, BackendOptions]] = []

    def factory(files: ModelFiles, options: BackendOptions) -> Backend:
        made.append((files, options))
        return FakeBackend()

    spec = backend_spec("tensorrt")
    undo = replace_backend("tensorrt", factory)
    try:
        assert isinstance(create_backend("tensorrt", files, options), FakeBackend)
        assert made == [(files, options)]
        assert backend_spec("tensorrt") is spec
    finally:
        undo()
    assert isinstance(create_backend("tensorrt", files, options), TensorRTBackend)
    with pytest.raises(BackendUnavailable, match="unknown backend 'cuda'"):
        replace_backend("cuda", factory)


def _runtime(model_dir: Path, backend: FakeBackend, **options: object) -> ModelRuntime:
    files = ModelFiles.resolve(model_dir)
    config = ModelConfig(model_path=str(model_dir), max_length=100, **options)  # type: ignore[arg-type]
    return create_runtime(files, config, backend=backend, label="fake")


def test_grid_and_batch_cost_come_from_the_backends_spec(minilm_model_dir: Path) -> None:
    runtime = _runtime(minilm_model_dir, FakeBackend())
    assert runtime.grid.batch_sizes == FAKE_SPEC.batch_sizes
    assert list(runtime.grid.lengths) == [16, 32, 64, 100]
    assert runtime.scheduler._overhead == FAKE_SPEC.batch_overhead_tokens
    # The config still wins over the spec.
    runtime = _runtime(
        minilm_model_dir, FakeBackend(), batch_sizes=[1, 3], lengths=[50], batch_overhead_tokens=7
    )
    assert runtime.grid.batch_sizes == (1, 3)
    assert list(runtime.grid.lengths) == [50, 100]
    assert runtime.scheduler._overhead == 7


async def test_metrics_export_the_counters_a_backend_declares(minilm_model_dir: Path) -> None:
    backend = FakeBackend()
    runtime = _runtime(minilm_model_dir, backend)
    model = ServedModel("fake-embed", ModelKind.EMBEDDING, runtime.config, runtime)
    metrics = Metrics(lambda: [model])
    await runtime.start()
    try:
        ran = len(backend.executed)
        assert ran >= 1  # the start-up probe
        text = metrics.render().decode()
        assert f"# HELP trt_async_{EXECUTED.family}_total {EXECUTED.help}" in text
        assert f'trt_async_{EXECUTED.family}_total{{model="fake-embed"}} {float(ran)}' in text
    finally:
        await runtime.close()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _filled_minilm(model_dir: Path, grid: BucketGrid, bucket: Bucket, lane: int = 0) -> Backend:
    """MiniLM on ONNX Runtime (2 threads) with ``bucket``'s inputs filled with ones."""
    files = ModelFiles.resolve(model_dir)
    backend = create_backend("onnxruntime", files, BackendOptions(intra_op_threads=2))
    backend.prepare(grid)
    for name, view in backend.inputs(bucket, lane).items():
        view[:] = 0 if name == "token_type_ids" else 1
    return backend


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RSS from /proc")
def test_a_large_batch_does_not_keep_its_memory(minilm_model_dir: Path) -> None:
    # ONNX Runtime's CPU arena grows to the largest run and keeps it: a 32 x 128 MiniLM batch
    # left ~100 MiB behind, a 32 x 256 one ~780 MiB. Large batches give it back when they end
    # (2-8 MiB of growth here). The bound sits between the two, clear of the few tens of MiB
    # a full test run's other threads can add to the process meanwhile.
    large = Bucket(32, 128)
    backend = _filled_minilm(minilm_model_dir, BucketGrid([1, 32], [8, 128], 4096), large)
    backend.execute(Bucket(1, 8))
    before = rss_mib()
    backend.execute(large)
    backend.execute(Bucket(1, 8))
    assert rss_mib() - before < 50
    backend.close()


def test_onnxruntime_threads_do_not_spin_between_batches(minilm_model_dir: Path) -> None:
    # ONNX Runtime's default lets intra-op threads spin after a run (about 0.06 CPU-seconds
    # over the next half second here, with session.intra_op.allow_spinning=1), CPU the event
    # loop and the tokenizer need between batches.
    import time

    bucket = Bucket(4, 32)
    grid = BucketGrid([1, 4], [8, 32], 128)
    # The solo lane's session is the one with a pool of intra-op threads.
    solo = 2
    backend = _filled_minilm(minilm_model_dir, grid, bucket, solo)
    assert backend.lanes() == Lanes(2, solo=True)
    for _ in range(3):
        backend.execute(bucket, (), solo)
    start = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - start < 0.02
    backend.close()


def _minilm_inputs(backend: Backend, bucket: Bucket, lane: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, view in backend.inputs(bucket, lane).items():
        if name == "input_ids":
            view[:] = rng.integers(1000, 2000, size=view.shape)
            view[:, 0] = 101
        else:
            view[:] = 0 if name == "token_type_ids" else 1


def test_onnxruntime_lanes_compute_the_same_and_run_side_by_side(minilm_model_dir: Path) -> None:
    """Two threads on two one-thread lanes at once, and the solo lane alone, give the same
    rows for the same inputs: each lane has buffers of its own."""
    files = ModelFiles.resolve(minilm_model_dir)
    backend = create_backend("onnxruntime", files, BackendOptions(intra_op_threads=2))
    assert backend.lanes() == Lanes(2, solo=True)
    grid = BucketGrid([1, 4], [8, 32], 128)
    backend.prepare(grid)
    bucket = Bucket(4, 32)
    expected = {}
    for seed in (1, 2):
        _minilm_inputs(backend, bucket, 2, seed)
        expected[seed] = backend.execute(bucket, (), 2)[backend.io.output].copy()
    assert not np.allclose(expected[1], expected[2])
    got: dict[int, list[np.ndarray]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def lane_work(lane: int) -> None:
        barrier.wait()
        for _ in range(5):
            _minilm_inputs(backend, bucket, lane, lane + 1)
            got[lane].append(backend.execute(bucket, (), lane)[backend.io.output].copy())

    threads = [threading.Thread(target=lane_work, args=(lane,)) for lane in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for lane in (0, 1):
        assert len(got[lane]) == 5
        for out in got[lane]:
            np.testing.assert_allclose(out, expected[lane + 1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="lane 3 is not one of this backend's 3"):
        backend.inputs(bucket, 3)
    backend.close()


@pytest.mark.parametrize(
    ("threads", "parallel", "lanes"),
    [(2, None, Lanes(2, solo=True)), (2, 1, Lanes(1)), (1, None, Lanes(1)), (4, 2, Lanes(2, True))],
)
def test_onnxruntime_lanes_follow_threads_and_parallel_batches(
    minilm_model_dir: Path, threads: int, parallel: int | None, lanes: Lanes
) -> None:
    files = ModelFiles.resolve(minilm_model_dir)
    options = BackendOptions(intra_op_threads=threads, parallel_batches=parallel)
    backend = create_backend("onnxruntime", files, options)
    assert backend.lanes() == lanes
    details = backend.info().details
    assert details["parallel_batches"] == lanes.parallel
    assert details["threads_per_parallel_batch"] == max(1, threads // lanes.parallel)
    backend.close()


def test_intra_op_threads_pay_only_when_every_thread_runs_a_lone_batch_clearly_faster() -> None:
    assert threads_pay(0.0070, 0.0055)  # all-MiniLM-L6-v2 at 32 tokens on two threads
    assert not threads_pay(0.00007, 0.00014)  # a 1-layer, 32-wide BERT: threads cost it
    assert not threads_pay(0.0010, 0.00095)  # within noise of each other: one thread
    assert threads_pay(0.0082, 0.0)  # over RACE_BELOW_S on one thread: not raced, threads pay


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one thread either way")
def test_a_model_too_small_for_threads_runs_one_batch_at_a_time_on_one_thread(
    bert_rerank_dir: Path,
) -> None:
    # A 1-layer BERT's operators take less than the threads' meeting at each of them: by
    # default the backend races a lone batch on one thread against every thread, and
    # keeps one thread and one lane when threads do not pay (see threads_pay).
    files = ModelFiles.resolve(Path(bert_rerank_dir))
    backend = create_backend("onnxruntime", files, BackendOptions())
    details = backend.info().details
    probe = details["lone_batch_ms"]
    assert isinstance(probe, dict)
    assert not threads_pay(probe["one_thread"], probe["all_threads"]), details
    assert backend.lanes() == Lanes(1)
    assert (details["intra_op_threads"], details["solo_lane"]) == (1, False)
    backend.close()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one thread either way")
def test_a_real_model_keeps_its_lanes_unraced_however_busy_the_machine(
    minilm_model_dir: Path,
) -> None:
    threads = os.cpu_count() or 1
    files = ModelFiles.resolve(minilm_model_dir)
    # MiniLM's lone batch takes milliseconds on one thread (more on a busy machine), over
    # the race's bound: its lanes are kept without a race, which a busy machine could lose
    # (a thread here keeps the cores busy while it loads, as other servers starting do).
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    busy = threading.Thread(target=spin)
    busy.start()
    try:
        backend = create_backend("onnxruntime", files, BackendOptions())
    finally:
        stop.set()
        busy.join()
    probe = backend.info().details["lone_batch_ms"]
    assert isinstance(probe, dict)
    assert probe["one_thread"] >= RACE_BELOW_S * 1e3 and probe["all_threads"] == 0.0, probe
    assert backend.lanes() == Lanes(threads, solo=True), probe
    backend.close()
    # Threads or lanes set in the config are kept as set (a solo lane with every thread
    # beside one-thread lanes): nothing is raced.
    backend = create_backend("onnxruntime", files, BackendOptions(parallel_batches=threads))
    assert "lone_batch_ms" not in backend.info().details
    assert backend.lanes() == Lanes(threads, solo=True)
    backend.close()


async def test_closing_a_runtime_waits_for_the_batches_on_every_lane(
    minilm_model_dir: Path,
) -> None:
    """With several lanes no single thread orders close() after the batches: here a batch
    runs on the solo lane while the parallel lanes' threads are free, and the runtime
    still waits for it before the backend frees what it uses."""
    backend = FakeBackend(lanes=Lanes(2, solo=True))
    runtime = _runtime(minilm_model_dir, backend)
    await runtime.start()
    backend.gate.clear()
    backend.started.clear()
    request = asyncio.ensure_future(runtime.scheduler.submit([Encoding([1, 5, 5])]))
    await asyncio.wait_for(asyncio.to_thread(backend.started.wait, 5), timeout=6)
    closing = asyncio.ensure_future(runtime.close())
    await asyncio.sleep(0.05)
    assert not backend.closed and not closing.done()
    backend.gate.set()
    await asyncio.wait_for(closing, timeout=5)
    assert backend.closed
    assert backend.executed_lanes[-1] == 2
    assert (await request).rows.shape[0] == 1
