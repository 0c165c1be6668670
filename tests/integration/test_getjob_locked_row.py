"""getJob while the projector holds the only activated job's row (its transaction applying another event of
that job, e.g. a priority change): the pilot gets the job once the projector commits, not "no jobs".

Why this was a flake: candidates are read with ``FOR NO KEY UPDATE SKIP LOCKED`` so that concurrent pilots
spread over the candidates; a row the projector is updating is locked too, so the only activated job was
skipped and the pilot was answered "no jobs in PanDA" (StatusCode 20)."""

from __future__ import annotations

import asyncio
import threading

from gateway_support import post_form, run, start_system
from helpers import wait_until

from core import db


def _waiting_on_a_lock(cfg) -> bool:
    with db.connect(cfg) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND wait_event_type = 'Lock'").fetchone()[0] > 0


def test_getjob_waits_for_the_projector_instead_of_answering_no_jobs(cfg, background):
    system = start_system(cfg, background)
    (pid,) = system.activated_jobs(1)
    holder = db.connect(cfg)
    # what the projector's transaction does to the row while it applies the job's next event
    holder.execute("UPDATE jobs SET modification_time = modification_time WHERE pandaid = %s", (pid,))
    answered = threading.Event()

    def release_once_waited() -> None:
        try:   # released once getJob waits for the row (or has answered without waiting: the bug)
            wait_until(lambda: answered.is_set() or _waiting_on_a_lock(cfg), 60, 0.05, "getJob waiting for the row")
        finally:
            holder.commit()

    async def scenario():
        waiter = asyncio.get_running_loop().run_in_executor(None, release_once_waited)
        async with system.session() as s:
            _, job = await post_form(s, f"{system.url}/server/panda/getJob", {"siteName": "LOCAL", "node": "wn1"})
        answered.set()
        await waiter
        return job

    try:
        job = run(scenario())
    finally:
        holder.close()
    assert job["StatusCode"] == 0 and job["PandaID"] == pid, job
