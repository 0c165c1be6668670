"""`pandaes bench [--quick]`: the benchmark suite (see bench/ and docs/performance.md). The bench registers its
own subcommand (listed by name in cli/main.py::EXTENSIONS), so the command line does not import the bench."""

from __future__ import annotations

import argparse
import logging
import os


def cmd_bench(args: argparse.Namespace) -> int:
    if args.kafka_client:
        os.environ["PANDAES_KAFKA_CLIENT"] = args.kafka_client  # read by core.bus here and in components
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # reconnect chatter when topics come and go
    from bench import report, run

    only = [w.strip() for w in args.only.split(",")] if args.only else None
    known = (*run.WORKLOADS, *run.ON_REQUEST)
    unknown = set(only or ()) - set(known)
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    mode = "quick" if args.quick else "full"
    results = run.run(mode, only)
    print()
    print(report.table(results))
    for name, why in results["skipped"].items():
        print(f"skipped {name}: {why}")
    tag = mode + (f"-{results['kafka_client']}" if results["kafka_client"] != "confluent" else "")
    path, png = report.save(results, tag)
    print(f"\nresults: {path}")
    print(f"plot:    {png}" if png else "plot:    none (matplotlib missing: pip install -e '.[bench]')")
    print(f"total {results['seconds']:.0f}s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="run the benchmarks (table, JSON and plot under bench/results/)")
    p.add_argument("--quick", action="store_true", help="small sizes, under two minutes")
    p.add_argument("--only", help="comma-separated workloads (default: all): ceilings, rebuild, kill, dispatch, "
                   "lifecycle, harvester, idle, prefilled; scale only when named")
    p.add_argument("--kafka-client", choices=("kafka-python", "confluent"), help="override [kafka] client")
    p.set_defaults(fn=cmd_bench)
