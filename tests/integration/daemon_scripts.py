"""Scripts for the daemon tests: each run records (host tag, pid, start, end) in a table, taking a while."""

from __future__ import annotations

import os
import time


def slow(cfg, ctx) -> int:
    start = time.time()
    time.sleep(0.4)
    ctx.conn.execute("CREATE TABLE IF NOT EXISTS daemon_test_runs (tag text, pid int, started float8, ended float8)")
    ctx.conn.execute("INSERT INTO daemon_test_runs VALUES (%s, %s, %s, %s)",
                     (os.environ.get("DAEMON_TEST_TAG", cfg.state.dir), os.getpid(), start, time.time()))
    return 1


def boom(cfg) -> int:
    raise RuntimeError("a script that fails must not stop the daemon")


def count(cfg) -> int:
    """Moves a counter inside the worker process (which serves no metrics of its own)."""
    from core import metrics

    metrics.SERVICE_COMMANDS.labels("daemon-test").inc(3)
    return os.getpid()
