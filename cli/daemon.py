"""`pandaes daemon`: run PanDA's periodic scripts (watcher, finisher, closer, configurator, cache cleanup).

``pandaes daemon`` runs them forever on ``[daemon] n_proc`` worker processes; ``--once NAME …`` runs the
named scripts one time in this process (under the same locks) and prints what they did.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading


def _cmd_daemon(args: argparse.Namespace) -> int:
    from cli.main import cfg_for_clients
    from services.clock import daemon

    logging.basicConfig(level=logging.INFO, format="%(asctime)s daemon %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    cfg = cfg_for_clients()
    if args.n_proc:
        cfg = cfg.replace(daemon={"n_proc": args.n_proc})
    if args.once:
        failed = 0
        for name, status, detail in daemon.run_scripts_once(cfg, args.once):
            print(f"{name}: {status} {detail}")
            failed += status == "error"
        return 1 if failed else 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    daemon.DaemonMaster(cfg).run(stop)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("daemon", help="run the periodic scripts (watcher, finisher, closer, configurator, "
                                             "cache cleanup)")
    p.add_argument("--once", nargs="+", metavar="SCRIPT", help="run these scripts once and exit")
    p.add_argument("--n-proc", type=int, default=0, help="worker processes (default [daemon] n_proc)")
    p.set_defaults(fn=_cmd_daemon)
