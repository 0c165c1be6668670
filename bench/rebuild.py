"""Rebuild rate: events/s turning a log of the lifecycle workload into the jobs projection from offset 0.

The log is written straight to the events topic, as the ledger writes it (events keyed and partitioned
by PandaID, one transaction per 2,000), because what is measured is the rebuild, not the ledger.

The rebuild itself is the replay tool's ``cli.rebuild.rebuild`` (into a side schema) when it is
there; otherwise a fresh ``projections.runner.ProjectionRunner`` with only the jobs projection does
it, which is also what a projector catching up after downtime does.
"""

from __future__ import annotations

import resource
import threading
import time
from typing import Any

from bench import ceilings, workload
from bench.procs import CpuMeter, infra_groups
from bench.stats import timeline
from core import bus
from core.config import Config
from schemas.messages import encode, key_of


def write_log(cfg: Config, n_events: int, log=print) -> dict[str, Any]:
    """The log to rebuild from, through the Kafka port: with the confluent adapter when its client is
    installed — a transaction per 50,000 pre-encoded events, ~10x faster than kafka-python, which is
    what lets the full mode write a million events in a minute or two — else with kafka-python, a
    transaction per 2,000 as the ledger writes. Either way events are keyed and partitioned by PandaID
    and the log ends in a commit marker."""
    if not bus.client_available("confluent"):
        records = [(key_of(ev.PandaID), encode(ev)) for ev in workload.events(n_events)]
        return {**ceilings.produce(cfg, records, transaction_every=2000), "writer": "kafka-python"}
    fast = cfg.replace(kafka={"client": "confluent", "transaction_timeout_ms": 120_000})
    return {**_write_log_fast(fast, n_events, log), "writer": "confluent-kafka"}


def _write_log_fast(cfg: Config, n_events: int, log, per_txn: int = 50_000) -> dict[str, Any]:
    topic = cfg.kafka.events_topic
    prod = bus.producer(cfg, transactional_id=f"{cfg.kafka.group_prefix}-bench-log-writer", linger_ms=20)
    try:
        nparts = len(prod.partitions(topic))
        prod.init_transactions()
        t0 = time.perf_counter()
        n = size = 0
        part: dict[int, int] = {}
        prod.begin_transaction()
        for ev in workload.events(n_events):
            pid = ev.PandaID
            p = part.get(pid)
            if p is None:
                part.clear()   # events of a job are consecutive: one entry is enough
                p = part[pid] = bus.partition_of(pid, nparts)
            key, value = key_of(pid), encode(ev)
            size += len(key) + len(value)
            prod.send(topic, value, key=key, partition=p)
            n += 1
            if n % per_txn == 0:
                prod.commit_transaction()   # fails if a record of the transaction could not be written
                if n % (4 * per_txn) == 0:
                    log(f"  rebuild: {n:,} events written ({n / (time.perf_counter() - t0):,.0f}/s)")
                prod.begin_transaction()
        prod.commit_transaction()
        elapsed = time.perf_counter() - t0
    finally:
        prod.close()
    return {"records": n, "seconds": elapsed, "per_s": n / elapsed, "mb_per_s": size / elapsed / 1e6,
            "transactional": True}


def _with_replay_tool(cfg: Config) -> tuple[int, float, list[float]] | None:
    try:
        from cli import rebuild as replay
    except ImportError:
        return None
    marks: list[float] = []
    original = replay.Progress

    class Counted(original):  # type: ignore[misc, valid-type]
        """The replay tool's progress bar, noting when each event was applied (the timeline)."""

        def update(self, n: int = 1) -> None:
            marks.extend([time.perf_counter()] * n)
            super().update(n)

    replay.Progress = Counted  # type: ignore[misc]
    try:
        t0 = time.perf_counter()
        result = replay.rebuild(cfg, "jobs", into="bench_rebuild", log=lambda *_: None, show_progress=False)
        return result.events, t0, marks
    finally:
        replay.Progress = original  # type: ignore[misc]


def _with_runner(cfg: Config, expect: int) -> tuple[int, float, list[float]]:
    from projections.jobs import JobsProjection
    from projections.runner import ProjectionRunner

    marks: list[float] = []

    def on_batch(n: int) -> None:
        marks.extend([time.perf_counter()] * n)

    runner = ProjectionRunner(cfg, [JobsProjection()], group_id=f"{cfg.kafka.group_prefix}-rebuild",
                              on_batch=on_batch)
    try:
        t0 = time.perf_counter()
        stop = threading.Event()
        deadline = t0 + 900
        while len(marks) < expect and time.perf_counter() < deadline and not stop.is_set():
            runner.step(timeout_ms=200)
        return len(marks), t0, marks
    finally:
        runner.close()


def _children_cpu() -> float:
    """CPU seconds of this process's ended children: the replay tool loads some partitions in processes
    of its own, which count as the rebuilder's."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(cfg: Config, *, n_events: int, method: str = "auto", log=print) -> dict[str, Any]:
    log(f"  rebuild: writing a log of {n_events:,} events …")
    produced = write_log(cfg, n_events, log)
    log(f"  rebuild: log written at {produced['per_s']:,.0f} records/s ({produced['writer']}); reading it back raw …")
    consumed = ceilings.consume(cfg, produced["records"])
    meter = CpuMeter(infra_groups())
    meter.start()
    cpu0 = time.process_time() + _children_cpu()
    got = _with_replay_tool(cfg) if method in ("auto", "replay") else None
    used = "cli.rebuild.rebuild (replay tool)"
    if got is None:
        used = "projections.runner.ProjectionRunner (jobs only)"
        got = _with_runner(cfg, produced["records"])
    n, t0, marks = got
    elapsed = time.perf_counter() - t0
    cpu = {"rebuilder": time.process_time() + _children_cpu() - cpu0, **meter.stop()}
    rate = n / elapsed if elapsed else 0.0
    log(f"  rebuild: {n:,} events in {elapsed:.1f}s = {rate:,.0f} events/s ({used})")
    return {
        "events": n, "seconds": elapsed, "events_per_s": rate, "method": used,
        "produce": produced, "consume": consumed,
        "cpu_s": cpu, "cpu_us_per_event": {k: 1e6 * v / max(n, 1) for k, v in cpu.items()},
        "timeline": timeline(marks, t0),
    }
