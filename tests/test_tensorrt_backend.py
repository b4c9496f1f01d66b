"""The TensorRT backend on faithful fakes of tensorrt and the CUDA runtime (no GPU here)."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.fake_trt import EngineSpec, FakeCudaRuntime, FakeTensorRT, write_plan
from trt_async.backends import Backend, BackendUnavailable, create_backend
from trt_async.backends.modelfiles import ModelFiles
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.backends.tensorrt import (
    CudaError,
    MemoryBudgetExceeded,
    NoCudaDevice,
    TensorRTBackend,
    TensorRTError,
)
from trt_async.backends.tensorrt.cuda import Cuda
from trt_async.core.config import ModelConfig
from trt_async.core.heads import make_reducer
from trt_async.core.runner import BatchRunner
from trt_async.core.scheduler import Scheduler
from trt_async.core.tokenizer import Encoding

GRID = BucketGrid([1, 2, 4], [8, 16, 32], max_batch_tokens=64)


def table_for(spec: EngineSpec) -> np.ndarray:
    """The embedding table, regenerated here from the seed rather than read from the fake."""
    return (
        np.random.default_rng(spec.seed)
        .standard_normal((spec.vocab, spec.hidden))
        .astype(np.float32)
    )


def reference(spec: EngineSpec, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What the fake network computes, written independently of the fake."""
    table = table_for(spec)
    tokens = table[ids] * mask[..., None].astype(np.float32)
    if spec.output in ("last_hidden_state", "token_embeddings"):
        return tokens
    pooled = tokens.sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    if spec.output == "logits":
        w = np.random.default_rng(spec.seed + 1).standard_normal((spec.hidden, spec.labels))
        return pooled @ w.astype(np.float32)
    return pooled


def make_backend(
    tmp_path: Path,
    spec: EngineSpec | None = None,
    *,
    cuda: FakeCudaRuntime | None = None,
    **config: object,
) -> tuple[TensorRTBackend, FakeTensorRT, FakeCudaRuntime, EngineSpec]:
    spec = spec or EngineSpec(inputs=["input_ids", "attention_mask"], output="sentence_embedding")
    cuda = cuda or FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    plan = write_plan(tmp_path / "model.trt", spec)
    files = ModelFiles(root=tmp_path, tokenizer=tmp_path / "tokenizer.json", plan=plan)
    cfg = ModelConfig(model_path=str(plan), backend="tensorrt", **config)  # type: ignore[arg-type]
    backend = TensorRTBackend(files, cfg, trt_module=trt, cuda_runtime=cuda)
    return backend, trt, cuda, spec


def fill(
    backend: TensorRTBackend, bucket: Bucket, n: int, rng: np.random.Generator, vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``n`` real rows of random length, leaving garbage in the padding rows."""
    bufs = backend.inputs(bucket)
    ids, mask = bufs["input_ids"], bufs["attention_mask"]
    assert ids.shape == (bucket.batch, bucket.length)
    ids[...] = rng.integers(0, vocab, ids.shape)  # padding rows keep these random ids
    mask[...] = 1
    for row in range(n):
        k = int(rng.integers(1, bucket.length + 1))
        mask[row, k:] = 0
    return ids[:n].copy(), mask[:n].copy()


def test_satisfies_the_backend_protocol(tmp_path: Path) -> None:
    backend, *_ = make_backend(tmp_path)
    assert isinstance(backend, Backend)
    assert backend.io.inputs == ("input_ids", "attention_mask")
    assert backend.io.output == "sentence_embedding"
    assert backend.io.input_dtype == np.dtype(np.int64)


def test_every_bucket_replays_its_graph_with_correct_numbers(tmp_path: Path) -> None:
    backend, trt, cuda, spec = make_backend(tmp_path)
    seen: list[tuple[int, int, str]] = []
    backend.prepare(GRID, lambda done, total, what: seen.append((done, total, what)))
    buckets = list(GRID.buckets())
    assert len(seen) == len(buckets) and seen[-1][:2] == (len(buckets), len(buckets))
    assert backend.info().details["graphs"] == len(buckets)
    assert cuda.calls["cudaStreamBeginCapture"] == len(buckets)
    runs_before = sum(trt.kernel_runs.values())
    rng = np.random.default_rng(1)
    for bucket in buckets:
        n = max(1, bucket.batch - 1)
        ids, mask = fill(backend, bucket, n, rng, spec.vocab)
        out = backend.execute(bucket)
        assert out.shape == (bucket.batch, spec.hidden)
        np.testing.assert_allclose(out[:n], reference(spec, ids, mask), rtol=1e-5, atol=1e-6)
    assert backend.replays == len(buckets) and backend.enqueues == 0
    # The graphs really ran the network: one kernel run per replay, no new enqueues.
    assert sum(trt.kernel_runs.values()) - runs_before == len(buckets)
    backend.close()


def test_mixed_request_stream_keeps_each_buckets_output(tmp_path: Path) -> None:
    backend, _, _, spec = make_backend(tmp_path)
    backend.prepare(GRID)
    buckets = list(GRID.buckets())
    rng = np.random.default_rng(2)
    order = [buckets[i] for i in rng.integers(0, len(buckets), 40)]
    last: dict[Bucket, tuple[np.ndarray, np.ndarray]] = {}
    for bucket in order:
        n = int(rng.integers(1, bucket.batch + 1))
        ids, mask = fill(backend, bucket, n, rng, spec.vocab)
        out = backend.execute(bucket)
        np.testing.assert_allclose(out[:n], reference(spec, ids, mask), rtol=1e-5, atol=1e-6)
        last[bucket] = (out, reference(spec, ids, mask))
    # A bucket's output view stays valid while other buckets run.
    for out, expected in last.values():
        np.testing.assert_allclose(out[: len(expected)], expected, rtol=1e-5, atol=1e-6)
    assert backend.replays == len(order)
    backend.close()


@pytest.mark.parametrize(
    ("output", "dtype", "shape"),
    [
        ("last_hidden_state", "int32", (2, 16, 8)),
        ("logits", "int64", (2, 3)),
        ("sentence_embedding", "int32", (2, 8)),
    ],
)
def test_outputs_and_input_dtypes(tmp_path: Path, output: str, dtype: str, shape: tuple) -> None:
    spec = EngineSpec(
        inputs=["input_ids", "attention_mask", "token_type_ids"], output=output, input_dtype=dtype
    )
    backend, _, _, _ = make_backend(tmp_path, spec)
    backend.prepare(GRID)
    assert backend.io.input_dtype == np.dtype(dtype)
    assert backend.io.inputs == ("input_ids", "attention_mask", "token_type_ids")
    bucket = Bucket(2, 16)
    ids, mask = fill(backend, bucket, 2, np.random.default_rng(3), spec.vocab)
    assert backend.inputs(bucket)["token_type_ids"].dtype == np.dtype(dtype)
    out = backend.execute(bucket)
    assert out.shape == shape
    np.testing.assert_allclose(out, reference(spec, ids, mask), rtol=1e-5, atol=1e-5)
    backend.close()


def test_output_preference_follows_known_outputs(tmp_path: Path) -> None:
    # An engine exposing both: the pooled embedding is preferred, as with ONNX Runtime.
    spec = EngineSpec(
        inputs=["input_ids", "attention_mask"],
        output="last_hidden_state",
        extra_outputs=["sentence_embedding"],
    )
    backend, *_ = make_backend(tmp_path, spec)
    assert backend.io.output == "sentence_embedding"


@pytest.mark.parametrize("mode", ["enqueue", "invalidate"])
def test_capture_failure_falls_back_per_bucket(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend, trt, cuda, spec = make_backend(tmp_path)
    failing = {Bucket(2, 8), Bucket(1, 32)}
    trt.fail_capture = {(b.batch, b.length): mode for b in failing}
    with caplog.at_level("WARNING"):
        backend.prepare(GRID)
    # The sticky error left by the failed capture was cleared.
    assert cuda.last_error == 0
    fallbacks = backend.info().details["graph_fallbacks"]
    assert isinstance(fallbacks, dict) and set(fallbacks) == {"2x8", "1x32"}
    warnings = [r for r in caplog.records if "capture failed" in r.getMessage()]
    total = len(list(GRID.buckets()))
    assert len(warnings) == 1 and f"2 of {total} buckets" in warnings[0].getMessage()
    rng = np.random.default_rng(4)
    for bucket in GRID.buckets():
        ids, mask = fill(backend, bucket, bucket.batch, rng, spec.vocab)
        out = backend.execute(bucket)
        np.testing.assert_allclose(out, reference(spec, ids, mask), rtol=1e-5, atol=1e-6)
    assert backend.enqueues == len(failing)
    assert backend.replays == total - len(failing)
    backend.close()


def test_graphs_disabled_runs_plain_enqueues(tmp_path: Path) -> None:
    backend, _, cuda, spec = make_backend(tmp_path, graphs=False)
    backend.prepare(GRID)
    assert cuda.calls["cudaStreamBeginCapture"] == 0
    bucket = Bucket(4, 16)
    rng = np.random.default_rng(5)
    for _ in range(3):
        ids, mask = fill(backend, bucket, 3, rng, spec.vocab)
        out = backend.execute(bucket)
        np.testing.assert_allclose(out[:3], reference(spec, ids, mask), rtol=1e-5, atol=1e-6)
    assert backend.enqueues == 3 and backend.replays == 0
    assert backend.info().details["graphs"] == 0
    backend.close()


def test_execute_plain_matches_graph(tmp_path: Path) -> None:
    backend, _, _, spec = make_backend(tmp_path)
    backend.prepare(GRID)
    bucket = Bucket(2, 32)
    fill(backend, bucket, 2, np.random.default_rng(6), spec.vocab)
    graph = backend.execute(bucket).copy()
    plain = backend.execute_plain(bucket)
    np.testing.assert_array_equal(graph, plain)
    assert (backend.replays, backend.enqueues) == (1, 1)
    backend.close()


def test_memory_report_and_budget_refusal(tmp_path: Path) -> None:
    backend, _, cuda, spec = make_backend(tmp_path)
    backend.prepare(GRID)
    mem = backend.info().memory
    max_tokens = max(b.tokens for b in GRID.buckets())
    # Device I/O buffers are shared by all buckets: sized for the largest one only.
    assert mem["device_buffers"] == 2 * max_tokens * 8 + 4 * spec.hidden * 4
    assert mem["activations"] == 32 * 512 * spec.hidden * 4 * 2
    assert mem["total_device"] == mem["engine"] + mem["activations"] + mem["device_buffers"]
    assert cuda.used == mem["activations"] + mem["device_buffers"]
    backend.close()

    budget = mem["total_device"] / (1 << 30) / 2
    backend, _, cuda, _ = make_backend(
        tmp_path, cuda=FakeCudaRuntime(), gpu_memory_budget_gib=budget
    )
    with pytest.raises(MemoryBudgetExceeded, match=r"needs 0\.\d+ GiB on cuda:0.*activations"):
        backend.prepare(GRID)
    assert cuda.used == 0 and not cuda.host  # nothing was allocated, or it was released


def test_close_releases_everything_and_is_idempotent(tmp_path: Path) -> None:
    backend, _, cuda, _ = make_backend(tmp_path)
    backend.prepare(GRID)
    assert cuda.host and cuda.device and cuda.graphs
    backend.close()
    backend.close()
    assert not cuda.host and not cuda.device and cuda.used == 0
    assert all(g.destroyed for g in cuda.graphs)


def test_seed_plan_buckets_outside_profile_are_refused(tmp_path: Path) -> None:
    spec = EngineSpec(
        inputs=["input_ids", "attention_mask"],
        output="sentence_embedding",
        profile_max=[4, 16],
    )
    backend, *_ = make_backend(tmp_path, spec)
    with pytest.raises(TensorRTError, match=r"1x32, 2x32 .*outside .*profile 1x1\.\.4x16"):
        backend.prepare(GRID)


def test_plan_from_another_tensorrt_is_refused(tmp_path: Path) -> None:
    spec = EngineSpec(inputs=["input_ids"], output="logits", version="8.6.1")
    backend, *_ = make_backend(tmp_path, spec)
    with pytest.raises(TensorRTError, match="cannot deserialize"):
        backend.prepare(GRID)


def test_missing_device_is_reported(tmp_path: Path) -> None:
    backend, *_ = make_backend(tmp_path, cuda=FakeCudaRuntime(devices=0))
    with pytest.raises(NoCudaDevice, match="no CUDA device"):
        backend.prepare(GRID)
    backend, *_ = make_backend(tmp_path, cuda=FakeCudaRuntime(devices=1), device=3)
    with pytest.raises(CudaError, match="device 3 requested but only 1 visible"):
        backend.prepare(GRID)


def test_real_cuda_python_reports_no_device() -> None:
    """The boundary against the real cuda.bindings import on a machine without a GPU."""
    from cuda.bindings import runtime as cudart

    err, _ = cudart.cudaGetDeviceCount()
    if int(err) == 0:
        pytest.skip("a CUDA device is present; this checks the no-GPU error path")
    cuda = Cuda()  # the default: the real module
    assert cuda.rt is cudart
    with pytest.raises(
        NoCudaDevice, match=r"no CUDA device: cudaGetDeviceCount answered cudaError"
    ):
        cuda.device_count()
    with pytest.raises(CudaError, match=r"cudaMalloc \w+ cudaError\w+ \(.+\)"):
        cuda.malloc(16)
    bad = cudart.cudaError_t.cudaErrorInvalidValue
    with pytest.raises(CudaError) as info:
        cuda.check((bad, None), "cudaSomething")
    assert info.value.name == "cudaErrorInvalidValue" and info.value.code == 1
    assert "invalid argument" in str(info.value)


def test_worker_thread_selects_the_device(tmp_path: Path) -> None:
    backend, _, cuda, spec = make_backend(tmp_path)
    backend.prepare(GRID)
    calls = cuda.calls["cudaSetDevice"]
    result: dict[str, np.ndarray] = {}

    def work() -> None:
        fill(backend, Bucket(1, 8), 1, np.random.default_rng(7), spec.vocab)
        result["out"] = backend.execute(Bucket(1, 8)).copy()
        backend.execute(Bucket(1, 8))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert result["out"].shape == (1, spec.hidden)
    assert cuda.calls["cudaSetDevice"] == calls + 1  # once for the new thread, not per call


async def test_core_scheduler_drives_the_backend(tmp_path: Path) -> None:
    spec = EngineSpec(inputs=["input_ids", "attention_mask"], output="last_hidden_state")
    backend, _, _, _ = make_backend(tmp_path, spec)
    runner = BatchRunner(backend, make_reducer("mean"), pad_id=0, name="trt-test")
    await runner.call(lambda: backend.prepare(GRID))
    scheduler = Scheduler(runner, GRID)
    rng = random.Random(8)
    requests = [
        [
            Encoding(ids=[rng.randrange(1, spec.vocab) for _ in range(rng.randint(1, 32))])
            for _ in range(rng.randint(1, 5))
        ]
        for _ in range(12)
    ]
    results = await asyncio.gather(*(scheduler.submit(r) for r in requests))
    table = table_for(spec)
    for encodings, result in zip(requests, results, strict=True):
        expected = np.stack([table[list(e.ids)].mean(0) for e in encodings])
        np.testing.assert_allclose(result.rows, expected, rtol=1e-5, atol=1e-6)
    assert backend.replays >= 1 and backend.enqueues == 0
    await runner.call(backend.close)
    runner.shutdown()


def test_factory_without_tensorrt_says_how_to_install(tmp_path: Path) -> None:
    """Here tensorrt cannot be imported: the default path must fail with a clear message."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed; this checks the message when it is not")
    plan = write_plan(tmp_path / "model.trt", EngineSpec(inputs=["input_ids"], output="logits"))
    (tmp_path / "tokenizer.json").write_text("{}")
    files = ModelFiles.resolve(plan)
    backend = create_backend("tensorrt", files, ModelConfig(model_path=str(plan)))
    with pytest.raises(BackendUnavailable, match=r"TensorRT is not installed.*trt-async\[gpu\]"):
        backend.prepare(GRID)
