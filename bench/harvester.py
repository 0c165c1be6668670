"""Harvester-style bulk workload, shaped as a Harvester instance runs: its job fetcher asks
``/api/v1/pilot/acquire_jobs`` for up to 100 jobs at a time while its propagator threads report what changed,
each call a bulk of up to 100: ``pilot/update_jobs_bulk`` with every job's current state (running, then finished
with the output report) and then ``harvester/update_workers`` with their workers; the services (setupper,
activator, adder, closer…) finish the jobs. Reported beside the single-pilot lifecycle as jobs/s and CPU per job
(every component, the broker and PostgreSQL); the clock stops when the gateway reports the jobs ``finished``
(``job/get_status``).

Why this shape (Harvester's agents and their defaults, ``templates/panda/panda_harvester.cfg.rpmnew.template``):
the job fetcher, the submitter/monitor and the propagator are separate agents, so an instance fetches new jobs
while it reports earlier ones; a queue is fetched by one fetcher thread at a time (``jobFetchTime`` locks it:
one fetcher per instance here), each call for up to ``[jobfetcher] maxJobs`` (500; this gateway hands out at most
``[dispatcher] max_jobs``, 100) and at most as many as keep the queue's fetched-but-not-running jobs under its
``nQueueLimitJob``; ``[propagator] nThreads = 3`` threads each take up to ``maxJobs = 100`` jobs whose state
changed and send them in bulks of ``nJobsInBulk = 100``, then the changed workers in bulks of
``nWorkersInBulk = 100``. The payload here takes no time (a job is finished as soon as its running was
reported) and the agents do not sleep between cycles (``sleepTime`` is 60 s in production): the bench asks for
as much as the system can take.

Then the kill path Harvester adds: for jobs running on known workers, the time from ``job/kill`` being
answered to the kill-worker command being returned by ``harvester/acquire_commands`` (polled every 10 ms;
a real Harvester polls every few tens of seconds, a pilot heartbeats every 30 minutes).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import zlib
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp

from bench import lifecycle, stack
from bench.procs import Components, CpuMeter, cpu_seconds, database_backends, infra_groups
from bench.stats import percentiles
from core import collector, eventloop
from core.config import Config

INSTANCES = 2
FETCH = 100          # n_jobs per acquire_jobs: [jobfetcher] maxJobs (500) as [dispatcher] max_jobs caps it
BULK = 100           # jobs per update_jobs_bulk, workers per update_workers: [propagator] nJobsInBulk, nWorkersInBulk
PROPAGATORS = 3      # [propagator] nThreads per instance
QUEUE_LIMIT = 300    # the queue's nQueueLimitJob: fetched jobs not yet reported running, per instance
BATCH = FETCH        # (the report's "batches of")


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
    """One Harvester instance over the v1 API: a job fetcher and ``PROPAGATORS`` propagator threads (tasks)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, hid: str,
                 calls: dict[str, list[float]] | None = None):
        self.s, self.api, self.hid = session, f"{url}/api/v1", hid
        self.next_worker = 1
        self.calls = calls if calls is not None else {}   # step → seconds each call took (where the time goes)
        self.changed: deque[dict[str, Any]] = deque()      # jobs whose state the propagator has not reported yet
        self.starting = 0                                  # fetched, running not reported yet (nQueueLimitJob)
        self.wake = asyncio.Event()                        # the fetcher or the propagators have something new
        self.acquired: list[int] = []                      # jobs handed out per non-empty acquire
        self.bulk_sizes: list[int] = []                    # items per update_jobs_bulk
        self.marks: dict[str, float] = {}                  # when the first jobs were handed out, reported over

    async def post(self, path: str, body: dict[str, Any], step: str | None = None) -> Any:
        started = time.monotonic()
        async with self.s.post(f"{self.api}/{path}", json=body) as r:
            reply = await r.json(content_type=None)
        self.calls.setdefault(step or path, []).append(time.monotonic() - started)
        if not reply.get("success") and path != "pilot/acquire_jobs":
            raise RuntimeError(f"{path}: {str(reply)[:200]}")
        return reply["data"]

    async def acquire(self, n: int) -> list[dict[str, Any]]:
        data = await self.post("pilot/acquire_jobs", {"site_name": stack.SITE, "node": self.hid, "n_jobs": n,
                                                      "prod_source_label": "managed", "timeout": 5,
                                                      "scheduler_id": f"harvester-{self.hid}"})
        return data["jobs"] if data else []

    def _worker_of(self, job: dict[str, Any]) -> int:
        if "_worker" not in job:
            job["_worker"], self.next_worker = self.next_worker, self.next_worker + 1
        return job["_worker"]

    async def workers(self, jobs: list[dict[str, Any]], status: str | None = None) -> None:
        """Report one worker per job, in the job's state (or ``status``): the same worker from start to end."""
        await self.post("harvester/update_workers", {"harvester_id": self.hid, "workers": [
            {"workerID": self._worker_of(j), "status": status or j["_state"], "computingSite": stack.SITE,
             "nCore": 1, "jobType": "managed", "resourceType": "SCORE", "nJobs": 1, "pandaid_list": [j["PandaID"]]}
            for j in jobs]}, step="harvester/update_workers")

    async def bulk(self, jobs: list[dict[str, Any]], status: str | None = None, **extra: Any) -> list[dict[str, Any]]:
        """One update_jobs_bulk: each job in its own state (or ``status``), a finished one with its report."""
        items = []
        for j in jobs:
            state = status or j["_state"]
            item = {"job_id": j["PandaID"], "job_status": state, "site_name": stack.SITE,
                    "attempt_nr": j.get("attemptNr"), "core_count": 1, **extra}
            if state == "finished":
                item["end_time"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
                item["job_output_report"] = _report(j)
            items.append(item)
        self.bulk_sizes.append(len(items))
        return await self.post("pilot/update_jobs_bulk", {"harvester_id": self.hid, "job_list": items},
                               step="pilot/update_jobs_bulk")

    async def fetcher(self, stop_at: float) -> None:
        """The job fetcher of the one queue: as many jobs as keep it under its limit, then again."""
        while time.monotonic() < stop_at:
            room = min(FETCH, QUEUE_LIMIT - self.starting)
            if room <= 0:
                await self._wait()
                continue
            jobs = await self.acquire(room)
            if not jobs:
                await asyncio.sleep(0.25)
                continue
            self.acquired.append(len(jobs))
            self.marks.setdefault("first jobs handed out", time.time())
            for j in jobs:
                j["_state"] = "running"   # its worker started it (submitter, monitor: not modelled)
            self.starting += len(jobs)
            self.changed.extend(jobs)
            self.wake.set()

    async def propagator(self, stop_at: float, done: list[int]) -> None:
        """One propagator thread: the next jobs with a change, reported in one bulk, then their workers."""
        while time.monotonic() < stop_at:
            if not self.changed:
                await self._wait()
                continue
            jobs = [self.changed.popleft() for _ in range(min(BULK, len(self.changed)))]
            await self.bulk(jobs)
            await self.workers(jobs)
            finished = 0
            for j in jobs:
                if j["_state"] == "running":   # the payload takes no time: finished, reported next
                    self.starting -= 1
                    j["_state"] = "finished"
                    self.changed.append(j)
                else:
                    finished += 1
            done.append(finished)
            if finished:
                self.marks.setdefault("first finished reported", time.time())
            self.wake.set()

    async def _wait(self) -> None:
        """Until the other agents changed something (or a quarter second, to see the end of the run)."""
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), 0.25)
        except TimeoutError:
            pass

    def agents(self, stop_at: float, done: list[int]) -> list[Any]:
        return [self.fetcher(stop_at), *(self.propagator(stop_at, done) for _ in range(PROPAGATORS))]


async def _bulk_phase(url: str, n: int, seconds: float, log, headers: dict[str, str]) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150), headers=headers) as session:
        stop_at = time.monotonic() + seconds
        done: list[int] = []
        calls: dict[str, list[float]] = {}
        hs = [Harvester(session, url, f"bench_harvester_{i}", calls) for i in range(INSTANCES)]
        agents = asyncio.gather(*(a for h in hs for a in h.agents(stop_at, done)))
        submitted, ids = await lifecycle._submit(url, n, log, headers)
        while sum(done) < n and time.monotonic() < stop_at:
            await asyncio.sleep(0.02)   # the instances' own count: the clock then stops on job/get_status
        agents.cancel()
        try:
            await agents
        except asyncio.CancelledError:
            pass
    acquired = [k for h in hs for k in h.acquired]
    marks = {k: min(h.marks[k] for h in hs if k in h.marks) for k in {k for h in hs for k in h.marks}}
    sizes = [k for h in hs for k in h.bulk_sizes]
    return {"reported_finished": sum(done), "batches": len(acquired), "acquired": sum(acquired), "ids": ids,
            "agent_marks": marks, "submitted_at": submitted,
            "bulk_items": sum(sizes), "bulk_items_mean": sum(sizes) / max(1, len(sizes)),
            "call_latency": {step: percentiles(xs) for step, xs in sorted(calls.items())}}


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


def _verdict_sums(url: str, headers: dict[str, str]) -> dict[str, tuple[float, float]]:
    """command type → (seconds, count) the gateway has waited for the ledger's verdicts (its /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(urllib.request.Request(f"{url}/metrics", headers=headers), timeout=10) as r:
        text = r.read().decode()
    sums: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "pandaes_command_verdict_seconds":
            continue
        for sample in family.samples:
            both = sums.setdefault(sample.labels.get("command", "?"), [0.0, 0.0])
            if sample.name.endswith("_sum"):
                both[0] = sample.value
            elif sample.name.endswith("_count"):
                both[1] = sample.value
    return {k: (v[0], v[1]) for k, v in sums.items()}


def _verdict_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Mean verdict wait per command type between two readings (a dispatch waits alone; a bulk's updates wait
    together, each counted with the wait of its round)."""
    out: dict[str, Any] = {}
    for cmd, (total, n) in after.items():
        t0, n0 = before.get(cmd, (0.0, 0.0))
        if n > n0:
            out[cmd] = {"n": int(n - n0), "mean_ms": 1000 * (total - t0) / (n - n0)}
    return out


class _DatabaseCpu:
    """CPU of this system's own PostgreSQL backends (the server's figure includes every database on it, and other
    work shares this machine's server). Backends opened during the run count whole; one that ended during the run
    is lost (the components keep their connections, so that is rare; ``ended`` says how many)."""

    def __init__(self, dbname: str):
        self.dbname = dbname
        self.start = {pid: cpu_seconds(pid) for pid in database_backends(dbname)}

    def stop(self) -> tuple[float, int]:
        now = {pid: cpu_seconds(pid) for pid in database_backends(self.dbname)}
        used = sum(max(0.0, cpu - self.start.get(pid, 0.0)) for pid, cpu in now.items())
        return used, len(set(self.start) - set(now))


def middle_rate(finish_times: list[float], cut: float = 0.1) -> float:
    """Jobs/s between the ``cut`` and the ``1 - cut`` quantile of the jobs' finish times: the run without its
    head (the first submissions and activations) and its tail (the last finals through the adder, the clock's
    last status read), which weigh a quarter of a run that lasts a few seconds. Pure."""
    xs = sorted(finish_times)
    lo, hi = int(len(xs) * cut), int(len(xs) * (1 - cut)) - 1
    if hi - lo < 2 or xs[hi] <= xs[lo]:
        return 0.0
    return (hi - lo) / (xs[hi] - xs[lo])


def run(cfg: Config, *, size: dict[str, Any], log_dir: Path, log=print) -> dict[str, Any]:
    from services.gateway.auth import dev  # Harvester instances act with a dev token (production and pilot)

    cfg = stack.configure(cfg)
    headers = dev.headers(cfg, "bench-harvester", ("production", "pilot"))
    url = f"http://{cfg.http.host}:{cfg.http.port}"
    n, seconds = size["jobs"], size["lifecycle_seconds"]
    # the components of the lifecycle (the reactors host runs the Harvester killer too)
    with Components(cfg, lifecycle.services(cfg), log_dir / "harvester") as comps:
        stack.wait_http(url)
        stack.wait_settled(cfg, log=log)   # the ledger and the services' reader hold their partitions
        time.sleep(5)  # then a quiet spell: the workload comes to a system that was idle (its consumers dozing)
        comps.check()
        meter = CpuMeter({**comps.pids(), **infra_groups()})
        meter.start()
        cpu0 = time.process_time()
        own_db = _DatabaseCpu(cfg.db.url.rsplit("/", 1)[1].split("?")[0])
        t0 = time.time()
        verdicts0 = _verdict_sums(url, headers)
        with collector.settled():   # the instances are the measuring instrument (bench/kill.py says why)
            bulk = eventloop.run(_bulk_phase(url, n, seconds, log, headers))
        # the clock stops when the gateway reports finished what the instances reported finished
        done = lifecycle.wait_finished(url, bulk.pop("ids"), bulk["reported_finished"], 30, headers)
        elapsed = time.time() - t0
        cpu = {**meter.stop(), "bench (harvester instances, submit)": time.process_time() - cpu0}
        verdicts = _verdict_means(verdicts0, _verdict_sums(url, headers))
        db_cpu, db_ended = own_db.stop()
        with collector.settled():
            kills = eventloop.run(_kill_phase(url, max(5, min(20, n // 4)), log, headers))
        comps.check()
    lat = percentiles(kills)
    per_acquire = bulk["acquired"] / max(1, bulk["batches"])   # [dispatcher] max_jobs caps a batch
    stages = lifecycle._stages(cfg)   # where a job's time went between its events (waits on a service, the ledger)
    finishes = sorted(lifecycle._from_events(cfg)[1])
    steady = middle_rate(finishes)
    marks = {q: finishes[min(len(finishes) - 1, int(len(finishes) * q))] - t0 for q in (0.0, 0.1, 0.5, 0.9, 1.0)
             } if finishes else {}
    log("  harvester: time before each event, p50/p95 s: " + "; ".join(
        f"{k} {v['p50_ms'] / 1000:.2f}/{v['p95_ms'] / 1000:.2f}" for k, v in stages.items() if v.get("n")))
    log(f"  harvester: {done:,}/{n:,} jobs finished in {elapsed:.1f}s = {done / elapsed:,.1f} jobs/s "
        f"(up to {FETCH} asked per acquire, {per_acquire:.0f} handed out on average; {INSTANCES} instances, "
        f"{PROPAGATORS} propagators each, {bulk['bulk_items_mean']:.0f} jobs per bulk update on average; "
        f"{steady:,.1f} jobs/s from the 10th to the 90th percentile of the finish times); "
        f"kill → command p50 {lat.get('p50_ms', 0):.0f} ms, "
        f"p95 {lat.get('p95_ms', 0):.0f} ms over {len(kills)} kills")
    log("    seconds after the start: last submission answered {:.2f}, {}; jobs finished (events): {}".format(
        bulk["submitted_at"] - t0, ", ".join(f"{k} {at - t0:.2f}" for k, at in sorted(bulk["agent_marks"].items())),
        ", ".join(f"{'first' if q == 0 else 'last' if q == 1 else f'{q:.0%}'} {at:.2f}" for q, at in marks.items())))
    log(f"    PostgreSQL, this database's backends only: {1e6 * db_cpu / max(done, 1):,.0f} µs per job"
        f"{f' ({db_ended} backends ended during the run, not counted)' if db_ended else ''}")
    log("    ledger verdict wait seen by the gateway, mean: " + ", ".join(
        f"{cmd} {v['mean_ms']:.0f} ms (n={v['n']})" for cmd, v in sorted(verdicts.items())))
    for step, p in bulk["call_latency"].items():
        log(f"    {step}: {p.get('n', 0)} calls, p50 {p.get('p50_ms', 0):.0f} ms, p95 {p.get('p95_ms', 0):.0f} ms, "
            f"mean {p.get('mean_ms', 0):.0f} ms")
    return {"jobs": n, "finished": done, "seconds": elapsed, "jobs_per_s": done / elapsed,
            "steady_jobs_per_s": steady, "finished_after_s": {f"{q:g}": at for q, at in marks.items()},
            "batch": BATCH,
            "instances": INSTANCES, "propagators": PROPAGATORS, "bulk": BULK, "queue_limit": QUEUE_LIMIT,
            "jobs_per_acquire": per_acquire, **bulk, "kill_to_command": lat, "stages": stages,
            "verdict_wait": verdicts, "postgres_this_db_us_per_job": 1e6 * db_cpu / max(done, 1),
            "postgres_backends_ended": db_ended,
            "cpu_s": cpu,
            "cpu_us_per_job": {k: 1e6 * v / max(done, 1) for k, v in cpu.items()},
            "finished_as": "job/get_status through the gateway"}
