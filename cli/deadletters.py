"""`pandaes dead-letters list|retry`: the events a projection or a service set aside, and applying them again.

A dead letter is an event a projection could not apply or a service could not decide on (docs/reliability.md).
Once its cause is fixed (a migration widened a column, a service's bug was fixed and deployed), ``retry``
asks for it to be applied again; the running component that owns it does so in its own transaction or
loop (the projector that owns the partition, a loop of the service), so nothing races it:
``projections.deadletters`` and ``services.dead_letters``. ``retry`` then waits for the outcome and prints
it: resolved (the row is kept, with its history), or the new error (the row stays a dead letter).

Ids: ``p<N>`` for a projection's dead letter, ``s<N>`` for a service's, as ``list`` prints them.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

from core import db
from core.config import Config
from projections import deadletters as projection_dl
from services import dead_letters as service_dl

KINDS: dict[str, Any] = {"p": projection_dl, "s": service_dl}


def _cfg() -> Config:
    from cli.main import cfg_for_clients

    return cfg_for_clients()


def parse_ids(texts: list[str]) -> dict[str, list[int]]:
    """``["p3", "s12"]`` → ``{"p": [3], "s": [12]}``; ValueError naming a malformed id."""
    ids: dict[str, list[int]] = {"p": [], "s": []}
    for text in texts:
        m = re.fullmatch(r"([ps])(\d+)", text.strip().lower())
        if not m:
            raise ValueError(f"--id {text!r}: expected p<N> (a projection's dead letter) or s<N> (a service's)")
        ids[m.group(1)].append(int(m.group(2)))
    return ids


def rows(conn: psycopg.Connection, *, resolved: bool = False) -> list[dict[str, Any]]:
    """Both kinds, each row with ``key`` (p<N>/s<N>) and ``owner`` (projection:<name>/service:<name>)."""
    out = []
    for row in projection_dl.listing(conn, resolved=resolved):
        out.append({**row, "key": f"p{row['id']}", "owner": f"projection:{row['projection']}"})
    for row in service_dl.listing(conn, resolved=resolved):
        out.append({**row, "key": f"s{row['id']}", "owner": f"service:{row['service']}"})
    return out


def line(row: dict[str, Any]) -> str:
    state = "resolved" if row["resolved_at"] else "requested" if row["retry_requested_at"] else "dead"
    return (f"{row['key']:>6}  {state:<9} {row['owner']:<22} {row['topic']}[{row['partition']}]@{row['kafka_offset']}"
            f"  PandaID {row['pandaid']} seq {row['seq']}  attempts {row['attempts']}  {row['error']}")


def retry(cfg: Config, ids: dict[str, list[int]] | None, wait: float,
          sleep: Callable[[float], None] = time.sleep) -> tuple[list[dict[str, Any]], list[str]]:
    """Ask for the dead letters (``ids``, or every unresolved one with None) to be applied again and wait up
    to ``wait`` seconds for each outcome: (their rows now, the keys still waiting)."""
    with db.connect(cfg) as conn:
        asked = {kind: mod.request(conn, None if ids is None else ids[kind]) for kind, mod in KINDS.items()}
        conn.commit()
        keys = {f"{kind}{i}" for kind, got in asked.items() for i in got}
        before = {r["key"]: r["attempts"] for r in rows(conn, resolved=True) if r["key"] in keys}
        deadline = time.monotonic() + wait
        while True:
            now = {r["key"]: r for r in rows(conn, resolved=True) if r["key"] in keys}
            conn.commit()
            waiting = sorted(k for k, r in now.items() if r["attempts"] == before[k] and not r["resolved_at"])
            if not waiting or time.monotonic() >= deadline:
                return [now[k] for k in sorted(now)], waiting
            sleep(0.2)


def cmd_list(args: argparse.Namespace) -> int:
    with db.connect(_cfg()) as conn:
        found = rows(conn, resolved=args.all)
    for row in found:
        print(line(row))
    if not found:
        print("no dead letters" if args.all else "no unresolved dead letters")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    if bool(args.id) == args.all:
        print("dead-letters retry: give --id (one or more) or --all", file=sys.stderr)
        return 2
    try:
        ids = None if args.all else parse_ids(args.id)
    except ValueError as exc:
        print(f"dead-letters retry: {exc}", file=sys.stderr)
        return 2
    done, waiting = retry(_cfg(), ids, args.wait)
    if not done:
        print("nothing to retry (no such unresolved dead letter)")
        return 1 if ids else 0
    for row in done:
        print(line(row))
    if waiting:
        print(f"still waiting: {', '.join(waiting)} (the request stays: is the projector / that service running?)",
              file=sys.stderr)
    return 0 if all(r["resolved_at"] for r in done) else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("dead-letters", help="events a projection or service set aside: list, retry")
    sub = p.add_subparsers(dest="dead_letters_command", required=True)
    ls = sub.add_parser("list", help="the unresolved dead letters (p<N>: projections, s<N>: services)")
    ls.add_argument("--all", action="store_true", help="resolved ones too")
    ls.set_defaults(fn=cmd_list)
    rt = sub.add_parser("retry", help="apply dead letters again once their cause is fixed; prints each outcome")
    rt.add_argument("--id", action="append", default=[], metavar="ID", help="p<N> or s<N> (repeatable)")
    rt.add_argument("--all", action="store_true", help="every unresolved dead letter")
    rt.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the running components")
    rt.set_defaults(fn=cmd_retry)
