"""The full lifecycle: N jobs submitted in bulk through the gateway, run by simulated pilots, finished by
the services, with the components `pandaes run` starts (ledger, projector, the reactors host with setupper,
activator, adder, closer, retrier …, gateway) — each its own process, so each one's CPU time per job is
known (the reactors' split by service is in their log, ``bench/results/logs/lifecycle/reactors.log``).

Jobs go to the ``BENCH`` queue (``bench/queues.toml``: the ``dummy`` data plugin, so storage costs
nothing and what is measured is pandaes). Pilots are ``cli.simulated_pilot``'s, speaking the legacy
protocol over HTTP: getJob, updateJob starting, running (heartbeat), finished with an output report.
Submission (``/api/v1/job/submit`` in batches, as panda-client sends them) and the pilots run at the
same time; the clock stops when the gateway reports every job the pilots ran ``finished`` (``job/get_status``,
as a client asks). Times per job
(submit → finished) come from the events themselves (``job_events``).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from bench import stack, workload
from bench.procs import Components, CpuMeter, infra_groups
from bench.stats import percentiles, steady_rate, timeline
from cli import components
from core import collector, db, eventloop
from core.config import Config
from core.states import JobStatus
from projections import queries


def services(cfg: Config) -> list[str]:
    """The components as `pandaes run` starts them (the reactors in one process over one consumer, the projections
    in it too unless configured apart), without the daemon's clock scripts and the monitor, which do no work for
    this workload."""
    return [name for name in components.default_components(cfg) if name not in ("daemon", "monitor")]


SUBMIT_BATCH = 500
STATUS_BATCH = 2000   # PandaIDs per job/get_status call
STATUS_INTERVAL = 0.05   # s between the end's looks at the jobs not yet finished (the clock's resolution)


def missing() -> str:
    try:
        from cli import simulated_pilot  # noqa: F401
        from services.gateway import app  # noqa: F401
        from services.reactors import adder, closer, setupper  # noqa: F401
    except ImportError as exc:
        return f"needs the gateway, the job-flow services and cli/simulated_pilot.py ({exc})"
    return ""


async def _submit(url: str, n: int, log, headers: dict[str, str]) -> tuple[float, list[int]]:
    """Submit ``n`` jobs in batches, four requests in flight; returns when the last batch is answered, with the
    PandaIDs the gateway accepted."""
    from schemas.jobspec import jobs_to_client_json

    rng = random.Random(workload.SEED)
    batches = []
    for start in range(0, n, SUBMIT_BATCH):
        jobs = [msgspec.structs.replace(workload.job(i, rng, stack.SITE), PandaID=None)
                for i in range(start, min(n, start + SUBMIT_BATCH))]
        batches.append(jobs_to_client_json(jobs))
    sem = asyncio.Semaphore(4)
    accepted: list[int] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300), headers=headers) as session:
        async def one(body: str) -> None:
            async with sem, session.post(f"{url}/api/v1/job/submit", json={"jobs": body}) as resp:
                reply = await resp.json(content_type=None)
                if not reply.get("success"):
                    raise RuntimeError(f"job/submit failed: {str(reply)[:300]}")
                accepted.extend(int(row[0]) for row in reply["data"] if row[0] is not None)

        await asyncio.gather(*(one(b) for b in batches))
    log(f"  lifecycle: {len(accepted):,}/{n:,} jobs accepted by job/submit")
    return time.time(), accepted


async def finished_by_gateway(url: str, ids: list[int], headers: dict[str, str]) -> set[int]:
    """Which of ``ids`` the gateway reports ``finished`` (``job/get_status``, as a client asks): the clock
    stops on what a user would read, not on a database row."""
    done: set[int] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=headers) as session:
        for start in range(0, len(ids), STATUS_BATCH):
            chunk = ids[start:start + STATUS_BATCH]
            async with session.post(f"{url}/api/v1/job/get_status", json={"job_ids": chunk}) as resp:
                reply = await resp.json(content_type=None)
            if not reply.get("success"):
                raise RuntimeError(f"job/get_status failed: {str(reply)[:300]}")
            rows = zip(chunk, reply["data"], strict=True)
            done.update(i for i, row in rows if row.get("status") == JobStatus.FINISHED)
    return done


def wait_finished(url: str, ids: list[int], target: int, seconds: float, headers: dict[str, str],
                  interval: float = STATUS_INTERVAL) -> int:
    """Ask the gateway every ``interval`` s until ``target`` of ``ids`` are finished or ``seconds`` have passed.
    Finished is final, so after the first answer only the jobs not yet finished are asked about, as a client
    following its jobs would: a short interval then costs little, and the clock stops within it."""
    deadline = time.monotonic() + seconds
    finished = eventloop.run(finished_by_gateway(url, ids, headers))
    pending = [i for i in ids if i not in finished]
    while len(finished) < target and time.monotonic() < deadline:
        time.sleep(interval)
        finished |= eventloop.run(finished_by_gateway(url, pending, headers))
        pending = [i for i in pending if i not in finished]
    return len(finished)


async def _drive(url: str, n: int, pilots: int, seconds: float, log, headers: dict[str, str]) -> dict[str, Any]:
    """Pilots and the submitter at the same time; pilots stop after ``seconds`` (jobs they hold then are
    not finished and not counted)."""
    from cli.simulated_pilot import SimOptions, SimStats, _Pilot

    # one heartbeat per job (payload 60 ms, heartbeat every 50 ms); an idle pilot asks again after 0.25 s
    opts = SimOptions(url=url, site=stack.SITE, pilots=pilots, payload_seconds=0.06, heartbeat=0.05,
                      nojob_retries=0, nojob_sleep=0.25)
    stats = SimStats()
    t_end = time.monotonic() + seconds
    finished_at: list[float] = []

    async def pilot(session: aiohttp.ClientSession, i: int) -> None:
        p = _Pilot(session, opts, i, stats)
        try:
            while time.monotonic() < t_end and stats.finished < n:
                job = await p.get_job()
                if job is None:
                    await asyncio.sleep(opts.nojob_sleep)
                    continue
                stats.received.append(int(job["PandaID"]))
                await p.run_job(job)
                finished_at.append(time.time())
        finally:
            p.close()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=150)) as session:
        sim = asyncio.gather(*(pilot(session, i) for i in range(pilots)))
        submitted_at, ids = await _submit(url, n, log, headers)
        try:
            await asyncio.wait_for(sim, max(1.0, t_end - time.monotonic() + 30))
        except TimeoutError:
            log("  lifecycle: pilots still busy 30 s after the time box; stopped")
    return {"submitted_at": submitted_at, "ids": ids, "pilot": stats.summary(), "pilot_errors": stats.errors[:5],
            "pilot_finished_at": finished_at}


def _stages(cfg: Config) -> dict[str, dict[str, float]]:
    """Time each job spent before each event, by event (``from → to`` state), as percentiles: where the
    end-to-end latency goes (waiting for a service, a pilot or the ledger)."""
    with db.connect(cfg) as conn:
        rows = queries.stage_seconds(conn)
    by: dict[str, list[float]] = {}
    for stage, seconds in rows:
        by.setdefault(stage, []).append(seconds)
    return {stage: percentiles(v) for stage, v in sorted(by.items(), key=lambda kv: -len(kv[1]))}


def _from_events(cfg: Config) -> tuple[list[float], list[float], list[float]]:
    """(submit → finished seconds per job, finish times (epoch), times of all events (epoch))."""
    with db.connect(cfg) as conn:
        rows = queries.finish_latencies(conn)
        events = queries.event_times(conn)
    return [seconds for _, seconds in rows], [at for at, _ in rows], events


def run(cfg: Config, *, size: dict[str, Any], log_dir: Path, log=print) -> dict[str, Any]:
    from services.gateway.auth import dev  # the bench acts with dev tokens, as clients of `make run` do

    cfg = stack.configure(cfg)
    url = f"http://{cfg.http.host}:{cfg.http.port}"
    n, pilots, seconds = size["jobs"], size["pilots"], size["lifecycle_seconds"]
    with Components(cfg, services(cfg), log_dir / "lifecycle") as comps:
        stack.wait_http(url)
        stack.wait_settled(cfg, log=log)   # the ledger and the services' reader hold their partitions
        time.sleep(5)  # then a quiet spell: the workload comes to a system that was idle (its consumers dozing)
        comps.check()
        meter = CpuMeter({**comps.pids(), **infra_groups()})
        meter.start()
        cpu0 = time.process_time()
        t0 = time.time()
        headers = dev.headers(cfg, "bench", ("production", "pilot"))
        with collector.settled():
            driven = eventloop.run(_drive(url, n, pilots, seconds, log, headers))
        # the last finals through the ledger, the services and the projector: what the pilots reported finished
        # must be reported finished by the gateway
        done = wait_finished(url, driven["ids"], driven["pilot"]["finished"], 30, headers)
        t_end = time.time()
        cpu = {**meter.stop(), "bench (pilots, submit)": time.process_time() - cpu0}
        comps.check()
    e2e, finish_times, event_times = _from_events(cfg)
    events = len(event_times)
    stages = _stages(cfg)
    log("  lifecycle: time before each event, p50/p95 s: " + "; ".join(
        f"{k} {v['p50_ms'] / 1000:.2f}/{v['p95_ms'] / 1000:.2f}" for k, v in stages.items() if v.get("n")))
    elapsed = t_end - t0
    series = timeline(finish_times, t0)
    log(f"  lifecycle: {done:,}/{n:,} jobs finished in {elapsed:.1f}s = {done / elapsed:,.0f} jobs/s "
        f"({events / elapsed:,.0f} events/s); pilots {driven['pilot']}")
    return {
        "jobs": n, "finished": done, "pilots": pilots, "seconds": elapsed, "jobs_per_s": done / elapsed,
        "steady_jobs_per_s": steady_rate(series), "events": events, "transitions_per_s": events / elapsed,
        "steady_transitions_per_s": steady_rate(timeline(event_times, t0)),
        "latency": percentiles(e2e), "stages": stages, "pilot": driven["pilot"], "pilot_errors": driven["pilot_errors"],
        "finished_as": "job/get_status through the gateway",
        # [gateway] processes: the gateway's CPU row is its supervisor and every serving process (their children)
        "gateway_processes": int(cfg.gateway.processes),
        "cpu_s": cpu, "cpu_us_per_job": {k: 1e6 * v / max(done, 1) for k, v in cpu.items()},
        "timeline": series,
    }
