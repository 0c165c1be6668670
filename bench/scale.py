"""Years of history: the ledger's partition rebuild and getJob with few and with millions of archived jobs.

The same live system is measured twice: first with ``scale_small`` archived jobs in the database, then
with ``scale_large`` (10 million in full mode). The archived jobs are written straight into the jobs
table's archive partition (``projections.jobs_archive.load_archived``: generate_series, indexes built
once), not run, because what is measured is what their presence costs the readers that must not see
them: the ledger's snapshot of a partition (live jobs only) and getJob's candidate query (hot partition
only). The live part is real: ``scale_live`` jobs submitted and activated through the ledger and the
projector, and a gateway handing them out.

Per phase:
- *ledger rebuild*: a second ledger, in a consumer group of its own, joins, rebuilds every partition
  (snapshot + fold of the log after it) and is stopped before it judges anything; the figure is the sum
  of its ``rebuild_partition`` times, and the snapshot read alone (every partition, best of 3);
- *getJob*: one simulated pilot in a closed loop for ``dispatch_seconds`` (p50/p95/p99 latency);
- *plans*: what the snapshot query of one partition and getJob's candidate query read (EXPLAIN ANALYZE
  BUFFERS: the relations scanned and the buffers touched), which a loaded machine does not blur.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench import stack, workload
from bench.dispatch import _activated, _level
from bench.procs import Components
from core import db
from core.bus import CommandSender, OutcomeWaiter
from core.config import Config
from core.ledger import Ledger
from core.states import JobStatus
from projections import jobs_archive, queries
from projections.candidates import candidate_query
from projections.queries import partition_snapshot

ARCHIVE_FIRST_ID = 1_000_000_000   # archived PandaIDs, far from the live ones


def missing() -> str:
    try:
        from cli import simulated_pilot  # noqa: F401
        from services.gateway import app  # noqa: F401
    except ImportError as exc:
        return f"needs the gateway and cli/simulated_pilot.py ({exc})"
    return ""


def _snapshot_seconds(cfg: Config, repeat: int = 3) -> tuple[float, int]:
    """(best time to read every partition's snapshot, live jobs in it)."""
    best, live = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        live = 0
        for p in range(cfg.kafka.partitions):
            with db.connect(cfg) as conn:
                live += len(partition_snapshot(conn, cfg.kafka.events_topic, p).jobs)
        best = min(best, time.perf_counter() - t0)
    return best, live


def _ledger_rebuild(cfg: Config, tag: str) -> dict[str, Any]:
    """A ledger of its own group rebuilds every partition; stopped before it judges a command."""
    own = cfg.replace(kafka={"group_prefix": f"{cfg.kafka.group_prefix}-{tag}"})
    ledger = Ledger(own, instance=f"scale-{tag}", snapshot=partition_snapshot)
    times: list[float] = []
    original = ledger.rebuild_partition

    def timed(tp) -> None:
        t0 = time.perf_counter()
        original(tp)
        times.append(time.perf_counter() - t0)

    ledger.rebuild_partition = timed  # type: ignore[method-assign]
    try:
        deadline = time.monotonic() + 120
        while len(ledger.resume_at) < cfg.kafka.partitions and time.monotonic() < deadline:
            # joins the group and rebuilds as ``step`` does; the commands polled are dropped, never judged
            ledger.consumer.poll(timeout_ms=200)
            if ledger.to_rebuild:
                rebuilt, ledger.to_rebuild = ledger.to_rebuild, set()
                for tp in sorted(rebuilt, key=lambda t: t.partition):
                    ledger.rebuild_partition(tp)
        live = sum(len(j) for j in ledger.jobs.values())
        final = sum(len(r) for r in ledger.recent.values())
    finally:
        ledger.close()
    return {"partitions": len(times), "seconds": sum(times), "max_partition_s": max(times, default=0.0),
            "live_jobs_held": live, "final_jobs_held": final}


def _plans(cfg: Config) -> dict[str, Any]:
    """What the snapshot of partition 0 and getJob's first candidate query read (relations, buffers)."""
    from services.gateway.dispatcher import DispatchRequest

    sql, params = candidate_query(DispatchRequest(site=stack.SITE), [], 1)
    with db.connect(cfg) as conn:
        return {"snapshot": jobs_archive.plan_reads(conn, *queries.ledger_state_query(0)),
                "getjob": jobs_archive.plan_reads(conn, sql, params)}


def _phase(cfg: Config, url: str, headers: dict[str, str], archived: int, seconds: float, log) -> dict[str, Any]:
    plans = _plans(cfg)
    snap_s, live = _snapshot_seconds(cfg)
    rebuild = _ledger_rebuild(cfg, f"r{archived}")
    res = asyncio.run(_level(url, 1, seconds, headers))
    lat = res["latency"]
    log(f"  scale: {archived:>12,} archived: snapshot of {live:,} live jobs {snap_s * 1000:.0f} ms; ledger rebuild "
        f"{rebuild['seconds'] * 1000:.0f} ms ({rebuild['live_jobs_held']:,} live, {rebuild['final_jobs_held']:,} "
        f"final held); getJob p50/p95/p99 {lat.get('p50_ms', 0):.1f}/{lat.get('p95_ms', 0):.1f}/"
        f"{lat.get('p99_ms', 0):.1f} ms over {res['requests']:,} requests ({res['errors']} errors)")
    for name, plan in plans.items():
        log(f"  scale: {archived:>12,} archived: {name} query reads {', '.join(plan['relations'])}: "
            f"{plan['buffers']:,} buffers, {plan['rows']:,} rows, {plan['ms']:.1f} ms")
    return {"archived": archived, "plans": plans, "snapshot_s": snap_s, "live_jobs": live, "ledger_rebuild": rebuild,
            "getjob": {"requests": res["requests"], "jobs": res["jobs"], "no_job": res["no_job"],
                       "errors": res["errors"], "latency": lat}}


def run(cfg: Config, *, size: dict[str, Any], log_dir: Path, log=print) -> dict[str, Any]:
    from services.gateway.auth import dev  # the bench acts with dev tokens, as clients of `make run` do

    cfg = stack.configure(cfg)
    url = f"http://{cfg.http.host}:{cfg.http.port}"
    n_live, small, large = size["scale_live"], size["scale_small"], size["scale_large"]
    headers = dev.headers(cfg, "bench", ("pilot",))
    phases = []
    loads: list[dict[str, float]] = []
    with Components(cfg, ["ledger", "projector", "gateway"], log_dir / "scale") as comps:
        waiter, sender = OutcomeWaiter(cfg), CommandSender(cfg)
        try:
            stack.ledger_ready(waiter, sender, workload.FIRST_ID - 1)
            pids = list(range(workload.FIRST_ID, workload.FIRST_ID + n_live))
            stack.backlog(waiter, sender, pids, [JobStatus.ACTIVATED], site=stack.SITE, log=log)
        finally:
            sender.close()
            waiter.close()
        deadline = time.monotonic() + 600
        while _activated(cfg) < n_live and time.monotonic() < deadline:
            time.sleep(0.5)
        stack.wait_http(url)
        comps.check()
        loaded = 0
        for target in (small, large):
            t0 = time.perf_counter()
            with db.connect(cfg, autocommit=True) as conn:
                jobs_archive.load_archived(conn, ARCHIVE_FIRST_ID + loaded, target - loaded, cfg.kafka.partitions,
                                           before=time.time() - 30 * 86400, log=log)
            loads.append({"rows": target - loaded, "seconds": time.perf_counter() - t0})
            loaded = target
            comps.check()
            phases.append(_phase(cfg, url, headers, loaded, size["dispatch_seconds"], log))
    first, last = phases[0], phases[-1]
    return {"live": n_live, "phases": phases, "loads": loads,
            "rebuild_ratio": last["ledger_rebuild"]["seconds"] / max(first["ledger_rebuild"]["seconds"], 1e-9),
            "snapshot_ratio": last["snapshot_s"] / max(first["snapshot_s"], 1e-9),
            "getjob_p50_ratio": (last["getjob"]["latency"].get("p50_ms", 0)
                                 / max(first["getjob"]["latency"].get("p50_ms", 0), 1e-9))}


def summary(result: dict[str, Any]) -> list[str]:
    """The figures for docs/performance.md, one line per phase."""
    out = []
    for ph in result["phases"]:
        lat = ph["getjob"]["latency"]
        out.append(f"{ph['archived']:>12,} archived | snapshot {ph['snapshot_s'] * 1000:.0f} ms | ledger rebuild "
                   f"{ph['ledger_rebuild']['seconds'] * 1000:.0f} ms | getJob p50/p95/p99 "
                   f"{lat.get('p50_ms', 0):.1f}/{lat.get('p95_ms', 0):.1f}/{lat.get('p99_ms', 0):.1f} ms")
    return out

