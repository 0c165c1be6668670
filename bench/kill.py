"""Kill latency: from when a kill command was due to seeing the ledger's event (open loop, fixed rate:
1,000 kills a second in quick and full modes, the rate of the target).

Half of the target jobs are activated (the kill cancels them), half running (the kill becomes a
``kill_signal`` for the pilot): PanDA's two kill paths. Kills are sent at a fixed rate whatever the
answers do, so a slow ledger shows up as latency instead of being hidden by a waiting sender
(coordinated omission). The latency is measured where a caller would see the outcome: on an
``OutcomeWaiter`` reading read_committed, i.e. after the ledger's transaction commit — like the gateway, on a
partition of the replies topic the kills name (``reply_to``), or with ``[gateway] replies = false`` on the
events and rejected topics.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from bench import workload
from bench.procs import Components, CpuMeter, infra_groups
from bench.stack import backlog, ledger_ready, wait_all
from bench.stats import percentiles, timeline
from core import collector
from core.bus import CommandSender, OutcomeWaiter
from core.config import Config
from core.states import JobStatus
from schemas.messages import Rejected


def run(cfg: Config, *, n_kills: int, rate: float, log_dir: Path, log=print) -> dict[str, Any]:
    with Components(cfg, ["ledger", "projector"], log_dir / "kill") as comps:
        waiter = OutcomeWaiter(cfg)
        sender = CommandSender(cfg)
        reply_to = 0 if cfg.gateway.replies else None
        kill_waiter = waiter
        try:
            ledger_ready(waiter, sender, workload.FIRST_ID - 1)
            pids = list(range(workload.FIRST_ID, workload.FIRST_ID + n_kills))
            backlog(waiter, sender, pids, [JobStatus.ACTIVATED, JobStatus.RUNNING], log=log)
            if reply_to is not None:   # the kills are answered on a reply partition: one waiter reads, as in a gateway
                kill_waiter = OutcomeWaiter(cfg, reply_partition=reply_to)
                waiter.close()
            comps.check()
            meter = CpuMeter({**comps.pids(), **infra_groups()})
            latencies: list[float] = []
            done_at: list[float] = []
            answers = {"event": 0, "rejected": 0}

            def record(fut: Future, sent: float) -> None:
                now = time.perf_counter()
                latencies.append(now - sent)
                done_at.append(now)
                answers["rejected" if isinstance(fut.result(), Rejected) else "event"] += 1

            futures = []
            meter.start()
            # the sender is the measuring instrument: its own full collections (40-50 ms, over everything the backlog
            # left in this process) showed up as kill latency; the gateway, the real caller, runs settled
            with collector.settled():
                t0 = time.perf_counter()
                for i, pid in enumerate(pids):
                    due = t0 + i / rate
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    cmd = workload.kill(pid)
                    cmd.reply_to = reply_to
                    fut = kill_waiter.expect(cmd.id)
                    # timed from when it was due, not when it went out: a sender that falls behind the rate shows
                    fut.add_done_callback(lambda f, s=due: record(f, s))
                    sender.send(cmd)
                    futures.append(fut)
                sender.flush()
                answered = wait_all(futures, 60)
                elapsed = time.perf_counter() - t0
            cpu = meter.stop()
        finally:
            sender.close()
            waiter.close()
            kill_waiter.close()
    lat = percentiles(latencies)
    log(f"  kill: {len(latencies):,} answers at {rate:g}/s offered: p50 {lat.get('p50_ms', 0):.1f} ms, "
        f"p95 {lat.get('p95_ms', 0):.1f} ms, p99 {lat.get('p99_ms', 0):.1f} ms")
    return {
        "kills": len(pids), "offered_per_s": rate, "reply_path": reply_to is not None, "answered": answered,
        "answers": answers,
        "seconds": elapsed, "latency": lat, "cpu_s": cpu,
        "cpu_us_per_kill": {k: 1e6 * v / max(len(pids), 1) for k, v in cpu.items()},
        "timeline": timeline(done_at, t0),
    }
