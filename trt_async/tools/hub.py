"""Hub models on the command line: torch's export for repositories without ONNX, and
``trt-async pull``, which fetches (and exports) a hub model into the caches without serving it.

The resolution itself is :mod:`trt_async.core.hub`; this module gives it the exporter, which
needs torch, so that only the command line ever exports.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any, get_args

from trt_async.backends.modelfiles import Task
from trt_async.core.hub import HubError, fetch, parse_ref
from trt_async.tools.embedded import INSTALL_EXPORT


class TorchExporter:
    """``trt-async export`` of a downloaded repository, with its progress on stderr."""

    #: What :func:`trt_async.tools.export.export_model` needs (it checks with ONNX Runtime).
    LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime")

    def missing(self) -> str | None:
        absent = [m for m in self.LIBRARIES if importlib.util.find_spec(m) is None]
        if not absent:
            return None
        return f"exporting it needs {', '.join(absent)}: {INSTALL_EXPORT}"

    def __call__(self, src: Path, task: Task, out_dir: Path) -> None:
        from trt_async.tools import export

        try:
            export.export_model(src, task, out_dir, progress=True)
        except export.ExportError as exc:
            raise HubError(f"exporting it failed: {exc}") from None
        except ImportError as exc:  # installed, but not a set that works together
            raise HubError(f"exporting it failed: {exc}; reinstall: {INSTALL_EXPORT}") from None


def add_pull_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "pull",
        help="fetch a Hugging Face hub model into the caches without serving it",
        description=(
            "Download a hub model's ONNX graph and tokenizer into the Hugging Face cache "
            "(a repository without ONNX: its weights, exported once with torch), as "
            "`trt-async serve --model` does, and print the folder served. Later starts, "
            "offline ones and POST /models/load of hf:// models use it."
        ),
    )
    parser.add_argument(
        "model",
        metavar="ORG/NAME[@REVISION]",
        help="the repository (ORG/NAME@REVISION/onnx/FILE.onnx names one graph)",
    )
    parser.add_argument(
        "--task",
        choices=get_args(Task),
        help="embed, rerank or nli (default: from the repository's config.json)",
    )
    parser.set_defaults(func=run_pull)
    return parser


def run_pull(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(f"trt-async pull: {line}", file=sys.stderr, flush=True)

    try:
        model = fetch(parse_ref(args.model), args.task, exporter=TorchExporter(), say=say)
    except HubError as exc:
        print(f"trt-async pull: {exc}", file=sys.stderr)
        return 2
    say(
        f"{model.ref.repo_id} at commit {model.commit}: {model.task} model"
        + (" (exported)" if model.exported else "")
    )
    print(model.folder)
    return 0
