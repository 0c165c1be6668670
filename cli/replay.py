"""Replay and time-travel subcommands of `pandaes`: state-at, verify, rebuild, tail, restore.

The log (panda.job-events) is the truth; these commands read it directly rather than trusting the
projections. Each command's logic lives in its own module (cli/stateat.py, cli/verify.py,
cli/rebuild.py, cli/tail.py, cli/restore.py); this one only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.config import Config


def _cfg() -> Config:
    from cli.main import cfg_for_clients

    return cfg_for_clients()


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None   # None: draw when stderr is a terminal


def cmd_state_at(args: argparse.Namespace) -> int:
    from cli.stateat import parse_time, render, state_at

    try:
        when = parse_time(args.time) if args.time is not None else None
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    found = state_at(_cfg(), args.id, time=when, offset=args.offset, seq=args.seq, show_progress=_progress(args))
    if found is None:
        print(f"PandaID {args.id}: no event in the log up to that point", file=sys.stderr)
        return 1
    print(json.dumps(found, default=str, indent=1) if args.json else "\n".join(render(found)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from cli.verify import verify

    report = verify(_cfg(), args.projection or ("jobs", "files", "archive"), show_progress=_progress(args))
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def cmd_rebuild(args: argparse.Namespace) -> int:
    from cli.rebuild import RebuildError, rebuild

    try:
        rebuild(_cfg(), args.projection, into=args.into, show_progress=_progress(args))
    except RebuildError as exc:
        print(f"rebuild: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from cli.tail import tail

    tail(_cfg(), last=args.last, follow=args.follow, types=args.type or (), sites=args.site or (),
         as_json=args.json, out=lambda line: print(line, flush=True))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from cli.restore import RestoreError, restore

    try:
        restore(_cfg(), force=args.force, show_progress=_progress(args))
    except RestoreError as exc:
        print(f"restore: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def add(name: str, fn, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        p.add_argument("--no-progress", action="store_true", help="never draw a progress bar")
        p.set_defaults(fn=fn)
        return p

    p = add("state-at", cmd_state_at, "a job as it was at a past time/offset, folded from the log",
            "Fold the job's events from its partition of panda.job-events (not the projections) up to a "
            "bound, and show the core state and the JobSpec attributes and files as they were then.")
    p.add_argument("id", type=int, metavar="PANDAID")
    bound = p.add_mutually_exclusive_group(required=True)
    bound.add_argument("--time", help="events stamped up to T (epoch seconds or ISO 8601; naive = UTC)")
    bound.add_argument("--offset", type=int, help="events at offsets <= O of the job's partition")
    bound.add_argument("--seq", type=int, help="events up to the job's seq N")
    p.add_argument("--json", action="store_true", help="print the fold as JSON")

    p = add("verify", cmd_verify, "check the log with the state machine and the projections against it",
            "Fold the whole log through the state machine (legal transitions, gap-free seq, submitted "
            "first, right partition) and compare every projection with what the log implies. Prints the "
            "differences; exits 1 on any.")
    p.add_argument("--projection", action="append", help="projection to compare (repeatable; default: "
                   "jobs, files, archive)")

    p = add("rebuild", cmd_rebuild, "rebuild a projection from offset 0 (side by side or in place)",
            "Replay panda.job-events from offset 0 into a projection's tables without any service "
            "noticing. With --into SCHEMA the result is left in that PostgreSQL schema beside the live "
            "tables; without it the live tables are replaced in one transaction. Reports events/s.")
    p.add_argument("projection", help="jobs, files or archive (any name of projections.runner.ALL)")
    p.add_argument("--into", metavar="SCHEMA", help="build into this schema and leave the live tables alone")

    p = add("tail", cmd_tail, "show the latest events; --follow streams new ones",
            "Print the last events of panda.job-events (by event time) and, with --follow, every new one "
            "as it is written. Filters combine: --type matches the event type (submitted, transitioned, "
            "updated), the action (activate, kill, ...) or the new state.")
    p.add_argument("--follow", "-f", action="store_true", help="keep streaming until Ctrl-C")
    p.add_argument("--last", "-n", type=int, default=10, help="how many past events to show first (default 10)")
    p.add_argument("--type", action="append", help="event type, action or state (repeatable)")
    p.add_argument("--site", action="append", help="computingSite of the job (repeatable)")
    p.add_argument("--json", action="store_true", help="print each event's JSON as written on the topic")

    p = add("restore", cmd_restore, "re-publish the archive into an empty panda.job-events",
            "After a broker lost its log (the embedded broker keeps memory only), re-publish every archived "
            "event (job_events) to its original partition in its original order, then re-derive the "
            "projections' positions from the restored topic. Refuses a non-empty topic unless --force.")
    p.add_argument("--force", action="store_true",
                   help="restore into a non-empty topic, adding only the events it lacks")
