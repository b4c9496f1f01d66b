"""``trt-async build`` and start-up plan checks, on fakes of tensorrt and the CUDA runtime.

The graphs are real ONNX files (an embedding lookup times the attention mask), so the
fake builder reads real inputs, outputs and weights, and ONNX Runtime gives the reference.
Every test runs against the 10.x and the 11.x builder (11.x has no precision flags).
"""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fake_trt import BuilderFlag10, FakeCudaRuntime, FakeTensorRT
from trt_async.backends.modelfiles import ModelFiles
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.backends.tensorrt import PlanMismatch, TensorRTBackend
from trt_async.backends.tensorrt.build import (
    BuildError,
    BuildProgress,
    build_engine,
    optimisation_profile,
)
from trt_async.backends.tensorrt.cuda import Cuda
from trt_async.backends.tensorrt.plan import GRAPHS_ENV, read_plan_manifest
from trt_async.core.config import ModelConfig
from trt_async.tools.build_engine import add_build_parser, run_build

onnx = pytest.importorskip("onnx", reason="test graphs are written with onnx (export extra)")

GRID = BucketGrid([1, 2, 4], [8, 16, 32], max_batch_tokens=64)
H = 6


def write_model(folder: Path, *, seed: int = 0, external: bool = False) -> Path:
    """A model folder whose graph is ``last_hidden_state = embeddings[input_ids] * mask``."""
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    table = np.random.default_rng(seed).standard_normal((40, H)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embeddings", "input_ids"], ["tokens"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"]),
            helper.make_node("Mul", ["tokens", "mask3"], ["last_hidden_state"]),
        ],
        "lookup",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 6]
            )
        ],
        [
            numpy_helper.from_array(table, "embeddings"),
            numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=external,
        location="model.onnx.data",
        size_threshold=0,
    )
    (folder / "tokenizer.json").write_text("{}")
    return folder


TRT10, TRT11 = "10.13.0.35", "11.4.0.106"
_version = [TRT10]


@pytest.fixture(autouse=True, params=[TRT10, TRT11], ids=["trt10", "trt11"])
def trt_version(request: pytest.FixtureRequest) -> str:
    """The TensorRT major every fake in the test simulates."""
    _version[0] = request.param
    return str(request.param)


def fakes(**cuda: object) -> tuple[FakeTensorRT, FakeCudaRuntime]:
    rt = FakeCudaRuntime(**cuda)  # type: ignore[arg-type]
    return FakeTensorRT(rt, version=_version[0]), rt


@pytest.mark.parametrize(
    ("precision", "flags", "weights"),
    [
        ("fp16", {BuilderFlag10.FP16}, ["float16"]),
        ("bf16", {BuilderFlag10.BF16}, None),
        ("fp32", set(), ["float32"]),
    ],
)
def test_build_writes_plan_and_manifest(
    tmp_path: Path, precision: str, flags: set, weights: list[str] | None, trt_version: str
) -> None:
    """10.x: fp16/bf16 by builder flag on the fp32 graph. 11.x: no such flag exists, so fp16
    comes from a converted graph (fp16 weights, no flag) and bf16 is refused clearly."""
    model = write_model(tmp_path / "mini", external=True)
    trt, rt = fakes()
    if trt_version == TRT11 and weights is None:
        with pytest.raises(BuildError, match=r"no bf16 builder flag.*--precision fp16"):
            build_engine(model, precision="bf16", trt_module=trt, cuda=Cuda(rt), log=io.StringIO())
        return
    bar_out, log = io.StringIO(), io.StringIO()
    result = build_engine(
        model,
        precision=precision,  # type: ignore[arg-type]
        batch_sizes=[16, 1, 4],
        lengths=[128, 16, 64],
        workspace_gib=1.5,
        output_dir=tmp_path / "graphs" / "mini",
        progress=BuildProgress(bar_out),
        trt_module=trt,
        cuda=Cuda(rt),
        log=log,
    )
    assert result.plan == tmp_path / "graphs" / "mini" / f"model.{precision}.plan"
    assert trt.Runtime(None).deserialize_cuda_engine(result.plan.read_bytes()) is not None
    if trt_version == TRT10:
        assert trt.builds[0]["flags"] == flags
        assert trt.builds[0]["weight_types"] == ["float32"]
    else:
        assert trt.builds[0]["flags"] == set()
        assert trt.builds[0]["weight_types"] == weights
    assert trt.builds[0]["profile"] == ((1, 16), (4, 64), (16, 128))
    m = read_plan_manifest(result.manifest_path)
    assert m is not None and m == result.manifest
    assert (m.tensorrt_version, m.gpu_name, m.compute_capability) == (
        trt_version,
        "NVIDIA H100 80GB HBM3",
        "9.0",
    )
    assert m.precision == precision and m.batch_sizes == [1, 4, 16] and m.lengths == [16, 64, 128]
    assert (m.profile_min, m.profile_opt, m.profile_max) == ([1, 16], [4, 64], [16, 128])
    assert [(t.name, t.dtype) for t in m.inputs] == [
        ("input_ids", "int64"),
        ("attention_mask", "int64"),
    ]
    assert [(t.name, t.dtype, t.shape) for t in m.outputs] == [
        ("last_hidden_state", "float32", [-1, -1, 6])
    ]
    assert m.onnx_sha256 == hashlib.sha256((model / "model.onnx").read_bytes()).hexdigest()
    data = (model / "model.onnx.data").read_bytes()
    assert m.onnx_data_sha256 == hashlib.sha256(data).hexdigest()
    assert m.workspace_gib == 1.5
    assert "Building engine (2 steps)" in bar_out.getvalue()
    assert "Building engine done" in bar_out.getvalue()
    assert f"built {result.plan}" in log.getvalue() and " s\n" in log.getvalue()


def test_optimisation_profile_spans_the_grid() -> None:
    assert optimisation_profile([1, 2, 4, 8, 16, 32], [16, 32, 64, 128, 256, 512]) == (
        (1, 16),
        (8, 128),
        (32, 512),
    )
    assert optimisation_profile([1], [7]) == ((1, 7), (1, 7), (1, 7))


def test_progress_bar_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = BuildProgress(out, width=10)
    bar.start("Building", None, 4)
    bar.start("Tactics", "Building", 5)
    assert bar.step("Tactics", 1)
    assert bar.render() == "Building > Tactics [####------] 2/5"
    bar.finish("Tactics")
    assert bar.render() == "Building [----------] 0/4"
    bar.cancelled = True
    assert not bar.step("Building", 0)  # returning False asks TensorRT to stop
    bar.finish("Building")
    assert "\r" in out.getvalue()


def test_build_refuses_a_folder_without_onnx(tmp_path: Path) -> None:
    trt, rt = fakes()
    with pytest.raises(BuildError, match="trt-async export"):
        build_engine(tmp_path, trt_module=trt, cuda=Cuda(rt))


def test_build_reports_parser_errors(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf")
    trt, rt = fakes()
    with pytest.raises(BuildError, match=r"cannot (parse|convert) the graph"):
        build_engine(tmp_path, trt_module=trt, cuda=Cuda(rt), log=io.StringIO())


def test_plans_go_under_the_graphs_env_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "elsewhere"))
    model = write_model(tmp_path / "bge")
    trt, rt = fakes()
    result = build_engine(model, trt_module=trt, cuda=Cuda(rt), progress=False, log=io.StringIO())
    assert result.plan == tmp_path / "elsewhere" / "bge" / "model.fp16.plan"


def backend_for(
    model: Path, trt: FakeTensorRT, rt: FakeCudaRuntime, **config: object
) -> TensorRTBackend:
    files = ModelFiles.resolve(model)
    cfg = ModelConfig(model_path=str(model), backend="tensorrt", **config)  # type: ignore[arg-type]
    return TensorRTBackend(files, cfg, trt_module=trt, cuda_runtime=rt, build_progress=False)


def test_first_start_builds_then_reuses_and_matches_onnxruntime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the numerical reference (cpu extra)")
    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "graphs"))
    model = write_model(tmp_path / "mini")
    trt, rt = fakes()
    backend = backend_for(model, trt, rt)
    backend.prepare(GRID)
    assert backend.rebuilt_because and backend.rebuilt_because[0].startswith("no plan at")
    assert (tmp_path / "graphs" / "mini" / "model.fp16.plan").is_file()
    assert backend.io.output == "last_hidden_state"

    # The graph the plan was built from: on 11.x an fp16 plan comes from the converted graph
    # (equal to it), on 10.x from the fp32 graph with fp16 kernels (within fp16 rounding).
    converted = tmp_path / "graphs" / "mini" / "model.fp16.onnx"
    built_from = converted if converted.is_file() else model / "model.onnx"
    tolerance = 1e-6 if converted.is_file() else 1e-3
    session = ort.InferenceSession(str(built_from), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for bucket in GRID.buckets():
        bufs = backend.inputs(bucket)
        bufs["input_ids"][...] = rng.integers(0, 40, (bucket.batch, bucket.length))
        bufs["attention_mask"][...] = rng.integers(0, 2, (bucket.batch, bucket.length))
        feed = {k: np.array(v) for k, v in bufs.items()}
        out = backend.execute(bucket)[backend.io.output]
        (expected,) = session.run(["last_hidden_state"], feed)
        np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)
    backend.close()

    again = backend_for(model, trt, rt)
    again.prepare(GRID)
    assert again.rebuilt_because == [] and len(trt.builds) == 1
    again.close()


def _stale(tmp_path: Path, change: str) -> tuple[TensorRTBackend, FakeTensorRT, BucketGrid, str]:
    """A model with a plan built for GRID, then one thing changed; returns a new backend."""
    model = write_model(tmp_path / "mini")
    trt, rt = fakes()
    build_engine(
        model,
        batch_sizes=GRID.batch_sizes,
        lengths=GRID.lengths,
        trt_module=trt,
        cuda=Cuda(rt),
        progress=False,
        log=io.StringIO(),
    )
    grid = GRID
    if change == "onnx":
        write_model(model, seed=1)
        reason = "model.onnx changed"
    elif change == "gpu":
        rt = FakeCudaRuntime(name="NVIDIA A100-SXM4-80GB", capability=(8, 0))
        trt = FakeTensorRT(rt, version=_version[0])
        reason = "built for NVIDIA H100 80GB HBM3 (sm 9.0), running on NVIDIA A100"
    elif change == "tensorrt":
        trt = FakeTensorRT(rt, version="10.14.1.48")
        reason = f"built with TensorRT {_version[0]}, running 10.14.1.48"
    else:
        grid = BucketGrid([1, 2], [8, 64], max_batch_tokens=128)
        reason = "buckets 1x64, 2x64 fall outside the profile 1x8..4x32"
    trt.builds.clear()
    return backend_for(model, trt, rt, rebuild="auto"), trt, grid, reason


@pytest.mark.parametrize("change", ["onnx", "gpu", "tensorrt", "grid"])
def test_stale_plan_is_rebuilt_when_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "graphs"))
    backend, trt, grid, reason = _stale(tmp_path, change)
    backend.prepare(grid)
    assert len(trt.builds) == 1
    assert any(reason in r for r in backend.rebuilt_because), backend.rebuilt_because
    out = backend.execute(Bucket(1, grid.lengths[0]))[backend.io.output]
    assert out.shape == (1, grid.lengths[0], 6)
    backend.close()


@pytest.mark.parametrize("change", ["onnx", "gpu", "tensorrt", "grid"])
def test_stale_plan_is_refused_when_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "graphs"))
    backend, trt, grid, reason = _stale(tmp_path, change)
    backend.config.rebuild = "never"
    with pytest.raises(PlanMismatch, match="rebuild is 'never'") as info:
        backend.prepare(grid)
    assert reason in str(info.value) and "trt-async build" in str(info.value)
    assert trt.builds == []


def test_io_before_prepare_uses_a_valid_plan_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "graphs"))
    model = write_model(tmp_path / "mini")
    trt, rt = fakes()
    narrow = dict(batch_sizes=[1, 2], lengths=[8])
    build_engine(model, **narrow, trt_module=trt, cuda=Cuda(rt), progress=False, log=io.StringIO())  # type: ignore[arg-type]
    backend = backend_for(model, trt, rt)
    assert backend.io.inputs == ("input_ids", "attention_mask")
    assert len(trt.builds) == 1  # any valid plan answers the IO question
    backend.prepare(GRID)  # the real grid is wider: now it is rebuilt
    assert len(trt.builds) == 2 and "outside the profile" in backend.rebuilt_because[0]
    backend.close()


def test_cli_parser() -> None:
    parser = argparse.ArgumentParser(prog="trt-async")
    add_build_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["build", "models/x", "--precision", "bf16", "--batch-sizes", "1,8", "--lengths", "32,64"]
    )
    assert args.func is run_build
    assert (args.precision, args.batch_sizes, args.lengths) == ("bf16", [1, 8], [32, 64])
    assert args.output_dir is None and args.workspace_gib is None and not args.no_progress
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "m", "--lengths", "a,b"])


def test_io_before_prepare_without_a_plan_parses_the_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "graphs"))
    model = write_model(tmp_path / "mini")
    trt, rt = fakes()
    backend = backend_for(model, trt, rt)
    io_ = backend.io
    assert (io_.inputs, io_.output, io_.input_dtype) == (
        ("input_ids", "attention_mask"),
        "last_hidden_state",
        np.dtype(np.int64),
    )
    assert trt.builds == []  # building waits for prepare, which knows the grid
    backend.prepare(GRID)
    assert len(trt.builds) == 1 and trt.builds[0]["profile"] == ((1, 8), (2, 16), (4, 32))
    backend.close()


def test_fp16_on_tensorrt_11_runs_the_converted_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trt_version: str
) -> None:
    """On 11.x the fp16 plan is built from an fp16 graph with fp32 inputs/outputs: outputs
    match ONNX Runtime on that converted graph, and the fp32 graph within fp16 rounding."""
    ort = pytest.importorskip("onnxruntime", reason="the numerical reference (cpu extra)")
    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "graphs"))
    model = write_model(tmp_path / "mini")
    trt, rt = fakes()
    backend = backend_for(model, trt, rt, precision="fp16")
    backend.prepare(GRID)
    converted = tmp_path / "graphs" / "mini" / "model.fp16.onnx"
    assert converted.is_file() is (trt_version == TRT11)
    graphs = [model / "model.onnx", *([converted] if converted.is_file() else [])]
    sessions = [ort.InferenceSession(str(g), providers=["CPUExecutionProvider"]) for g in graphs]
    rng = np.random.default_rng(1)
    for bucket in GRID.buckets():
        bufs = backend.inputs(bucket)
        bufs["input_ids"][...] = rng.integers(0, 40, (bucket.batch, bucket.length))
        bufs["attention_mask"][...] = rng.integers(0, 2, (bucket.batch, bucket.length))
        feed = {k: np.array(v) for k, v in bufs.items()}
        out = backend.execute(bucket)[backend.io.output]
        assert out.dtype == np.float32
        refs = [s.run(["last_hidden_state"], feed)[0] for s in sessions]
        np.testing.assert_allclose(out, refs[0], rtol=1e-3, atol=1e-3)  # fp16 rounding
        if trt_version == TRT11:
            np.testing.assert_array_equal(out, refs[1])  # exactly the converted graph
            assert not np.array_equal(out, refs[0])
    backend.close()


def test_fixed_dimension_outside_the_grid_is_a_clear_error(tmp_path: Path) -> None:
    """TensorRT's profile.set_shape raises ValueError for a fixed dimension whose min/max
    differ; the build says which input and what to change instead."""
    model = write_model(tmp_path / "mini")
    graph = onnx.load(str(model / "model.onnx"))
    for value in graph.graph.input:
        value.type.tensor_type.shape.dim[0].dim_value = 1  # batch fixed at 1
    onnx.save(graph, str(model / "model.onnx"))
    # The graph on disk fixes the batch and leaves the length dynamic, as the test needs.
    saved = [
        [
            (d.dim_value if d.HasField("dim_value") else d.dim_param)
            for d in v.type.tensor_type.shape.dim
        ]
        for v in onnx.load(str(model / "model.onnx")).graph.input
    ]
    assert saved == [[1, "seq"], [1, "seq"]]
    trt, rt = fakes()
    with pytest.raises(BuildError, match=r"input_ids fixes its batch at 1 .*--batch-sizes 1"):
        build_engine(model, batch_sizes=[1, 4], trt_module=trt, cuda=Cuda(rt), log=io.StringIO())
    result = build_engine(
        model,
        batch_sizes=[1],
        lengths=[8, 16],
        trt_module=trt,
        cuda=Cuda(rt),
        progress=False,
        log=io.StringIO(),
    )
    assert result.manifest.profile_max == [1, 16]


def test_default_build_covers_the_servers_default_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trt-async build <model>` with no grid options writes a plan whose profile holds every
    bucket of the grid the server builds for that model by default, so the first start
    neither rebuilds nor (with rebuild: never) refuses. The old fixed defaults (batch up to
    32) missed batch 64 at lengths 16..256."""
    import json

    from trt_async.backends.modelfiles import default_max_length
    from trt_async.backends.tensorrt.plan import grid_outside_profile
    from trt_async.backends.tensorrt.spec import TENSORRT_SPEC
    from trt_async.core.runtime import bucket_grid, model_max_length

    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "graphs"))
    model = write_model(tmp_path / "mini")
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    trt, rt = fakes()
    parser = argparse.ArgumentParser(prog="trt-async")
    add_build_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", str(model), "--no-progress"])
    assert (args.batch_sizes, args.lengths) == (None, None)
    result = build_engine(
        args.model,
        batch_sizes=args.batch_sizes,
        lengths=args.lengths,
        progress=False,
        trt_module=trt,
        cuda=Cuda(rt),
        log=io.StringIO(),
    )
    m = result.manifest

    # The server's default grid for this folder, assembled as core/runtime.py does.
    files = ModelFiles.resolve(model)
    config = ModelConfig(model_path=str(model), backend="tensorrt")
    max_length = model_max_length(config, files)
    assert max_length == default_max_length(files) == 512
    grid = bucket_grid(config, TENSORRT_SPEC, max_length)
    assert any(b.batch == 64 for b in grid.buckets())
    lo, hi = (m.profile_min[0], m.profile_min[1]), (m.profile_max[0], m.profile_max[1])
    assert grid_outside_profile(grid, lo, hi) == []
    old = grid_outside_profile(grid, (1, 16), (32, 512))
    assert len(old) == 8 and all(b.startswith("64x") for b in old)

    # And the server starts on that plan as is.
    backend = backend_for(model, trt, rt, rebuild="never")
    backend.prepare(BucketGrid([1, 64], [16, 256], max_batch_tokens=16384))
    assert backend.rebuilt_because == [] and len(trt.builds) == 1
    backend.close()


def test_second_gpu_with_a_built_plan_loaded_on_another_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """device: 1, a valid plan: the IO question (loader thread) deserialises the engine on
    cuda:1; prepare runs on another thread, which must select cuda:1 itself. The old code
    trusted the cached device info there, so its stream and buffers went to cuda:0."""
    import threading

    monkeypatch.setenv(GRAPHS_ENV, str(tmp_path / "graphs"))
    model = write_model(tmp_path / "mini")
    trt, rt = fakes(devices=2)
    build_engine(
        model,
        batch_sizes=GRID.batch_sizes,
        lengths=GRID.lengths,
        device=1,
        trt_module=trt,
        cuda=Cuda(rt),
        progress=False,
        log=io.StringIO(),
    )
    backend = backend_for(model, trt, rt, device=1, rebuild="never")
    errors: list[BaseException] = []

    def on_thread(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        t.join()
        if errors:
            raise errors[0]

    on_thread(lambda: backend.io)
    on_thread(lambda: backend.prepare(GRID))
    assert set(rt.device_of.values()) == {1}
    on_thread(lambda: backend.execute(Bucket(1, 8)))
    on_thread(backend.close)
    assert not rt.device


def test_rebuild_reuses_tactic_timings(tmp_path: Path, trt_version: str) -> None:
    """The second build of the same graph on the same TensorRT and GPU times no tactic
    again (a timing cache beside the plan); an unreadable cache or one from another
    TensorRT version is replaced, not trusted."""
    model = write_model(tmp_path / "mini")
    out = tmp_path / "graphs" / "mini"
    trt, rt = fakes()

    def build(module: FakeTensorRT) -> int:
        build_engine(
            model, batch_sizes=[1, 4], lengths=[8, 16], output_dir=out, trt_module=module,
            cuda=Cuda(rt), progress=False, log=io.StringIO(),
        )  # fmt: skip
        return int(module.builds[-1]["timed"])

    assert build(trt) > 0
    caches = list(out.glob("timing-*.cache"))
    assert [c.name for c in caches] == [f"timing-{trt_version}-NVIDIA-H100-80GB-HBM3-sm9.0.cache"]
    assert build(trt) == 0
    caches[0].write_bytes(b"garbage")
    assert build(trt) > 0
    assert build(trt) == 0
    other = FakeTensorRT(rt, version=trt_version.replace(".4.", ".5.").replace(".13.", ".14."))
    caches[0].rename(out / f"timing-{other.__version__}-NVIDIA-H100-80GB-HBM3-sm9.0.cache")
    assert build(other) > 0


def export_tiny(folder: Path, family: str) -> Path:
    """A model folder with the ONNX graph of a tiny randomly initialised transformer:
    ``qwen3`` (RMSNorm, rotary, a decoder like the LLM embedders) or ``bert`` (LayerNorm,
    absolute positions); hidden 32, 2 layers. Exported with torch, opset 17."""
    torch = pytest.importorskip("torch", reason="export extra")
    transformers = pytest.importorskip("transformers", reason="export extra")
    torch.manual_seed(0)
    if family == "qwen3":
        config = transformers.Qwen3Config(
            vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=4096, rope_theta=1e6, use_cache=False,
        )  # fmt: skip
        model = transformers.Qwen3Model(config).eval()
    else:
        config = transformers.BertConfig(
            vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=512,
        )  # fmt: skip
        model = transformers.BertModel(config, add_pooling_layer=False).eval()

    class Hidden(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]

    folder.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(0, 100, (2, 12))
    dyn = {0: "batch", 1: "seq"}
    torch.onnx.export(
        Hidden(), (ids, torch.ones_like(ids)), str(folder / "model.onnx"),
        input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "last_hidden_state": dyn},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    (folder / "tokenizer.json").write_text("{}")
    return folder


def convert_in_child(onnx_path: Path, out_dir: Path) -> Path:
    """convert_to_fp16 in a child process, so that a conversion that never ends fails."""
    import subprocess
    import sys

    code = (
        "from pathlib import Path; from trt_async.backends.tensorrt.build import "
        f"convert_to_fp16; convert_to_fp16(Path({str(onnx_path)!r}), Path({str(out_dir)!r}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    return out_dir / "model.fp16.onnx"


#: Node kinds that must run in fp32 in an fp16 build, wherever they are.
FP32_KINDS = {"Pow", "ReduceMean", "Sqrt", "Softmax", "Sin", "Cos", "LayerNormalization"}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3", "bert"])
def test_fp16_build_keeps_norms_softmax_rotary_and_reductions_in_fp32(
    tmp_path: Path, family: str, trt_version: str
) -> None:
    """An fp16 build of a decoder (RMSNorm, rotary) and of an encoder (LayerNorm): norm
    statistics, Softmax, reductions, the rotary angles, sin/cos and the products and sums
    that apply them run in fp32, the matrix products in fp16 -- on 10.x by pinned layer
    precisions with OBEY_PRECISION_CONSTRAINTS, on 11.x by the converted graph's own types.

    The old build left all of these in fp16 on 10.x, and on 11.x blocked only the
    converter's defaults (and its op-type block of Cast made the converter insert Casts in
    front of its own Casts forever on the decoder graph: that conversion never ended)."""
    model = export_tiny(tmp_path / family, family)
    out = tmp_path / "graphs" / family
    trt, rt = fakes()
    if trt_version == TRT11:
        convert_in_child(model / "model.onnx", out)
    build_engine(
        model, precision="fp16", batch_sizes=[1, 2], lengths=[8, 16], output_dir=out,
        trt_module=trt, cuda=Cuda(rt), progress=False, log=io.StringIO(),
    )  # fmt: skip
    build = trt.builds[-1]
    run = build["run_dtypes"]
    graph = onnx.load(str(model / "model.onnx")).graph
    kinds = {n.name: n.op_type for n in graph.node}
    must = [name for name, kind in kinds.items() if kind in FP32_KINDS]
    if family == "qwen3":
        rotary = [
            n for n in kinds if n.rsplit("/", 2)[-2:-1] == ["self_attn"]
            and n.rsplit("/", 1)[1] in ("Mul", "Mul_1", "Mul_2", "Mul_3", "Add", "Add_1")
        ]  # fmt: skip
        assert len(rotary) == 12, rotary  # q*cos, rot(q)*sin, k*cos, rot(k)*sin, 2 sums
        must += rotary
        assert {"Pow", "ReduceMean", "Sqrt", "Softmax", "Sin", "Cos"} <= {kinds[n] for n in must}
    else:
        assert {"LayerNormalization", "Softmax"} <= {kinds[n] for n in must}
    wrong = {n: run.get(n) for n in must if run.get(n) != "float32"}
    assert not wrong, wrong
    matmuls = [n for n, k in kinds.items() if k == "MatMul" and n in run]
    assert matmuls and all(run[n] == "float16" for n in matmuls if "rotary" not in n)
    if trt_version == TRT10:
        assert BuilderFlag10.OBEY_PRECISION_CONSTRAINTS in build["flags"]
        assert set(must) <= set(build["pinned"])
    else:
        assert build["pinned"] == []  # strongly typed: no layer constraints at all


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3", "bert"])
def test_fp16_graph_for_tensorrt_11_matches_fp32(tmp_path: Path, family: str) -> None:
    """The converted graph is valid and computes what the fp32 graph does (ONNX Runtime,
    cosine >= 0.999 on every real token), the rotary inverse frequencies included (they stay
    fp32, not rounded to fp16 first)."""
    ort = pytest.importorskip("onnxruntime", reason="the numerical reference (cpu extra)")
    model = export_tiny(tmp_path / family, family)
    converted = convert_in_child(model / "model.onnx", tmp_path / "out")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (2, 300))
    mask = np.ones_like(ids)
    mask[1, 200:] = 0
    feed = {"input_ids": ids, "attention_mask": mask}
    cpu = ["CPUExecutionProvider"]
    (ref,) = ort.InferenceSession(str(model / "model.onnx"), providers=cpu).run(None, feed)
    (out,) = ort.InferenceSession(str(converted), providers=cpu).run(None, feed)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    real = mask.astype(bool)
    a, b = out[real], ref[real]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cos.min() >= 0.999, cos.min()
    if family == "qwen3":
        g = onnx.load(str(converted))
        angle = next(n for n in g.graph.node if n.op_type == "Cos")
        producers = {o: n for n in g.graph.node for o in n.output}
        # Walk back from cos to the constant inverse frequencies: every float on the way
        # is fp32.
        stack, seen = [angle.input[0]], set()
        while stack:
            name = stack.pop()
            node = producers.get(name)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "Constant":
                assert node.attribute[0].t.data_type in (
                    onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
                ), node.name  # fmt: skip
            assert not (node.op_type == "Cast" and node.attribute[0].i == onnx.TensorProto.FLOAT16)
            stack.extend(node.input)


def test_fake_builder_refuses_what_tensorrt_refuses(tmp_path: Path, trt_version: str) -> None:
    """A profile whose rank differs from the input's fails the build (set_shape only checks
    min/opt/max against each other, and negative extents); on 11.x, strongly typed, a
    layer precision constraint fails the build; on 10.x it is obeyed only with
    OBEY_PRECISION_CONSTRAINTS."""
    model = write_model(tmp_path / "mini")
    trt, _ = fakes()

    def network() -> tuple[Any, Any]:
        logger = trt.Logger()
        builder = trt.Builder(logger)
        net = builder.create_network(0)
        assert trt.OnnxParser(net, logger).parse_from_file(str(model / "model.onnx"))
        return builder, net

    builder, net = network()
    profile = builder.create_optimization_profile()
    with pytest.raises(ValueError):
        profile.set_shape("input_ids", (1, 1), (2, 8), (4,))
    with pytest.raises(ValueError):
        profile.set_shape("input_ids", (-1, 1), (2, 8), (4, 8))
    for name in ("input_ids", "attention_mask"):
        profile.set_shape(name, (1, 1, 1), (2, 8, 1), (4, 8, 1))  # rank 3 for a 2-D input
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(net, config) is None

    builder, net = network()
    profile = builder.create_optimization_profile()
    for name in ("input_ids", "attention_mask"):
        profile.set_shape(name, (1, 1), (2, 8), (4, 8))
    mul = next(layer for layer in net.layers if layer.type.name == "ELEMENTWISE")
    mul.precision = trt.float32
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    built = builder.build_serialized_network(net, config)
    if trt_version == TRT11:
        assert built is None
        return
    assert built is not None
    config.set_flag(trt.BuilderFlag.FP16)
    builder.build_serialized_network(net, config)
    assert trt.builds[-1]["run_dtypes"][mul.name] == "float16"  # not obeyed without the flag
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    builder.build_serialized_network(net, config)
    assert trt.builds[-1]["run_dtypes"][mul.name] == "float32"
