"""ONNX Runtime on the CPU: the embedded default and the numerical reference.

Buffers are allocated once, at the size of the largest bucket, and every bucket's input and
output arrays are views into them, bound to the session with IOBinding. That is safe
because a backend runs one bucket at a time (the core's runner owns a single thread) and
the outputs are reduced before the next bucket runs. No per-batch allocation happens on
the hot path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from trt_async.backends.base import (
    KNOWN_OUTPUTS,
    BackendInfo,
    BackendOptions,
    BackendSpec,
    CounterSpec,
    ModelIO,
    Progress,
)
from trt_async.backends.modelfiles import ModelDirError, ModelFiles
from trt_async.backends.shapes import Bucket, BucketGrid

log = logging.getLogger(__name__)

_ORT_INT_TYPES: dict[str, np.dtype] = {
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}

#: Fine-grained lengths and every batch size: ONNX Runtime takes any shape, so padding (whose
#: cost is linear on the CPU) is what to avoid, and no padding rows are ever computed. The
#: per-batch overhead was measured for all-MiniLM-L6-v2 (2 threads): about 2.2 ms + 0.068 ms
#: per padded token, i.e. ~32 tokens.
ONNXRUNTIME_SPEC = BackendSpec(
    name="onnxruntime",
    length_steps=(*range(8, 129, 8), *range(144, 257, 16), *range(288, 8193, 32)),
    batch_sizes=tuple(range(1, 33)),
    batch_overhead_tokens=32,
)


class OnnxRuntimeBackend:
    """Runs an exported ``model.onnx`` with the CPU execution provider."""

    def __init__(self, files: ModelFiles, options: BackendOptions) -> None:
        if files.onnx is None:
            raise ModelDirError(
                f"{files.plan}: a TensorRT plan cannot run on ONNX Runtime; point model_path at "
                "the exported model folder (with model.onnx) or set backend: tensorrt"
            )
        self._path = files.onnx
        settings = ort.SessionOptions()
        settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        settings.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        settings.intra_op_num_threads = options.intra_op_threads or (os.cpu_count() or 1)
        settings.inter_op_num_threads = 1
        # Idle intra-op threads would otherwise spin on every core between batches and starve
        # the event loop and the tokenizer, which share those cores in a server.
        settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(files.onnx), settings, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelDirError(f"{files.onnx}: ONNX Runtime cannot load it: {exc}") from None
        inputs = self._session.get_inputs()
        outputs = {o.name for o in self._session.get_outputs()}
        wanted = files.manifest.output if files.manifest is not None else None
        output = (
            wanted if wanted in outputs else next((n for n in KNOWN_OUTPUTS if n in outputs), None)
        )
        if output is None:
            raise ModelDirError(
                f"{files.onnx}: outputs {sorted(outputs)} include none the server reads "
                f"({', '.join(KNOWN_OUTPUTS)}); re-export with trt-async export"
            )
        dtype = _ORT_INT_TYPES.get(inputs[0].type, np.dtype(np.int64))
        self._io = ModelIO(tuple(i.name for i in inputs), output, dtype)
        self._threads = settings.intra_op_num_threads
        self._in_arena: dict[str, np.ndarray] = {}
        self._out_arena: np.ndarray | None = None
        self._feature_shape: tuple[int, ...] = ()
        self._per_token = False
        self._bound: dict[Bucket, tuple[ort.IOBinding, dict[str, np.ndarray], np.ndarray]] = {}

    @property
    def io(self) -> ModelIO:
        return self._io

    def spec(self) -> BackendSpec:
        return ONNXRUNTIME_SPEC

    def counters(self) -> dict[CounterSpec, int]:
        return {}

    def prepare(self, grid: BucketGrid, progress: Progress | None = None) -> None:
        # Probe once to learn the output's feature dimensions (hidden size or labels).
        probe = {name: np.ones((1, 2), dtype=self._io.input_dtype) for name in self._io.inputs}
        if "token_type_ids" in probe:
            probe["token_type_ids"][:] = 0
        (out,) = self._session.run([self._io.output], probe)
        self._per_token = out.ndim == 3
        self._feature_shape = tuple(out.shape[2:] if self._per_token else out.shape[1:])
        most_tokens = max(b.tokens for b in grid.buckets())
        most_rows = max(b.batch for b in grid.buckets())
        self._in_arena = {
            name: np.zeros(most_tokens, dtype=self._io.input_dtype) for name in self._io.inputs
        }
        features = int(np.prod(self._feature_shape))
        self._out_arena = np.zeros(
            (most_tokens if self._per_token else most_rows) * features, dtype=np.float32
        )
        # CPU kernels are shape-agnostic: the first run pays one-off costs, not each shape, so
        # warm each length once at batch 1 rather than every bucket.
        lengths = grid.lengths
        for i, length in enumerate(lengths):
            self.execute(Bucket(1, length))
            if progress is not None:
                progress(i + 1, len(lengths), f"warm-up length {length}")

    def _binding(self, bucket: Bucket) -> tuple[ort.IOBinding, dict[str, np.ndarray], np.ndarray]:
        bound = self._bound.get(bucket)
        if bound is not None:
            return bound
        if self._out_arena is None:
            raise RuntimeError("prepare() must run before the first bucket")
        n = bucket.tokens
        views = {
            name: arena[:n].reshape(bucket.batch, bucket.length)
            for name, arena in self._in_arena.items()
        }
        out_shape = (
            (bucket.batch, bucket.length, *self._feature_shape)
            if self._per_token
            else (bucket.batch, *self._feature_shape)
        )
        out_view = self._out_arena[: int(np.prod(out_shape))].reshape(out_shape)
        binding = self._session.io_binding()
        for name, view in views.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(view))
        binding.bind_ortvalue_output(self._io.output, ort.OrtValue.ortvalue_from_numpy(out_view))
        bound = (binding, views, out_view)
        self._bound[bucket] = bound
        return bound

    def inputs(self, bucket: Bucket) -> Mapping[str, np.ndarray]:
        return self._binding(bucket)[1]

    def execute(self, bucket: Bucket) -> np.ndarray:
        binding, _, out = self._binding(bucket)
        self._session.run_with_iobinding(binding)
        return out

    def info(self) -> BackendInfo:
        buffers = sum(a.nbytes for a in self._in_arena.values())
        if self._out_arena is not None:
            buffers += self._out_arena.nbytes
        return BackendInfo(
            name="onnxruntime",
            device="cpu",
            memory={"buffers": buffers},
            details={
                "provider": "CPUExecutionProvider",
                "intra_op_threads": self._threads,
                "onnx": self._path.name,
                "output": self._io.output,
            },
        )

    def close(self) -> None:
        self._bound.clear()
        self._in_arena = {}
        self._out_arena = None
