"""The runnable components and how `pandaes run` supervises them.

Each component is ``module:function`` with the signature ``fn(cfg, stop: threading.Event)``; it runs
until ``stop`` is set. `pandaes run` starts each in its own process (so a crash is contained and a
component can be scaled by running more copies) and restarts it if it exits unexpectedly.

`pandaes run` without names starts ``default_components``: the event reactors (setupper, activator, adder,
closer, retrier, Harvester killer, event-range definer) in one ``reactors`` process over one consumer
(``services/host.py``), which also applies the projections unless ``[reactors] projector = false`` (then the
``projector`` runs in a process of its own). Each of them is also a component of its own (`pandaes run adder`),
in its own consumer group, to scale one of them out or look at it alone.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core import collector, metrics, watchdog
from core.config import Config

COMPONENTS: dict[str, str] = {
    "ledger": "cli.components:run_ledger",
    "projector": "projections.runner:run_component",
    "reactors": "services.host:run_component",
    "adder": "services.reactors.adder:run_component",
    "closer": "services.reactors.closer:run_component",
    "retrier": "services.reactors.retrier:run_component",
    "daemon": "services.clock.daemon:run_component",
    "setupper": "services.reactors.setupper:run_component",
    "activator": "services.reactors.activator:run_component",
    "gateway": "services.gateway.app:run_component",
    "harvester-killer": "services.harvester.killer:run_component",
    "event-ranges": "services.eventservice.definer:run_component",
    "monitor": "services.monitor.app:run_component",
}

#: What `pandaes run` can start when given no names (the reactors together in one process); the projector only
#: where the reactors' process does not apply the projections itself (``default_components``).
DEFAULT: list[str] = ["ledger", "projector", "reactors", "daemon", "gateway", "monitor"]


def projections_apart(names: list[str], env: dict[str, str]) -> dict[str, str]:
    """``env`` for the processes of ``names``: where a ``projector`` process runs beside the ``reactors``, the
    reactors' process is told not to apply the projections too (``[reactors] projector = false``): one writer."""
    if "projector" in names and "reactors" in names:
        env = {**env, "PANDAES_REACTORS_PROJECTOR": "false"}
    return env


def default_components(cfg: Config) -> list[str]:
    """What `pandaes run` starts when given no names: ``DEFAULT`` without the projector process when the reactors'
    process applies the projections (``[reactors] projector``, services/host.py): never two writers of them."""
    return [name for name in DEFAULT if not (name == "projector" and cfg.reactors.projector)]


def run_ledger(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run ledger`: one ledger process (several with distinct PANDAES_LEDGER_INSTANCE), its state
    rebuilt from the jobs projection's snapshot read."""
    from core.ledger import Ledger
    from projections.queries import partition_snapshot

    ledger = Ledger(cfg, instance=os.environ.get("PANDAES_LEDGER_INSTANCE", "0"), snapshot=partition_snapshot)
    try:
        ledger.run(stop)
    finally:
        ledger.close()


def resolve(name: str) -> Callable[[Config, threading.Event], None]:
    try:
        target = COMPONENTS[name]
    except KeyError:
        raise SystemExit(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def run_in_process(name: str, cfg: Config) -> None:
    """Run one component in this process until SIGTERM/SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fn = resolve(name)
    collector.settle()   # the component's imports are loaded: out of the collector's sight (core/collector.py)
    metrics.serve(cfg, name)
    watchdog.allow_exit()   # this process is the component: a loop hung inside a call may end it
    fn(cfg, stop)


class Supervisor:
    """Keeps one process per requested component alive; restarts crashed ones with a back-off.

    The back-off doubles with each crash in a row (2 s … 30 s) and starts again from the beginning once a
    component has run ``HEALTHY_AFTER`` seconds: crashes long ago do not slow down the next restart."""

    HEALTHY_AFTER = 60.0   # seconds of uptime after which a component counts as healthy again

    def __init__(self, names: list[str], env: dict[str, str], log=print, metrics_ports: dict[str, int] | None = None,
                 log_dir: Path | None = None):
        self.names = names
        self.log_dir = log_dir   # None: components write to this process's output; else <log_dir>/<name>.log
        self.env = projections_apart(names, env)
        self.metrics_ports = metrics_ports or {}   # component → its /metrics port (PANDAES_METRICS_PORT)
        self.log = log
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {n: 0 for n in names}
        self.started: dict[str, float] = {}

    def _start(self, name: str) -> None:
        env = dict(self.env)
        if name in self.metrics_ports:
            env["PANDAES_METRICS_PORT"] = str(self.metrics_ports[name])
        self.started[name] = time.monotonic()
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it; closed below
        try:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "cli.main", "component", name], env=env,
                                                stdout=out, stderr=subprocess.STDOUT if out else None)
        finally:
            if out is not None:
                out.close()

    def next_delay(self, name: str, now: float) -> float:
        """Count the exit of ``name`` (seen at ``now``, monotonic) and return the wait before its restart."""
        if now - self.started.get(name, now) >= self.HEALTHY_AFTER:
            self.restarts[name] = 0   # it was healthy: this crash is the first of a new series
        self.restarts[name] += 1
        return min(30, 2 ** min(self.restarts[name], 5))

    def start(self) -> None:
        for name in self.names:
            resolve(name)  # fail fast on a typo before anything starts
            self._start(name)

    def watch(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                delay = self.next_delay(name, time.monotonic())
                self.log(f"component {name} exited with {code}; restarting in {delay}s "
                         f"(restart #{self.restarts[name]})")
                if stop.wait(delay):
                    break
                self._start(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def child_env(cfg: Config) -> dict[str, str]:
    env = dict(os.environ)
    env["PANDAES_KAFKA"] = cfg.kafka.bootstrap
    env["PANDAES_DB"] = cfg.db.url
    return env
