"""Where a TensorRT engine comes from and what it takes and gives: the plan and its IO.

:class:`PlanLoader` finds the plan for a model folder (a seed-style plan file, or the
managed plan under the graphs folder), rebuilds a managed plan whose manifest no longer
matches the ONNX graph, TensorRT, GPU, precision or grid, deserialises it on the configured
device, and reads its inputs and outputs -- before any plan exists, from the ONNX graph.
Execution (contexts, buffers, graphs) is :mod:`.runtime`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trt_async.backends.base import (
    EXTRA_OUTPUTS,
    KNOWN_INPUTS,
    KNOWN_OUTPUTS,
    BackendOptions,
    ModelIO,
)
from trt_async.backends.modelfiles import ModelFiles
from trt_async.backends.shapes import BucketGrid
from trt_async.backends.tensorrt.build import build_engine
from trt_async.backends.tensorrt.cuda import Cuda, DeviceInfo
from trt_async.backends.tensorrt.plan import (
    PlanManifest,
    mismatches,
    onnx_hashes,
    plan_paths,
    read_plan_manifest,
)
from trt_async.backends.tensorrt.trt_api import (
    ICudaEngine,
    IRuntime,
    dims,
    dtype_name,
    io_mode_is_input,
    numpy_dtype,
)

log = logging.getLogger(__name__)

#: A vision tower's one input: float32 images of one fixed shape (see ``ModelIO.item_shape``).
PIXEL_INPUT = "pixel_values"


class TensorRTError(RuntimeError):
    """The TensorRT backend cannot serve this model as configured; the message says why."""


class PlanMismatch(TensorRTError):
    """The built plan does not match the model, GPU, TensorRT or grid, and rebuild is off."""


def numpy_can_hold(dtype: Any, tensor: str) -> bool:
    try:
        numpy_dtype(dtype, tensor)
    except TypeError:
        return False
    return True


def host_dtype(dtype: Any, tensor: str) -> np.dtype[Any]:
    """The numpy dtype of a tensor the host reads or writes; a clear error for bf16."""
    try:
        return numpy_dtype(dtype, tensor)
    except TypeError as exc:
        raise TensorRTError(str(exc)) from None


class PlanLoader:
    """The plan, the deserialised engine and its IO for one model folder.

    ``trt``, ``cuda`` and ``gpu`` give the TensorRT module, the CUDA boundary and the
    configured GPU's facts when first needed; ``use_device`` makes the configured device
    current on the calling thread (the engine binds to the device current where it is
    deserialised).
    """

    def __init__(
        self,
        files: ModelFiles,
        config: BackendOptions,
        *,
        plans_dir: Path,
        trt: Callable[[], Any],
        cuda: Callable[[], Cuda],
        gpu: Callable[[], DeviceInfo],
        use_device: Callable[[], None],
        build_progress: bool = True,
    ) -> None:
        self.files = files
        self.config = config
        self.plans_dir = plans_dir
        self._trt, self._cuda, self._gpu, self._use_device = trt, cuda, gpu, use_device
        self._build_progress = build_progress
        self._io: ModelIO | None = None
        #: The runtime must outlive its engines: kept here.
        self.runtime: IRuntime | None = None
        self.engine: ICudaEngine | None = None
        #: Every output tensor of the engine (all are bound; ``io.output`` is read).
        self.outputs: list[str] = []
        self.plan_path: Path | None = None
        self.plan_bytes = 0
        self.manifest: PlanManifest | None = None
        self._hashes: tuple[object, tuple[str, str | None]] | None = None
        #: Why the plan was rebuilt at start-up (empty when it was used as is).
        self.rebuilt_because: list[str] = []

    def load(self, grid: BucketGrid) -> tuple[ICudaEngine, ModelIO]:
        """The engine for ``grid`` (built first if needed) and its IO."""
        plan, built = self.ensure_plan(grid)
        if self.engine is None or built or plan != self.plan_path:
            self.engine = self.deserialize(plan)
        self._io = self.io_from_engine(self.engine)
        return self.engine, self._io

    def release(self) -> None:
        self.engine = None
        self.runtime = None

    def stale_reasons(self, grid: BucketGrid | None) -> list[str]:
        assert self.files.onnx is not None
        plan, manifest_path = plan_paths(self.plans_dir, self.config.precision)
        if not plan.is_file():
            return [f"no plan at {plan}"]
        manifest = read_plan_manifest(manifest_path)
        if manifest is None:
            return [f"no readable manifest at {manifest_path}"]
        gpu = self._gpu()
        onnx_sha, data_sha = self._onnx_hashes(self.files.onnx)
        return mismatches(
            manifest,
            onnx_sha256=onnx_sha,
            onnx_data_sha256=data_sha,
            tensorrt_version=str(self._trt().__version__),
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            precision=self.config.precision,
            grid=grid,
        )

    def _onnx_hashes(self, onnx: Path) -> tuple[str, str | None]:
        # Hashing gigabytes takes seconds: once per file version, not per check.
        data = onnx.with_name(onnx.name + ".data")
        key = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (onnx, data) if p.is_file())
        if self._hashes is None or self._hashes[0] != key:
            self._hashes = (key, onnx_hashes(onnx))
        return self._hashes[1]

    def ensure_plan(self, grid: BucketGrid) -> tuple[Path, bool]:
        """The plan to load and whether it was just built.

        A seed-style plan file is used as is; a managed plan is rebuilt when stale.
        """
        if self.files.onnx is None:
            if self.files.plan is None:
                raise TensorRTError(f"{self.files.root}: neither model.onnx nor a plan file")
            return self.files.plan, False
        plan, manifest_path = plan_paths(self.plans_dir, self.config.precision)
        reasons = self.stale_reasons(grid)
        if reasons:
            why = "; ".join(reasons)
            if self.config.rebuild == "never":
                raise PlanMismatch(
                    f"{plan}: cannot be used ({why}) and rebuild is 'never'; run `trt-async "
                    f"build {self.files.root} --precision {self.config.precision}` or set "
                    "rebuild: auto"
                )
            log.warning("building TensorRT plan %s: %s", plan, why)
            build_engine(
                self.files.onnx,
                precision=self.config.precision,
                batch_sizes=grid.batch_sizes,
                lengths=grid.lengths,
                output_dir=self.plans_dir,
                device=self.config.device,
                progress=self._build_progress,
                trt_module=self._trt(),
                cuda=self._cuda(),
            )
            self.rebuilt_because = reasons
        self.manifest = read_plan_manifest(manifest_path)
        return plan, bool(reasons)

    def deserialize(self, plan: Path) -> ICudaEngine:
        trt = self._trt()
        data = plan.read_bytes()
        # The engine binds to the device current on this thread.
        self._use_device()
        runtime: IRuntime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        # The runtime must outlive its engines: keep it.
        self.runtime = runtime
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise TensorRTError(
                f"{plan}: TensorRT {trt.__version__} cannot deserialize this plan (built with "
                "another TensorRT version or for another GPU?); rebuild it with trt-async build"
            )
        self.plan_path, self.plan_bytes = plan, len(data)
        return engine

    # -- IO ----------------------------------------------------------------------------
    def io_from_engine(self, engine: ICudaEngine) -> ModelIO:
        trt = self._trt()
        inputs: list[str] = []
        outputs: list[str] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            (inputs if io_mode_is_input(trt, engine.get_tensor_mode(name)) else outputs).append(
                name
            )
        self.outputs = outputs
        dtype = (
            host_dtype(engine.get_tensor_dtype("input_ids"), "input_ids")
            if "input_ids" in inputs
            else None
        )
        readable = {n for n in outputs if numpy_can_hold(engine.get_tensor_dtype(n), n)}
        if PIXEL_INPUT in inputs:
            pixels = (
                dims(engine.get_tensor_shape(PIXEL_INPUT)),
                engine.get_tensor_dtype(PIXEL_INPUT),
            )
            return self._make_item_io(inputs, outputs, pixels, readable)
        return self._make_io(inputs, outputs, dtype, readable)

    def _output(self, outputs: list[str]) -> str:
        preferred = self.files.manifest.output if self.files.manifest is not None else None
        candidates = [preferred] if preferred else []
        candidates += [n for n in KNOWN_OUTPUTS if n != preferred]
        output = next((n for n in candidates if n in outputs), outputs[0] if outputs else None)
        if output is None:
            raise TensorRTError("engine has no output tensor")
        return output

    def _make_item_io(
        self,
        inputs: list[str],
        outputs: list[str],
        pixels: tuple[tuple[int, ...], Any],
        readable: set[str],
    ) -> ModelIO:
        """A vision tower's IO: ``pixel_values`` alone, float32 ``(batch, *item_shape)``
        with every dimension but the batch fixed in the graph, so that its buckets are
        batch sizes only (``trt-async export`` writes such a graph)."""
        shape, dtype = pixels
        if inputs != [PIXEL_INPUT]:
            raise TensorRTError(f"engine inputs {inputs}: a vision tower takes {PIXEL_INPUT} alone")
        if host_dtype(dtype, PIXEL_INPUT) != np.dtype(np.float32):
            raise TensorRTError(
                f"{PIXEL_INPUT} is {dtype_name(dtype)}; expected float32 (export the vision "
                "tower with float32 inputs; reduced precision inside the graph only)"
            )
        item = shape[1:]
        if len(shape) < 2 or any(d <= 0 for d in item):
            raise TensorRTError(
                f"{PIXEL_INPUT} has shape {shape}: only its batch axis may vary; re-export "
                "the vision tower with a fixed image size"
            )
        output = self._output(outputs)
        extra = tuple(n for n in outputs if n != output and n in EXTRA_OUTPUTS and n in readable)
        return ModelIO(
            inputs=(PIXEL_INPUT,),
            output=output,
            input_dtype=np.dtype(np.float32),
            extra_outputs=extra,
            item_shape=item,
        )

    def _make_io(
        self,
        inputs: list[str],
        outputs: list[str],
        dtype: np.dtype[Any] | None,
        readable: set[str],
    ) -> ModelIO:
        """``readable``: outputs whose type numpy can hold (bf16 cannot): only those can
        be offered as extra outputs; the others are bound on the device and never read."""
        unknown = [n for n in inputs if n not in KNOWN_INPUTS]
        if unknown or "input_ids" not in inputs or dtype is None:
            raise TensorRTError(
                f"engine inputs {inputs}: expected input_ids plus any of attention_mask, "
                "token_type_ids"
            )
        output = self._output(outputs)
        if dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
            raise TensorRTError(f"input_ids is {dtype}; expected int32 or int64")
        ordered = tuple(n for n in KNOWN_INPUTS if n in inputs)
        extra = tuple(n for n in outputs if n != output and n in EXTRA_OUTPUTS and n in readable)
        return ModelIO(inputs=ordered, output=output, input_dtype=dtype, extra_outputs=extra)

    @property
    def io(self) -> ModelIO:
        """The graph's IO. Asked for before ``prepare`` (the grid is not known yet), it comes
        from a plan that is still valid, or else from parsing the ONNX graph: building is
        left to ``prepare``, which runs in the worker thread and reports progress."""
        if self._io is None:
            if self.engine is None and self.files.onnx is not None and self.stale_reasons(None):
                self._io = self._io_from_network()
            else:
                if self.engine is None:
                    plan = self.files.plan if self.files.onnx is None else None
                    if plan is None:
                        plan = plan_paths(self.plans_dir, self.config.precision)[0]
                    self.engine = self.deserialize(plan)
                self._io = self.io_from_engine(self.engine)
        return self._io

    def _io_from_network(self) -> ModelIO:
        trt = self._trt()
        assert self.files.onnx is not None
        logger = trt.Logger(trt.Logger.WARNING)
        network = trt.Builder(logger).create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.files.onnx)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TensorRTError(f"{self.files.onnx}: TensorRT cannot parse the graph: {errors}")
        tensors = {
            network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)
        }
        outs = [network.get_output(i) for i in range(network.num_outputs)]
        dtype = (
            host_dtype(tensors["input_ids"].dtype, "input_ids") if "input_ids" in tensors else None
        )
        readable = {t.name for t in outs if numpy_can_hold(t.dtype, t.name)}
        if PIXEL_INPUT in tensors:
            pixels = (dims(tensors[PIXEL_INPUT].shape), tensors[PIXEL_INPUT].dtype)
            return self._make_item_io(list(tensors), [t.name for t in outs], pixels, readable)
        return self._make_io(list(tensors), [t.name for t in outs], dtype, readable)
