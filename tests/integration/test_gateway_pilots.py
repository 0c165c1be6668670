"""Many simulated pilots at once: no PandaID is ever handed out twice; kills reach pilots."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from gateway_support import auth_headers, post_json, run, start_system

from cli.simulated_pilot import SimOptions, simulate
from core import db


def test_200_pilots_never_share_a_job(cfg, background):
    system = start_system(cfg, background)
    ids = system.activated_jobs(150)
    opts = SimOptions(url=system.url, site="LOCAL", pilots=200, jobs=2, payload_seconds=0.3, heartbeat=0.2,
                      headers=auth_headers(cfg))
    t0 = time.monotonic()
    stats = run(simulate(opts))
    elapsed = time.monotonic() - t0
    summary = stats.summary()
    print(f"200 pilots, 150 jobs: {elapsed:.1f}s {summary}")
    assert not stats.errors, stats.errors[:5]
    assert len(stats.received) == len(set(stats.received)), "a PandaID was handed to two pilots"
    assert sorted(stats.received) == sorted(ids), "every job of the backlog is handed out exactly once"
    assert stats.finished == 150
    system.wait_status(ids, "holding")
    with db.connect(cfg) as conn:
        dispatches = Counter(r[0] for r in conn.execute(
            "SELECT pandaid FROM job_events WHERE action = 'dispatch'"))
    assert set(dispatches.values()) == {1} and len(dispatches) == 150


def test_kill_reaches_simulated_pilots(cfg, background):
    """A plain kill is signalled (tobekilled → pilot reports failed 1144 → holding); a force kill (code 9)
    archives the job at once and the pilot learns it on its next heartbeat."""
    system = start_system(cfg, background)
    ids = system.activated_jobs(4)
    heartbeat = 0.5
    opts = SimOptions(url=system.url, site="LOCAL", pilots=4, jobs=1, payload_seconds=8, heartbeat=heartbeat)

    async def scenario():
        async with system.session() as s:
            sim = asyncio.create_task(simulate(opts, s))
            await asyncio.to_thread(system.wait_status, ids, "running", 30)
            t_kill = time.monotonic()
            _, plain = await post_json(s, f"{system.url}/api/v1/job/kill", {"job_ids": ids[:2]})
            _, forced = await post_json(s, f"{system.url}/api/v1/job/kill", {"job_ids": [ids[2]], "code": 9})
            assert plain["data"] == [True, True] and forced["data"] == [True]
            return await sim, t_kill

    stats, t_kill = run(scenario())
    latencies = sorted(stats.told_to_kill[pid] - t_kill for pid in ids[:3])
    print(f"kill → pilot told (heartbeat every {heartbeat}s): " + ", ".join(f"{x * 1000:.0f} ms" for x in latencies))
    assert not stats.errors, stats.errors
    assert stats.killed == 3 and stats.finished == 1
    assert max(latencies) < heartbeat + 2.0
    system.wait_status(ids[:2], "holding")
    system.wait_status([ids[2]], "cancelled")
    system.wait_status([ids[3]], "holding")
    for pid in ids[:2]:
        final = system.events(pid)[-1]
        assert final["body"]["pilot_state"] == "failed" and final["body"]["attrs"]["pilotErrorCode"] == 1144
