"""The running system a workload talks to: components as processes, the gateway on a free port, the
bench queue configured, and a probe that waits until the ledger answers."""

from __future__ import annotations

import random
import time
import urllib.request
from pathlib import Path

from bench import workload
from bench.procs import Components
from core.bus import CommandSender, OutcomeWaiter
from core.config import Config
from core.ports import free_port
from schemas.messages import Command, Rejected

QUEUES = Path(__file__).resolve().parent / "queues.toml"
SITE = "BENCH"


def configure(cfg: Config, port: int | None = None) -> Config:
    """``cfg`` with the bench queue file, a free gateway port and one daemon worker; queues loaded."""
    from services.sitedata import configurator

    cfg = cfg.replace(sites={"file": str(QUEUES)}, http={"host": "127.0.0.1", "port": port or free_port()})
    configurator.configure(cfg, QUEUES, who="bench")
    return cfg


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/openapi.json", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not answer on {url} within {timeout}s") from None
            time.sleep(0.2)


def wait_settled(cfg: Config, timeout: float = 90, log=print) -> float:
    """Until the ledger holds every commands partition and the services' reader every events partition
    (core/readiness.py); the seconds waited. A workload started before would time the consumer groups' joins (on
    the embedded broker the ledger's took 5-6 s after its start in some runs, and its first commands waited)."""
    from core import readiness

    left, waited = readiness.wait(cfg, timeout=timeout, tell_after=10, log=lambda line: log(f"  {line}"))
    if left:   # ready ([]), or nothing to see (None): the quiet spell after this is all there is
        raise RuntimeError(f"the consumer groups did not settle within {timeout}s: {'; '.join(left)}")
    return waited


def wait_all(futures, timeout: float) -> int:
    """How many of ``futures`` resolved with an event (not a rejection) within ``timeout`` overall."""
    deadline = time.monotonic() + timeout
    ok = 0
    for fut in futures:
        try:
            if not isinstance(fut.result(max(0.0, deadline - time.monotonic())), Rejected):
                ok += 1
        except Exception:
            pass
    return ok


def ledger_ready(waiter: OutcomeWaiter, sender: CommandSender, pid: int, timeout: float = 90) -> None:
    """Block until the ledger answers a probe (its consumer group join can take seconds)."""
    probe = workload.lifecycle_commands(pid, random.Random(pid))[0]
    fut = waiter.expect(probe.id)
    sender.send(probe)
    sender.flush()
    if wait_all([fut], timeout) != 1:
        raise RuntimeError(f"the ledger did not answer within {timeout}s")


def backlog(waiter: OutcomeWaiter, sender: CommandSender, pids: list[int], states: list[str],
            site: str = "LOCAL", log=print) -> int:
    """Bring new jobs ``pids`` to ``states`` (cycled) through the ledger; returns how many got there."""
    rng = random.Random(workload.SEED)
    last: list[Command] = []
    t0 = time.perf_counter()
    futures = []
    for i, pid in enumerate(pids):
        chain = workload.to_state_commands(pid, rng, states[i % len(states)], site=site)
        futures.append(waiter.expect(chain[-1].id))
        sender.send_many(chain)
        last.append(chain[-1])
    sender.flush()
    ok = wait_all(futures, 900)
    log(f"  backlog: {ok:,}/{len(pids):,} jobs {'/'.join(states)} through the ledger in "
        f"{time.perf_counter() - t0:.1f}s")
    return ok


__all__ = ["Components", "configure", "wait_http", "ledger_ready", "backlog", "wait_all", "SITE"]
