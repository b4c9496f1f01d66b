"""``trt-async``: serve, pull, export, build, bench.

Each subcommand lives beside the code it drives and registers its own arguments; this
module only assembles them, so ``trt-async --help`` stays cheap to import. Registering a
subcommand imports only its parser: ``bench``'s harness (the ``bench`` extra) is loaded
when ``trt-async bench`` runs, so serving needs none of it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from trt_async import __version__

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from trt_async.bench.cli import add_bench_parser
    from trt_async.http.serve import DefaultModel, add_serve_parser
    from trt_async.tools.build_engine import add_build_parser
    from trt_async.tools.embedded import EMBEDDED_MODEL, embedded_embedding_size
    from trt_async.tools.export import add_export_parser
    from trt_async.tools.hub import TorchExporter, add_pull_parser

    parser = argparse.ArgumentParser(
        prog="trt-async",
        description="Serve embedding, reranker and NLI models on TensorRT (GPU) "
        "or ONNX Runtime (CPU).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the command line exports hub repositories without ONNX (torch, once per commit).
    add_serve_parser(
        subparsers,
        exporter=TorchExporter(),
        default=DefaultModel(EMBEDDED_MODEL, embedded_embedding_size),
    )
    add_pull_parser(subparsers)
    add_export_parser(subparsers)
    add_build_parser(subparsers)
    add_bench_parser(subparsers)
    return parser


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Until ``serve`` hands signals to granian, SIGTERM stops the
    command with exit 0 (a stop asked for during start-up), not death by the signal."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # Like git: no command, the overview of all of them.
        parser.print_help()
        return 0
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.func
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
