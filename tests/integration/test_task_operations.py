"""JEDI's task operations over /api/v1/task/*, as panda-client calls them (``task_id``, PanDA's return codes):
one command per job of the task through the ledger, one verdict per job, ownership checked per job."""

from __future__ import annotations

import time

from gateway_support import post_json, run, start_system

from core import db
from core.bus import CommandSender
from schemas.messages import Transition


def _priorities(cfg, ids: list[int]) -> dict[int, int]:
    with db.connect(cfg) as conn:
        return dict(conn.execute("SELECT pandaid, current_priority FROM jobs WHERE pandaid = ANY(%s)",
                                 (ids,)).fetchall())


def test_task_operations_over_the_jobs_of_a_task(cfg, background):
    system = start_system(cfg, background)
    api = f"{system.url}/api/v1"
    ids = system.activated_jobs(3, jediTaskID=901)
    other = system.activated_jobs(1, jediTaskID=902)
    sender = CommandSender(cfg)
    try:   # one job of the task reached a pilot
        sender.send(Transition(PandaID=ids[2], action="dispatch", actor="pilot:test-operator"))
        sender.flush()
    finally:
        sender.close()
    system.wait_status(ids[2:], "sent")

    async def scenario():
        async with system.session() as s:   # production role: the VO's tasks
            _, ids_of = await post_json(s, f"{api}/task/get_job_ids?task_id=901", None, method="GET")
            assert ids_of == {"success": True, "message": "", "data": ids}
            _, cp = await post_json(s, f"{api}/task/change_priority", {"task_id": 901, "priority": 5})
            assert cp["success"] is True and cp["data"] is None, cp
            assert [r["job_id"] for r in cp["jobs"]] == ids and all(r["ok"] for r in cp["jobs"]), cp
            assert _priorities(cfg, ids) == dict.fromkeys(ids, 5) and _priorities(cfg, other) == {other[0]: 1000}

            _, pa = await post_json(s, f"{api}/task/pause", {"task_id": 901})
            assert pa["success"] is True and pa["data"] == 0 and len(pa["jobs"]) == 2, pa
            system.wait_status(ids[:2], "throttled")
            _, re = await post_json(s, f"{api}/task/resume", {"task_id": 901})
            assert re["data"] == 0 and [r["action"] for r in re["jobs"]] == ["unthrottle"] * 2, re
            system.wait_status(ids[:2], "activated")

            # reassign (mode kill): queued jobs back to defined, the dispatched one signalled with code 51
            _, ra = await post_json(s, f"{api}/task/reassign", {"task_id": 901, "site": "LOCAL"})
            assert ra["success"] is True and ra["data"] == 0, ra
            assert [(r["job_id"], r["action"], r["ok"]) for r in ra["jobs"]] == [
                (ids[0], "reset", True), (ids[1], "reset", True), (ids[2], "kill", True)], ra
            system.wait_status(ids[:2], "defined")
            kill_event = system.events(ids[2])[-1]
            assert kill_event["action"] == "kill_signal" and kill_event["body"]["kill_code"] == 51, kill_event

            # panda-client killTask: {"task_id"} → (True, 0); every unfinished job killed with code 50
            _, kt = await post_json(s, f"{api}/task/kill", {"task_id": 901})
            assert kt["success"] is True and kt["data"] == 0 and all(r["ok"] for r in kt["jobs"]), kt
            system.wait_status(ids[:2], "cancelled")
            assert system.status(other) == {other[0]: "activated"}   # another task is left alone

            _, nf = await post_json(s, f"{api}/task/kill", {"task_id": 123456789})
            assert nf["success"] is False and nf["data"] == 2 and nf["jobs"] == [], nf
            status, bad = await post_json(s, f"{api}/task/reassign", {"task_id": 902, "mode": "sideways"})
            assert status == 400 and "mode" in bad["message"], bad

    run(scenario())


def test_a_user_acts_only_on_the_jobs_of_a_task_they_own(cfg, background):
    system = start_system(cfg, background)
    api = f"{system.url}/api/v1"
    mine = system.activated_jobs(2, jediTaskID=903, prodUserID="alice")
    theirs = system.activated_jobs(1, jediTaskID=903, prodUserID="bob")

    async def scenario():
        async with system.session("alice", ("user",)) as s:
            _, k = await post_json(s, f"{api}/task/kill_unfinished_jobs", {"task_id": 903, "code": 3})
            assert k["success"] is True and k["data"] == [True, True, False], k
            assert k["jobs"][2]["action"] == "refused" and "alice may not" in k["jobs"][2]["reason"], k
            system.wait_status(mine, "cancelled")
            assert system.status(theirs) == {theirs[0]: "activated"}
            status, pr = await post_json(s, f"{api}/task/change_priority", {"task_id": 903, "priority": 1})
            assert status == 403 and pr["success"] is False, pr   # production only
        async with system.session("carol", ("user",)) as s:
            status, k = await post_json(s, f"{api}/task/kill", {"task_id": 903})
            assert status == 403 and k["data"] == 3, k   # none of the task's jobs is carol's

    run(scenario())


def test_a_task_kill_answers_every_job_of_a_large_task(cfg, background):
    """One verdict per job for a task of 200 jobs, sent as one batch through the ledger (prints jobs/s)."""
    system = start_system(cfg, background)
    ids = system.activated_jobs(200, jediTaskID=904)

    async def scenario():
        async with system.session() as s:
            t0 = time.monotonic()
            _, kt = await post_json(s, f"{system.url}/api/v1/task/kill", {"task_id": 904})
            return kt, time.monotonic() - t0

    kt, elapsed = run(scenario())
    print(f"task/kill over {len(ids)} jobs: {elapsed * 1000:.0f} ms, {len(ids) / elapsed:.0f} jobs/s")
    assert kt["data"] == 0 and [r["job_id"] for r in kt["jobs"]] == ids and all(r["ok"] for r in kt["jobs"]), kt
    system.wait_status(ids, "cancelled")
