"""The event service against the real broker and database: ranges defined at submission by the reactor,
acquired by Harvester (v1) and pilot3 (legacy) without ever handing a range out twice, reported in both
versions of the update, and every change replayable into the current state. Only the identity the job was
dispatched to may take or report its ranges."""

from __future__ import annotations

import asyncio
import json

from gateway_support import post_form, post_json, run, start_system
from helpers import wait_until

from core import db
from core.bus import CommandSender
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Submit, Transition
from services.eventservice import definer, ranges, store

PILOT = ("pilot-es", ("pilot",))          # the identity the job is dispatched to
OTHER = ("pilot-other", ("pilot",))       # another pilot: may take or report none of its ranges


def submit_es_job(cfg, n_events: int) -> int:
    """Submit an event-service job and activate it (the reactor defines its ranges at submission)."""
    with db.connect(cfg) as conn:
        (pid,) = conn.execute("SELECT nextval('pandaid_seq')").fetchone()
    sender = CommandSender(cfg)
    try:
        sender.send(Submit(PandaID=pid, actor="test", job=JobSpec(
            computingSite="LOCAL", prodSourceLabel="managed", attemptNr=1, eventService=1, nEvents=n_events,
            jediTaskID=42, jobsetID=3, Files=[FileSpec(lfn="EVNT.01.pool.root", type="input", GUID="g-01",
                                                        scope="mc", fileID=7)])))
        sender.send(Transition(PandaID=pid, action="activate", actor="test"))
        sender.flush()
    finally:
        sender.close()
    return pid


def dispatched_es_job(cfg, system, n_events: int) -> int:
    """An event-service job with its ranges defined, dispatched to PILOT by getJob."""
    pid = submit_es_job(cfg, n_events)
    with db.connect(cfg) as conn:
        wait_until(lambda: len(store.statuses(conn, pid)) == n_events, 30, 0.05, "ranges defined")
    system.wait_status([pid], "activated")

    async def get_job():
        async with system.session(*PILOT) as s:
            _, job = await post_form(s, f"{system.url}/server/panda/getJob", {"siteName": "LOCAL", "node": "wn-es"})
            assert job["StatusCode"] == 0 and job["PandaID"] == pid, job

    run(get_job())
    return pid


def test_event_ranges_are_defined_handed_out_once_and_replayable(cfg, background):
    system = start_system(cfg, background)
    background.start(lambda stop: definer.run_component(cfg, stop), "event-ranges")
    pid = dispatched_es_job(cfg, system, 12)
    api, legacy = f"{system.url}/api/v1", f"{system.url}/server/panda"

    async def scenario():
        async with system.session(*PILOT) as s:
            async with s.get(f"{api}/event/get_available_event_range_count",
                             params={"job_id": pid, "jobset_id": 3, "task_id": 42}) as r:
                assert (await r.json())["data"] == 12
            # Harvester's get_event_ranges and pilot3's getEventRanges at the same time
            acquisitions = await asyncio.gather(
                *(post_json(s, f"{api}/event/acquire_event_ranges",
                            {"job_id": pid, "task_id": 42, "jobset_id": 3, "n_ranges": 3}) for _ in range(3)),
                post_form(s, f"{legacy}/getEventRanges", {"pandaID": pid, "jobsetID": 3, "taskID": 42,
                                                          "nRanges": 5}))
            got = [r["eventRangeID"] for _, a in acquisitions[:3] for r in a["data"]["eventRanges"]]
            got += [r["eventRangeID"] for r in acquisitions[3][1]["eventRanges"]]
            assert len(got) == len(set(got)) == 12, got         # all handed out, none twice
            _, empty = await post_json(s, f"{api}/event/acquire_event_ranges", {"job_id": pid, "n_ranges": 3})
            assert empty["data"] == {"StatusCode": 0, "eventRanges": []}
            first = acquisitions[0][1]["data"]["eventRanges"][0]
            assert first["LFN"] == "EVNT.01.pool.root" and first["GUID"] == "g-01" and first["scope"] == "mc"
            assert first["lastEvent"] == first["startEvent"]

            # Harvester's update (version 1: ranges grouped with their zip file)
            done, rest = got[:6], got[6:]
            _, up = await post_json(s, f"{api}/event/update_event_ranges", {"version": 1, "event_ranges": json.dumps(
                [{"zipFile": {"lfn": "z.zip"}, "eventRanges": [{"eventRangeID": r, "eventStatus": "finished"}
                                                                for r in done]}])})
            assert up["success"] and up["data"]["StatusCode"] == 0 and up["data"]["Returns"] == [True] * 6
            # pilot3's legacy update (version 0), one range reported twice and one bogus id
            _, lup = await post_form(s, f"{legacy}/updateEventRanges", {"version": 0, "eventRanges": json.dumps(
                [{"eventRangeID": rest[0], "eventStatus": "running"},
                 {"eventRangeID": rest[0], "eventStatus": "failed"},
                 {"eventRangeID": done[0], "eventStatus": "running"},
                 {"eventRangeID": "1-2-3-4-5", "eventStatus": "finished"}])})
            assert lup["StatusCode"] == 0 and lup["Returns"] == [True, True, False, False]

    run(scenario())
    with db.connect(cfg) as conn:
        state = store.statuses(conn, pid)
        assert ranges.fold(store.changes(conn, pid)) == state      # the changes replay into the state
    assert sorted(state.values()).count("finished") == 6 and list(state.values()).count("failed") == 1
    assert list(state.values()).count("sent") == 5
    # every change after the definition was the dispatched pilot's
    assert {a for _, before, _, a in _actors(cfg, pid) if before is not None} == {f"pilot:{PILOT[0]}"}


def _actors(cfg, pid: int) -> list[tuple[str, str | None, str, str]]:
    with db.connect(cfg) as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT range_id, from_status, to_status, actor FROM event_range_changes WHERE pandaid = %s"
            " ORDER BY range_id, seq", (pid,))]


def test_only_the_pilot_the_job_went_to_takes_or_reports_its_ranges(cfg, background):
    system = start_system(cfg, background)
    background.start(lambda stop: definer.run_component(cfg, stop), "event-ranges")
    pid = dispatched_es_job(cfg, system, 4)
    api, legacy = f"{system.url}/api/v1", f"{system.url}/server/panda"
    why = f"dispatched to pilot:{PILOT[0]}, not to pilot:{OTHER[0]}"

    async def scenario():
        async with system.session(*PILOT) as mine, system.session(*OTHER) as other:
            _, took = await post_json(mine, f"{api}/event/acquire_event_ranges", {"job_id": pid, "n_ranges": 2})
            taken = [r["eventRangeID"] for r in took["data"]["eventRanges"]]
            assert len(taken) == 2, took
            with db.connect(cfg) as conn:
                before = (store.statuses(conn, pid), store.changes(conn, pid))

            status, v1 = await post_json(other, f"{api}/event/acquire_event_ranges", {"job_id": pid, "n_ranges": 2})
            assert status == 403 and not v1["success"] and why in v1["message"], v1
            assert v1["data"] == {"StatusCode": 60, "eventRanges": []}
            status, old = await post_form(other, f"{legacy}/getEventRanges", {"pandaID": pid, "nRanges": 2})
            assert status == 403 and old["StatusCode"] == 60 and why in old["errorDialog"], old

            report = [{"eventRangeID": r, "eventStatus": "finished"} for r in taken]
            status, v1 = await post_json(other, f"{api}/event/update_event_ranges",
                                         {"version": 0, "event_ranges": json.dumps(report)})
            assert status == 403 and why in v1["message"] and v1["data"]["StatusCode"] == 60, v1
            assert v1["data"]["Returns"] == [False, False]
            status, old = await post_form(other, f"{legacy}/updateEventRanges",
                                          {"version": 0, "eventRanges": json.dumps(report)})
            assert status == 403 and old["StatusCode"] == 60 and why in old["errorDialog"], old

            with db.connect(cfg) as conn:         # nothing of the job's ranges changed
                assert (store.statuses(conn, pid), store.changes(conn, pid)) == before
            # the pilot the job went to still reports its own
            _, up = await post_json(mine, f"{api}/event/update_event_ranges",
                                    {"version": 0, "event_ranges": json.dumps(report)})
            assert up["data"]["Returns"] == [True, True], up

    run(scenario())
    with db.connect(cfg) as conn:
        assert sorted(store.statuses(conn, pid).values()) == ["finished", "finished", "ready", "ready"]
    assert f"pilot:{OTHER[0]}" not in {a for *_, a in _actors(cfg, pid)}
