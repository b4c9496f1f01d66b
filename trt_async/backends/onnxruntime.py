"""ONNX Runtime on the CPU: the embedded default and the numerical reference.

Buffers are allocated once per lane, at the size of the largest bucket, and every bucket's
input and output arrays are views into its lane's buffers, bound to the session with
IOBinding. That is safe because a lane runs one bucket at a time (the core's runner gives
each lane one thread) and the outputs are reduced before that lane runs again. No
per-batch allocation happens on the hot path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
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
    Lanes,
    ModelIO,
    Progress,
)
from trt_async.backends.modelfiles import ModelDirError, ModelFiles, default_max_length
from trt_async.backends.shapes import Bucket, BucketGrid

log = logging.getLogger(__name__)

_ORT_INPUT_TYPES: dict[str, np.dtype] = {
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    # A vision tower's pixel values.
    "tensor(float)": np.dtype(np.float32),
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
#:
#: Past 8192 tokens (decoders take 32768 and more) the steps grow to 1024, 2048 and 4096
#: tokens, 6-12 % of the length: a text one token over a step must not pad to the model's
#: whole length. Attention's scores, ``rows x heads x length²`` floats, are most of a long
#: batch's memory (ONNX Runtime's peak was 2.2-2.3 times them for one 8192-token text on a
#: 16-head decoder, ``perf/attention_memory.py``),
#: so a batch holds at most 2^24 rows x length² (16 rows of 1024 tokens): below 1024
#: tokens the token budget binds first, as before; above, long rows batch less (4 of 2048,
#: 1 of 4096 and more). Longer rows also ran slower per item in batches here (2048 tokens:
#: 1.6 s alone, 2.1 s each in twos).
ONNXRUNTIME_SPEC = BackendSpec(
    name="onnxruntime",
    length_steps=(
        *range(8, 129, 8),
        *range(144, 257, 16),
        *range(288, 8193, 32),
        *range(9216, 16385, 1024),
        *range(18432, 32769, 2048),
        *range(36864, 131073, 4096),
    ),
    batch_sizes=tuple(range(1, 33)),
    batch_overhead_tokens=32,
    max_batch_attention=1 << 24,
)
#: Tokens warmed per session at start-up, over the shortest lengths first: a decoder's
#: grid reaches thousands of tokens per length, and warming every one of them once took
#: hours on a CPU. Longer lengths pay their first run's one-off costs on their first batch.
WARMUP_TOKENS = 1 << 15


def warmup_lengths(lengths: Sequence[int], budget: int = WARMUP_TOKENS) -> list[int]:
    """The shortest of ``lengths`` whose sum stays within ``budget`` (at least one)."""
    out: list[int] = []
    for length in sorted(lengths):
        if out and sum(out) + length > budget:
            break
        out.append(length)
    return out


@dataclass(frozen=True, slots=True)
class _Bound:
    """One bucket's IOBinding for one set of outputs, and the arrays it is bound to."""

    binding: ort.IOBinding
    views: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def session_options(threads: int) -> ort.SessionOptions:
    """The options of the backend's sessions, with ``threads`` intra-op threads."""
    settings = ort.SessionOptions()
    settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    settings.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    settings.intra_op_num_threads = threads
    settings.inter_op_num_threads = 1
    # Idle intra-op threads would otherwise spin on every core between batches and starve
    # the event loop and the tokenizer, which share those cores in a server. Spinning only
    # while a batch runs (allow_spinning=1 with session.force_spinning_stop=1) lost: 0.79x
    # the items/s at 16 clients and 0.94x at 64 (perf/results/peer-table-spin); on the solo
    # lane alone it gained 1.09x at one client but lost 0.95x on long texts at 16 clients
    # (perf/results/peer-table-spin-solo).
    settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return settings


#: Tokens of the probe that decides whether intra-op threads pay (at most the model's
#: longest input): a short text, where they pay least.
PROBE_LENGTH = 32
#: Only a model whose lone short batch takes less than this on one thread is raced against
#: every thread; any slower one keeps its lanes unraced. Such a model has enough work per
#: operator for threads to pay (all-MiniLM-L6-v2: ~6-9 ms on one thread, ~1.3-1.5x faster
#: on two), and a race is only as good as the machine is quiet: started beside two other
#: servers that were loading, MiniLM's race read 8.24 ms on one thread against 8.48 on two,
#: and the one thread it chose cost it half its items/s at 16 and 64 clients.
RACE_BELOW_S = 0.001
#: Alternated runs of each session in a race; the fastest of each counts.
RACE_RUNS = 5
#: How much faster every thread must run a lone batch than one thread for threads to pay.
THREADS_PAY_FROM = 1.1


def lone_batch_seconds(
    one: ort.InferenceSession, full: ort.InferenceSession, feeds: Mapping[str, np.ndarray]
) -> tuple[float, float]:
    """The fastest of a few runs of ``feeds`` on a one-thread and an every-thread session,
    alternated (the first run of each, which pays one-off costs, is not timed); the
    every-thread session is not run (0.0) when one thread takes :data:`RACE_BELOW_S` or
    more, the fastest of two runs."""
    one.run(None, dict(feeds))
    one_s = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        one.run(None, dict(feeds))
        one_s = min(one_s, time.perf_counter() - start)
    if one_s >= RACE_BELOW_S:
        return one_s, 0.0
    full.run(None, dict(feeds))
    full_s = float("inf")
    for _ in range(RACE_RUNS):
        for session in (one, full):
            start = time.perf_counter()
            session.run(None, dict(feeds))
            took = time.perf_counter() - start
            if session is one:
                one_s = min(one_s, took)
            else:
                full_s = min(full_s, took)
    return one_s, full_s


def threads_pay(one_thread_s: float, all_threads_s: float) -> bool:
    """Whether a model's batches are worth more than one intra-op thread, from a lone short
    batch on one thread and on every thread.

    Threads meet at every operator; a near-instant model's operators are shorter than that
    meeting (a 1-layer, 32-wide BERT ran a 32-token text in ~0.1 ms on one thread and
    ~0.12-0.14 ms on two here), and its batches are shorter than the per-batch cost of
    running two side by side (smaller batches, a thread woken for each, a solo lane's pool
    thread woken for a lone one). Such a model runs one batch at a time on one thread: with
    the near-instant model at 64 clients, hand-run alternating rounds put the server's CPU
    a request at 0.79-0.98x the default lanes', and the overhead harness (this change and
    shared tokenisation hops together, perf/RESULTS.md) at 0.96x, within its noise, with
    5.4 context switches a request against 7.4. A real model (all-MiniLM-L6-v2: ~9.5 ms on
    one thread, ~6.3 ms on two) keeps its lanes, unraced (:data:`RACE_BELOW_S`).
    """
    return all_threads_s * THREADS_PAY_FROM < one_thread_s


class OnnxRuntimeBackend:
    """Runs an exported ``model.onnx`` with the CPU execution provider.

    Under load, batches run side by side on parallel lanes, each on its share of the
    threads: one session with that many intra-op threads, which several threads may
    call at once (ONNX Runtime's ``Run`` is documented as safe to call concurrently on one
    session). A batch alone runs on the solo lane, a second session with every thread.
    Side by side on 2 cores, two one-thread batches ran a median 1.06x the items/s of one
    two-thread session (sorted realistic batches, nine alternating rounds, 0.99-1.55), and
    1.10x (1.06-1.36) with a thread standing in for the event loop: the threads of one
    batch wait for each other at every operator, which a one-thread batch never does,
    while a single batch (one client) is ~1.5x faster on two threads than on one.

    Unless the config sets threads or lanes, that holds only for a model whose lone short
    batch runs faster on every thread than on one (:func:`threads_pay`, raced once at
    load); any other runs one batch at a time on one thread.
    """

    def __init__(self, files: ModelFiles, options: BackendOptions) -> None:
        if files.onnx is None:
            raise ModelDirError(
                f"{files.plan}: a TensorRT plan cannot run on ONNX Runtime; point model_path at "
                "the exported model folder (with model.onnx) or set backend: tensorrt"
            )
        self._path = files.onnx
        threads = options.intra_op_threads or (os.cpu_count() or 1)
        parallel = options.parallel_batches or threads
        per_lane = max(1, threads // parallel)
        shared = self._session(files, per_lane)
        solo = parallel > 1 and threads > per_lane
        full = self._session(files, threads) if solo else None
        inputs = shared.get_inputs()
        outputs = [o.name for o in shared.get_outputs()]
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
        first = inputs[0]
        dtype = _ORT_INPUT_TYPES.get(first.type, np.dtype(np.int64))
        item_shape = _item_shape(files, inputs) if dtype.kind == "f" else None
        #: A token graph whose sequence axis is fixed (SigLIP's text tower: 64): it is
        #: probed at that length only.
        self._static_length: int | None = None
        if item_shape is None and len(first.shape) >= 2 and isinstance(first.shape[1], int):
            self._static_length = int(first.shape[1])
        self._io = ModelIO(
            tuple(i.name for i in inputs), output, dtype, extra, item_shape=item_shape
        )
        #: A lone short batch on one thread and on every thread (the automatic choice's
        #: evidence), in seconds.
        self._lone_batch_s: tuple[float, float] | None = None
        if (
            full is not None
            and options.intra_op_threads is None
            and options.parallel_batches is None
        ):
            probe = self._probe_feeds(min(PROBE_LENGTH, default_max_length(files)))
            self._lone_batch_s = one_s, all_s = lone_batch_seconds(shared, full, probe)
            pays = threads_pay(one_s, all_s)
            raced = (
                f"{all_s * 1e3:.3f} ms on {threads}"
                if all_s
                else f"not raced on {threads} (over {RACE_BELOW_S * 1e3:g} ms on one)"
            )
            log.info(
                "%s: a lone batch ran in %.3f ms on one thread and %s: %s",
                files.onnx.name,
                one_s * 1e3,
                raced,
                "threads pay" if pays else "one batch at a time on one thread",
            )
            if not pays:
                # Too little work per operator for threads to meet over: one batch at a time
                # on one thread (see threads_pay).
                threads = parallel = per_lane = 1
                solo, full = False, None
        self._threads = threads
        self._per_lane = per_lane
        self._lanes = Lanes(parallel, solo=solo)
        #: The session each lane runs on: parallel lanes share one; the solo lane has its own.
        self._sessions = [shared] * parallel
        if full is not None:
            self._sessions.append(full)
        #: Per lane: input and output buffers at the largest bucket's size.
        self._in_arena: list[dict[str, np.ndarray]] = []
        self._out_arena: list[dict[str, np.ndarray]] = []
        #: Per output: trailing feature shape, and whether its second axis is the length.
        self._shapes: dict[str, tuple[bool, tuple[int, ...]]] = {}
        self._bound: dict[tuple[int, Bucket, frozenset[str]], _Bound] = {}
        # ONNX Runtime's CPU arena keeps the peak of every run: one 32 x 256 MiniLM batch left
        # ~780 MiB held for good. Batches of at least a quarter of the largest bucket's
        # tokens hand what they grew back at the end of their run; smaller ones reuse it.
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._shrink_from = 0

    @staticmethod
    def _session(files: ModelFiles, threads: int) -> ort.InferenceSession:
        settings = session_options(threads)
        try:
            return ort.InferenceSession(
                str(files.onnx), settings, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelDirError(f"{files.onnx}: ONNX Runtime cannot load it: {exc}") from None

    @property
    def io(self) -> ModelIO:
        return self._io

    def spec(self) -> BackendSpec:
        return ONNXRUNTIME_SPEC

    def lanes(self) -> Lanes:
        return self._lanes

    def counters(self) -> dict[CounterSpec, int]:
        return {}

    def _probe_feeds(self, length: int) -> dict[str, np.ndarray]:
        """Inputs of one item: ``length`` tokens (the graph's own length where it is fixed),
        or one fixed-shape item."""
        io = self._io
        if io.item_shape is not None:
            feeds = {n: np.zeros((1, *io.item_shape), dtype=io.input_dtype) for n in io.inputs}
        else:
            length = self._static_length or length
            feeds = {n: np.ones((1, length), dtype=io.input_dtype) for n in io.inputs}
        if "token_type_ids" in feeds:
            feeds["token_type_ids"][:] = 0
        return feeds

    def _probe(self, length: int) -> dict[str, tuple[int, ...]]:
        names = list(self._io.outputs)
        outputs = self._sessions[0].run(names, self._probe_feeds(length))
        return {n: tuple(o.shape) for n, o in zip(names, outputs, strict=True)}

    def _output_shapes(self) -> None:
        """Each output's trailing shape, and whether its second axis is the length."""
        if self._io.item_shape is not None:
            # One row per item: nothing varies but the batch.
            for name, shape in self._probe(1).items():
                self._shapes[name] = (False, shape[1:])
            return
        if self._static_length is not None:
            length = self._static_length
            for name, shape in self._probe(length).items():
                per_token = len(shape) >= 3 and shape[1] == length
                self._shapes[name] = (per_token, shape[2:] if per_token else shape[1:])
            return
        # Two probes tell each output's length axis (it changes with the input's length)
        # from its feature axes (hidden size, labels).
        short, longer = self._probe(2), self._probe(3)
        for name in self._io.outputs:
            per_token = len(short[name]) >= 2 and (short[name][1], longer[name][1]) == (2, 3)
            self._shapes[name] = (per_token, short[name][2:] if per_token else short[name][1:])

    def prepare(self, grid: BucketGrid, progress: Progress | None = None) -> None:
        if self._static_length is not None and set(grid.lengths) != {self._static_length}:
            raise ModelDirError(
                f"{self._path}: the graph takes exactly {self._static_length} tokens per row; "
                f"serve it with lengths: [{self._static_length}] (the grid has "
                f"{list(grid.lengths)})"
            )
        self._output_shapes()
        most_tokens = max(b.tokens for b in grid.buckets())
        most_rows = max(b.batch for b in grid.buckets())
        self._shrink_from = max(most_tokens // 4, 1)
        dtype = self._io.input_dtype
        item_shape = self._io.item_shape
        # Per lane, each input at the largest bucket's size: tokens, or fixed-shape items.
        in_size = most_rows * int(np.prod(item_shape)) if item_shape is not None else most_tokens
        for _ in range(self._lanes.count):
            self._in_arena.append(
                {name: np.zeros(in_size, dtype=dtype) for name in self._io.inputs}
            )
            outs = {}
            for name, (per_token, features) in self._shapes.items():
                size = (most_tokens if per_token else most_rows) * int(np.prod(features))
                outs[name] = np.zeros(size, dtype=np.float32)
            self._out_arena.append(outs)
        # CPU kernels are shape-agnostic: the first run pays one-off costs, not each shape, so
        # warm each length once at batch 1 rather than every bucket, on each session, up to
        # WARMUP_TOKENS of them.
        lanes = sorted({0, self._lanes.alone})  # each session once
        steps = [(lane, length) for lane in lanes for length in warmup_lengths(grid.lengths)]
        for i, (lane, length) in enumerate(steps):
            self.execute(Bucket(1, length), self._io.extra_outputs, lane)
            if progress is not None:
                progress(i + 1, len(steps), f"warm-up length {length}")

    def _binding(self, bucket: Bucket, names: frozenset[str], lane: int) -> _Bound:
        key = (lane, bucket, names)
        bound = self._bound.get(key)
        if bound is not None:
            return bound
        if not self._out_arena:
            raise RuntimeError("prepare() must run before the first bucket")
        if not 0 <= lane < self._lanes.count:
            raise ValueError(f"lane {lane} is not one of this backend's {self._lanes.count}")
        item_shape = self._io.item_shape
        fed = (bucket.batch, *item_shape) if item_shape else (bucket.batch, bucket.length)
        size = int(np.prod(fed))
        views = {name: arena[:size].reshape(fed) for name, arena in self._in_arena[lane].items()}
        binding = self._sessions[lane].io_binding()
        for name, view in views.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(view))
        outs: dict[str, np.ndarray] = {}
        # Only the outputs asked for are bound: ONNX Runtime copies nothing else out.
        for name in sorted(names):
            per_token, features = self._shapes[name]
            lead = (bucket.batch, bucket.length) if per_token else (bucket.batch,)
            shape = (*lead, *features)
            outs[name] = self._out_arena[lane][name][: int(np.prod(shape))].reshape(shape)
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(outs[name]))
        bound = _Bound(binding, views, outs)
        self._bound[key] = bound
        return bound

    def inputs(self, bucket: Bucket, lane: int = 0) -> Mapping[str, np.ndarray]:
        return self._binding(bucket, frozenset((self._io.output,)), lane).views

    def execute(
        self, bucket: Bucket, extra: Collection[str] = (), lane: int = 0
    ) -> Mapping[str, np.ndarray]:
        unknown = set(extra) - set(self._io.outputs)
        if unknown:
            raise ValueError(f"outputs {sorted(unknown)} are not among {list(self._io.outputs)}")
        bound = self._binding(bucket, frozenset((self._io.output, *extra)), lane)
        shrink = self._shrink if bucket.tokens >= self._shrink_from else None
        self._sessions[lane].run_with_iobinding(bound.binding, shrink)
        return bound.outputs

    def info(self) -> BackendInfo:
        buffers = sum(a.nbytes for lane in self._in_arena for a in lane.values())
        buffers += sum(a.nbytes for lane in self._out_arena for a in lane.values())
        return BackendInfo(
            name="onnxruntime",
            device="cpu",
            memory={"buffers": buffers},
            details={
                "provider": "CPUExecutionProvider",
                "intra_op_threads": self._threads,
                "parallel_batches": self._lanes.parallel,
                "threads_per_parallel_batch": self._per_lane,
                "solo_lane": self._lanes.solo,
                **(
                    {}
                    if self._lone_batch_s is None
                    else {
                        "lone_batch_ms": {
                            "one_thread": round(self._lone_batch_s[0] * 1e3, 3),
                            "all_threads": round(self._lone_batch_s[1] * 1e3, 3),
                        }
                    }
                ),
                "onnx": self._path.name,
                "output": self._io.output,
                "extra_outputs": list(self._io.extra_outputs),
            },
        )

    def close(self) -> None:
        self._bound.clear()
        self._in_arena = []
        self._out_arena = []


def _item_shape(files: ModelFiles, inputs: Sequence[ort.NodeArg]) -> tuple[int, ...]:
    """The per-item shape of a graph's float input (a vision tower's ``pixel_values``):
    one input, every axis but the batch fixed."""
    first = inputs[0]
    dims = tuple(first.shape[1:])
    if len(inputs) != 1 or not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        raise ModelDirError(
            f"{files.onnx}: inputs {[(i.name, i.shape) for i in inputs]}: a float input must "
            "be the graph's only input, fixed in every axis but the batch (a vision tower's "
            "pixel_values); re-export with trt-async export"
        )
    return tuple(int(d) for d in dims)
