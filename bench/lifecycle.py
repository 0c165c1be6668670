"""The full lifecycle: N jobs submitted in bulk through the gateway, run by simulated pilots, finished by
the services, with every component on (ledger, projector, setupper, activator, adder, closer, retrier,
gateway) — each its own process, so each one's CPU time per job is known.

Jobs go to the ``BENCH`` queue (``bench/queues.toml``: the ``dummy`` data plugin, so storage costs
nothing and what is measured is pandaes). Pilots are ``services.pilot_sim``'s, speaking the legacy
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
from core import db
from core.config import Config

SERVICES = ["ledger", "projector", "setupper", "activator", "adder", "closer", "retrier", "gateway"]
SUBMIT_BATCH = 500
PILOTS = {"quick": 100, "full": 500}


def missing() -> str:
    try:
        from services import adder, closer, pilot_sim, setupper  # noqa: F401
        from services.gateway import app  # noqa: F401
    except ImportError as exc:
        return f"needs the gateway, the job-flow services and services/pilot_sim.py ({exc})"
    return ""


async def _submit(url: str, n: int, log) -> float:
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
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
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


async def _drive(url: str, n: int, pilots: int, log) -> dict[str, Any]:
    from services.pilot_sim import SimOptions, simulate

    per_pilot = max(1, n // pilots)
    opts = SimOptions(url=url, site=stack.SITE, pilots=pilots, jobs=per_pilot, payload_seconds=0.0,
                      heartbeat=0.05, nojob_retries=1200, nojob_sleep=0.1)
    sim = asyncio.create_task(simulate(opts))
    submitted_at = await _submit(url, n, log)
    stats = await sim
    return {"submitted_at": submitted_at, "pilot": stats.summary(), "pilot_errors": stats.errors[:5]}


def _finished(cfg: Config) -> int:
    with db.connect(cfg) as conn:
        return conn.execute("SELECT count(*) FROM jobs WHERE status = 'finished'").fetchone()[0]


def _from_events(cfg: Config) -> tuple[list[float], list[float], int]:
    """(submit → finished seconds per job, finish times (epoch), number of events)."""
    with db.connect(cfg) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM f.time), extract(epoch FROM f.time - s.time) FROM job_events f"
            " JOIN job_events s ON s.pandaid = f.pandaid AND s.seq = 1"
            " WHERE f.to_state = 'finished' AND f.from_state <> 'finished'").fetchall()
        events = conn.execute("SELECT count(*) FROM job_events").fetchone()[0]
    return [float(r[1]) for r in rows], [float(r[0]) for r in rows], events


def run(cfg: Config, *, size: dict[str, Any], log_dir: Path, log=print) -> dict[str, Any]:
    cfg = stack.configure(cfg)
    url = f"http://{cfg.http.host}:{cfg.http.port}"
    n = size["jobs"]
    pilots = PILOTS["quick" if n < 10_000 else "full"]
    n = (n // pilots) * pilots
    with Components(cfg, SERVICES, log_dir / "lifecycle") as comps:
        stack.wait_http(url)
        time.sleep(8)  # consumer groups of the services settle (a join waits one rebalance timeout)
        comps.check()
        meter = CpuMeter({**comps.pids(), "postgres": postgres_pids()})
        meter.start()
        cpu0 = time.process_time()
        t0 = time.time()
        driven = asyncio.run(_drive(url, n, pilots, log))
        deadline = time.monotonic() + 600
        done = _finished(cfg)
        while done < n and time.monotonic() < deadline:
            time.sleep(0.25)
            done = _finished(cfg)
        t_end = time.time()
        cpu = {**meter.stop(), "pilots+submit (bench process)": time.process_time() - cpu0}
        comps.check()
    e2e, finish_times, events = _from_events(cfg)
    elapsed = t_end - t0
    series = timeline(finish_times, t0)
    log(f"  lifecycle: {done:,}/{n:,} jobs finished in {elapsed:.1f}s = {done / elapsed:,.0f} jobs/s "
        f"({events / elapsed:,.0f} events/s); pilots {driven['pilot']}")
    return {
        "jobs": n, "finished": done, "pilots": pilots, "seconds": elapsed, "jobs_per_s": done / elapsed,
        "steady_jobs_per_s": steady_rate(series), "events": events, "transitions_per_s": events / elapsed,
        "latency": percentiles(e2e), "pilot": driven["pilot"], "pilot_errors": driven["pilot_errors"],
        "cpu_s": cpu, "cpu_us_per_job": {k: 1e6 * v / max(done, 1) for k, v in cpu.items()},
        "timeline": series,
    }
