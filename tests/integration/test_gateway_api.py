"""The /api/v1 envelope, panda-client's calls, the cache, and every kind of bad request (never a 500)."""

from __future__ import annotations

import asyncio
import gzip
import json

import aiohttp
from gateway_support import TRF, auth_headers, post_form, post_json, run, start_system

from schemas.jobspec import FileSpec, JobSpec, jobs_to_client_json


def client_jobs(n: int) -> str:
    jobs = [JobSpec(jobDefinitionID=1, creationHost="vm", transformation=TRF, prodSourceLabel="user",
                    currentPriority=1000, jobName=f"client.test.job.{i}", computingSite="LOCAL",
                    jobParameters="hello 5 0 out.txt", destinationDBlock="test.out", destinationSE="LOCAL_DISK",
                    VO="test", coreCount=1, jobsetID=7,
                    Files=[FileSpec(lfn=f"log.client.{i}.tgz", type="log", dataset="test.log",
                                    destinationDBlock="test.log", destinationSE="LOCAL_DISK", scope="test")])
            for i in range(n)]
    return jobs_to_client_json(jobs)


def test_client_api_calls(cfg, background):
    system = start_system(cfg, background)
    api = f"{system.url}/api/v1"
    user = auth_headers(cfg, "test-user", ("user",))   # submits; the operator session does the rest

    async def scenario():
        async with system.session() as s:
            async with s.get(f"{api}/system/is_alive", headers={"Accept": "application/json"}) as r:
                assert r.status == 200 and await r.json() == {"success": True, "message": "alive", "data": None}
            async with s.post(f"{api}/job/submit", json={"jobs": client_jobs(2)},
                              headers=user) as r:
                sub = await r.json()
            assert sub["success"] is True and sub["message"] == "", sub
            (p1, d1, x1), (p2, _, _) = sub["data"]
            assert d1 == 1 and x1 == {"jobsetID": 7} and p2 == p1 + 1
            system.wait_status([p1, p2], "defined")
            for method in ("POST", "GET"):
                if method == "GET":
                    async with s.get(f"{api}/job/get_description", params={"job_ids": f"[{p1}, 1]"}) as r:
                        desc = await r.json()
                else:
                    _, desc = await post_json(s, f"{api}/job/get_description_incl_archive", {"job_ids": [p1, 1]})
                assert desc["success"] and desc["data"][1] is None
                job = desc["data"][0]
                assert job["PandaID"] == p1 and job["jobStatus"] == "defined" and job["jobName"] == "client.test.job.0"
                assert job["prodUserID"] == "test-user" and job["maxCpuCount"] == "NULL"
                assert job["creationTime"]["__datetime__"] and job["Files"][0]["lfn"] == "log.client.0.tgz"
                assert job["Files"][0]["rowID"] == "NULL" and job["Files"][0]["PandaID"] == p1
            # debug mode and commands reach a pilot's heartbeat
            _, dm = await post_json(s, f"{api}/job/set_debug_mode", {"job_id": p1, "mode": True})
            assert dm == {"success": True, "message": "done", "data": None}
            _, sc = await post_json(s, f"{api}/job/set_command", {"job_id": p1, "command": "ls -l"})
            assert sc["success"] is True
            for _ in range(100):   # the projection lags the ledger's verdict a little
                _, st = await post_json(s, f"{api}/job/get_status", {"job_ids": [p1]})
                if st["data"] == [{"status": "defined", "command": "debug,ls -l"}]:
                    break
                await asyncio.sleep(0.1)
            assert st["data"] == [{"status": "defined", "command": "debug,ls -l"}], st
            _, re = await post_json(s, f"{api}/job/reassign", {"job_ids": [p2]})
            assert re == {"success": True, "message": "", "data": None}
            _, k = await post_json(s, f"{api}/job/kill", {"job_ids": [p2, 999999], "code": 3})
            assert k == {"success": True, "message": "", "data": [True, False]}
            _, k = await post_json(s, f"{api}/job/kill", {"job_ids": [p2]})
            assert k["data"] == [False]   # already cancelled
            _, ps = await post_json(s, f"{api}/pilot/get_job_status", {"job_ids": [p1, 999999]})
            assert ps["data"][1] == {"job_id": 999999, "status": "not found", "attempt_number": 0}
            # legacy status calls
            _, gs = await post_form(s, f"{system.url}/server/panda/getStatus", {"ids": f"{p1} 999999"})
            assert gs == {"StatusCode": 0, "status": "defined+notfound", "attemptNr": "0+0"}
            _, cs = await post_form(s, f"{system.url}/server/panda/checkJobStatus", {"ids": f"{p1},999999"})
            assert cs["data"] == [{"status": "defined", "command": "debug,ls -l"},
                                  {"status": "unknown", "command": "tobekilled"}]
            # cache: upload, download, refusals
            form = aiohttp.FormData()
            form.add_field("file", b"sandbox bytes", filename="sandbox.tar.gz")
            async with s.post(f"{api}/file_server/upload_cache_file", data=form) as r:
                up = await r.json()
                assert r.status == 200 and up["success"] and up["data"]["file_size"] == 13
            async with s.get(f"{system.url}/cache/sandbox.tar.gz") as r:
                assert r.status == 200 and await r.read() == b"sandbox bytes"
            form = aiohttp.FormData()
            form.add_field("file", b"x", filename="../../etc/passwd")
            async with s.post(f"{api}/file_server/upload_cache_file", data=form) as r:
                assert r.status == 200 or r.status == 400
                body = await r.json()
                assert body["success"] is False or body["data"]["file_name"] == "passwd"
            async with s.get(f"{system.url}/cache/..%2Fsecret") as r:
                assert r.status in (400, 404)
            async with s.get(f"{system.url}/cache/schedconfig/LOCAL.all.json") as r:
                qd = await r.json()
                assert qd["state"] == "ACTIVE" and qd["panda_resource"] == "LOCAL" and "mv" in qd["copytools"]
            async with s.get(f"{system.url}/cache/schedconfig/NOPE.all.json") as r:
                assert r.status == 404
            async with s.get(f"{system.url}/cache/ddmendpoints.json") as r:
                assert r.status == 200 and isinstance(await r.json(), dict)
            async with s.get(f"{system.url}/server/panda/isAlive") as r:
                assert await r.text() == "alive=yes"
            return p1

    p1 = run(scenario())
    events = system.events(p1)
    assert events[0]["actor"] == "user:test-user"


def test_v1_pilot_calls(cfg, background):
    system = start_system(cfg, background)
    ids = system.activated_jobs(2)
    api = f"{system.url}/api/v1/pilot"

    async def scenario():
        async with system.session() as s:
            _, acq = await post_json(s, f"{api}/acquire_jobs", {"site_name": "LOCAL", "node": "v1node", "n_jobs": 2})
            assert acq["success"] and acq["data"]["StatusCode"] == 0
            got = sorted(j["PandaID"] for j in acq["data"]["jobs"])
            assert got == ids
            _, none = await post_json(s, f"{api}/acquire_jobs", {"site_name": "LOCAL"})
            assert none == {"success": False, "message": "No jobs in PanDA", "data": None}
            _, up = await post_json(s, f"{api}/update_job", {"job_id": ids[0], "job_status": "running",
                                                             "attempt_nr": 1, "start_time": "2026-11-22 19:00:00"})
            assert up == {"success": True, "message": "", "data": {"StatusCode": 0, "command": "NULL"}}
            status, bad = await post_json(s, f"{api}/update_job", {"job_id": ids[0], "job_status": "exploded"})
            assert status == 400 and bad["success"] is False and bad["message"].startswith("job_status: "), bad
            _, bulk = await post_json(s, f"{api}/update_jobs_bulk", {"job_list": [
                {"job_id": ids[1], "job_status": "starting"}, {"job_id": "x"}, 5]})
            # one update_job envelope per job, as the real server answers (Harvester reads each one's data)
            assert bulk["success"] and [r["data"]["StatusCode"] for r in bulk["data"]] == [0, 50, 50]
            assert bulk["data"][0] == {"success": True, "message": "", "data": {"StatusCode": 0, "command": "NULL"}}
            assert [r["success"] for r in bulk["data"]] == [True, False, False]
            _, legacy_bulk = await post_form(s, f"{system.url}/server/panda/updateJobsInBulk", {
                "jobList": json.dumps([{"jobId": ids[1], "state": "running"}])})
            assert legacy_bulk == [True, [{"StatusCode": 0, "command": "NULL"}]]
            _, wk = await post_form(s, f"{system.url}/server/panda/updateWorkerPilotStatus", {
                "workerID": 1, "harvesterID": "h", "status": "started", "site": "LOCAL"})
            assert wk == {"StatusCode": 0}

    run(scenario())
    system.wait_status([ids[0], ids[1]], "running")
    assert system.events(ids[0])[2]["actor"] == "pilot:test-operator"   # the token's identity, not the node


def test_bad_requests_never_500(cfg, background):
    system = start_system(cfg, background)
    (pid,) = system.activated_jobs(1)
    base = f"{system.url}/server/panda"
    api = f"{system.url}/api/v1"

    async def scenario():
        async with system.session() as s:
            async def raw(url, body, ctype="application/x-www-form-urlencoded", method="POST", **headers):
                async with s.request(method, url, data=body, headers={"Content-Type": ctype, **headers}) as r:
                    return r.status, await r.text()

            legacy_cases = [
                ("getJob", b"", "application/x-www-form-urlencoded"),              # siteName missing
                ("getJob", b"siteName=LOCAL&mem=lots", "application/x-www-form-urlencoded"),
                ("getJob", b"\xff\xfe\x00garbage", "application/octet-stream"),
                ("getJob", b"{not json", "application/json"),
                ("getJob", b"[1,2]", "application/json"),
                ("updateJob", b"state=running", "application/x-www-form-urlencoded"),   # jobId missing
                ("updateJob", b"jobId=abc&state=running", "application/x-www-form-urlencoded"),
                ("updateJob", b"jobId=1.5&state=running", "application/x-www-form-urlencoded"),
                ("updateJob", f"jobId={pid}&state=exploded".encode(), "application/x-www-form-urlencoded"),
                ("updateJob", f"jobId={pid}".encode(), "application/x-www-form-urlencoded"),
                ("updateJob", b"jobId=-3&state=running", "application/x-www-form-urlencoded"),
                ("updateJobsInBulk", b"jobList=not-json", "application/x-www-form-urlencoded"),
                ("updateJobsInBulk", b"", "application/x-www-form-urlencoded"),
                ("getStatus", b"ids=a+b", "application/x-www-form-urlencoded"),
                ("checkJobStatus", b"", "application/x-www-form-urlencoded"),
                ("updateWorkerPilotStatus", b"status=bogus", "application/x-www-form-urlencoded"),
            ]
            for fn, body, ctype in legacy_cases:
                status, text = await raw(f"{base}/{fn}", body, ctype)
                assert status == 400, (fn, body, status, text)
                reply = json.loads(text)
                assert reply["StatusCode"] == 50 and reply["errorDialog"], (fn, body, reply)
            # gzip-compressed JSON is read; corrupt gzip is a 4xx
            status, text = await raw(f"{base}/getJob", gzip.compress(b'{"siteName": "NOWHERE"}'), "application/json",
                                     **{"Content-Encoding": "gzip"})
            assert status == 200 and json.loads(text)["StatusCode"] == 20
            status, text = await raw(f"{base}/getJob", b"not gzip", "application/json", **{"Content-Encoding": "gzip"})
            assert status == 400 and json.loads(text)["StatusCode"] == 50
            # an unknown PandaID is told to stop, a wrong attempt too; bad optional fields are dropped, not fatal
            _, r = await post_form(s, f"{base}/updateJob", {"jobId": 987654321, "state": "running"})
            assert r["StatusCode"] == 0 and r["command"] == "tobekilled" and "unknown_job" in r["errorDialog"]
            _, job = await post_form(s, f"{base}/getJob", {"siteName": "LOCAL", "node": "n"})
            assert job["PandaID"] == pid
            _, r = await post_form(s, f"{base}/updateJob", {"jobId": pid, "state": "running", "attemptNr": 7})
            assert r["command"] == "tobekilled"
            _, r = await post_form(s, f"{base}/updateJob", {"jobId": pid, "state": "running", "attemptNr": 1,
                                                            "pilotErrorCode": "oops", "startTime": "yesterday",
                                                            "maxRSS": "1e400", "nEvents": "12"})
            assert r["StatusCode"] == 0 and r["command"] == "NULL"
            assert r["errorDialog"] == "ignored invalid fields: maxRSS, pilotErrorCode, startTime"
            # v1: malformed → 400 envelope naming the problem; wrong method → 405 envelope; unknown → 404
            v1_cases = [
                ("job/submit", b"{bad json", "application/json"),
                ("job/submit", b"{}", "application/json"),
                ("job/submit", json.dumps({"jobs": "[[1, 2]]"}).encode(), "application/json"),
                ("job/submit", json.dumps({"jobs": "[[\"x\", []]]"}).encode(), "application/json"),
                ("job/submit", json.dumps({"jobs": "[]"}).encode(), "application/json"),
                ("job/kill", json.dumps({"job_ids": "abc"}).encode(), "application/json"),
                ("job/kill", json.dumps({"job_ids": [1], "code": "x"}).encode(), "application/json"),
                ("job/get_description", json.dumps({"job_ids": {"a": 1}}).encode(), "application/json"),
                ("job/set_debug_mode", json.dumps({"job_id": pid, "mode": "maybe"}).encode(), "application/json"),
                ("job/set_command", json.dumps({"job_id": pid}).encode(), "application/json"),
                ("pilot/acquire_jobs", json.dumps({"n_jobs": 1}).encode(), "application/json"),
                ("pilot/acquire_jobs", json.dumps({"site_name": "LOCAL", "n_jobs": 0}).encode(), "application/json"),
                ("pilot/update_jobs_bulk", json.dumps({"job_list": "nope"}).encode(), "application/json"),
                ("file_server/upload_cache_file", b"plain", "text/plain"),
                # found by the schema fuzzer: each used to be accepted (200) or answered in band
                ("pilot/update_job", json.dumps({"job_id": pid}).encode(), "application/json"),
                ("job/set_command", json.dumps({"job_id": pid, "command": 12}).encode(), "application/json"),
                ("job/get_status", json.dumps({"job_ids": [2**63]}).encode(), "application/json"),
                ("harvester/acknowledge_commands", json.dumps({"command_ids": [True]}).encode(), "application/json"),
                ("harvester/heartbeat", json.dumps({"harvester_id": "h", "data": False}).encode(), "application/json"),
            ]
            for path, body, ctype in v1_cases:
                status, text = await raw(f"{api}/{path}", body, ctype)
                reply = json.loads(text)
                assert status == 400 and reply["success"] is False and reply["message"], (path, body, status, text)
                assert set(reply) == {"success", "message", "data"}
            # the parameter is named as the v1 caller spells it
            _, r = await post_json(s, f"{api}/pilot/update_job", {"job_id": pid})
            assert r["message"].startswith("job_status: must be one of"), r
            async with s.get(f"{api}/job/kill") as r:   # a 405 names the methods the route has (RFC 9110)
                assert r.status == 405 and (await r.json())["success"] is False and r.headers["Allow"] == "POST"
            async with s.request("TRACE", f"{base}/getJob") as r:
                assert r.status == 405 and (await r.json())["StatusCode"] == 50, await r.text()
                assert {"GET", "POST"} <= set(r.headers["Allow"].split(",")), r.headers["Allow"]
            status, text = await raw(f"{api}/no/such", b"", "application/json")
            assert status == 404 and json.loads(text)["success"] is False
            _, r = await post_json(s, f"{api}/job/set_debug_mode", {"job_id": 424242, "mode": True})
            assert r == {"success": False, "message": "job 424242 not found", "data": None}
            _, r = await post_json(s, f"{api}/job/set_command", {"job_id": 424242, "command": "x"})
            assert r["success"] is False and "unknown_job" in r["message"]

    run(scenario())
    system.wait_status([pid], "running")
    events = system.events(pid)
    assert events[-1]["action"] == "pilot_running" and events[-1]["body"]["attrs"]["nEvents"] == 12
