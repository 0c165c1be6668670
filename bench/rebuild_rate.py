"""Rebuild rate of the replay tool: events/s from offset 0 of panda.job-events into a projection.

    .venv/bin/python -m bench.rebuild_rate [--events 200000] [--projection jobs --projection files ...]

Writes a synthetic but legal log (every event produced by ``core.machine.decide`` from a command
stream of finished/failed/killed/retried jobs, partitioned as the ledger does, one transaction per
5,000 events) to fresh topics, then times ``cli.rebuild.rebuild`` into a side schema (no switch) for
each projection. Uses PANDAES_KAFKA / PANDAES_DB when set, otherwise starts the embedded broker and
finds or starts PostgreSQL like `make run`. ``measure(cfg, projections)`` is reusable by other benches.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator

from core import bus, config, db
from core.machine import apply, decide
from core.states import PilotState
from core.topics import ensure_topics
from devenv import stack
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Command, Event, Kill, PilotUpdate, Rejected, Submit, Transition, encode, key_of
from services import migrations


def _commands(pid: int) -> list[Command]:
    files = [FileSpec(lfn=f"in.{pid}", type="input", dataset="ds.in", status="ready"),
             FileSpec(lfn=f"out.{pid}", type="output", destinationDBlock="ds.out_sub01"),
             FileSpec(lfn=f"log.{pid}", type="log", destinationDBlock="ds.log_sub01")]
    cmds: list[Command] = [
        Submit(PandaID=pid, actor="user:bench", job=JobSpec(computingSite=f"SITE{pid % 10}", jediTaskID=pid // 100,
                                                            attemptNr=1, currentPriority=pid % 1000, Files=files)),
        Transition(PandaID=pid, action="activate", actor="service:activator"),
        Transition(PandaID=pid, action="dispatch", actor="service:dispatcher"),
        PilotUpdate(PandaID=pid, state=PilotState.RUNNING, attempt_nr=1, actor="pilot:bench")]
    kind = pid % 4
    if kind in (0, 1):
        cmds += [PilotUpdate(PandaID=pid, state=PilotState.FINISHED, attempt_nr=1, actor="pilot:bench", report="{}"),
                 Transition(PandaID=pid, action="finish", actor="service:adder",
                            files=[FileSpec(lfn=f"out.{pid}", type="output", status="ready", GUID=f"g{pid}")])]
    elif kind == 2:
        cmds += [Transition(PandaID=pid, action="fail", actor="service:watcher"),
                 Kill(PandaID=pid, code=7, actor="jedi")]
    else:
        cmds += [Kill(PandaID=pid, code=9, actor="user:bench")]
    return cmds


def events(n: int, first_pid: int = 1_000_000) -> Iterator[Event]:
    """At least ``n`` legal events (whole jobs), judged by the real decision core."""
    made = 0
    pid = first_pid
    while made < n:
        job = None
        for cmd in _commands(pid):
            out = decide(job, cmd, [0, 0])
            assert not isinstance(out, Rejected), out
            job = apply(job, out)
            made += 1
            yield out
        pid += 1


def write_log(cfg: config.Config, n: int) -> int:
    nparts = int(cfg.kafka.partitions)
    prod = bus.producer(cfg, transactional_id=f"pandaes-bench-{os.getpid()}", linger_ms=20)
    prod.init_transactions()
    count = 0
    try:
        prod.begin_transaction()
        for ev in events(n):
            prod.send(cfg.kafka.events_topic, key=key_of(ev.PandaID), value=encode(ev),
                      partition=bus.partition_of(ev.PandaID, nparts))
            count += 1
            if count % 5000 == 0:
                prod.commit_transaction()
                prod.begin_transaction()
        prod.commit_transaction()
    finally:
        prod.close()
    return count


def measure(cfg: config.Config, projections: list[str]) -> dict[str, float]:
    """events/s of a side-by-side rebuild of each projection (the log must already be there)."""
    from cli.rebuild import rebuild

    rates = {}
    for name in projections:
        result = rebuild(cfg, name, into=f"bench_rebuild_{os.getpid()}", log=print, show_progress=False)
        rates[name] = result.rate
    with db.connect(cfg) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS bench_rebuild_{os.getpid()} CASCADE")
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--projection", action="append", help="default: jobs, files, archive")
    args = ap.parse_args()
    tag = f"bench{os.getpid()}"
    base = config.load()
    if not base.kafka.bootstrap:
        base = base.replace(state={"dir": tempfile.mkdtemp(prefix="pandaes-bench-")})
    system = stack.Infra(base, log=print).start()
    try:
        cfg = system.config().replace(kafka={"events_topic": f"{tag}.job-events",
                                             "commands_topic": f"{tag}.job-commands",
                                             "rejected_topic": f"{tag}.job-commands.rejected"})
        ensure_topics(cfg)
        migrations.migrate(cfg)
        t0 = time.monotonic()
        n = write_log(cfg, args.events)
        print(f"wrote {n} events in {time.monotonic() - t0:.1f}s to {cfg.kafka.events_topic} "
              f"({cfg.kafka.partitions} partitions)")
        for name, rate in measure(cfg, args.projection or ["jobs", "files", "archive"]).items():
            print(f"rebuild {name}: {rate:,.0f} events/s")
    finally:
        system.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
