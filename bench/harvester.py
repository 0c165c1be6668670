"""Harvester-style bulk workload: jobs fetched in batches of 50 over ``/api/v1/pilot/acquire_jobs``, their
workers reported with ``harvester/update_workers``, and every state change sent with
``pilot/update_jobs_bulk`` (running, then finished with the output report), as Harvester's communicator
does; the services (setupper, activator, adder, closer…) finish the jobs. Reported beside the single-pilot
lifecycle as jobs/s.

Then the kill path Harvester adds: for jobs running on known workers, the time from ``job/kill`` being
answered to the kill-worker command being returned by ``harvester/acquire_commands`` (polled every 10 ms;
a real Harvester polls every few tens of seconds, a pilot heartbeats every 30 minutes).
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp

from bench import lifecycle, stack
from bench.procs import Components
from bench.stats import percentiles
from core import db
from core.config import Config
from core.states import JobStatus
from projections import queries

SERVICES = lifecycle.SERVICES          # the reactors host runs the Harvester killer too
BATCH = 50
INSTANCES = 2


def missing() -> str:
    return lifecycle.missing()


def _report(job: dict[str, Any]) -> str:
    files = {}
    for lfn in [f for f in str(job.get("outFiles") or "").split(",") if f and f != "NULL"]:
        content = f"{lfn} of {job['PandaID']}\n".encode()
        files[lfn] = {"guid": job.get("logGUID", "") if lfn == job.get("logFile") else "", "fsize": len(content),
                      "adler32": f"{zlib.adler32(content):08x}", "surl": f"/harvester/{job['PandaID']}/{lfn}"}
    return json.dumps(files)


class Harvester:
    """One Harvester instance's cycle over the v1 API."""

    def __init__(self, session: aiohttp.ClientSession, url: str, hid: str):
        self.s, self.api, self.hid = session, f"{url}/api/v1", hid
        self.next_worker = 1

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        async with self.s.post(f"{self.api}/{path}", json=body) as r:
            reply = await r.json(content_type=None)
        if not reply.get("success") and path != "pilot/acquire_jobs":
            raise RuntimeError(f"{path}: {str(reply)[:200]}")
        return reply["data"]

    async def acquire(self, n: int) -> list[dict[str, Any]]:
        data = await self.post("pilot/acquire_jobs", {"site_name": stack.SITE, "node": self.hid, "n_jobs": n,
                                                      "prod_source_label": "managed", "timeout": 5,
                                                      "scheduler_id": f"harvester-{self.hid}"})
        return data["jobs"] if data else []

    async def workers(self, jobs: list[dict[str, Any]], status: str) -> None:
        """Report one worker per job (new workers when they start running, the same ones when they end)."""
        for j in jobs:
            if "_worker" not in j:
                j["_worker"], self.next_worker = self.next_worker, self.next_worker + 1
        await self.post("harvester/update_workers", {"harvester_id": self.hid, "workers": [
            {"workerID": j["_worker"], "status": status, "computingSite": stack.SITE, "nCore": 1,
             "jobType": "managed", "resourceType": "SCORE", "nJobs": 1, "pandaid_list": [j["PandaID"]]}
            for j in jobs]})

    async def bulk(self, jobs: list[dict[str, Any]], status: str, **extra: Any) -> list[dict[str, Any]]:
        items = [{"job_id": j["PandaID"], "job_status": status, "site_name": stack.SITE,
                  "attempt_nr": j.get("attemptNr"), "core_count": 1, **extra,
                  **({"job_output_report": _report(j)} if status == "finished" else {})} for j in jobs]
        return await self.post("pilot/update_jobs_bulk", {"harvester_id": self.hid, "job_list": items})

    async def cycle(self, stop_at: float, done: list[int]) -> None:
        while time.monotonic() < stop_at:
            jobs = await self.acquire(BATCH)
            if not jobs:
                await asyncio.sleep(0.25)
                continue
            await self.workers(jobs, "running")
            await self.bulk(jobs, "running")
            await self.bulk(jobs, "finished", end_time=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
            await self.workers(jobs, "finished")
            done.append(len(jobs))


def _finished(cfg: Config) -> int:
    with db.connect(cfg) as conn:
        return queries.count_by_status(conn, [JobStatus.FINISHED]).get(JobStatus.FINISHED, 0)


async def _bulk_phase(url: str, n: int, seconds: float, log, headers: dict[str, str]) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150), headers=headers) as session:
        stop_at = time.monotonic() + seconds
        done: list[int] = []
        hs = [Harvester(session, url, f"bench_harvester_{i}") for i in range(INSTANCES)]
        cycles = asyncio.gather(*(h.cycle(stop_at, done) for h in hs))
        await lifecycle._submit(url, n, log, headers)
        while sum(done) < n and time.monotonic() < stop_at:
            await asyncio.sleep(0.2)
        cycles.cancel()
        try:
            await cycles
        except asyncio.CancelledError:
            pass
    return {"reported_finished": sum(done), "batches": len(done)}


async def _kill_phase(url: str, n: int, log, headers: dict[str, str]) -> list[float]:
    """Kill ``n`` jobs running on known workers, one at a time; seconds from kill answered to command seen."""
    latencies: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=headers) as session:
        h = Harvester(session, url, "bench_harvester_kill")
        await lifecycle._submit(url, n, log, headers)
        jobs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(jobs) < n and time.monotonic() < deadline:
            jobs += await h.acquire(n - len(jobs))
        await h.workers(jobs, "running")
        await h.bulk(jobs, "running")
        await asyncio.sleep(1.0)   # the projection shows them running (a kill then signals the pilot)
        for j in jobs:
            async with session.post(f"{url}/api/v1/job/kill", json={"job_ids": [j["PandaID"]]}) as r:
                await r.json(content_type=None)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:
                cmds = await h.post("harvester/acquire_commands", {"harvester_id": h.hid, "n_commands": 10})
                if cmds:
                    latencies.append(time.monotonic() - t0)
                    await h.post("harvester/acknowledge_commands", {"command_ids": [c["command_id"] for c in cmds]})
                    break
                await asyncio.sleep(0.01)
    return latencies


def run(cfg: Config, *, size: dict[str, Any], log_dir: Path, log=print) -> dict[str, Any]:
    from services.gateway.auth import dev  # Harvester instances act with a dev token (production and pilot)

    cfg = stack.configure(cfg)
    headers = dev.headers(cfg, "bench-harvester", ("production", "pilot"))
    url = f"http://{cfg.http.host}:{cfg.http.port}"
    n, seconds = size["jobs"], size["lifecycle_seconds"]
    with Components(cfg, SERVICES, log_dir / "harvester") as comps:
        stack.wait_http(url)
        time.sleep(5)  # consumer groups of the services settle
        comps.check()
        t0 = time.time()
        bulk = asyncio.run(_bulk_phase(url, n, seconds, log, headers))
        deadline = time.monotonic() + 30
        done = _finished(cfg)
        while done < bulk["reported_finished"] and time.monotonic() < deadline:
            time.sleep(0.25)
            done = _finished(cfg)
        elapsed = time.time() - t0
        kills = asyncio.run(_kill_phase(url, max(5, min(20, n // 4)), log, headers))
        comps.check()
    lat = percentiles(kills)
    log(f"  harvester: {done:,}/{n:,} jobs finished in {elapsed:.1f}s = {done / elapsed:,.1f} jobs/s "
        f"(batches of {BATCH}, {INSTANCES} instances); kill → command p50 {lat.get('p50_ms', 0):.0f} ms, "
        f"p95 {lat.get('p95_ms', 0):.0f} ms over {len(kills)} kills")
    return {"jobs": n, "finished": done, "seconds": elapsed, "jobs_per_s": done / elapsed, "batch": BATCH,
            "instances": INSTANCES, **bulk, "kill_to_command": lat}
