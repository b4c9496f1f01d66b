"""Backends describe themselves: the core sizes grids and batches from the spec, and the
metrics export the counters a backend declares, with no backend named above ``backends/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_backend import EXECUTED, FAKE_SPEC, FakeBackend
from trt_async.backends import BackendUnavailable, backend_spec, create_backend
from trt_async.backends.base import Backend, BackendOptions
from trt_async.backends.modelfiles import ModelFiles
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.backends.tensorrt.spec import TENSORRT_SPEC
from trt_async.core.config import ModelConfig, ModelKind
from trt_async.core.metrics import Metrics
from trt_async.core.runtime import ModelRuntime, create_runtime
from trt_async.core.tasks import ServedModel


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


def _filled_minilm(model_dir: Path, grid: BucketGrid, bucket: Bucket) -> Backend:
    """MiniLM on ONNX Runtime (2 threads) with ``bucket``'s inputs filled with ones."""
    files = ModelFiles.resolve(model_dir)
    backend = create_backend("onnxruntime", files, BackendOptions(intra_op_threads=2))
    backend.prepare(grid)
    for name, view in backend.inputs(bucket).items():
        view[:] = 0 if name == "token_type_ids" else 1
    return backend


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RSS from /proc")
def test_a_large_batch_does_not_keep_its_memory(minilm_model_dir: Path) -> None:
    # ONNX Runtime's CPU arena grows to the largest run and keeps it: a 16 x 128 MiniLM batch
    # left ~60 MiB behind, a 32 x 256 one ~780 MiB. Large batches give it back when they end.
    large = Bucket(16, 128)
    backend = _filled_minilm(minilm_model_dir, BucketGrid([1, 16], [8, 128], 2048), large)
    backend.execute(Bucket(1, 8))
    before = rss_mib()
    backend.execute(large)
    backend.execute(Bucket(1, 8))
    assert rss_mib() - before < 25
    backend.close()


def test_onnxruntime_threads_do_not_spin_between_batches(minilm_model_dir: Path) -> None:
    # ONNX Runtime's default lets intra-op threads spin after a run (about 0.06 CPU-seconds
    # over the next half second here, with session.intra_op.allow_spinning=1), CPU the event
    # loop and the tokenizer need between batches.
    import time

    bucket = Bucket(4, 32)
    backend = _filled_minilm(minilm_model_dir, BucketGrid([1, 4], [8, 32], 128), bucket)
    for _ in range(3):
        backend.execute(bucket)
    start = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - start < 0.02
    backend.close()
