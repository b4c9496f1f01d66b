"""Where TensorRT plans live and whether a plan still fits the model, GPU and grid.

A plan is only valid for the ONNX graph, TensorRT version, GPU model and precision it was
built from, and only for shapes inside its optimisation profile. ``trt-async build`` writes
a manifest beside each plan recording those facts; start-up compares them with the present.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from trt_async.backends.base import Precision
from trt_async.backends.modelfiles import sha256_file
from trt_async.backends.shapes import BucketGrid

#: Base folder for built plans (``<base>/<model-name>/``).
GRAPHS_ENV = "TRT_ASYNC_GRAPHS"
DEFAULT_GRAPHS_DIR = "graphs"
MANIFEST_FORMAT = 1


class TensorSpec(msgspec.Struct, frozen=True):
    name: str
    dtype: str
    shape: list[int]


class PlanManifest(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """What a plan was built from and for."""

    format: int = MANIFEST_FORMAT
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: Precision
    batch_sizes: list[int]
    lengths: list[int]
    #: Optimisation profile as ``[batch, length]`` for min, opt and max.
    profile_min: list[int]
    profile_opt: list[int]
    profile_max: list[int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    onnx_sha256: str
    onnx_data_sha256: str | None = None
    workspace_gib: float | None = None
    build_seconds: float = 0.0
    built_at: str = ""


def graphs_dir() -> Path:
    return Path(os.environ.get(GRAPHS_ENV) or DEFAULT_GRAPHS_DIR)


def plan_paths(out_dir: Path, precision: str) -> tuple[Path, Path]:
    """The plan and its manifest; one per precision so fp16 and fp32 builds coexist."""
    return out_dir / f"model.{precision}.plan", out_dir / f"model.{precision}.json"


def onnx_hashes(onnx: Path) -> tuple[str, str | None]:
    """sha256 of the graph and of its external weights file, if it has one."""
    data = onnx.with_name(onnx.name + ".data")
    return sha256_file(onnx), sha256_file(data) if data.is_file() else None


def read_plan_manifest(path: Path) -> PlanManifest | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=PlanManifest)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def write_plan_manifest(path: Path, manifest: PlanManifest) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")


def grid_outside_profile(
    grid: BucketGrid, profile_min: tuple[int, int], profile_max: tuple[int, int]
) -> list[str]:
    """Buckets the profile cannot run, as ``batch x length`` strings."""
    return [
        f"{b.batch}x{b.length}"
        for b in grid.buckets()
        if not (
            profile_min[0] <= b.batch <= profile_max[0]
            and profile_min[1] <= b.length <= profile_max[1]
        )
    ]


def mismatches(
    manifest: PlanManifest,
    *,
    onnx_sha256: str,
    onnx_data_sha256: str | None,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    grid: BucketGrid | None,
) -> list[str]:
    """Every reason the plan cannot be used as is (empty when it can)."""
    reasons: list[str] = []
    if manifest.format != MANIFEST_FORMAT:
        reasons.append(f"manifest format {manifest.format} != {MANIFEST_FORMAT}")
    if manifest.onnx_sha256 != onnx_sha256:
        reasons.append("model.onnx changed since the build (sha256 differs)")
    if manifest.onnx_data_sha256 != onnx_data_sha256:
        reasons.append("model.onnx.data changed since the build (sha256 differs)")
    if manifest.tensorrt_version != tensorrt_version:
        reasons.append(
            f"built with TensorRT {manifest.tensorrt_version}, running {tensorrt_version}"
        )
    if manifest.gpu_name != gpu_name or manifest.compute_capability != compute_capability:
        reasons.append(
            f"built for {manifest.gpu_name} (sm {manifest.compute_capability}), "
            f"running on {gpu_name} (sm {compute_capability})"
        )
    if manifest.precision != precision:
        reasons.append(f"built for {manifest.precision}, config asks for {precision}")
    if grid is not None:
        lo = (manifest.profile_min[0], manifest.profile_min[1])
        hi = (manifest.profile_max[0], manifest.profile_max[1])
        outside = grid_outside_profile(grid, lo, hi)
        if outside:
            reasons.append(
                f"buckets {', '.join(outside)} fall outside the profile "
                f"{lo[0]}x{lo[1]}..{hi[0]}x{hi[1]}"
            )
    return reasons
