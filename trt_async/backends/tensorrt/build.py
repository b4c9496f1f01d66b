"""Compile a model folder's ``model.onnx`` into a TensorRT plan (``trt-async build``).

The plan gets one optimisation profile spanning the bucket grid (min = smallest bucket,
opt = the middle of the grid, max = largest) and a manifest beside it recording what it was
built from, so that the server can tell when it is stale. Building takes minutes for a
large model; a progress bar on stderr follows TensorRT's own build phases.

Precision differs between the majors. TensorRT 10 builds weakly typed networks and picks
fp16/bf16 kernels when the ``FP16``/``BF16`` builder flag is set. TensorRT 11 has no such
flags: networks are strongly typed and run in the types the ONNX graph declares, so an fp16
build first converts the graph's float weights and ops to fp16 (inputs and outputs stay
as they were), with onnxconverter-common, and builds that graph. Either way the parts that
overflow or lose their meaning in fp16 (norm statistics, Softmax, reductions, rotary
angles and their products) stay fp32: :mod:`.precision` picks them.

Tactic timings are kept in a timing cache beside the plan, so a rebuild (a changed grid,
a new export) does not time every tactic again.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from trt_async.backends.base import Precision
from trt_async.backends.modelfiles import (
    MANIFEST_NAME,
    ONNX_NAME,
    TEXT_TOWER_DIR,
    VISION_TOWER_DIR,
    ModelDirError,
    ModelFiles,
    default_max_length,
    read_image_text_manifest,
    read_manifest,
)
from trt_async.backends.tensorrt.cuda import Cuda, DeviceInfo
from trt_async.backends.tensorrt.plan import (
    PlanManifest,
    TensorSpec,
    graphs_dir,
    onnx_hashes,
    plan_paths,
    write_plan_manifest,
)
from trt_async.backends.tensorrt.precision import (
    constrain_network,
    keep_fp32,
    name_nodes,
    onnx_nodes,
)
from trt_async.backends.tensorrt.spec import TENSORRT_SPEC
from trt_async.backends.tensorrt.trt_api import IBuilder, dims, dtype_name, load_tensorrt


def default_grid(model: str | Path) -> tuple[list[int], list[int]]:
    """Batch sizes and lengths a build covers by default: the server's own default grid
    for this model (the TensorRT spec's batch sizes, its lengths up to the model's default
    max length), so a default build serves a default configuration without a rebuild."""
    folder = Path(model)
    folder = folder if folder.is_dir() else folder.parent
    try:
        max_length = default_max_length(ModelFiles.resolve(folder))
    except ModelDirError:
        max_length = default_max_length(ModelFiles(root=folder, tokenizer=folder))
    return list(TENSORRT_SPEC.batch_sizes), TENSORRT_SPEC.lengths(max_length)


class BuildError(RuntimeError):
    """The ONNX graph could not be parsed or compiled."""


@dataclass(frozen=True)
class BuildResult:
    plan: Path
    manifest_path: Path
    manifest: PlanManifest
    seconds: float


def optimisation_profile(
    batch_sizes: Sequence[int], lengths: Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(min, opt, max) as (batch, length). TensorRT tunes kernels for opt: the grid's middle
    keeps both small (latency) and large (throughput) buckets reasonable."""
    b, n = sorted(set(batch_sizes)), sorted(set(lengths))
    return (b[0], n[0]), (b[len(b) // 2], n[len(n) // 2]), (b[-1], n[-1])


class BuildProgress:
    """A hand-rolled text progress bar for nested build phases.

    On a terminal the current phase chain is redrawn in place; elsewhere (logs, CI) only
    phase starts and ends of the two outer levels are printed, to keep logs short.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        #: Active phases in start order: name -> [done, total, depth].
        self.phases: dict[str, list[int]] = {}
        self.cancelled = False

    def start(self, name: str, parent: str | None, steps: int) -> None:
        depth = self.phases[parent][2] + 1 if parent in self.phases else 0
        self.phases[name] = [0, max(steps, 0), depth]
        if self.tty:
            self._draw()
        elif depth <= 1:
            self.stream.write(f"{'  ' * depth}{name} ({steps} steps)\n")
            self.stream.flush()

    def step(self, name: str, step: int) -> bool:
        if name in self.phases:
            self.phases[name][0] = step + 1
            if self.tty:
                self._draw()
        return not self.cancelled

    def finish(self, name: str) -> None:
        entry = self.phases.pop(name, None)
        if entry is None:
            return
        if self.tty:
            self._draw()
        elif entry[2] <= 1:
            self.stream.write(f"{'  ' * entry[2]}{name} done\n")
            self.stream.flush()

    def render(self) -> str:
        if not self.phases:
            return ""
        names = list(self.phases)
        name = names[-1]
        done, total, _ = self.phases[name]
        filled = self.width * done // total if total else 0
        bar = "#" * filled + "-" * (self.width - filled)
        chain = " > ".join(names[:-1])
        prefix = f"{chain} > " if chain else ""
        return f"{prefix}{name} [{bar}] {done}/{total}"

    def _draw(self) -> None:
        line = self.render()
        columns = 120
        self.stream.write("\r" + line[:columns].ljust(columns))
        if not self.phases:
            self.stream.write("\r")
        self.stream.flush()


def make_progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    """An ``IProgressMonitor`` that forwards TensorRT's callbacks to ``progress``."""

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc]
        def __init__(self) -> None:
            # pybind11 trampolines need the base initialiser called explicitly.
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.finish(phase_name)

    return _Monitor()


def _resolve_onnx(model: Path) -> Path:
    onnx = model / ONNX_NAME if model.is_dir() else model
    if not onnx.is_file() or onnx.suffix != ".onnx":
        raise BuildError(
            f"{onnx}: no ONNX graph; run `trt-async export <hf-folder> -o {model}` first"
        )
    manifest = onnx.parent / MANIFEST_NAME
    if manifest.is_file() and read_manifest(manifest).quantization is not None:
        # ONNX Runtime's dynamic quantisation writes DynamicQuantizeLinear and
        # MatMulInteger, which onnx-tensorrt's operator table lists as unsupported.
        raise BuildError(
            f"{onnx}: an int8 export (trt-async export --int8) runs on ONNX Runtime only; "
            "export again without --int8 for TensorRT, which picks its own precision"
        )
    return onnx


_FLAG_NAMES = {"fp16": "FP16", "bf16": "BF16"}
#: Weights larger than this are written beside a converted graph (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1 << 30


def precision_route(trt: Any, precision: Precision) -> tuple[Any | None, bool]:
    """How to get ``precision`` from this TensorRT: ``(builder flag, convert the graph)``.

    fp32 needs neither; on 10.x reduced precision is a builder flag; on 11.x (no flag) the
    graph itself must be fp16. bf16 on 11.x is refused: no converter here writes bf16.
    """
    if precision == "fp32":
        return None, False
    flag = getattr(trt.BuilderFlag, _FLAG_NAMES[precision], None)
    if flag is not None:
        return flag, False
    if precision == "bf16":
        raise BuildError(
            f"TensorRT {trt.__version__} takes precision from the graph's own types and has no "
            "bf16 builder flag; build with --precision fp16 or fp32, or export a graph whose "
            "weights are already bf16 and build it with --precision fp32"
        )
    return None, True


#: The largest finite fp16: weights beyond it are clamped to it. onnxconverter-common's
#: default (1e4) would also clamp weights fp16 represents exactly.
FP16_MAX = 65504.0


def fp16_block_list(model: Any) -> list[str]:
    """Names of the nodes an fp16 conversion must leave in fp32 (:mod:`.precision`), and
    of the ``Constant`` nodes that feed them, so their values are not rounded to fp16
    first (rotary inverse frequencies, norm epsilons). Names unnamed nodes."""
    name_nodes(model)
    nodes, neutral = onnx_nodes(model)
    kept = keep_fp32(nodes, neutral)
    feeds = {i for n in model.graph.node if n.name in kept for i in n.input}
    constants = {
        n.name
        for n in model.graph.node
        if n.op_type == "Constant" and any(o in feeds for o in n.output)
    }
    # The graph's own Casts stay as they are, blocked by name: the converter retypes a
    # Cast's output to fp16 without changing its ``to`` attribute (an invalid graph), and
    # blocking the op type instead also blocks the Casts the converter inserts itself,
    # before which it inserts more, without end on graphs that cast float tensors.
    casts = {n.name for n in model.graph.node if n.op_type == "Cast"}
    return sorted(kept | constants | casts)


def split_shared_initializers(model: Any, blocked: set[str]) -> int:
    """Give the fp16 side its own copy of every weight that blocked and unblocked nodes
    share; returns how many. The converter keeps a weight fp32 when any blocked node reads
    it, and then hands that fp32 weight to the unblocked readers, whose types it has made
    fp16: an invalid graph (seen with torch's deduplicated LayerNorm weights)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            if name in inits:
                readers.setdefault(name, []).append(node)
    copies = 0
    for name, nodes in readers.items():
        if not any(n.name in blocked for n in nodes) or all(n.name in blocked for n in nodes):
            continue
        copy = graph.initializer.add()
        copy.CopyFrom(inits[name])
        copy.name = f"{name}__fp16"
        for n in nodes:
            if n.name not in blocked:
                for i, x in enumerate(n.input):
                    if x == name:
                        n.input[i] = copy.name
        copies += 1
    return copies


def drop_fp16_round_trips(model: Any) -> int:
    """Remove ``Cast(fp32 -> fp16) -> Cast(fp16 -> fp32)`` pairs; returns how many.

    The converter casts every blocked node's fp32 output to fp16 and back to fp32 in front
    of the next blocked node, so a chain of fp32 nodes would still round (and overflow) at
    each step: the consumers read the fp32 value directly instead.
    """
    import onnx

    graph = model.graph
    fp32 = {v.name for v in [*graph.value_info, *graph.input, *graph.output]
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}  # fmt: skip
    fp32 |= {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}

    def cast_to(node: Any) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((int(a.i) for a in node.attribute if a.name == "to"), None)

    producer = {o: n for n in graph.node for o in n.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        down = producer.get(node.input[0])
        if down is None or cast_to(down) != onnx.TensorProto.FLOAT16:
            continue
        if down.input[0] in fp32:
            rename[node.output[0]] = down.input[0]
    if not rename:
        return 0
    outputs = {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.output and n.output[0] in rename
                                          and n.output[0] not in outputs)]  # fmt: skip
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    used = {i for n in keep for i in n.input} | outputs
    keep = [n for n in keep if cast_to(n) != onnx.TensorProto.FLOAT16 or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


def restore_output_types(model: Any, types: dict[str, int]) -> None:
    """Give the graph outputs back the types they had (``types``): the converter makes an
    output fp16 when a blocked node writes it, whatever ``keep_io_types`` says."""
    from onnx import helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        want = types.get(out.name)
        if want is None or out.type.tensor_type.elem_type == want:
            continue
        node = producer.get(out.name)
        to = [a for a in node.attribute if a.name == "to"] if node is not None else []
        if node is not None and node.op_type == "Cast" and to:
            to[0].i = want  # the converter's cast of a blocked fp32 result: cast to fp32
        else:
            inner = f"{out.name}__fp16"
            for n in graph.node:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            graph.node.append(helper.make_node("Cast", [inner], [out.name], to=want))
        out.type.tensor_type.elem_type = want


def convert_to_fp16(onnx_path: Path, out_dir: Path) -> Path:
    """Write an fp16 copy of ``onnx_path`` into ``out_dir``: float weights and ops in fp16,
    inputs and outputs kept in their original types (casts at the edges), except what
    :func:`fp16_block_list` keeps in fp32."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise BuildError(
            "an fp16 build on TensorRT 11 converts the ONNX graph first, which needs onnx and "
            f"onnxconverter-common: pip install 'trt-async[gpu]' ({exc})"
        ) from None
    try:
        model = onnx.load(str(onnx_path))
        big = model.ByteSize() > _EXTERNAL_DATA_BYTES
        # Shape inference serialises the model, which fails past protobuf's 2 GiB.
        outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
        blocked = fp16_block_list(model)
        ops = set(float16.DEFAULT_OP_BLOCK_LIST)
        split_shared_initializers(
            model, set(blocked) | {n.name for n in model.graph.node if n.op_type in ops}
        )
        converted = float16.convert_float_to_float16(
            model,
            max_finite_val=FP16_MAX,
            keep_io_types=True,
            disable_shape_infer=big,
            op_block_list=float16.DEFAULT_OP_BLOCK_LIST,
            node_block_list=blocked,
        )
        drop_fp16_round_trips(converted)
        restore_output_types(converted, outputs)
    except Exception as exc:  # protobuf, onnx and the converter each raise their own types
        raise BuildError(f"{onnx_path}: cannot convert the graph to fp16: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.fp16.onnx"
    onnx.save(
        converted,
        str(target),
        save_as_external_data=big,
        all_tensors_to_one_file=True,
        location=target.name + ".data",
    )
    return target


def timing_cache_name(tensorrt_version: str, gpu: DeviceInfo) -> str:
    """Timings hold for one TensorRT version on one GPU model."""
    model = "".join(c if c.isalnum() else "-" for c in gpu.name).strip("-")
    return f"timing-{tensorrt_version}-{model}-sm{gpu.compute_capability}.cache"


def _attach_timing_cache(config: Any, path: Path, out: TextIO) -> Any | None:
    """Load ``path`` into the builder's timing cache (an empty one when there is none or
    it is unreadable); None when this TensorRT has no timing-cache API."""
    create = getattr(config, "create_timing_cache", None)
    if create is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    cache = create(data) if data else None
    if cache is not None and config.set_timing_cache(cache, False):
        out.write(f"reusing tactic timings from {path}\n")
        return cache
    if data:
        out.write(f"{path}: timing cache from another TensorRT or GPU; starting a new one\n")
    cache = create(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        return None
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    data = bytes(memoryview(cache.serialize()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _profile_shapes(
    onnx: Path,
    name: str,
    shape: tuple[int, ...],
    profile: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The profile for one (batch, length) input; a fixed dimension must match the grid
    (TensorRT's ``set_shape`` raises ValueError otherwise)."""
    lo, opt, hi = profile
    for axis, what, option in ((0, "batch", "--batch-sizes"), (1, "length", "--lengths")):
        fixed = shape[axis]
        if fixed >= 0 and (lo[axis] != fixed or hi[axis] != fixed):
            raise BuildError(
                f"{onnx}: input {name} fixes its {what} at {fixed} but the grid asks for "
                f"{lo[axis]}..{hi[axis]}; re-export with a dynamic {what} axis or build with "
                f"{option} {fixed}"
            )
    return lo, opt, hi


def fixed_item_shape(onnx: Path, network: Any) -> tuple[int, ...] | None:
    """The item shape of a graph whose one input is a batch of fixed-shape items (a vision
    tower's ``pixel_values``, float32 ``(batch, 3, height, width)``), else None.

    Its profile spans batch sizes only: TensorRT's ``set_shape`` raises ValueError where a
    dimension the network fixes differs between min and max, so the item dims must be the
    graph's own; a dynamic one is refused here with the fix."""
    if network.num_inputs != 1:
        return None
    t = network.get_input(0)
    shape = dims(t.shape)
    if len(shape) < 3:
        return None
    if dtype_name(t.dtype) != "float32":
        raise BuildError(
            f"{onnx}: input {t.name} is {dtype_name(t.dtype)}; an image input must be float32"
        )
    if any(d <= 0 for d in shape[1:]):
        raise BuildError(
            f"{onnx}: input {t.name} has shape {shape}; only the batch axis may vary (export "
            "the vision tower with a fixed image size)"
        )
    return shape[1:]


def build_engine(
    model: str | Path,
    *,
    precision: Precision = "fp16",
    batch_sizes: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
    workspace_gib: float | None = None,
    output_dir: str | Path | None = None,
    device: int = 0,
    progress: bool | BuildProgress = True,
    name: str | None = None,
    trt_module: Any | None = None,
    cuda: Cuda | None = None,
    log: TextIO | None = None,
    timing_cache: Path | None = None,
) -> BuildResult:
    """Build ``model``'s ONNX graph (a model folder or a ``.onnx`` file) into a plan.

    Writes ``model.<precision>.plan`` and ``model.<precision>.json`` into ``output_dir``
    (default ``$TRT_ASYNC_GRAPHS/<model folder name>``) and returns where they are. Tactic
    timings are kept in ``timing_cache`` (default: a file beside the plan named for the
    TensorRT version and GPU), so a rebuild reuses them instead of timing every tactic
    again.
    """
    out = log if log is not None else sys.stderr
    onnx = _resolve_onnx(Path(model))
    if batch_sizes is None or lengths is None:
        default_batches, default_lengths = default_grid(model)
        batch_sizes = default_batches if batch_sizes is None else batch_sizes
        lengths = default_lengths if lengths is None else lengths
    if not batch_sizes or not lengths:
        raise BuildError("need at least one batch size and one length")
    folder = onnx.parent if Path(model).is_file() else Path(model)
    out_dir = Path(output_dir) if output_dir is not None else graphs_dir() / (name or folder.name)

    cu = cuda if cuda is not None else Cuda()
    cu.set_device(device)
    gpu = cu.device_info(device)
    trt = trt_module if trt_module is not None else load_tensorrt()
    flag, convert = precision_route(trt, precision)
    graph = convert_to_fp16(onnx, out_dir) if convert else onnx

    logger = trt.Logger(trt.Logger.WARNING)
    builder: IBuilder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves model.onnx.data relative to the graph; parse(bytes) would not.
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx}: TensorRT cannot parse the graph: {errors or 'no details'}")

    item_shape = fixed_item_shape(onnx, network)
    if item_shape is not None:
        lengths = [1]  # images: the buckets are batch sizes only
    lo, opt, hi = optimisation_profile(batch_sizes, lengths)
    profile = builder.create_optimization_profile()
    inputs: list[TensorSpec] = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = dims(t.shape)
        if item_shape is not None:
            shapes = tuple((b, *item_shape) for b in (lo[0], opt[0], hi[0]))
        elif len(shape) != 2:
            raise BuildError(
                f"{onnx}: input {t.name} has shape {shape}; expected (batch, length), or one "
                "input of images (batch, 3, height, width) with a fixed image size"
            )
        else:
            shapes = _profile_shapes(onnx, t.name, shape, (lo, opt, hi))
        try:
            profile.set_shape(t.name, *shapes)
        except ValueError as exc:
            raise BuildError(f"{onnx}: TensorRT refused the profile for {t.name}: {exc}") from None
        inputs.append(TensorSpec(t.name, dtype_name(t.dtype), list(shape)))
    outputs = [
        TensorSpec(t.name, dtype_name(t.dtype), list(dims(t.shape)))
        for t in (network.get_output(i) for i in range(network.num_outputs))
    ]

    config = builder.create_builder_config()
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    pinned = 0
    if flag is not None:
        config.set_flag(flag)
        # What overflows or loses its meaning in fp16/bf16 stays fp32 (see precision.py);
        # 11.x got the same from the converted graph's types.
        pinned = constrain_network(trt, network, config)
    config.add_optimization_profile(profile)
    cache_file = timing_cache or out_dir / timing_cache_name(str(trt.__version__), gpu)
    cache = _attach_timing_cache(config, cache_file, out)
    if progress:
        bar = progress if isinstance(progress, BuildProgress) else BuildProgress(out)
        config.progress_monitor = make_progress_monitor(trt, bar)

    how = " (graph converted to fp16)" if convert else ""
    if pinned:
        how += f" ({pinned} layers pinned to fp32)"
    shown = (
        f"{lo[0]} / {opt[0]} / {hi[0]} (batch, of images {'x'.join(map(str, item_shape))})"
        if item_shape is not None
        else f"{lo[0]}x{lo[1]} / {opt[0]}x{opt[1]} / {hi[0]}x{hi[1]} (batch x length)"
    )
    out.write(
        f"building {onnx} for {gpu.name} (sm {gpu.compute_capability}), {precision}{how}, "
        f"profile {shown}\n"
    )
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise BuildError(f"{onnx}: TensorRT build failed after {seconds:.1f} s (see its log)")

    onnx_sha, data_sha = onnx_hashes(onnx)
    manifest = PlanManifest(
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        batch_sizes=sorted(set(batch_sizes)),
        lengths=sorted(set(lengths)),
        profile_min=list(lo),
        profile_opt=list(opt),
        profile_max=list(hi),
        inputs=inputs,
        outputs=outputs,
        onnx_sha256=onnx_sha,
        onnx_data_sha256=data_sha,
        workspace_gib=workspace_gib,
        build_seconds=round(seconds, 3),
        built_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path, manifest_path = plan_paths(out_dir, precision)
    # Write then rename: a crash mid-write must not leave a plan that looks valid.
    tmp = plan_path.with_suffix(".plan.tmp")
    with tmp.open("wb") as f:
        f.write(memoryview(serialized))
    os.replace(tmp, plan_path)
    write_plan_manifest(manifest_path, manifest)
    if cache is not None:
        _save_timing_cache(config, cache_file)
    size_mib = plan_path.stat().st_size / (1 << 20)
    out.write(f"built {plan_path} ({size_mib:.1f} MiB) in {seconds:.1f} s\n")
    out.flush()
    return BuildResult(plan_path, manifest_path, manifest, seconds)


def build_model(
    model: str | Path,
    *,
    batch_sizes: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
    output_dir: str | Path | None = None,
    **options: Any,
) -> list[BuildResult]:
    """``trt-async build``: one plan for a model folder, or one per tower for an image-text
    folder (CLIP, SigLIP), each written beside its tower's ``model.onnx`` where the server
    looks for it. ``lengths`` apply to the text tower; the vision tower's profile spans
    ``batch_sizes`` of its one image shape. ``options`` are :func:`build_engine`'s."""
    folder = Path(model)
    manifest = read_image_text_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        return [
            build_engine(
                model, batch_sizes=batch_sizes, lengths=lengths, output_dir=output_dir, **options
            )
        ]
    if output_dir is not None:
        raise BuildError(
            f"{folder}: an image-text model's plans go beside each tower's model.onnx, where "
            "the server finds them; leave out the output folder"
        )
    pad_to = manifest.text.pad_to_length
    text_lengths = lengths if lengths is not None else ([pad_to] if pad_to is not None else None)
    text, vision = folder / TEXT_TOWER_DIR, folder / VISION_TOWER_DIR
    return [
        build_engine(text, batch_sizes=batch_sizes, lengths=text_lengths, output_dir=text,
                     **options),
        build_engine(vision, batch_sizes=list(batch_sizes or TENSORRT_SPEC.batch_sizes),
                     lengths=[1], output_dir=vision, **options),
    ]  # fmt: skip
