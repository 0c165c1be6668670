"""The full lifecycle: N jobs submitted in bulk through the gateway, run by simulated pilots, finished by
the services, with the components `pandaes run` starts (ledger, projector, the reactors host with setupper,
activator, adder, closer, retrier …, gateway) — each its own process, so each one's CPU time per job is
known (the reactors' split by service is in their log, ``bench/results/logs/lifecycle/reactors.log``).

Jobs go to the ``BENCH`` queue (``bench/queues.toml``: the ``dummy`` data plugin, so storage costs
nothing and what is measured is pandaes). Pilots are ``cli.simulated_pilot``'s, speaking the legacy
protocol over HTTP: getJob, updateJob starting, running (heartbeat), finished with an output report.
Submission (``/api/v1/job/submit`` in batches, as panda-client sends them) and the pilots run at the
same time; the clock stops when the jobs projection shows every job ``finished``. Times per job
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
from bench.procs import Components, CpuMeter, postgres_pids
from bench.stats import percentiles, steady_rate, timeline
from cli import components
from core import db
from core.config import Config
from core.states import JobStatus
from projections import queries

# the components as `pandaes run` starts them (the reactors in one process over one consumer), without the
# daemon's clock scripts and the monitor, which do no work for this workload
SERVICES = [name for name in components.DEFAULT if name not in ("daemon", "monitor")]
SUBMIT_BATCH = 500


def missing() -> str:
    try:
        from cli import simulated_pilot  # noqa: F401
        from services.gateway import app  # noqa: F401
        from services.reactors import adder, closer, setupper  # noqa: F401
    except ImportError as exc:
        return f"needs the gateway, the job-flow services and cli/simulated_pilot.py ({exc})"
    return ""


async def _submit(url: str, n: int, log, headers: dict[str, str]) -> float:
    """Submit ``n`` jobs in batches, four requests in flight; returns when the last batch is answered."""
    from schemas.jobspec import jobs_to_client_json

    rng = random.Random(workload.SEED)
    batches = []
    for start in range(0, n, SUBMIT_BATCH):
        jobs = [msgspec.structs.replace(workload.job(i, rng, stack.SITE), PandaID=None)
                for i in range(start, min(n, start + SUBMIT_BATCH))]
        batches.append(jobs_to_client_json(jobs))
    sem = asyncio.Semaphore(4)
    accepted = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300), headers=headers) as session:
        async def one(body: str) -> None:
            nonlocal accepted
            async with sem, session.post(f"{url}/api/v1/job/submit", json={"jobs": body}) as resp:
                reply = await resp.json(content_type=None)
                if not reply.get("success"):
                    raise RuntimeError(f"job/submit failed: {str(reply)[:300]}")
                accepted += sum(1 for row in reply["data"] if row[0] is not None)

        await asyncio.gather(*(one(b) for b in batches))
    log(f"  lifecycle: {accepted:,}/{n:,} jobs accepted by job/submit")
    return time.time()


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
        while time.monotonic() < t_end and stats.finished < n:
            job = await p.get_job()
            if job is None:
                await asyncio.sleep(opts.nojob_sleep)
                continue
            stats.received.append(int(job["PandaID"]))
            await p.run_job(job)
            finished_at.append(time.time())

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=150)) as session:
        sim = asyncio.gather(*(pilot(session, i) for i in range(pilots)))
        submitted_at = await _submit(url, n, log, headers)
        try:
            await asyncio.wait_for(sim, max(1.0, t_end - time.monotonic() + 30))
        except TimeoutError:
            log("  lifecycle: pilots still busy 30 s after the time box; stopped")
    return {"submitted_at": submitted_at, "pilot": stats.summary(), "pilot_errors": stats.errors[:5],
            "pilot_finished_at": finished_at}


def _finished(cfg: Config) -> int:
    with db.connect(cfg) as conn:
        return queries.count_by_status(conn, [JobStatus.FINISHED]).get(JobStatus.FINISHED, 0)


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
    with Components(cfg, SERVICES, log_dir / "lifecycle") as comps:
        stack.wait_http(url)
        time.sleep(5)  # consumer groups of the services settle (a join waits one rebalance timeout)
        comps.check()
        meter = CpuMeter({**comps.pids(), "postgres": postgres_pids()})
        meter.start()
        cpu0 = time.process_time()
        t0 = time.time()
        driven = asyncio.run(_drive(url, n, pilots, seconds, log, dev.headers(cfg, "bench", ("production", "pilot"))))
        deadline = time.monotonic() + 30   # the last finals through the ledger, the finisher and the projector
        done = _finished(cfg)
        target = driven["pilot"]["finished"]   # what the pilots reported finished must reach the projection
        while done < target and time.monotonic() < deadline:
            time.sleep(0.25)
            done = _finished(cfg)
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
        "cpu_s": cpu, "cpu_us_per_job": {k: 1e6 * v / max(done, 1) for k, v in cpu.items()},
        "timeline": series,
    }
