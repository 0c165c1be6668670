"""`pandaes pilot-sim`: simulated pilot3 pilots against a running gateway (demos, tests, benchmarks)."""

from __future__ import annotations

import argparse
import asyncio
import json

from core import config


def cmd_pilot_sim(args: argparse.Namespace) -> int:
    from cli.simulated_pilot import SimOptions, simulate
    from services.gateway.auth import dev

    cfg = config.load()
    url = args.url or f"http://{cfg.http.host}:{cfg.http.port}"
    # the dev issuer's pilot token from the state dir, as `make run` wrote it (none with auth off)
    opts = SimOptions(url=url, site=args.site, pilots=args.pilots, jobs=args.jobs, payload_seconds=args.payload,
                      heartbeat=args.heartbeat, label=args.label, nojob_retries=args.retries,
                      headers=dev.dev_headers(cfg, "pilot"))
    stats = asyncio.run(simulate(opts))
    summary = stats.summary()
    print(json.dumps(summary, indent=1))
    for err in stats.errors[:10]:
        print(f"error: {err}")
    if summary["jobs"] != summary["unique"]:
        print("ERROR: a PandaID was handed to two pilots")
        return 2
    return 1 if stats.errors else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("pilot-sim", help="simulated pilots speaking pilot3's legacy protocol")
    p.add_argument("--site", required=True, help="queue (siteName) the pilots ask jobs for")
    p.add_argument("--pilots", type=int, default=1, help="concurrent pilots")
    p.add_argument("--jobs", type=int, default=1, help="jobs per pilot before it exits")
    p.add_argument("--url", default="", help="gateway base URL (default: http://[http] host:port)")
    p.add_argument("--payload", type=float, default=2.0, help="seconds each payload 'runs'")
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between running heartbeats")
    p.add_argument("--label", default="managed", help="prodSourceLabel (pilot3 -j)")
    p.add_argument("--retries", type=int, default=0, help="getJob retries after 'no jobs' (1 s apart)")
    p.set_defaults(fn=cmd_pilot_sim)
