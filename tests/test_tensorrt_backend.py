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
from trt_async.backends.base import Lanes
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


def test_one_lane_and_no_other(tmp_path: Path) -> None:
    """Every bucket shares one stream and one scratch, so batches never overlap: the
    backend declares a single lane and refuses to hand out or run any other."""
    backend, *_ = make_backend(tmp_path)
    assert backend.lanes() == Lanes()
    backend.prepare(GRID)
    bucket = next(iter(GRID.buckets()))
    with pytest.raises(TensorRTError, match="lane 1: this backend has one lane"):
        backend.inputs(bucket, 1)
    with pytest.raises(TensorRTError, match="lane 1: this backend has one lane"):
        backend.execute(bucket, (), 1)
    backend.close()


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
        out = backend.execute(bucket)[backend.io.output]
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
        out = backend.execute(bucket)[backend.io.output]
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
    out = backend.execute(bucket)[backend.io.output]
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
        out = backend.execute(bucket)[backend.io.output]
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
        out = backend.execute(bucket)[backend.io.output]
        np.testing.assert_allclose(out[:3], reference(spec, ids, mask), rtol=1e-5, atol=1e-6)
    assert backend.enqueues == 3 and backend.replays == 0
    assert backend.info().details["graphs"] == 0
    backend.close()


def test_execute_plain_matches_graph(tmp_path: Path) -> None:
    backend, _, _, spec = make_backend(tmp_path)
    backend.prepare(GRID)
    bucket = Bucket(2, 32)
    fill(backend, bucket, 2, np.random.default_rng(6), spec.vocab)
    graph = backend.execute(bucket)[backend.io.output].copy()
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
    # The scratch holds the bucket whose shapes need most (the fake's rule: linear in
    # tokens), not the profile's 32 x 512 corner, which no bucket of GRID reaches.
    assert mem["activations"] == max_tokens * spec.hidden * spec.scratch_factor
    assert backend.info().details["activations_profile_max"] == (
        32 * 512 * spec.hidden * spec.scratch_factor
    )
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


def default_grid_scratch(
    tmp_path: Path, max_length: int, hidden: int, budget_gib: float | None = None
) -> tuple[int, int, int]:
    """Prepare the server's default TensorRT grid for a ``max_length`` model on the fakes;
    (scratch the backend allocated, scratch for the profile's corner, largest bucket's
    tokens). The fake's scratch rule: 16 bytes per token and hidden unit."""
    from trt_async.backends.tensorrt.spec import TENSORRT_SPEC
    from trt_async.core.runtime import bucket_grid

    grid = bucket_grid(ModelConfig(model_path="m", backend="tensorrt"), TENSORRT_SPEC, max_length)
    spec = EngineSpec(
        inputs=["input_ids", "attention_mask"],
        output="sentence_embedding",
        hidden=hidden,
        vocab=8,
        profile_min=[1, grid.lengths[0]],
        profile_opt=[8, 128],
        profile_max=[grid.max_batch, grid.max_length],
        scratch_factor=16,
    )
    backend, *_ = make_backend(tmp_path, spec, gpu_memory_budget_gib=budget_gib)
    backend.prepare(grid)
    scratch = backend.info().memory["activations"]
    corner = backend.info().details["activations_profile_max"]
    backend.close()
    return scratch, int(corner), max(b.tokens for b in grid.buckets())  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("max_length", "hidden", "ratio"), [(512, 384, 2), (8192, 1024, 32)], ids=["512", "8192"]
)
def test_scratch_fits_the_largest_bucket_not_the_profile_corner(
    tmp_path: Path, max_length: int, hidden: int, ratio: int
) -> None:
    """The default grid's profile spans 64 rows x max length, but the 16384-token budget
    keeps every bucket at or under 16384 tokens: the scratch is sized for that (each
    context's update_device_memory_size_for_shapes), 2x less at 512 tokens and 32x less
    at 8192 (bge-m3) than the corner the old code allocated. With a 1 GiB budget the old
    sizing refused the 8192-token model (8 GiB of scratch) before allocating anything."""
    scratch, corner, tokens = default_grid_scratch(tmp_path, max_length, hidden, budget_gib=1.0)
    assert tokens == 16384
    assert scratch == tokens * hidden * 16
    assert corner == 64 * max_length * hidden * 16 == ratio * scratch
    # perf/RESULTS.md's table comes from these lines (pytest -s).
    print(
        f"\n{max_length} tokens, hidden {hidden}: scratch {scratch / 2**20:g} MiB for the largest "
        f"bucket ({tokens} tokens), {corner / 2**20:g} MiB for the profile's corner"
    )


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
        result["out"] = backend.execute(Bucket(1, 8))[backend.io.output].copy()
        backend.execute(Bucket(1, 8))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert result["out"].shape == (1, spec.hidden)
    assert cuda.calls["cudaSetDevice"] == calls + 1  # once for the new thread, not per call


def in_thread(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` on a new thread (as the core's loader and runner threads do); re-raise."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def test_second_gpu_is_used_by_every_thread(tmp_path: Path) -> None:
    """device: 1 with the IO read on one thread (the loader), prepare on another (the
    runner) and execute on a third: the engine, its contexts, the stream, every buffer and
    every kernel must be on cuda:1. The old backend selected the device once and trusted a
    cached answer on other threads, so prepare's allocations landed on cuda:0."""
    cuda = FakeCudaRuntime(devices=2)
    backend, _, cuda, spec = make_backend(tmp_path, cuda=cuda, device=1)
    assert in_thread(lambda: backend.io).output == "sentence_embedding"
    in_thread(lambda: backend.prepare(GRID))
    assert set(cuda.device_of.values()) == {1}
    assert {s.device for s in cuda.streams.values()} == {1}
    bucket = Bucket(2, 16)

    def run() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, mask = fill(backend, bucket, 2, np.random.default_rng(14), spec.vocab)
        return ids, mask, backend.execute(bucket)[backend.io.output].copy()

    ids, mask, out = in_thread(run)
    np.testing.assert_allclose(out, reference(spec, ids, mask), rtol=1e-5, atol=1e-6)
    assert backend.info().details["graphs"] == len(list(GRID.buckets()))
    in_thread(backend.close)
    assert not cuda.device and not cuda.host


def test_plan_loader_stands_apart_from_execution(tmp_path: Path) -> None:
    """Plan loading and IO discovery live in PlanLoader: it answers the IO question and
    deserialises the engine on the configured device without any execution state (no
    context, stream or buffer); the backend's execution uses that same engine."""
    from trt_async.backends.tensorrt.loader import PlanLoader

    cuda = FakeCudaRuntime(devices=2)
    trt = FakeTensorRT(cuda)
    spec = EngineSpec(inputs=["input_ids", "attention_mask"], output="sentence_embedding")
    plan = write_plan(tmp_path / "model.trt", spec)
    files = ModelFiles(root=tmp_path, tokenizer=tmp_path / "tokenizer.json", plan=plan)
    config = ModelConfig(model_path=str(plan), backend="tensorrt", device=1)
    cu = Cuda(cuda)
    loader = PlanLoader(
        files, config, plans_dir=tmp_path / "graphs", trt=lambda: trt, cuda=lambda: cu,
        gpu=lambda: cu.device_info(1), use_device=lambda: cu.set_device(1),
    )  # fmt: skip
    assert loader.io.output == "sentence_embedding" and loader.outputs == ["sentence_embedding"]
    assert loader.engine is not None and loader.engine.device == 1
    assert trt.contexts == [] and not cuda.device and not cuda.streams
    engine, io = loader.load(GRID)
    assert engine is loader.engine and io == loader.io and trt.deserialized == 1

    backend = TensorRTBackend(files, config, trt_module=trt, cuda_runtime=cuda)
    backend.prepare(GRID)
    assert {ctx.engine for ctx in trt.contexts} == {backend.loader.engine}
    backend.close()
    assert backend.loader.engine is None


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


# -- the real TensorRT rules: every tensor bound, a context per bucket, nothing re-bound ----


def test_multi_output_engine_binds_every_tensor(tmp_path: Path) -> None:
    """Exports with two outputs (token + pooled) must prepare and run: TensorRT refuses to
    enqueue while any I/O tensor lacks an address, read by the server or not."""
    spec = EngineSpec(
        inputs=["input_ids", "attention_mask"],
        output="sentence_embedding",
        extra_outputs=["token_embeddings"],
    )
    backend, trt, _, spec = make_backend(tmp_path, spec)
    backend.prepare(GRID)
    assert backend.io.output == "sentence_embedding"
    names = {"input_ids", "attention_mask", "sentence_embedding", "token_embeddings"}
    assert all(set(ctx.addresses) == names for ctx in trt.contexts)
    rng = np.random.default_rng(10)
    for bucket in GRID.buckets():
        ids, mask = fill(backend, bucket, bucket.batch, rng, spec.vocab)
        np.testing.assert_allclose(
            backend.execute(bucket)[backend.io.output],
            reference(spec, ids, mask),
            rtol=1e-5,
            atol=1e-6,
        )
    assert backend.info().details["graphs"] == len(list(GRID.buckets()))
    backend.close()


def test_extra_outputs_come_back_only_when_asked(tmp_path: Path) -> None:
    """bge-m3-style engines: the extra outputs (here token vectors beside the pooled one)
    are listed in io.extra_outputs and copied back only for batches that ask, after the
    graph replay on the same stream, with the right numbers."""
    spec = EngineSpec(
        inputs=["input_ids", "attention_mask"],
        output="sentence_embedding",
        extra_outputs=["token_embeddings"],
    )
    backend, trt, cuda, spec = make_backend(tmp_path, spec)
    backend.prepare(GRID)
    assert backend.io.extra_outputs == ("token_embeddings",)
    rng = np.random.default_rng(12)
    for bucket in GRID.buckets():
        ids, mask = fill(backend, bucket, bucket.batch, rng, spec.vocab)
        copies = cuda.calls["cudaMemcpyAsync"]
        plain = backend.execute(bucket)
        assert set(plain) == {"sentence_embedding"}
        assert cuda.calls["cudaMemcpyAsync"] == copies  # replay only: no extra copy
        both = backend.execute(bucket, ["token_embeddings"])
        assert cuda.calls["cudaMemcpyAsync"] == copies + 1
        tokens = both["token_embeddings"]
        assert tokens.shape == (bucket.batch, bucket.length, spec.hidden)
        token_spec = EngineSpec(inputs=spec.inputs, output="token_embeddings", seed=spec.seed)
        np.testing.assert_allclose(
            tokens * mask[..., None], reference(token_spec, ids, mask), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            both["sentence_embedding"], reference(spec, ids, mask), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(TensorRTError, match="no output colbert_vecs"):
        backend.execute(Bucket(1, GRID.lengths[0]), ["colbert_vecs"])
    assert trt.violations == []
    backend.close()


def test_one_context_per_bucket_and_replays_never_rebind(tmp_path: Path) -> None:
    """Graph replays and plain enqueues of all buckets, interleaved in random order, give
    the right numbers, and no graph is replayed after its context's state changed (the fake
    flags that as TensorRT's undefined behaviour, which one shared context produced)."""
    backend, trt, _, spec = make_backend(tmp_path)
    backend.prepare(GRID)
    buckets = list(GRID.buckets())
    assert len(trt.contexts) == len(buckets) == backend.info().details["contexts"]
    assert len({ctx.device_memory for ctx in trt.contexts}) == 1  # one shared scratch
    generations = [ctx.generation for ctx in trt.contexts]
    rng = np.random.default_rng(11)
    for _ in range(60):
        bucket = buckets[int(rng.integers(len(buckets)))]
        ids, mask = fill(backend, bucket, bucket.batch, rng, spec.vocab)
        if rng.random() < 0.6:
            out = backend.execute(bucket)[backend.io.output]
        else:
            out = backend.execute_plain(bucket)
        np.testing.assert_allclose(out, reference(spec, ids, mask), rtol=1e-5, atol=1e-6)
    assert trt.violations == []
    assert [ctx.generation for ctx in trt.contexts] == generations
    assert backend.replays > 0 and backend.enqueues > 0
    backend.close()


def test_exception_during_capture_ends_the_capture_and_falls_back(tmp_path: Path) -> None:
    backend, trt, cuda, spec = make_backend(tmp_path)
    trt.fail_capture = {(2, 16): "raise"}
    backend.prepare(GRID)
    fallbacks = backend.info().details["graph_fallbacks"]
    assert isinstance(fallbacks, dict) and set(fallbacks) == {"2x16"}
    assert "RuntimeError" in fallbacks["2x16"]
    assert not any(s.capture is not None for s in cuda.streams.values())
    ids, mask = fill(backend, Bucket(2, 16), 2, np.random.default_rng(12), spec.vocab)
    np.testing.assert_allclose(
        backend.execute(Bucket(2, 16))[backend.io.output],
        reference(spec, ids, mask),
        rtol=1e-5,
        atol=1e-6,
    )
    backend.close()


def test_refused_tensor_address_is_reported(tmp_path: Path) -> None:
    backend, trt, cuda, _ = make_backend(tmp_path)
    trt.refuse_addresses = {"attention_mask"}
    with pytest.raises(TensorRTError, match="refused the device address of tensor attention_mask"):
        backend.prepare(GRID)
    assert cuda.used == 0 and not cuda.host


def test_bf16_outputs(tmp_path: Path) -> None:
    """numpy has no bfloat16 (``trt.nptype(BF16)`` raises TypeError): an unread bf16 output
    is bound by size alone, a bf16 output the server must read is a clear error."""
    spec = EngineSpec(
        inputs=["input_ids", "attention_mask"],
        output="sentence_embedding",
        extra_outputs=["last_hidden_state"],
        output_dtypes={"last_hidden_state": "bfloat16"},
    )
    backend, _, _, spec = make_backend(tmp_path, spec)
    backend.prepare(GRID)
    ids, mask = fill(backend, Bucket(4, 8), 4, np.random.default_rng(13), spec.vocab)
    np.testing.assert_allclose(
        backend.execute(Bucket(4, 8))[backend.io.output],
        reference(spec, ids, mask),
        rtol=1e-5,
        atol=1e-6,
    )
    backend.close()

    spec = EngineSpec(inputs=["input_ids"], output="logits", output_dtypes={"logits": "bfloat16"})
    (tmp_path / "b").mkdir()
    backend, *_ = make_backend(tmp_path / "b", spec)
    with pytest.raises(TensorRTError, match=r"logits is bfloat16.*float32 inputs and outputs"):
        backend.prepare(GRID)


def test_capture_is_thread_local(tmp_path: Path) -> None:
    """Another thread allocating during a capture (a second model preparing, ONNX Runtime)
    must not break it: in CUDA's Global mode that call fails and invalidates the capture."""
    backend, trt, cuda, _ = make_backend(tmp_path)
    errors: list[int] = []

    def other_thread_allocates(b: int, n: int) -> None:
        def alloc() -> None:
            err, ptr = cuda.cudaMalloc(64)
            errors.append(int(err))
            if int(err) == 0:
                cuda.cudaFree(ptr)

        t = threading.Thread(target=alloc)
        t.start()
        t.join()

    trt.on_capture = other_thread_allocates
    backend.prepare(GRID)
    assert errors and set(errors) == {0}
    assert backend.info().details["graph_fallbacks"] == {}
    backend.close()


def test_no_driver_on_cuda_python_12_is_no_device(tmp_path: Path) -> None:
    class Runtime12(FakeCudaRuntime):
        def cudaGetDeviceCount(self) -> tuple[object, int]:
            raise RuntimeError("Failed to dlopen libcuda.so.1")

    backend, *_ = make_backend(tmp_path, cuda=Runtime12())
    with pytest.raises(NoCudaDevice, match=r"no CUDA device.*libcuda"):
        backend.prepare(GRID)


# -- the fakes refuse what CUDA and TensorRT refuse ------------------------------------------


def test_fake_cuda_refuses_ending_a_capture_on_another_thread() -> None:
    cuda = FakeCudaRuntime()
    cu = Cuda(cuda)
    stream = cu.stream_create()
    cu.begin_capture(stream)
    caught: list[BaseException] = []

    def end() -> None:
        try:
            cu.end_capture(stream)
        except CudaError as exc:
            caught.append(exc)

    t = threading.Thread(target=end)
    t.start()
    t.join()
    assert caught and isinstance(caught[0], CudaError)
    assert caught[0].name == "cudaErrorStreamCaptureWrongThread"
    # As on a real H200: the failed end is the end of the sequence.
    with pytest.raises(CudaError, match="cudaErrorIllegalState"):
        cu.end_capture(stream)
    assert not cu.is_capturing(stream)


@pytest.mark.parametrize(("mode", "refused"), [("Global", True), ("ThreadLocal", False)])
def test_fake_cuda_capture_modes(mode: str, refused: bool) -> None:
    cuda = FakeCudaRuntime()
    cu = Cuda(cuda)
    stream = cu.stream_create()
    cu.begin_capture(stream, mode)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(int(cuda.cudaMalloc(16)[0])))
    t.start()
    t.join()
    assert (result[0] != 0) is refused
    if refused:
        with pytest.raises(CudaError, match="cudaErrorStreamCaptureInvalidated"):
            cu.end_capture(stream)
    else:
        cu.end_capture(stream)
    # The capturing thread's own allocation is refused in both modes.
    cu.begin_capture(stream, mode)
    with pytest.raises(CudaError, match="cudaErrorStreamCaptureUnsupported"):
        cu.malloc(16)
    with pytest.raises(CudaError):
        cu.end_capture(stream)


def test_fake_tensorrt_refuses_unaligned_memory_and_flags_stale_replays(tmp_path: Path) -> None:
    spec = EngineSpec(inputs=["input_ids"], output="logits")
    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    engine = trt.Runtime(None).deserialize_cuda_engine(spec.serialize())
    ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    cu = Cuda(cuda)
    ptrs = {n: cu.malloc(32 * 512 * 64) for n in ("input_ids", "logits", "scratch")}
    assert all(p % 256 == 0 for p in ptrs.values())
    assert not ctx.set_tensor_address("input_ids", ptrs["input_ids"] + 8)
    assert not ctx.set_tensor_address("no_such_tensor", ptrs["input_ids"])
    with pytest.raises(RuntimeError, match="unaligned"):
        ctx.set_device_memory(ptrs["scratch"] + 64, 32 * 512 * 64 - 64)
    ctx.set_device_memory(ptrs["scratch"], engine.get_device_memory_size_for_profile_v2(0))
    assert ctx.set_tensor_address("input_ids", ptrs["input_ids"])
    assert ctx.set_tensor_address("logits", ptrs["logits"])
    stream = cu.stream_create()
    assert ctx.set_input_shape("input_ids", (2, 8))
    assert ctx.execute_async_v3(int(stream))
    cu.begin_capture(stream)
    assert ctx.execute_async_v3(int(stream))
    graph = cu.graph_instantiate(cu.end_capture(stream))
    cu.graph_launch(graph, stream)
    cu.stream_synchronize(stream)
    assert trt.violations == []
    assert ctx.set_input_shape("input_ids", (4, 8))  # the context changes after capture
    cu.graph_launch(graph, stream)
    cu.stream_synchronize(stream)
    assert trt.violations == ["graph 2x8 replayed after its context changed"]


def test_fake_cuda_refuses_graph_handles_of_the_wrong_kind() -> None:
    """cudaGraph_t (from end-capture) and cudaGraphExec_t (from instantiate) are different
    objects: each destroy, the launch and the instantiate take only their own kind."""
    cuda = FakeCudaRuntime()
    cu = Cuda(cuda)
    stream = cu.stream_create()
    cu.begin_capture(stream)
    graph = cu.end_capture(stream)
    exe = cu.graph_instantiate(graph)
    with pytest.raises(CudaError, match="cudaErrorInvalidValue"):
        cu.graph_exec_destroy(graph)
    with pytest.raises(CudaError, match="cudaErrorInvalidValue"):
        cu.graph_destroy(exe)
    with pytest.raises(CudaError, match="cudaErrorInvalidValue"):
        cu.graph_launch(graph, stream)
    with pytest.raises(CudaError, match="cudaErrorInvalidValue"):
        cu.graph_instantiate(exe)
    cu.graph_destroy(graph)
    cu.graph_launch(exe, stream)
    cu.graph_exec_destroy(exe)
    with pytest.raises(CudaError, match="cudaErrorInvalidValue"):
        cu.graph_exec_destroy(exe)  # twice


def test_fake_cuda_keeps_the_device_per_thread() -> None:
    """cudaSetDevice on one thread leaves other threads on device 0; memory, streams and
    events belong to the device current where they were made, an event cannot be recorded
    on another device's stream, and an engine runs only on its own device's stream,
    memory and thread."""
    cuda = FakeCudaRuntime(devices=2)
    cu = Cuda(cuda)
    cu.set_device(1)
    on_one = cu.malloc(64)
    stream_one = cu.stream_create()
    seen: dict[str, object] = {}

    def other() -> None:
        seen["device"] = cuda.current_device()
        seen["ptr"] = cu.malloc(64)
        seen["event"] = cu.event_create()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["device"] == 0 and cuda.current_device() == 1
    assert cuda.device_of[on_one] == 1 and cuda.device_of[seen["ptr"]] == 0  # type: ignore[index]
    assert cuda.check_device_range(on_one, 64, 1) and not cuda.check_device_range(on_one, 64, 0)
    with pytest.raises(CudaError, match="cudaErrorInvalidResourceHandle"):
        cu.event_record(seen["event"], stream_one)

    trt = FakeTensorRT(cuda)
    spec = EngineSpec(inputs=["input_ids"], output="logits")
    engine = trt.Runtime(None).deserialize_cuda_engine(spec.serialize())
    assert engine.device == 1
    ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    ptrs = {n: cu.malloc(4 * 8 * 64) for n in ("input_ids", "logits")}
    assert ctx.set_input_shape("input_ids", (4, 8))
    size = ctx.update_device_memory_size_for_shapes()
    ctx.set_device_memory(cu.malloc(size), size)
    for n, p in ptrs.items():
        assert ctx.set_tensor_address(n, p)
    assert ctx.execute_async_v3(int(stream_one))
    with pytest.raises(RuntimeError, match="not device memory of cuda:1"):
        ctx.set_device_memory(seen["ptr"], 64)  # type: ignore[arg-type]
    ran: list[bool] = []
    t = threading.Thread(target=lambda: ran.append(ctx.execute_async_v3(int(stream_one))))
    t.start()
    t.join()
    assert ran == [False]  # that thread's current device is 0


def test_fake_tensorrt_sizes_scratch_for_the_shapes_and_flags_a_moved_scratch() -> None:
    """The profile maximum is an upper bound: after update_device_memory_size_for_shapes a
    context takes scratch sized for its shapes; without it, or after a shape change, it
    needs the maximum again. Moving the scratch after a capture makes that graph stale."""
    cuda = FakeCudaRuntime()
    cu = Cuda(cuda)
    trt = FakeTensorRT(cuda)
    spec = EngineSpec(inputs=["input_ids"], output="logits", profile_max=[8, 64])
    engine = trt.Runtime(None).deserialize_cuda_engine(spec.serialize())
    full = engine.get_device_memory_size_for_profile_v2(0)
    assert full == 8 * 64 * spec.hidden * spec.scratch_factor
    ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    assert ctx.update_device_memory_size_for_shapes() == 0  # no shapes yet: an error
    assert ctx.set_input_shape("input_ids", (2, 16))
    small = ctx.update_device_memory_size_for_shapes()
    assert small == 2 * 16 * spec.hidden * spec.scratch_factor < full
    scratch = cu.malloc(full)
    ctx.set_device_memory(scratch, small)
    ptrs = {n: cu.malloc(8 * 64 * 8) for n in ("input_ids", "logits")}
    for n, p in ptrs.items():
        assert ctx.set_tensor_address(n, p)
    stream = cu.stream_create()
    assert ctx.execute_async_v3(int(stream))
    cu.begin_capture(stream)
    assert ctx.execute_async_v3(int(stream))
    graph = cu.end_capture(stream)
    exe = cu.graph_instantiate(graph)
    cu.graph_destroy(graph)
    ctx.set_device_memory(scratch + 256, small)  # the scratch moves after the capture
    cu.graph_launch(exe, stream)
    cu.stream_synchronize(stream)
    assert trt.violations == ["graph 2x16 replayed after its context changed"]
    assert ctx.set_input_shape("input_ids", (8, 64))  # bigger shapes: the partition is gone
    assert not ctx.execute_async_v3(int(stream))
    with pytest.raises(RuntimeError, match=f"device memory {small} < {full}"):
        ctx.set_device_memory(scratch, small)
    ctx.set_device_memory(scratch, full)
    assert ctx.execute_async_v3(int(stream))


def test_fake_tensorrt_versions_differ_in_precision_flags() -> None:
    cuda = FakeCudaRuntime()
    assert FakeTensorRT(cuda, "10.13.0.35").BuilderFlag.FP16
    with pytest.raises(AttributeError):
        FakeTensorRT(cuda, "11.4.0.106").BuilderFlag.FP16  # noqa: B018
    with pytest.raises(TypeError):
        FakeTensorRT.nptype(FakeTensorRT(cuda).DataType.BF16)


def test_gpu_extras_pair_cuda_python_with_their_cuda_major() -> None:
    """cuda-python 12.6.0 has no cuda.bindings (first in 12.6.1; the index has 12.6.2.post1).
    cuda-python 13 links the CUDA 13 runtime, which an R535-R575 driver (the usual one for
    TensorRT 10 cu12) refuses with cudaErrorInsufficientDriver: the CUDA 12 extra must not
    admit it; the CUDA 13 extra must not admit 12.x."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def cuda_python(extra: str) -> Requirement:
        return next(r for r in map(Requirement, extras[extra]) if r.name == "cuda-python")

    gpu, cu13 = cuda_python("gpu").specifier, cuda_python("gpu-cu13").specifier
    assert Version("12.6.0") not in gpu and Version("12.6.2.post1") in gpu
    assert Version("12.9.10") in gpu
    assert not any(Version(v) in gpu for v in ("13.0.0", "13.4.4"))
    assert Version("13.0.0") in cu13 and Version("13.4.4") in cu13
    assert Version("12.9.10") not in cu13
    tensorrt = next(r for r in map(Requirement, extras["gpu"]) if r.name == "tensorrt-cu12")
    assert tensorrt.name.endswith("cu12")


def test_old_driver_under_a_cuda_13_runtime_says_which_wheels_to_install(
    tmp_path: Path,
) -> None:
    """cuda-python 13 on an R570 driver (CUDA 12.8): no device, and the message says why
    and what to install instead, not only the CUDA error's name."""
    cuda = FakeCudaRuntime()
    cuda.driver_version, cuda.runtime_version = 12080, 13000
    backend, *_ = make_backend(tmp_path, cuda=cuda)
    with pytest.raises(NoCudaDevice) as info:
        backend.prepare(GRID)
    message = str(info.value)
    assert message.startswith("no CUDA device: cudaGetDeviceCount answered")
    assert "cudaErrorInsufficientDriver" in message
    assert "driver runs CUDA up to 12.8" in message and "CUDA 13.0 runtime" in message
    assert "trt-async[gpu]" in message
    cuda.driver_version = 0
    with pytest.raises(NoCudaDevice, match="no NVIDIA driver is loaded"):
        Cuda(cuda).device_count()


# -- the real TensorRT runtime bindings (lean runtime; imports without a GPU) ----------------


def test_runtime_surface_exists_in_the_real_bindings() -> None:
    """Every engine/context member the backend's Protocols declare, and every enum member it
    uses, exists in the real ``tensorrt_lean_bindings``, and the fake offers the same.

    Only attributes are read: ``deserialize_cuda_engine`` without a GPU crashes the process.
    """
    real = pytest.importorskip("tensorrt_lean_bindings", reason="test extra: lean bindings")
    from tests import fake_trt
    from trt_async.backends.tensorrt import trt_api

    def members(proto: type) -> set[str]:
        return {n for n in vars(proto) if not n.startswith("_")}

    surfaces = [
        (trt_api.ICudaEngine, real.ICudaEngine, fake_trt.FakeEngine),
        (trt_api.IExecutionContext, real.IExecutionContext, fake_trt.FakeContext),
        (trt_api.IRuntime, real.Runtime, fake_trt.FakeRuntime),
    ]
    for proto, real_cls, fake_cls in surfaces:
        used = members(proto)
        assert used, proto
        assert used <= set(dir(real_cls)), (proto.__name__, used - set(dir(real_cls)))
        assert used <= set(dir(fake_cls)), (proto.__name__, used - set(dir(fake_cls)))
    assert int(real.__version__.split(".")[0]) >= 10
    assert {"INPUT", "OUTPUT"} <= set(real.TensorIOMode.__members__)
    assert set(fake_trt.TensorIOMode.__members__) == set(real.TensorIOMode.__members__)
    assert "USER_MANAGED" in real.ExecutionContextAllocationStrategy.__members__
    assert set(fake_trt.ExecutionContextAllocationStrategy.__members__) == set(
        real.ExecutionContextAllocationStrategy.__members__
    )
    assert set(fake_trt.DataType.__members__) == set(real.DataType.__members__)
    assert set(trt_api._DTYPES) <= set(real.DataType.__members__)
    # The backend's trt.Logger(trt.Logger.WARNING): a real severity, the fake's the same.
    assert real.Logger.WARNING == real.ILogger.Severity.WARNING
    assert real.Logger(real.Logger.WARNING).min_severity == real.ILogger.Severity.WARNING
    severities = {n: int(v) for n, v in real.ILogger.Severity.__members__.items()}
    assert severities == {n: getattr(fake_trt.Logger, n) for n in severities}
    # 11.x: no precision builder flags; the fake's 11.x set is the real one, member for member.
    if real.__version__.startswith("11."):
        assert set(fake_trt.BuilderFlag11.__members__) == set(real.BuilderFlag.__members__)
        assert not {"FP16", "BF16", "INT8", "FP8"} & set(real.BuilderFlag.__members__)
    assert {"WORKSPACE"} <= set(real.MemoryPoolType.__members__)
    with pytest.raises(TypeError):
        real.nptype(real.DataType.BF16)
    assert trt_api.dtype_name(real.DataType.BF16) == "bfloat16"
    assert trt_api.itemsize(real.DataType.HALF) == 2
    assert trt_api.numpy_dtype(real.DataType.INT64, "input_ids") == np.dtype(np.int64)
