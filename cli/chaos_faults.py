"""The faults of `pandaes chaos`: SIGKILL of a component, of the embedded broker, of the embedded database.

Only processes this run started are ever signalled: a component is the supervisor's child (killed with its
own children, as a container's processes die together), the broker is the Tansu this run's ``Infra``
started, the database the PostgreSQL it started (never a server that merely answered on 127.0.0.1:5432).

**What killing the broker means.** The embedded Tansu keeps everything in memory. Killed under traffic it
takes with it the events the archive (``job_events``) has not stored yet and the commands the ledger has not
judged — a loss a replicated Kafka cluster does not have, and one no invariant could survive (a pilot runs
a job whose ``sent`` event no longer exists, so the job is handed out again). So the run kills it the way
its recovery is meant to be exercised: the load is held at its gate, the run waits until every consumer —
the ledger on the commands, the projections and every service group on the events — has read everything
(a quiet point), then SIGKILLs the broker and does what an operator does after losing it: stop the
components, start an empty broker on the same port, ``pandaes restore`` from the PostgreSQL archive, start
the components again, let the load go on. If no quiet point comes within the wait, that kill is skipped
and reported (never forced). The database needs no such care: PostgreSQL is durable, so it is simply
SIGKILLed (postmaster and backends) and started again on its port, recovering from its WAL while the
components ride the outage out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterable

import psutil

from core import bus, db
from core.bus import TopicPartition
from core.config import Config
from projections import queries

BROKER, DATABASE = "broker", "database"
# components whose events-topic position is not a consumer group of their own name (or who read no events)
NOT_EVENT_GROUPS = ("ledger", "projector", "gateway", "monitor", "daemon")


@dataclasses.dataclass(frozen=True)
class Kill:
    at: float        # seconds after the start of the kill window
    target: str      # a component name, BROKER or DATABASE


def schedule(rng: random.Random, kills: int, targets: list[str], window: float) -> list[Kill]:
    """``kills`` kills at random times within ``window`` seconds, at least ``window / (2 kills)`` apart,
    each target once per round in a random order (so a short run with as many kills as targets kills
    each exactly once)."""
    if kills <= 0 or not targets:
        return []
    order: list[str] = []
    while len(order) < kills:
        rnd = list(targets)
        rng.shuffle(rnd)
        if order and rnd[0] == order[-1] and len(rnd) > 1:
            rnd[0], rnd[-1] = rnd[-1], rnd[0]       # no target twice in a row across rounds
        order += rnd
    slot = window / kills
    times = [slot * i + rng.uniform(0.25, 0.75) * slot for i in range(kills)]
    return [Kill(round(t, 2), target) for t, target in zip(times, order[:kills], strict=True)]


def kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL a process this run started and every descendant of it; the pids signalled."""
    if proc.poll() is not None:
        return []
    try:
        root = psutil.Process(proc.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    psutil.wait_procs(family[1:], timeout=5)
    return [p.pid for p in family]


# ------------------------------------------------------------------------------------- quiet point
def _data_offsets(cfg: Config, topic: str, start: dict[int, int], settle: float = 0.5,
                  limit: float = 8.0) -> dict[int, list[int]] | None:
    """Offsets of the records of ``topic`` at or after ``start`` (per partition), read until nothing more
    arrives for ``settle`` seconds; None if the log did not settle within ``limit`` seconds.

    End offsets alone cannot say whether a reader is done (a transaction marker takes an offset and is
    never delivered; the embedded broker reports the base offset of the last batch + 1), so the records
    are read."""
    reader = bus.consumer(cfg, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in reader.partitions(topic)]
        reader.assign(tps)
        for tp in tps:
            reader.seek(tp, start.get(tp.partition, 0))
        found: dict[int, list[int]] = {tp.partition: [] for tp in tps}
        quiet_since = time.monotonic()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            got = reader.poll(timeout_ms=100)
            for tp, recs in got.items():
                found[tp.partition] += [r.offset for r in recs]
            if got:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                return found
        return None
    finally:
        reader.close()


def unread(cfg: Config, components: Iterable[str]) -> dict[str, int] | None:
    """Records not yet read by each reader of the system: the ledger (commands), each projection and each
    service group (events). None if the logs did not settle (traffic goes on)."""
    a = bus.admin(cfg)
    try:
        ledger = {tp.partition: off for tp, off in a.committed_offsets(f"{cfg.kafka.group_prefix}-ledger").items()
                  if tp.topic == cfg.kafka.commands_topic}
        groups = {}
        for name in components:
            if name in NOT_EVENT_GROUPS:
                continue
            offsets = a.committed_offsets(f"{cfg.kafka.group_prefix}-{name}")
            committed = {tp.partition: off for tp, off in offsets.items() if tp.topic == cfg.kafka.events_topic}
            if committed:   # a component that never committed reads no events (or has read none to keep)
                groups[name] = committed
    finally:
        a.close()
    with db.connect(cfg) as conn:
        for proj, p, off in queries.positions(conn, cfg.kafka.events_topic):
            groups.setdefault(f"projection {proj}", {})[p] = off
    commands = _data_offsets(cfg, cfg.kafka.commands_topic, ledger)
    starts = {p: min(g.get(p, 0) for g in groups.values()) for g in groups.values() for p in g} if groups else {}
    events = _data_offsets(cfg, cfg.kafka.events_topic, starts)
    if commands is None or events is None:
        return None
    out = {"ledger": sum(len(v) for v in commands.values())}
    for name, committed in groups.items():
        out[name] = sum(sum(o >= committed.get(p, 0) for o in offs) for p, offs in events.items())
    return out


def wait_quiet(cfg: Config, components: Iterable[str], timeout: float, log: Callable[[str], object]) -> bool:
    """True once two reads in a row find every reader of the system done (nothing in flight)."""
    deadline = time.monotonic() + timeout
    clean = 0
    last: dict[str, int] | None = None
    while time.monotonic() < deadline:
        try:
            last = unread(cfg, components)
        except Exception as exc:  # noqa: BLE001 - a component or the database restarting: look again
            last = {f"error {type(exc).__name__}": 1}
        if last is not None and not any(last.values()):
            clean += 1
            if clean >= 2:
                return True
        else:
            clean = 0
        time.sleep(0.5)
    log(f"chaos: no quiet point within {timeout:.0f}s (unread: {last})")
    return False
