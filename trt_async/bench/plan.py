"""The phase plans of ``trt-async bench`` and the command-line overrides applied to them.

Plain data, importable without the bench extra (the argument parser lists the plans).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace

from trt_async.bench.workload import MIXES


@dataclass
class Plan:
    """What a run does; every phase is bounded by ``duration_s`` and ``max_requests``."""

    concurrency: list[int]
    rate_fractions: list[float]
    rates: list[float] | None
    duration_s: float
    max_requests: int
    warmup_s: float
    mixes: list[str]
    mix_concurrency: int
    compare: list[str]
    rounds: int
    compare_duration_s: float
    compare_concurrency: int
    #: Requests pre-generated per mix (the stream is reused when a phase sends more).
    pool: int = 2000
    #: Requests of the c=1 phase whose texts the bare batch-1 latency is measured on.
    bare_latency_items: int = 200
    extra_notes: list[str] = field(default_factory=list)


PLANS: dict[str, Plan] = {
    "smoke": Plan(
        concurrency=[1, 4],
        rate_fractions=[0.5],
        rates=None,
        duration_s=1.0,
        max_requests=25,
        warmup_s=0.0,
        mixes=["short", "docs32", "rerank", "nli"],
        mix_concurrency=2,
        compare=["a", "b", "c", "d"],
        rounds=1,
        compare_duration_s=1.0,
        compare_concurrency=4,
        pool=40,
        bare_latency_items=10,
    ),
    "quick": Plan(
        concurrency=[1, 16, 64],
        rate_fractions=[0.5, 0.9],
        rates=None,
        duration_s=5.0,
        max_requests=5000,
        warmup_s=0.5,
        mixes=["short", "long", "docs32", "rerank", "nli"],
        mix_concurrency=16,
        compare=["a", "b", "c", "d"],
        rounds=2,
        compare_duration_s=5.0,
        compare_concurrency=64,
        pool=1000,
    ),
    "full": Plan(
        concurrency=[1, 4, 16, 64, 256, 512],
        rate_fractions=[0.25, 0.5, 0.75, 0.9],
        rates=None,
        duration_s=10.0,
        max_requests=20000,
        warmup_s=1.0,
        mixes=["short", "long", "docs32", "rerank", "nli"],
        mix_concurrency=4,
        compare=["a", "b", "c", "d"],
        rounds=3,
        compare_duration_s=8.0,
        compare_concurrency=64,
        pool=3000,
    ),
}


def plan_from_args(args: argparse.Namespace) -> Plan:
    plan = replace(PLANS["smoke" if args.smoke else args.plan])
    if args.concurrency:
        plan.concurrency = args.concurrency
    if args.rates is not None:
        plan.rates = args.rates
    if args.duration is not None:
        plan.duration_s = args.duration
    if args.compare_duration is not None:
        plan.compare_duration_s = args.compare_duration
    if args.max_requests is not None:
        plan.max_requests = args.max_requests
    if args.rounds is not None:
        plan.rounds = args.rounds
    if args.mixes is not None:
        args.mixes = [m for m in args.mixes if m]
        unknown = [m for m in args.mixes if m not in MIXES]
        if unknown:
            raise SystemExit(
                f"trt-async bench: unknown mix {unknown[0]!r}; choose from {list(MIXES)}"
            )
        plan.mixes = args.mixes
    if args.compare is not None:
        plan.compare = args.compare
    return plan
