"""``trt-async build``: the command-line front of the TensorRT plan build.

The build itself belongs to the TensorRT backend (``trt_async.backends.tensorrt.build``);
this module only parses arguments and turns failures into one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trt_async.backends.modelfiles import ModelDirError
from trt_async.backends.tensorrt import build


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``build`` on an ``argparse`` subparsers object; ``args.func(args)`` runs it."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "build",
        help="build a TensorRT plan from an exported model folder (one per tower of an "
        "image-text model, beside each tower's model.onnx)",
        description=build.__doc__,
    )
    p.add_argument("model", type=Path, help="model folder from `trt-async export` (or a .onnx)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    p.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=None,
        help="comma-separated bucket batch sizes (default: the server's default grid)",
    )
    p.add_argument(
        "--lengths",
        type=_int_list,
        default=None,
        help="comma-separated padded lengths in tokens (default: the server's default "
        "lengths up to the model's max length; an image-text model's text tower only)",
    )
    p.add_argument("--workspace-gib", type=float, default=None, help="builder workspace limit")
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=None,
        help=f"default: ${'{'}TRT_ASYNC_GRAPHS:-graphs{'}'}/<model folder name>",
    )
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_build)
    return p


def run_build(args: argparse.Namespace) -> int:
    try:
        build.build_model(
            args.model,
            precision=args.precision,
            batch_sizes=args.batch_sizes,
            lengths=args.lengths,
            workspace_gib=args.workspace_gib,
            output_dir=args.output_dir,
            device=args.device,
            progress=not args.no_progress,
        )
    except (build.BuildError, ModelDirError, ImportError, RuntimeError) as exc:
        sys.stderr.write(f"trt-async build: {exc}\n")
        return 1
    return 0
