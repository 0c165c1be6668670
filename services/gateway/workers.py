"""Several gateway processes on one port (``[gateway] processes``): one event loop is one core at most.

Why processes and not threads: the gateway's per-request work is Python (aiohttp, auth, JSON, the pilot
update's translation), so one process serves at most one core, whatever the machine has. With
``processes = N > 1`` the ``gateway`` component becomes a small supervisor that spawns N serving processes;
each binds ``[http] host:port`` with ``SO_REUSEPORT``, so the kernel spreads connections over them, and each
has its own event loop, database pool, Kafka producer and ``OutcomeWaiter`` (a verdict is awaited by the
process that sent the command).

What is per process and why that stays correct: the verified-token memory (a token is verified once per
process); the memory of delivered pilot bindings (``bindings.py``: a pilot whose update lands on another
process than its getJob is checked by the query, as before); dispatch delivery (the process that wrote the
answer marks its lease). Metrics: the serving processes run in prometheus_client's multiprocess mode, in a
folder of this supervisor's (``<state dir>/gateway-metrics/<pid>``, emptied at start, removed at the end),
and whichever process answers ``/metrics`` shows the counters and histograms of all of them
(``core.metrics.SharedAcrossProcesses``); the database pool gauges are the answering process's own.

A serving process that exits is started again (a back-off doubling up to 30 s); one whose supervisor is
gone (SIGKILLed) stops by itself instead of holding the port.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from typing import Any

from core import eventloop, metrics
from core.config import Config

log = logging.getLogger(__name__)

MULTIPROC_ENV = metrics.MULTIPROC_ENV


def _serve_one(cfg_data: dict, index: int, parent: int, metrics_dir: str) -> None:
    """A serving process (spawned: no inherited sockets, threads or Kafka clients)."""
    from core import bus, logs
    from services.gateway.app import serve

    cfg = Config(cfg_data)
    logs.configure(cfg, f"gateway-{index}")
    bus.name_clients(f"gateway-{index}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def orphaned() -> None:
        # the supervisor was killed: stop serving rather than keep the port with nobody watching
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.warning("gateway process %d: its supervisor is gone; stopping", index)
                stop.set()

    threading.Thread(target=orphaned, name="gateway-orphan-watch", daemon=True).start()
    eventloop.run(serve(cfg, stop, reuse_port=True, metrics_dir=metrics_dir))


class Supervisor:
    """Keeps ``n`` serving processes alive until ``stop`` is set."""

    def __init__(self, cfg: Config, n: int):
        self.cfg = cfg
        self.n = n
        self.ctx = mp.get_context("spawn")
        root = cfg.state_dir / "gateway-metrics"
        root.mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():   # folders of supervisors that are gone
            if old.name.isdigit() and int(old.name) != os.getpid() and not metrics.pid_alive(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
        self.metrics_dir = root / str(os.getpid())
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir()
        self.procs: dict[int, Any] = {}
        self.started: dict[int, float] = {}
        self.crashes: dict[int, int] = {i: 0 for i in range(n)}

    def _start(self, index: int) -> None:
        p = self.ctx.Process(target=_serve_one, name=f"pandaes-gateway-{index}", daemon=False,
                             args=(self.cfg.as_dict(), index, os.getpid(), str(self.metrics_dir)))
        before = os.environ.get(MULTIPROC_ENV)
        os.environ[MULTIPROC_ENV] = str(self.metrics_dir)   # read by the child before it imports the client
        try:
            p.start()
        finally:
            if before is None:
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = before
        self.procs[index] = p
        self.started[index] = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        for i in range(self.n):
            self._start(i)
        log.info("gateway: %d processes on %s:%s (SO_REUSEPORT)", self.n, self.cfg.http.host, self.cfg.http.port)
        restart_at: dict[int, float] = {}
        try:
            while not stop.wait(0.5):
                now = time.monotonic()
                for i, p in list(self.procs.items()):
                    if p.is_alive() or i in restart_at:
                        continue
                    metrics.mark_process_dead(p.pid, str(self.metrics_dir))
                    if now - self.started[i] >= 60:
                        self.crashes[i] = 0
                    self.crashes[i] += 1
                    delay = min(30.0, 2.0 ** min(self.crashes[i], 5))
                    log.error("gateway process %d exited with %s; restarting in %.0fs", i, p.exitcode, delay)
                    restart_at[i] = now + delay
                for i, at in list(restart_at.items()):
                    if now >= at:
                        del restart_at[i]
                        self._start(i)
        finally:
            self.close()

    def close(self) -> None:
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


def run(cfg: Config, stop: threading.Event, n: int) -> None:
    Supervisor(cfg, n).run(stop)


