"""Compile a model folder's ``model.onnx`` into a TensorRT plan (``trt-async build``).

The plan gets one optimisation profile spanning the bucket grid (min = smallest bucket,
opt = the middle of the grid, max = largest) and a manifest beside it recording what it was
built from, so that the server can tell when it is stale. Building takes minutes for a
large model; a progress bar on stderr follows TensorRT's own build phases.

Precision differs between the majors. TensorRT 10 builds weakly typed networks and picks
fp16/bf16 kernels when the ``FP16``/``BF16`` builder flag is set. TensorRT 11 has no such
flags: networks are strongly typed and run in the types the ONNX graph declares, so an fp16
build first converts the graph's float weights and ops to fp16 (inputs and outputs stay
as they were), with onnxconverter-common, and builds that graph.
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
    ModelDirError,
    ModelFiles,
    default_max_length,
    read_manifest,
)
from trt_async.backends.tensorrt.cuda import Cuda
from trt_async.backends.tensorrt.plan import (
    PlanManifest,
    TensorSpec,
    graphs_dir,
    onnx_hashes,
    plan_paths,
    write_plan_manifest,
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


def convert_to_fp16(onnx_path: Path, out_dir: Path) -> Path:
    """Write an fp16 copy of ``onnx_path`` into ``out_dir``: float weights and ops in fp16,
    inputs and outputs kept in their original types (casts at the edges)."""
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
        # Cast nodes stay as they are (blocked): the converter retypes a Cast's output to
        # fp16 without changing its ``to`` attribute, which leaves an invalid graph.
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            disable_shape_infer=big,
            op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, "Cast"],
        )
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
) -> BuildResult:
    """Build ``model``'s ONNX graph (a model folder or a ``.onnx`` file) into a plan.

    Writes ``model.<precision>.plan`` and ``model.<precision>.json`` into ``output_dir``
    (default ``$TRT_ASYNC_GRAPHS/<model folder name>``) and returns where they are.
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

    lo, opt, hi = optimisation_profile(batch_sizes, lengths)
    profile = builder.create_optimization_profile()
    inputs: list[TensorSpec] = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = dims(t.shape)
        if len(shape) != 2:
            raise BuildError(f"{onnx}: input {t.name} has shape {shape}; expected (batch, length)")
        try:
            profile.set_shape(t.name, *_profile_shapes(onnx, t.name, shape, (lo, opt, hi)))
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
    if flag is not None:
        config.set_flag(flag)
    config.add_optimization_profile(profile)
    if progress:
        bar = progress if isinstance(progress, BuildProgress) else BuildProgress(out)
        config.progress_monitor = make_progress_monitor(trt, bar)

    how = " (graph converted to fp16)" if convert else ""
    out.write(
        f"building {onnx} for {gpu.name} (sm {gpu.compute_capability}), {precision}{how}, "
        f"profile {lo[0]}x{lo[1]} / {opt[0]}x{opt[1]} / {hi[0]}x{hi[1]} (batch x length)\n"
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
    size_mib = plan_path.stat().st_size / (1 << 20)
    out.write(f"built {plan_path} ({size_mib:.1f} MiB) in {seconds:.1f} s\n")
    out.flush()
    return BuildResult(plan_path, manifest_path, manifest, seconds)
