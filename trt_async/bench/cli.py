"""The ``trt-async bench`` subcommand: its arguments, and a handler that loads the harness.

The parser is cheap and needs only the server's own dependencies, so ``trt-async --help``
and ``trt-async bench --help`` work everywhere. The harness itself (aiohttp, httpx,
matplotlib) comes with the ``bench`` extra; without it, ``trt-async bench`` says which
extra to install and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trt_async.bench.plan import PLANS
from trt_async.bench.workload import MIXES

#: Top-level modules of the ``bench`` extra's packages (pyproject.toml, extra ``bench``).
EXTRA_MODULES = ("aiohttp", "httpx", "matplotlib")
INSTALL_HINT = "pip install 'trt-async[bench]'"

#: Where results go unless ``--out`` says otherwise: relative to the current folder, never
#: into the installed package. Figures kept with the project are written with an explicit
#: ``--out perf/results``.
DEFAULT_OUT = Path("bench-results")


def _run(args: argparse.Namespace) -> int:
    try:
        from trt_async.bench.run import run_bench
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRA_MODULES:
            raise
        print(
            f"trt-async bench needs the bench extra ({missing} is not installed): {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    return run_bench(args)


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``trt-async bench``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="load-test a server: latency percentiles, throughput, comparisons, plots",
        description=(
            "Load an OpenAI-compatible server (--url) or our own (--serve), then write "
            "report.json, report.md and PNG plots to OUT/RUN-NAME. Every phase is bounded "
            "in time and in requests."
        ),
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--url", help="base URL of a running server (e.g. http://127.0.0.1:8887)")
    target.add_argument(
        "--serve",
        action="store_true",
        help="start our server on a free loopback port (embedded default or --config) and "
        "stop it afterwards",
    )
    p.add_argument("--config", type=Path, help="server config for --serve (default: embedded)")
    p.add_argument("--model", help="embedding model name (default: the first one served)")
    p.add_argument("--rerank-model", help="reranking model for the rerank mix")
    p.add_argument("--nli-model", help="NLI model for the nli mix")
    p.add_argument("--api-key", help="bearer token for the target")
    p.add_argument("--peer-url", help="a peer OpenAI-compatible server to compare with (d)")
    p.add_argument("--peer-model", help="model name on the peer (default: --model)")
    p.add_argument("--peer-api-key", help="bearer token for the peer")
    p.add_argument(
        "--plan", choices=sorted(PLANS), default="quick", help="phase plan (default: quick)"
    )
    p.add_argument("--smoke", action="store_true", help="the smoke plan: seconds, tiny counts")
    p.add_argument("--concurrency", type=_int_list, help="closed-loop sweep, e.g. 1,4,16,64")
    p.add_argument("--rates", type=_float_list, help="open-loop Poisson rates in requests/s")
    p.add_argument("--duration", type=float, help="seconds per phase")
    p.add_argument("--compare-duration", type=float, help="seconds per comparison round")
    p.add_argument("--max-requests", type=int, help="most requests per phase")
    p.add_argument("--rounds", type=int, help="alternating rounds per comparison")
    p.add_argument(
        "--mixes", type=lambda s: s.split(","), help=f"mixes to run ({', '.join(MIXES)})"
    )
    p.add_argument(
        "--compare",
        type=lambda s: [x for x in s.split(",") if x],
        help="comparisons to run: a,b,c,d (default: all that apply; '' for none)",
    )
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--encoding-format", choices=["float", "base64"], default="float")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"results folder (default: ./{DEFAULT_OUT}, under the current folder)",
    )
    p.add_argument("--run-name", help="subfolder name (default: PLAN-TIMESTAMP)")
    p.set_defaults(func=_run)
    return p
