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
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from trt_async.backends.base import (
    EXTRA_OUTPUTS,
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
#: per padded token, i.e. ~32 tokens. Batches of many long rows cost more per item than a
#: few rows (their activations leave the caches: at length 160, 46 ms an item in batches of
#: 32 against 33-38 ms in batches of 2-8), but a budget of 1024 padded tokens made the server
#: 5-8 % slower on 32-text requests and long texts side by side (``perf/peer_table.py``): the
#: queue seldom holds that many long rows, and more, smaller batches each cost the overhead.
#: So the token budget stays the common default.
ONNXRUNTIME_SPEC = BackendSpec(
    name="onnxruntime",
    length_steps=(*range(8, 129, 8), *range(144, 257, 16), *range(288, 8193, 32)),
    batch_sizes=tuple(range(1, 33)),
    batch_overhead_tokens=32,
)


@dataclass(frozen=True, slots=True)
class _Bound:
    """One bucket's IOBinding for one set of outputs, and the arrays it is bound to."""

    binding: ort.IOBinding
    views: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


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
        # the event loop and the tokenizer, which share those cores in a server. Spinning
        # only while a batch runs (allow_spinning=1 with session.force_spinning_stop=1) was
        # measured too and lost: 0.79x the items/s at 16 clients and 0.94x at 64
        # (perf/results/peer-table-spin, three alternating rounds).
        settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(files.onnx), settings, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelDirError(f"{files.onnx}: ONNX Runtime cannot load it: {exc}") from None
        inputs = self._session.get_inputs()
        outputs = [o.name for o in self._session.get_outputs()]
        wanted = files.manifest.output if files.manifest is not None else None
        output = (
            wanted if wanted in outputs else next((n for n in KNOWN_OUTPUTS if n in outputs), None)
        )
        if output is None:
            raise ModelDirError(
                f"{files.onnx}: outputs {sorted(outputs)} include none the server reads "
                f"({', '.join(KNOWN_OUTPUTS)}); re-export with trt-async export"
            )
        extra = tuple(n for n in outputs if n != output and n in EXTRA_OUTPUTS)
        dtype = _ORT_INT_TYPES.get(inputs[0].type, np.dtype(np.int64))
        self._io = ModelIO(tuple(i.name for i in inputs), output, dtype, extra)
        self._threads = settings.intra_op_num_threads
        self._in_arena: dict[str, np.ndarray] = {}
        self._out_arena: dict[str, np.ndarray] = {}
        #: Per output: trailing feature shape, and whether its second axis is the length.
        self._shapes: dict[str, tuple[bool, tuple[int, ...]]] = {}
        self._bound: dict[tuple[Bucket, frozenset[str]], _Bound] = {}
        # ONNX Runtime's CPU arena keeps the peak of every run: one 32 x 256 MiniLM batch left
        # ~780 MiB held for good. Batches of at least a quarter of the largest bucket's
        # tokens hand what they grew back at the end of their run; smaller ones reuse it.
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._shrink_from = 0

    @property
    def io(self) -> ModelIO:
        return self._io

    def spec(self) -> BackendSpec:
        return ONNXRUNTIME_SPEC

    def counters(self) -> dict[CounterSpec, int]:
        return {}

    def _probe(self, length: int) -> dict[str, tuple[int, ...]]:
        feeds = {n: np.ones((1, length), dtype=self._io.input_dtype) for n in self._io.inputs}
        if "token_type_ids" in feeds:
            feeds["token_type_ids"][:] = 0
        names = list(self._io.outputs)
        return {
            n: tuple(o.shape) for n, o in zip(names, self._session.run(names, feeds), strict=True)
        }

    def prepare(self, grid: BucketGrid, progress: Progress | None = None) -> None:
        # Two probes tell each output's length axis (it changes with the input's length)
        # from its feature axes (hidden size, labels).
        short, longer = self._probe(2), self._probe(3)
        for name in self._io.outputs:
            per_token = len(short[name]) >= 2 and (short[name][1], longer[name][1]) == (2, 3)
            self._shapes[name] = (per_token, short[name][2:] if per_token else short[name][1:])
        most_tokens = max(b.tokens for b in grid.buckets())
        most_rows = max(b.batch for b in grid.buckets())
        self._shrink_from = max(most_tokens // 4, 1)
        self._in_arena = {
            name: np.zeros(most_tokens, dtype=self._io.input_dtype) for name in self._io.inputs
        }
        for name, (per_token, features) in self._shapes.items():
            size = (most_tokens if per_token else most_rows) * int(np.prod(features))
            self._out_arena[name] = np.zeros(size, dtype=np.float32)
        # CPU kernels are shape-agnostic: the first run pays one-off costs, not each shape, so
        # warm each length once at batch 1 rather than every bucket.
        lengths = grid.lengths
        for i, length in enumerate(lengths):
            self.execute(Bucket(1, length), self._io.extra_outputs)
            if progress is not None:
                progress(i + 1, len(lengths), f"warm-up length {length}")

    def _binding(self, bucket: Bucket, names: frozenset[str]) -> _Bound:
        key = (bucket, names)
        bound = self._bound.get(key)
        if bound is not None:
            return bound
        if not self._out_arena:
            raise RuntimeError("prepare() must run before the first bucket")
        n = bucket.tokens
        views = {
            name: arena[:n].reshape(bucket.batch, bucket.length)
            for name, arena in self._in_arena.items()
        }
        binding = self._session.io_binding()
        for name, view in views.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(view))
        outs: dict[str, np.ndarray] = {}
        # Only the outputs asked for are bound: ONNX Runtime copies nothing else out.
        for name in sorted(names):
            per_token, features = self._shapes[name]
            lead = (bucket.batch, bucket.length) if per_token else (bucket.batch,)
            shape = (*lead, *features)
            outs[name] = self._out_arena[name][: int(np.prod(shape))].reshape(shape)
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(outs[name]))
        bound = _Bound(binding, views, outs)
        self._bound[key] = bound
        return bound

    def inputs(self, bucket: Bucket) -> Mapping[str, np.ndarray]:
        return self._binding(bucket, frozenset((self._io.output,))).views

    def execute(self, bucket: Bucket, extra: Collection[str] = ()) -> Mapping[str, np.ndarray]:
        unknown = set(extra) - set(self._io.outputs)
        if unknown:
            raise ValueError(f"outputs {sorted(unknown)} are not among {list(self._io.outputs)}")
        bound = self._binding(bucket, frozenset((self._io.output, *extra)))
        shrink = self._shrink if bucket.tokens >= self._shrink_from else None
        self._session.run_with_iobinding(bound.binding, shrink)
        return bound.outputs

    def info(self) -> BackendInfo:
        buffers = sum(a.nbytes for a in self._in_arena.values())
        buffers += sum(a.nbytes for a in self._out_arena.values())
        return BackendInfo(
            name="onnxruntime",
            device="cpu",
            memory={"buffers": buffers},
            details={
                "provider": "CPUExecutionProvider",
                "intra_op_threads": self._threads,
                "onnx": self._path.name,
                "output": self._io.output,
                "extra_outputs": list(self._io.extra_outputs),
            },
        )

    def close(self) -> None:
        self._bound.clear()
        self._in_arena = {}
        self._out_arena = {}
