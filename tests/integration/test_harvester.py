"""Harvester's protocol exactly as its PandaCommunicator speaks it (POST: JSON bodies; GET: query string,
lists as repeated names like ``requests`` encodes them), over the real broker and database: a worker cycle
(fetch jobs in bulk, report workers, bulk updates, statistics, dialogs, metrics) and a kill delivered to
Harvester as a kill-worker command and acknowledged."""

from __future__ import annotations

import json
import time

import aiohttp
from gateway_support import post_json, run, start_system
from helpers import wait_until

from core import db
from projections.queries import partition_snapshot
from services.harvester import killer

H = "harvester_test_A"


async def get(s: aiohttp.ClientSession, url: str, params) -> dict:
    async with s.get(url, params=params, headers={"Accept": "application/json"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def worker(wid: int, pid: int, status: str = "running") -> dict:
    """WorkSpec.convert_to_propagate()'s fields."""
    return {"workerID": wid, "batchID": f"b{wid}", "queueName": "LOCAL", "status": status, "computingSite": "LOCAL",
            "nCore": 1, "submitTime": "datetime/2026-11-28 20:00:00.000000", "jobType": "managed",
            "resourceType": "SCORE", "nJobs": 1, "computingElement": "LOCAL", "syncLevel": 0,
            "submissionHost": "sub1", "harvesterHost": "harv1", "minRamCount": 2000, "pandaid_list": [pid]}


def update(pid: int, status: str, **extra) -> dict:
    """What update_jobs puts in job_list for one JobSpec."""
    return {"job_id": pid, "site_name": "LOCAL", "job_status": status, "job_sub_status": None, "attempt_nr": 1,
            "core_count": 1, **extra}


def test_harvester_worker_cycle_and_kill_command(cfg, background):
    system = start_system(cfg, background)
    background.start(lambda stop: killer.run_component(cfg, stop), "harvester-killer")
    ids = system.activated_jobs(4)
    api = f"{system.url}/api/v1"
    report = json.dumps({})
    measured: dict[str, float] = {}

    async def scenario():
        async with system.session() as s:
            _, hb = await post_json(s, f"{api}/harvester/heartbeat", {
                "harvester_id": H, "data": {"startTime": "datetime/2026-11-28 19:00:00.000000", "sw_version": "0.6"}})
            assert hb == {"success": True, "message": "", "data": None}
            _, acq = await post_json(s, f"{api}/pilot/acquire_jobs", {
                "site_name": "LOCAL", "node": "harv1", "prod_source_label": "managed", "computing_element": "LOCAL",
                "n_jobs": 4, "scheduler_id": f"harvester-{H}"})
            assert acq["success"] and sorted(j["PandaID"] for j in acq["data"]["jobs"]) == ids
            workers = [worker(101 + i, pid) for i, pid in enumerate(ids)]
            for _ in range(2):   # the same report twice: an upsert, nothing doubled
                _, uw = await post_json(s, f"{api}/harvester/update_workers", {"harvester_id": H, "workers": workers})
                assert uw == {"success": True, "message": "", "data": [True] * 4}
            cur = await get(s, f"{api}/harvester/get_current_worker_id", {"harvester_id": H})
            assert cur == {"success": True, "message": "", "data": 104}

            _, bulk = await post_json(s, f"{api}/pilot/update_jobs_bulk", {
                "job_list": [update(pid, "running", start_time="2026-11-28 20:01:00") for pid in ids],
                "harvester_id": H})
            assert bulk["success"] and bulk["data"] == [
                {"success": True, "message": "", "data": {"StatusCode": 0, "command": "NULL"}}] * 4
            # job/get_status as check_jobs sends it: job_ids repeated in the query string
            for _ in range(200):
                st = await get(s, f"{api}/job/get_status", [("job_ids", str(pid)) for pid in ids])
                if all(x["status"] == "running" for x in st["data"]):
                    break
            assert st["success"] and [x["status"] for x in st["data"]] == ["running"] * 4

            stats = await get(s, f"{api}/statistics/active_job_stats_by_site", {})
            assert stats["success"] and stats["data"]["LOCAL"]["running"] == 4
            assert stats["data"]["LOCAL"]["assigned"] == 0 and stats["data"]["LOCAL"]["activated"] == 0
            detailed = await get(s, f"{api}/statistics/active_job_detailed_stats_by_site", {})
            (by_label,) = detailed["data"]["LOCAL"].values()
            assert by_label["managed"]["running"] == 4
            types = await get(s, f"{api}/metaconfig/get_resource_types", {})
            assert "SCORE" in [t["resource_name"] for t in types["data"]]

            _, ws = await post_json(s, f"{api}/harvester/report_worker_statistics", {
                "harvester_id": H, "panda_queue": "LOCAL",
                "statistics": json.dumps({"managed": {"SCORE": {"running": 4, "submitted": 1}}})})
            assert ws["success"], ws
            wstats = await get(s, f"{api}/harvester/get_worker_statistics", {})
            assert wstats["data"]["LOCAL"][H]["managed"]["SCORE"] == {"running": 4, "submitted": 1}
            _, sm = await post_json(s, f"{api}/harvester/update_service_metrics", {
                "harvester_id": H, "metrics": [["2026-11-28 20:02:00.000000", "harv1", json.dumps({"cpu_pc": 3.5})]]})
            assert sm["success"], sm
            _, dg = await post_json(s, f"{api}/harvester/add_dialogs", {"harvester_id": H, "dialogs": [
                {"diagID": 1, "moduleName": "submitter", "identifier": "x", "creationTime": "2026-11-28 20:02:00.0",
                 "messageLevel": "INFO", "diagMessage": "hello"}]})
            assert dg == {"success": True, "message": "", "data": None}

            # a kill of a job whose worker is known: a command for its Harvester on the next poll
            _, nothing = await post_json(s, f"{api}/harvester/acquire_commands", {"harvester_id": H, "n_commands": 10})
            assert nothing == {"success": True, "message": "", "data": []}
            t0 = time.monotonic()
            _, kill = await post_json(s, f"{api}/job/kill", {"job_ids": [ids[3]]})
            assert kill["data"] == [True]
            for _ in range(600):
                _, cmds = await post_json(s, f"{api}/harvester/acquire_commands", {"harvester_id": H, "n_commands": 10})
                if cmds["data"]:
                    break
            measured["kill_to_command_s"] = time.monotonic() - t0
            (cmd,) = cmds["data"]
            assert cmd["command"] == "SYNC_WORKERS_KILL" and cmd["params"] == [104] and cmd["ack_requested"] is True
            _, again = await post_json(s, f"{api}/harvester/acquire_commands", {"harvester_id": H, "n_commands": 10})
            assert again["data"] == []   # retrieved once
            _, ack = await post_json(s, f"{api}/harvester/acknowledge_commands", {"command_ids": [cmd["command_id"]]})
            assert ack["success"]

            # Harvester's next bulk update: the killed job is told tobekilled, the others finish; one of them
            # reported transferring first (its own word) and still takes its final report
            _, bulk = await post_json(s, f"{api}/pilot/update_jobs_bulk", {"harvester_id": H, "job_list": [
                update(ids[3], "running"), update(ids[2], "transferring")]})
            assert [r["data"]["command"] for r in bulk["data"]] == ["tobekilled", "NULL"]
            _, bulk = await post_json(s, f"{api}/pilot/update_jobs_bulk", {"harvester_id": H, "job_list": [
                update(pid, "finished", job_output_report=report, end_time="2026-11-28 20:05:00") for pid in ids[:3]]
                + [update(ids[3], "failed", job_sub_status="cancelled", job_output_report=report)]})
            assert [(r["success"], r["data"]["StatusCode"], r["data"]["command"]) for r in bulk["data"]] == [
                (True, 0, "NULL")] * 3 + [(True, 0, "tobekilled")]

    run(scenario())
    system.wait_status(ids, "holding")
    assert [e["action"] for e in system.events(ids[2])][-2:] == ["pilot_transferring", "pilot_holding"]
    with db.connect(cfg) as conn:
        assert conn.execute("SELECT count(*) FROM harvester_workers WHERE harvester_id = %s", (H,)).fetchone()[0] == 4
        assert conn.execute("SELECT count(*) FROM harvester_worker_jobs").fetchone()[0] == 4
        assert conn.execute("SELECT status FROM harvester_commands").fetchall() == [("acknowledged",)]
    print(f"kill -> kill-worker command available to Harvester: {measured['kill_to_command_s'] * 1000:.0f} ms")


def test_kill_before_the_worker_is_reported_is_delivered_when_it_is(cfg, background):
    system = start_system(cfg, background)
    (pid,) = system.activated_jobs(1)
    api = f"{system.url}/api/v1"

    async def scenario():
        async with system.session() as s:
            _, acq = await post_json(s, f"{api}/pilot/acquire_jobs", {"site_name": "LOCAL", "n_jobs": 1})
            assert acq["data"]["jobs"][0]["PandaID"] == pid
            _, up = await post_json(s, f"{api}/pilot/update_jobs_bulk", {"harvester_id": H,
                                                                         "job_list": [update(pid, "running")]})
            assert up["data"][0]["success"]
            system.wait_status([pid], "running")
            _, kill = await post_json(s, f"{api}/job/kill", {"job_ids": [pid]})
            assert kill["data"] == [True]
            wait_until(lambda: system.events(pid)[-1]["action"] == "kill_signal", 30, 0.05, "kill recorded")
            for _ in range(200):   # the projection shows the kill a moment after the ledger recorded it
                st = await get(s, f"{api}/job/get_status", {"job_ids": pid})
                if st["data"][0]["command"] == "tobekilled":
                    break
            _, uw = await post_json(s, f"{api}/harvester/update_workers", {"harvester_id": H,
                                                                           "workers": [worker(7, pid)]})
            assert uw["data"] == [True]
            _, cmds = await post_json(s, f"{api}/harvester/acquire_commands", {"harvester_id": H, "n_commands": 5})
            assert [(c["command"], c["params"]) for c in cmds["data"]] == [("SYNC_WORKERS_KILL", [7])]

    run(scenario())


def test_the_ledgers_snapshot_remembers_who_put_a_job_into_transferring(cfg, background):
    """After a restart the ledger judges from the projection: a pilot-made transferring must read back as such."""
    system = start_system(cfg, background)
    pid, other = system.activated_jobs(2)
    api = f"{system.url}/api/v1"

    async def scenario():
        async with system.session() as s:
            _, acq = await post_json(s, f"{api}/pilot/acquire_jobs", {"site_name": "LOCAL", "n_jobs": 2})
            assert len(acq["data"]["jobs"]) == 2
            _, up = await post_json(s, f"{api}/pilot/update_jobs_bulk", {"harvester_id": H, "job_list": [
                update(pid, "running"), update(pid, "transferring"), update(other, "running")]})
            assert [r["data"]["StatusCode"] for r in up["data"]] == [0, 0, 0]

    run(scenario())
    system.wait_status([pid], "transferring")
    system.wait_status([other], "running")
    with db.connect(cfg) as conn:
        rows = {r.pandaid: r for p in range(int(cfg.kafka.partitions))
                for r in partition_snapshot(conn, cfg.kafka.events_topic, p).jobs}
    assert rows[pid].pilot_transfer is True and rows[other].pilot_transfer is False


def test_a_bulk_update_answers_each_item_in_place_with_one_binding_read_per_round(cfg, background, monkeypatch):
    """A bulk mixing good, foreign, malformed and repeated items: each answered in its place, the job's own
    items in order, and who-may-update read once per round of the bulk instead of once per item."""
    from services.gateway import access

    system = start_system(cfg, background)
    system.activated_jobs(2)
    api = f"{system.url}/api/v1"
    reads: list[list[int]] = []
    real = access.refused

    async def counted(request, caller, ids, what):
        reads.append(sorted(ids))
        return await real(request, caller, ids, what)

    monkeypatch.setattr(access, "refused", counted)

    async def scenario():
        async with system.session("harv-a", ("pilot",)) as a, system.session("harv-b", ("pilot",)) as b:
            _, got_a = await post_json(a, f"{api}/pilot/acquire_jobs", {"site_name": "LOCAL", "n_jobs": 1})
            _, got_b = await post_json(b, f"{api}/pilot/acquire_jobs", {"site_name": "LOCAL", "n_jobs": 1})
            mine, theirs = got_a["data"]["jobs"][0]["PandaID"], got_b["data"]["jobs"][0]["PandaID"]
            reads.clear()
            _, bulk = await post_json(a, f"{api}/pilot/update_jobs_bulk", {"harvester_id": H, "job_list": [
                update(mine, "running"), update(theirs, "running"), {"job_status": "running"}, "junk",
                update(mine, "transferring")]})
            return mine, theirs, bulk

    mine, theirs, bulk = run(scenario())
    answers = bulk["data"]
    assert bulk["success"] and len(answers) == 5
    assert answers[0] == {"success": True, "message": "", "data": {"StatusCode": 0, "command": "NULL"}}
    assert answers[1]["data"]["StatusCode"] == 60 and "dispatched to pilot:harv-b" in answers[1]["message"]
    assert answers[2]["data"]["StatusCode"] == 50 and "job_id" in answers[2]["message"]
    assert answers[3]["data"]["StatusCode"] == 50 and "not an object" in answers[3]["message"]
    assert answers[4] == answers[0]
    assert reads == [sorted([mine, theirs]), [mine]]   # one read per round, not one per item
    system.wait_status([mine], "transferring")
    assert system.status([theirs]) == {theirs: "sent"}
    assert [(e["action"], e["actor"]) for e in system.events(mine)][-2:] == [
        ("pilot_running", "pilot:harv-a"), ("pilot_transferring", "pilot:harv-a")]


def test_update_workers_records_a_batch_in_order_and_answers_each_worker(cfg):
    """The workers of one call are written together: a worker listed twice ends as its last record says, a record
    without a usable workerID is answered False in its place and the others are recorded."""
    import asyncio

    import psycopg

    from services.harvester import store

    async def scenario() -> tuple[list[bool], list[bool]]:
        conn = await psycopg.AsyncConnection.connect(cfg.db.url, autocommit=True)
        try:
            got = await store.upsert_workers(conn, "hb", [
                {"workerID": 1, "status": "submitted", "pandaid_list": [11]},
                {"workerID": "x", "status": "running"},
                {"workerID": 2, "status": "running", "pandaid_list": [12, "13", None]},
                {"workerID": 1, "status": "running", "pandaid_list": [11, 14]}])
            return got, await store.upsert_workers(conn, "hb", [])
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == ([True, False, True, True], [])
    with db.connect(cfg) as conn:
        assert conn.execute("SELECT worker_id, status FROM harvester_workers WHERE harvester_id = 'hb'"
                            " ORDER BY worker_id").fetchall() == [(1, "running"), (2, "running")]
        assert conn.execute("SELECT worker_id, pandaid FROM harvester_worker_jobs WHERE harvester_id = 'hb'"
                            " ORDER BY worker_id, pandaid").fetchall() == [(1, 11), (1, 14), (2, 12), (2, 13)]



def test_update_workers_batch_in_one_statement_merges_as_one_upsert_per_worker(cfg):
    """A batch of distinct workers goes in one statement; it must merge into what is stored exactly as one upsert
    per worker does: a missing field keeps the stored one, the spec is merged, a final status is kept."""
    import asyncio

    import psycopg

    from services.harvester import store

    async def scenario() -> list[bool]:
        conn = await psycopg.AsyncConnection.connect(cfg.db.url, autocommit=True)
        try:
            await store.upsert_workers(conn, "hm", [
                {"workerID": 1, "status": "running", "computingSite": "S1", "nJobs": 1, "pandaid_list": [21]},
                {"workerID": 2, "status": "finished", "computingSite": "S2", "pandaid_list": [22]}])
            return await store.upsert_workers(conn, "hm", [
                {"workerID": 1, "status": None, "batchID": "b1", "pandaid_list": [21, 21, 23]},
                {"workerID": 2, "status": "running", "computingSite": "S3"},
                {"workerID": "3", "status": "submitted"}])
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == [True, True, True]
    with db.connect(cfg) as conn:
        rows = conn.execute("SELECT worker_id, status, computing_site, n_jobs, spec->>'batchID'"
                            " FROM harvester_workers WHERE harvester_id = 'hm' ORDER BY worker_id").fetchall()
        assert rows == [(1, "running", "S1", 1, "b1"), (2, "finished", "S3", None, None),
                        (3, "submitted", None, None, None)]
        assert conn.execute("SELECT worker_id, pandaid FROM harvester_worker_jobs WHERE harvester_id = 'hm'"
                            " ORDER BY worker_id, pandaid").fetchall() == [(1, 21), (1, 23), (2, 22)]
