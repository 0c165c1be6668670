"""`pandaes configure`: load the queue file into the sites table, check it, or print its change history."""

from __future__ import annotations

import argparse
import getpass
import json

from cli.main import cfg_for_clients
from core import db
from services.sitedata import sites
from services.sitedata.configurator import configure, who_is


def _cmd_configure(args: argparse.Namespace) -> int:
    cfg = cfg_for_clients()
    if args.history is not None:
        with db.connect(cfg) as conn:
            for row in sites.history(conn, args.history or None):
                print(f"{row['changed_at']:%Y-%m-%d %H:%M:%S} {row['name']} v{row['version']} "
                      f"by {row['changed_by']}: {json.dumps(row['change'], default=str)}")
        return 0
    path = args.file or sites.file_of(cfg)
    if args.check:
        for name, q in sites.load_file(path).items():
            print(f"{name}: {q.status} endpoints={','.join(q.endpoints)} plugin={q.plugin or '(default)'}")
        return 0
    changes = configure(cfg, path, who=who_is(f"user:{getpass.getuser()}"))
    for c in changes:
        print(f"{c['name']} v{c['version']}: {json.dumps(c['change'], default=str)}")
    print(f"{len(changes)} queue(s) changed" if changes else "no changes")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("configure", help="load the queue file into the sites table (records versions)")
    p.add_argument("--file", help="queue file (TOML); default [sites] file or core/queues.toml")
    p.add_argument("--check", action="store_true", help="only parse and print the file")
    p.add_argument("--history", nargs="?", const="", metavar="QUEUE", help="print the change history")
    p.set_defaults(fn=_cmd_configure)
