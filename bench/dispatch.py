"""getJob latency at a fixed offered rate (open loop), then at 1, 50 and 500 concurrent simulated pilots
(closed loop), over a large activated backlog.

The backlog is written as commands straight through the ledger (submit + activate per job), then the
projector makes it visible to the dispatcher. Each pilot is ``cli.simulated_pilot``'s, speaking the
legacy protocol (form-encoded ``/server/panda/getJob``, as pilot3 does) in a closed loop: a new
request as soon as the previous one is answered, so the request rate is what the gateway sustains at
that concurrency. The open-loop level sends ``dispatch_open_rate`` requests a second whatever the answers,
on as many pilots as are needed, and times each from when it was due. Each level runs for a fixed time
(``dispatch_seconds``), so the run's duration does not depend on how fast the machine is. The pilots run in
this process (asyncio), on the same two cores as everything else.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import stack, workload
from bench.procs import Components, CpuMeter, infra_groups
from bench.stats import by_window, percentiles, timeline
from core import collector, db, eventloop
from core.bus import CommandSender, OutcomeWaiter
from core.config import Config
from core.states import JobStatus
from projections import queries


def missing() -> str:
    try:
        from cli import simulated_pilot  # noqa: F401
        from services.gateway import app  # noqa: F401
    except ImportError as exc:
        return f"needs the gateway and cli/simulated_pilot.py ({exc})"
    return ""


async def _level(url: str, pilots: int, seconds: float, headers: dict[str, str]) -> dict[str, Any]:
    from cli.simulated_pilot import SimOptions, SimStats, _Pilot

    stats = SimStats()
    opts = SimOptions(url=url, site=stack.SITE)
    stamps: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def pilot(i: int) -> None:
            p = _Pilot(session, opts, i, stats)
            try:
                while time.perf_counter() < t_end:
                    job = await p.get_job()
                    stamps.append(time.perf_counter())
                    if job is not None:
                        stats.received.append(int(job["PandaID"]))
            finally:
                p.close()

        t0 = time.perf_counter()
        t_end = t0 + seconds
        await asyncio.gather(*(pilot(i) for i in range(pilots)))
        elapsed = time.perf_counter() - t0
    return {"pilots": pilots, "requests": len(stats.getjob_latency), "jobs": len(stats.received),
            "unique_jobs": len(set(stats.received)), "no_job": stats.no_job, "errors": len(stats.errors),
            "error_samples": sorted({e[:200] for e in stats.errors})[:5], "seconds": elapsed,
            "requests_per_s": len(stats.getjob_latency) / elapsed,
            "latency": percentiles(stats.getjob_latency), "timeline": timeline(stamps, t0)}


async def _open_level(url: str, rate: float, seconds: float, headers: dict[str, str],
                      cap: int = 4000) -> dict[str, Any]:
    """getJob sent at a fixed ``rate`` for ``seconds`` whatever the answers (open loop, as ``bench/kill.py`` sends
    kills): each request goes out on an idle pilot's connection, or a new pilot's when none is idle (at most
    ``cap`` pilots; past that a request waits for one). Its latency runs from when it was due, not from when it
    was sent, so a gateway that falls behind shows it in full (no coordinated omission). This is what the
    target "p99 at 500 req/s" means: closed-loop pilots only ever offer what the gateway already sustains."""
    from cli.simulated_pilot import SimOptions, SimStats, _Pilot

    stats = SimStats()
    opts = SimOptions(url=url, site=stack.SITE)
    latencies: list[float] = []
    dues: list[float] = []
    stamps: list[float] = []
    idle: asyncio.Queue = asyncio.Queue()
    pilots: list[Any] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one(p: Any, due: float) -> None:
            try:
                job = await p.get_job()
                now = time.perf_counter()
                latencies.append(now - due)
                dues.append(due)
                stamps.append(now)
                if job is not None:
                    stats.received.append(int(job["PandaID"]))
            finally:
                idle.put_nowait(p)

        t0 = time.perf_counter()
        tasks = []
        n = int(rate * seconds)
        try:
            for i in range(n):
                due = t0 + i / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                if not idle.empty() or len(pilots) >= cap:
                    p = await idle.get()
                else:
                    p = _Pilot(session, opts, len(pilots), stats)
                    pilots.append(p)
                tasks.append(asyncio.create_task(one(p, due)))
            await asyncio.gather(*tasks)
        finally:
            for p in pilots:
                p.close()
        elapsed = time.perf_counter() - t0
    return {"pilots": len(pilots), "offered_per_s": rate, "requests": len(latencies), "jobs": len(stats.received),
            "unique_jobs": len(set(stats.received)), "no_job": stats.no_job, "errors": len(stats.errors),
            "error_samples": sorted({e[:200] for e in stats.errors})[:5], "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "latency": percentiles(latencies),
            "latency_by_window": by_window(latencies, dues, t0, seconds), "timeline": timeline(stamps, t0)}


def _activated(cfg: Config) -> int:
    with db.connect(cfg) as conn:
        return queries.count_by_status(conn, [JobStatus.ACTIVATED]).get(JobStatus.ACTIVATED, 0)


def run(cfg: Config, *, size: dict[str, Any], log_dir: Path, log=print) -> dict[str, Any]:
    from services.gateway.auth import dev  # the bench acts with dev tokens, as clients of `make run` do

    cfg = stack.configure(cfg)
    url = f"http://{cfg.http.host}:{cfg.http.port}"
    n = size["backlog"]
    with Components(cfg, ["ledger", "projector", "gateway"], log_dir / "dispatch") as comps:
        waiter = OutcomeWaiter(cfg)
        sender = CommandSender(cfg)
        try:
            stack.ledger_ready(waiter, sender, workload.FIRST_ID - 1)
            pids = list(range(workload.FIRST_ID, workload.FIRST_ID + n))
            stack.backlog(waiter, sender, pids, [JobStatus.ACTIVATED], site=stack.SITE, log=log)
        finally:
            sender.close()
            waiter.close()
        deadline = time.monotonic() + 600
        while _activated(cfg) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        log(f"  dispatch: {_activated(cfg):,} activated jobs in the projection")
        stack.wait_http(url)
        comps.check()
        levels = []
        meter = CpuMeter({**comps.pids(), **infra_groups()})
        meter.start()
        cpu0 = time.process_time()
        total = 0
        rate = size.get("dispatch_open_rate")
        if rate:   # first, while the backlog is whole: the closed-loop levels hand out as many jobs as they can
            with collector.settled():   # the pilots are the measuring instrument (bench/kill.py says why)
                res = eventloop.run(_open_level(url, rate, size["dispatch_seconds"],
                                                dev.headers(cfg, "bench", ("pilot",))))
            total += res["requests"]
            lat = res["latency"]
            log(f"  dispatch: open loop, {rate:g} getJob/s offered: {res['requests_per_s']:,.0f}/s answered on "
                f"{res['pilots']} pilots, p50 {lat.get('p50_ms', 0):.1f} p95 {lat.get('p95_ms', 0):.1f} "
                f"p99 {lat.get('p99_ms', 0):.1f} ms from when each was due, {res['jobs']:,} jobs handed out "
                f"({res['unique_jobs']:,} distinct), {res['no_job']} without a job, {res['errors']} errors")
            log("  dispatch: open loop, p50/p99 by fifth of the level: " + ", ".join(
                f"{w.get('p50_ms', 0):.0f}/{w.get('p99_ms', 0):.0f}" for w in res["latency_by_window"]) + " ms")
            levels.append(res)
        for pilots in size["dispatch_levels"]:
            with collector.settled():
                res = eventloop.run(_level(url, pilots, size["dispatch_seconds"],
                                           dev.headers(cfg, "bench", ("pilot",))))
            total += res["requests"]
            lat = res["latency"]
            log(f"  dispatch: {pilots:>3} pilots: {res['requests_per_s']:,.0f} getJob/s, p50 {lat.get('p50_ms', 0):.1f}"
                f" p95 {lat.get('p95_ms', 0):.1f} p99 {lat.get('p99_ms', 0):.1f} ms, {res['jobs']:,} jobs handed out "
                f"({res['unique_jobs']:,} distinct), {res['no_job']} without a job, {res['errors']} errors")
            levels.append(res)
        cpu = {**meter.stop(), "bench (pilots)": time.process_time() - cpu0}
    return {"backlog": n, "levels": levels, "cpu_s": cpu,
            "cpu_us_per_request": {k: 1e6 * v / max(total, 1) for k, v in cpu.items()}}
