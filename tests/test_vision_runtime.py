"""Images through the one scheduler and runner: fixed-shape items, shared preprocessing hops,
and the vision tower on the TensorRT backend (fakes of tensorrt and the CUDA runtime)
against ONNX Runtime; the tiny CLIP and SigLIP run end to end over HTTP in
tests/test_image_http.py."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np
import pytest

from trt_async.backends.base import BackendSpec, Lanes, ModelIO
from trt_async.backends.modelfiles import ImagePreprocessing
from trt_async.backends.shapes import Bucket, BucketGrid
from trt_async.core.config import ModelConfig
from trt_async.core.errors import InvalidImage, Part
from trt_async.core.heads import make_reducer
from trt_async.core.images import ImagePreprocessor
from trt_async.core.runner import BatchRunner
from trt_async.core.scheduler import Scheduler
from trt_async.core.vision import ImageQueue, Rows, VisionRuntime, pack_rows, prepare_rows

T = TypeVar("T")
ITEM = (3, 2, 2)


class RowsBackend:
    """A backend of one fixed-shape input: each item's vector is its pixels, flattened, times
    its batch size (so a test sees which batch an item ran in)."""

    def __init__(self) -> None:
        self._io = ModelIO(("pixel_values",), "image_embeds", np.dtype(np.float32), item_shape=ITEM)
        self.batches: list[int] = []
        self._inputs: dict[Bucket, np.ndarray] = {}

    @property
    def io(self) -> ModelIO:
        return self._io

    def spec(self) -> BackendSpec:
        return BackendSpec("rows", (), (1, 2, 4, 8), 0)

    def lanes(self) -> Lanes:
        return Lanes(1)

    def prepare(self, grid: BucketGrid, progress: Any = None) -> None:
        assert grid.lengths == (1,)

    def inputs(self, bucket: Bucket, lane: int = 0) -> Mapping[str, np.ndarray]:
        assert bucket.length == 1
        found = self._inputs.setdefault(bucket, np.full((bucket.batch, *ITEM), np.nan, np.float32))
        return {"pixel_values": found}

    def execute(
        self, bucket: Bucket, extra: Collection[str] = (), lane: int = 0
    ) -> Mapping[str, np.ndarray]:
        self.batches.append(bucket.batch)
        pixels = self._inputs[bucket]
        return {"image_embeds": pixels.reshape(bucket.batch, -1) * bucket.batch}

    def counters(self) -> dict[Any, int]:
        return {}

    def info(self) -> Any:
        return SimpleNamespace(name="rows", device="cpu", memory={})

    def close(self) -> None:
        pass


def test_rows_are_one_chunk_of_length_one() -> None:
    array = np.arange(4 * 12, dtype=np.float32).reshape(4, *ITEM)
    rows = Rows(array)
    assert len(rows) == 4 and np.array_equal(rows[2], array[2])
    assert isinstance(rows[1:3], Rows) and len(rows[1:3]) == 2
    prepared = prepare_rows(array)
    assert prepared.sizes == [1, 1, 1, 1] and prepared.tokens == 4
    assert prepared.groups == [(1, [0, 1, 2, 3], [1, 1, 1, 1])]
    buffer = np.zeros((8, *ITEM), dtype=np.float32)
    mask = pack_rows({"pixel_values": buffer}, rows[:3], 0)
    assert np.array_equal(buffer[:3], array[:3]) and not buffer[3:].any()
    assert mask.shape == (8, 1) and mask.all()


async def test_images_of_several_requests_share_a_batch() -> None:
    """While one batch runs, the images of the requests that arrive wait and then run
    together, each request getting its own rows back in order."""
    backend = RowsBackend()
    runner = BatchRunner(backend, make_reducer("none"), 0, "t", units=False, pack=pack_rows)
    scheduler = Scheduler(runner, BucketGrid([1, 2, 4, 8], [1], 8), batch_overhead_tokens=1)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, *ITEM)).astype(np.float32) for n in (1, 2, 3, 1)]
    try:
        results = await asyncio.gather(*(scheduler.submit(prepare_rows(a)) for a in arrays))
    finally:
        runner.shutdown()
    # All four requests were queued before the first batch started: one batch of 7 (padded
    # to the grid's 8) holds them all.
    assert backend.batches == [8]
    for array, result in zip(arrays, results, strict=True):
        np.testing.assert_array_equal(result.rows, array.reshape(len(array), -1) * 8)
        assert result.tokens == len(array)


class CountingPool:
    """The pool's interface: runs each job in a thread and counts the hops."""

    def __init__(self) -> None:
        self.hops = 0

    async def run(self, owner: object, fn: Callable[[], T]) -> T:
        self.hops += 1
        return await asyncio.to_thread(fn)


class StubPreprocessor:
    """Makes one row per image from its bytes; an image of b"bad" is refused as the real
    preprocessor refuses one (InvalidImage naming its index)."""

    def __init__(self) -> None:
        self.calls = 0

    def pixels(
        self,
        images: Sequence[bytes],
        indices: Sequence[int] | None = None,
        part: Part = Part.IMAGES,
    ) -> np.ndarray:
        self.calls += 1
        out = np.empty((len(images), *ITEM), dtype=np.float32)
        for i, data in enumerate(images):
            if data == b"bad":
                raise InvalidImage(indices[i] if indices else i, "is not an image", part=part)
            out[i] = len(data)
        return out


async def test_preprocessing_hops_are_shared() -> None:
    pool, stub = CountingPool(), StubPreprocessor()
    queue = ImageQueue(stub, pool, owner="m")  # type: ignore[arg-type]
    requests = [[b"a" * (i + 1)] * (i % 3 + 1) for i in range(8)]
    requests[5] = [b"ok", b"bad"]
    results = await asyncio.gather(
        *(queue.prepare(r, [10 + j for j in range(len(r))]) for r in requests),
        return_exceptions=True,
    )
    # Two hops start at once with the first two requests; the third takes the six others.
    assert pool.hops == 3 and stub.calls == 8
    for i, (request, result) in enumerate(zip(requests, results, strict=True)):
        if i == 5:
            assert isinstance(result, InvalidImage) and result.index == 11
            continue
        assert not isinstance(result, BaseException)
        assert len(result.sizes) == len(request)
        assert result.encodings[0][0, 0, 0] == len(request[0])


def test_vision_runtime_checks_the_graph_against_the_preprocessing() -> None:
    backend = RowsBackend()
    spec = ImagePreprocessing(height=2, width=2)
    runtime = VisionRuntime(backend, spec, ModelConfig(model_path="/m"), max_image_pixels=100)
    try:
        assert runtime.grid.lengths == (1,) and runtime.grid.batch_sizes == (1, 2, 4, 8)
        assert isinstance(runtime.preprocessor, ImagePreprocessor)
    finally:
        runtime.runner.shutdown()
    with pytest.raises(Exception, match=r"takes images of shape \(3, 2, 2\), the preprocessing"):
        VisionRuntime(
            RowsBackend(), ImagePreprocessing(height=4, width=4), ModelConfig(model_path="/m"),
            max_image_pixels=100,
        )  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny CLIP and SigLIP, exported (both towers, no plans)."""
    from tests.image_models import write_clip, write_siglip
    from trt_async.tools import export_clip

    root = tmp_path_factory.mktemp("vision-trt")
    out = {}
    for name, write in (("clip", write_clip), ("siglip", write_siglip)):
        export_clip.export_image_text_model(write(root / f"{name}-hf"), root / name, progress=False)
        out[name] = root / name
    return out


def encoded_images(count: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(5)
    out = []
    for i in range(count):
        pixels = rng.integers(0, 255, size=(20 + 7 * i, 40 - 3 * i, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize(
    ("family", "version", "precision"),
    [("clip", "10.13.0.35", "fp32"), ("siglip", "11.4.0.106", "fp16")],
    ids=["clip-trt10-fp32", "siglip-trt11-fp16"],
)
async def test_tensorrt_serves_the_vision_tower_like_onnxruntime(
    exported: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    family: str,
    version: str,
    precision: str,
) -> None:
    """``trt-async build`` of an image-text folder writes a plan beside each tower's graph;
    ``backend: auto`` on a machine with TensorRT then serves both towers on TensorRT, and
    the vision tower's vectors (every batch size, through the scheduler) are ONNX Runtime's
    for the same images. The fake engine runs the graph its plan was built from with ONNX
    Runtime, so this checks the bytes in and out: shapes, dtypes, buffers, bindings."""
    import trt_async.backends as backends
    from tests.fake_trt import FakeCudaRuntime, FakeTensorRT
    from trt_async.backends.modelfiles import ImageTextFiles
    from trt_async.backends.onnxruntime import OnnxRuntimeBackend
    from trt_async.backends.tensorrt import TensorRTBackend
    from trt_async.backends.tensorrt.build import BuildError, build_model
    from trt_async.backends.tensorrt.cuda import Cuda
    from trt_async.core.image_text import create_image_text_runtime
    from trt_async.core.runtime import backend_options

    folder = tmp_path / family
    shutil.copytree(exported[family], folder)
    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda, version=version)
    log = io.StringIO()
    with pytest.raises(BuildError, match=r"beside each tower's model\.onnx"):
        build_model(folder, output_dir=tmp_path / "elsewhere", trt_module=trt, cuda=Cuda(cuda))
    results = build_model(
        folder, batch_sizes=[1, 2, 4], precision=precision, progress=False,
        trt_module=trt, cuda=Cuda(cuda), log=log,
    )  # fmt: skip
    assert [r.plan for r in results] == [
        folder / "text" / f"model.{precision}.plan",
        folder / "vision" / f"model.{precision}.plan",
    ]
    vision_manifest = results[1].manifest
    assert vision_manifest.lengths == [1] and vision_manifest.batch_sizes == [1, 2, 4]
    assert vision_manifest.inputs[0].shape == [-1, 3, 32, 32]
    assert trt.builds[1]["profile"] == ((1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))
    files = ImageTextFiles.resolve(folder)
    assert files.vision_plan == results[1].plan

    monkeypatch.setattr(backends, "tensorrt_available", lambda: True)
    undo = backends.replace_backend(
        "tensorrt",
        lambda f, options: TensorRTBackend(
            f, options, trt_module=trt, cuda_runtime=cuda, build_progress=False
        ),
    )
    config = ModelConfig(
        model_path=str(folder), backend="auto", precision=precision, batch_sizes=[1, 2, 4]
    )  # type: ignore[arg-type]
    try:
        runtime = create_image_text_runtime(files, config)
    finally:
        undo()
    vision = runtime.vision
    assert vision is not None and isinstance(vision.backend, TensorRTBackend)
    reference = VisionRuntime(
        OnnxRuntimeBackend(files.vision(), backend_options(config)),
        files.manifest.preprocessing,
        config,
        max_image_pixels=10**6,
    )
    try:
        await vision.start()
        await reference.start()
        # Served without a rebuild: the plan beside vision/model.onnx was found and fits.
        assert vision.backend.rebuilt_because == [] and len(trt.builds) == 2
        assert vision.backend.io.item_shape == (3, 32, 32)
        images = encoded_images(7)
        prepared = [await q.queue.prepare(images) for q in (vision, reference)]
        # 7 images: batches of 4, 2 and 1 (or padded), every bucket in play.
        got = (await vision.embed(prepared[0], unit=False)).rows
        want = (await reference.embed(prepared[1], unit=False)).rows
        assert got.shape == want.shape == (7, files.manifest.embedding_size)
        if precision == "fp32":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        else:  # the fp16 graph the 11.x build converted: fp16 rounding only
            cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
            assert cos.min() > 0.999 and not np.array_equal(got, want)
        assert vision.backend.info().details["graphs"] == 3
        assert vision.backend.replays >= 2 and not trt.violations
    finally:
        await vision.close("test")
        await reference.close("test")
        runtime.runner.shutdown()
        runtime.backend.close()


def test_tensorrt_reads_a_vision_engine_io_and_refuses_what_it_cannot_serve() -> None:
    """``pixel_values`` alone, float32, only the batch axis dynamic: its item shape comes
    from the engine; anything else is refused with what to do."""
    from tests.fake_trt import DataType
    from trt_async.backends.tensorrt.loader import PlanLoader, TensorRTError

    loader = PlanLoader.__new__(PlanLoader)
    loader.files = SimpleNamespace(manifest=None, root=Path("/m"))  # type: ignore[assignment]
    io_ = loader._make_item_io(
        ["pixel_values"], ["image_embeds"], ((-1, 3, 8, 8), DataType.FLOAT), {"image_embeds"}
    )
    assert io_.item_shape == (3, 8, 8) and io_.input_dtype == np.float32
    assert io_.inputs == ("pixel_values",) and io_.output == "image_embeds"
    with pytest.raises(TensorRTError, match="only its batch axis may vary"):
        loader._make_item_io(["pixel_values"], ["e"], ((-1, 3, -1, -1), DataType.FLOAT), set())
    with pytest.raises(TensorRTError, match="expected float32"):
        loader._make_item_io(["pixel_values"], ["e"], ((-1, 3, 8, 8), DataType.HALF), set())
    with pytest.raises(TensorRTError, match="pixel_values alone"):
        loader._make_item_io(
            ["pixel_values", "input_ids"], ["e"], ((-1, 3, 8, 8), DataType.FLOAT), set()
        )


def mean_pixels_graph(path: Path, *, height: int | str = 4, width: int | str = 4) -> Path:
    """A graph of ``pixel_values`` (batch, 3, height, width) float32 -> ``image_embeds``
    (batch, 3): each channel's mean, which a test computes with numpy on its own."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMean", ["pixel_values"], ["image_embeds"], keepdims=0)
    node.attribute.append(helper.make_attribute("axes", [2, 3]))
    graph = helper.make_graph(
        [node],
        "mean",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3, height, width])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["b", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_fake_tensorrt_refuses_what_tensorrt_refuses_for_an_image_engine(tmp_path: Path) -> None:
    """The fake's rules for a fixed-shape input, each as TensorRT has it: ``set_input_shape``
    returns False for another rank or a shape outside the profile (the item dims are a
    one-point range), and an enqueue whose bound input is smaller than volume x element
    size (a buffer sized for another dtype) is refused rather than read past its end."""
    from tests.fake_trt import EngineSpec, FakeCudaRuntime, FakeTensorRT, write_plan
    from trt_async.backends.modelfiles import ModelFiles
    from trt_async.backends.tensorrt import TensorRTBackend

    graph = mean_pixels_graph(tmp_path / "vision" / "model.onnx")
    spec = EngineSpec(
        inputs=["pixel_values"], output="image_embeds", input_dtype="float32", hidden=3,
        profile_min=[1, 3, 4, 4], profile_opt=[2, 3, 4, 4], profile_max=[4, 3, 4, 4],
        item_shape=[3, 4, 4], graph=str(graph),
    )  # fmt: skip
    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    plan = write_plan(tmp_path / "vision" / "model.trt", spec)
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    assert not context.set_input_shape("pixel_values", (2, 48))  # a token shape
    assert not context.set_input_shape("pixel_values", (8, 3, 4, 4))  # batch past the profile
    assert not context.set_input_shape("pixel_values", (2, 3, 8, 8))  # another image size
    assert context.set_input_shape("pixel_values", (2, 3, 4, 4))
    assert context.get_tensor_shape("image_embeds") == (2, 3)
    _, stream = cuda.cudaStreamCreateWithFlags(0)
    _, small = cuda.cudaMalloc(2 * 3 * 4 * 4 * 2)  # sized for fp16 pixels
    _, out = cuda.cudaMalloc(2 * 3 * 4)
    assert context.set_tensor_address("pixel_values", small)
    assert context.set_tensor_address("image_embeds", out)
    assert not context.execute_async_v3(int(stream))

    # The backend sizes and binds it right: its pinned inputs are (batch, 3, 4, 4) float32
    # and the vectors are each image's channel means, computed here with numpy.
    files = ModelFiles(root=tmp_path / "vision", tokenizer=tmp_path / "t.json", plan=plan)
    backend = TensorRTBackend(
        files, ModelConfig(model_path=str(plan), backend="tensorrt"),  # type: ignore[arg-type]
        trt_module=trt, cuda_runtime=cuda,
    )  # fmt: skip
    grid = BucketGrid([1, 2, 4], [1], 4)
    backend.prepare(grid)
    rng = np.random.default_rng(3)
    try:
        assert backend.io.item_shape == (3, 4, 4)
        for bucket in grid.buckets():
            pixels = backend.inputs(bucket)["pixel_values"]
            assert pixels.shape == (bucket.batch, 3, 4, 4) and pixels.dtype == np.float32
            pixels[...] = rng.standard_normal(pixels.shape)
            want = pixels.mean(axis=(2, 3))
            np.testing.assert_allclose(backend.execute(bucket)["image_embeds"], want, rtol=1e-6)
        assert backend.replays == 3 and not trt.violations
        with pytest.raises(Exception, match="outside the engine's optimisation profile"):
            other = TensorRTBackend(
                files, ModelConfig(model_path=str(plan), backend="tensorrt"),  # type: ignore[arg-type]
                trt_module=trt, cuda_runtime=cuda,
            )  # fmt: skip
            other.prepare(BucketGrid([1, 8], [1], 8))
    finally:
        backend.close()


def test_build_of_images_needs_a_fixed_image_size(tmp_path: Path) -> None:
    """Only the batch axis of an image input may vary: a graph of any image size is refused
    with the fix; the profile of a fixed size spans batch sizes only."""
    from tests.fake_trt import FakeCudaRuntime, FakeTensorRT
    from trt_async.backends.tensorrt.build import BuildError, build_engine
    from trt_async.backends.tensorrt.cuda import Cuda

    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    folder = mean_pixels_graph(tmp_path / "any" / "model.onnx", height="h", width="w").parent
    with pytest.raises(BuildError, match="only the batch axis may vary"):
        build_engine(
            folder, batch_sizes=[1, 2], lengths=[1], output_dir=tmp_path / "out",
            progress=False, trt_module=trt, cuda=Cuda(cuda), log=io.StringIO(),
        )  # fmt: skip
    fixed = mean_pixels_graph(tmp_path / "fixed" / "model.onnx").parent
    result = build_engine(
        fixed, batch_sizes=[1, 2, 8], lengths=[16, 32], output_dir=tmp_path / "out",
        progress=False, trt_module=trt, cuda=Cuda(cuda), log=io.StringIO(),
    )  # fmt: skip
    assert result.manifest.lengths == [1]
    assert (result.manifest.profile_min, result.manifest.profile_max) == ([1, 1], [8, 1])
    assert trt.builds[-1]["profile"] == ((1, 3, 4, 4), (2, 3, 4, 4), (8, 3, 4, 4))
