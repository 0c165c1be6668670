"""The gateway against a real broker and database: pilot protocol, flow, kill, duplicates, openapi."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from gateway_support import post_form, post_json, run, start_system

from services.gateway import openapi

ROOT = Path(__file__).resolve().parents[2]


def test_pilot_flow_getjob_to_finished(cfg, background):
    system = start_system(cfg, background)
    (pid,) = system.activated_jobs(1)
    base = f"{system.url}/server/panda"

    async def scenario():
        async with system.session() as s:
            t0 = time.monotonic()
            status, job = await post_form(s, f"{base}/getJob", {
                "siteName": "LOCAL", "computingElement": "LOCAL", "prodSourceLabel": "managed",
                "diskSpace": 10000, "mem": 24000, "node": "wn1", "cpu": 2445.4, "workingGroup": "",
                "allowOtherCountry": "False"})
            getjob_latency = time.monotonic() - t0
            assert status == 200 and job["StatusCode"] == 0, job
            assert job["PandaID"] == pid and job["jobPars"] == f"hello 1 0 out.{pid}.txt"
            assert job["transformation"].endswith("payload.sh") and job["attemptNr"] == 1
            assert job["outFiles"] == f"log.{pid}.tgz,out.{pid}.txt"
            assert job["logFile"] == f"log.{pid}.tgz" and job["scopeOut"] == "test" and job["scopeLog"] == "test"
            assert job["ddmEndPointOut"] == "LOCAL_DISK,LOCAL_DISK" and job["coreCount"] == 1
            # nothing else to hand out
            status, none = await post_form(s, f"{base}/getJob", {"siteName": "LOCAL", "node": "wn2"})
            assert none["StatusCode"] == 20
            common = {"jobId": pid, "attemptNr": 1, "node": "wn1", "siteName": "LOCAL",
                      "pilotID": "gtag|PR|3.7.0.36", "schedulerID": "unknown", "timestamp": "2026-11-22T19:26:17+00:00"}
            for state in ("starting", "running", "running"):
                _, r = await post_form(s, f"{base}/updateJob", {**common, "state": state,
                                                                 "startTime": "1795375577.0047703", "coreCount": 1})
                assert r == {"StatusCode": 0, "command": "NULL"}, r
            report = {f"out.{pid}.txt": {"guid": "", "fsize": 30, "adler32": "0a1b2c3d", "surl": "/o/out"},
                      f"log.{pid}.tgz": {"guid": job["logGUID"], "fsize": 100, "adler32": "01020304", "surl": "/o/l"}}
            final = {**common, "state": "finished", "xml": json.dumps(report), "metaData": '{"exitCode": 0}',
                     "pilotErrorCode": "0", "transExitCode": "0", "exeErrorCode": "0", "endTime": "1795375600.5",
                     "pilotTiming": "1|0|5|1|0|0", "cpuConsumptionTime": "3.5", "maxRSS": "1234"}
            _, r = await post_form(s, f"{base}/updateJob", final)
            assert r == {"StatusCode": 0, "command": "NULL"}, r
            _, dup = await post_form(s, f"{base}/updateJob", final)
            assert dup["StatusCode"] == 0 and dup["command"] == "alreadydone", dup
            return getjob_latency

    latency = run(scenario())
    print(f"getJob latency (one job, idle system): {latency * 1000:.0f} ms")
    system.wait_status([pid], "holding")
    events = system.events(pid)
    assert [e["to_state"] for e in events] == ["defined", "activated", "sent", "starting", "running", "running",
                                               "holding"]
    # the actor is the authenticated identity, whatever node or pilotID the pilot sends
    assert events[2]["actor"] == "pilot:test-operator" and events[2]["body"]["attrs"]["modificationHost"] == "wn1"
    assert all(e["actor"] == "pilot:test-operator" for e in events[3:])
    last = events[-1]["body"]
    assert last["pilot_state"] == "finished" and json.loads(last["job_output_report"])[f"log.{pid}.tgz"]["fsize"] == 100
    assert last["attrs"]["cpuConsumptionTime"] == 3 and last["attrs"]["maxRSS"] == 1234
    assert last["attrs"]["endTime"].startswith("2026-11-22T")


def test_kill_reaches_heartbeat_as_tobekilled(cfg, background):
    system = start_system(cfg, background)
    (pid,) = system.activated_jobs(1)
    base = f"{system.url}/server/panda"

    async def scenario():
        async with system.session() as s:
            _, job = await post_form(s, f"{base}/getJob", {"siteName": "LOCAL", "node": "wn1"})
            assert job["PandaID"] == pid
            hb = {"jobId": pid, "attemptNr": 1, "node": "wn1", "state": "running"}
            assert (await post_form(s, f"{base}/updateJob", hb))[1]["command"] == "NULL"
            t_kill = time.monotonic()
            _, killed = await post_json(s, f"{system.url}/api/v1/job/kill", {"job_ids": [pid]})
            assert killed == {"success": True, "message": "", "data": [True]}
            # heartbeats every 0.2 s: measure until the pilot is told
            while True:
                _, r = await post_form(s, f"{base}/updateJob", hb)
                if r["command"] == "tobekilled":
                    break
                await asyncio.sleep(0.2)
            latency = time.monotonic() - t_kill
            final = {**hb, "state": "failed", "pilotErrorCode": "-1144", "transExitCode": "240",
                     "pilotErrorDiag": "This job was killed by panda server", "xml": "{}"}
            _, r = await post_form(s, f"{base}/updateJob", final)
            assert r["StatusCode"] == 0 and r["command"] == "tobekilled", r
            _, status = await post_json(s, f"{system.url}/api/v1/job/get_status", {"job_ids": [pid, 999999]})
            assert status["data"][1] == {"status": "unknown", "command": "tobekilled"}
            return latency

    latency = run(scenario())
    print(f"kill → pilot heartbeat reply latency (0.2 s heartbeats): {latency * 1000:.0f} ms")
    system.wait_status([pid], "holding")
    events = system.events(pid)
    kill = next(e for e in events if e["action"] == "kill_signal")
    assert kill["actor"] == "user:test-operator" and kill["body"]["attrs"]["commandToPilot"] == "tobekilled"
    assert events[-1]["action"] == "pilot_holding" and events[-1]["body"]["pilot_state"] == "failed"
    assert events[-1]["body"]["attrs"]["pilotErrorCode"] == 1144


def test_openapi_served_equals_checked_in(cfg, background):
    system = start_system(cfg, background)

    async def fetch():
        async with system.session() as s, s.get(f"{system.url}/api/v1/openapi.json") as resp:
            return resp.status, await resp.json()

    status, served = run(fetch())
    checked_in = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert status == 200
    assert served == checked_in == json.loads(openapi.text()), \
        "docs/openapi.json is stale: python -m services.gateway.openapi > docs/openapi.json"
