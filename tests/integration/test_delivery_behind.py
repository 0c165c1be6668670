"""The delivered mark runs behind getJob's handler (services/gateway/dispatcher.py ``delivered_behind``): a
client that sends its next request on the same connection as soon as it has its answer (a proxy's pool,
Harvester) is served while the mark's commit is still under way; the lease is delivered once it is done."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
from gateway_support import post_form, run, start_system
from helpers import wait_until

from core import db
from services.gateway import leases

GETJOB = {"siteName": "LOCAL", "prodSourceLabel": "managed", "node": "wn1"}


def _lease_state(cfg, pid: int) -> str | None:
    with db.connect(cfg) as conn:
        row = conn.execute("SELECT state FROM dispatch_leases WHERE pandaid = %s", (pid,)).fetchone()
    return row[0] if row else None


def test_the_next_request_on_a_connection_does_not_wait_for_the_mark(cfg, background, monkeypatch):
    system = start_system(cfg, background)
    ids = system.activated_jobs(2)
    disk = threading.Event()          # the mark's commit waits for it: a disk that does not answer
    marks: list[list[tuple[int, str]]] = []
    write = leases.mark_delivered

    async def slow_mark(conn, held, ttl):
        marks.append(list(held))
        await asyncio.to_thread(disk.wait, 60)
        return await write(conn, held, ttl)

    monkeypatch.setattr(leases, "mark_delivered", slow_mark)

    async def two_getjobs_on_one_connection() -> list[int]:
        got = []
        async with system.session(connector=aiohttp.TCPConnector(limit=1)) as s:
            for _ in range(2):
                status, job = await asyncio.wait_for(post_form(s, f"{system.url}/server/panda/getJob", GETJOB), 30)
                assert status == 200 and job["StatusCode"] == 0, job
                got.append(job["PandaID"])
        return got

    try:
        got = run(two_getjobs_on_one_connection())
        assert sorted(got) == sorted(ids)
        assert not disk.is_set() and [pid for pid, _ in marks[0]] == [got[0]]   # answered while the first mark waits
        assert _lease_state(cfg, got[0]) == "claimed"
    finally:
        disk.set()
    wait_until(lambda: all(_lease_state(cfg, pid) == "delivered" for pid in got), 30, 0.05,
               "both leases delivered once the disk answers")
