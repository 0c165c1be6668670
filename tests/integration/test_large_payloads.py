"""A pilot report far beyond the broker's message limit is stored beside its event and the job finishes;
a body over the documented limit gets a final refusal, not "send it again"."""

from __future__ import annotations

import hashlib
import json

from gateway_support import post_form, post_json, run, start_system
from helpers import wait_until

from core import db, payloads
from core.bus import CommandSender
from schemas.jobspec import FileSpec, JobSpec, jobs_to_client_json
from schemas.messages import Transition
from services.loop import ServiceLoop
from services.reactors.adder import Adder, SqlAdderView

MB = 1024 * 1024


def test_a_5_mb_report_goes_all_the_way_to_finished(cfg, background):
    cfg = cfg.replace(plugins={"default": "dummy"}, gateway={"max_body_bytes": 8 * MB})
    system = start_system(cfg, background)
    view = SqlAdderView(cfg)
    background.run(ServiceLoop(cfg, Adder(), view), "adder")
    (pid,) = system.activated_jobs(1)
    sender = CommandSender(cfg)
    try:   # the output goes to the queue's own endpoint: the adder finishes the job (no transfer)
        sender.send(Transition(PandaID=pid, action="set", actor="test",
                               files=[FileSpec(lfn=f"out.{pid}.txt", type="output", destinationSE="LOCAL_DATADISK")]))
        sender.flush()
    finally:
        sender.close()
    wait_until(lambda: any(e["action"] == "set" for e in system.events(pid)), 60, 0.1, "the output file recorded")
    base = f"{system.url}/server/panda"
    padding = "x" * (5 * MB)

    async def scenario():
        async with system.session() as s:
            for _ in range(5):   # as pilot3 does: "no jobs" → ask again (test_getjob_locked_row.py: the cause, fixed)
                _, job = await post_form(s, f"{base}/getJob", {"siteName": "LOCAL", "node": "wn1"})
                if job["StatusCode"] != 20:
                    break
            assert job["StatusCode"] == 0 and job["PandaID"] == pid, job
            common = {"jobId": pid, "attemptNr": 1, "node": "wn1", "siteName": "LOCAL"}
            for state in ("starting", "running"):
                _, r = await post_form(s, f"{base}/updateJob", {**common, "state": state})
                assert r["StatusCode"] == 0, r
            report = {f"out.{pid}.txt": {"guid": "11111111-2222-3333-4444-555555555555", "fsize": 30,
                                         "adler32": "0a1b2c3d", "surl": "/o/out",
                                         "padding": padding},
                      f"log.{pid}.tgz": {"guid": job["logGUID"], "fsize": 100, "adler32": "01020304", "surl": "/o/l"}}
            text = json.dumps(report)
            final = {**common, "state": "finished", "xml": text, "metaData": '{"exitCode": 0}'}
            _, r = await post_form(s, f"{base}/updateJob", final)
            assert r == {"StatusCode": 0, "command": "NULL"}, r
            _, again = await post_form(s, f"{base}/updateJob", final)     # a retried update stores nothing twice
            assert again["command"] == "alreadydone", again
            # over the documented body limit: refused for good (413 with a PanDA StatusCode), not "send it again"
            async with s.post(f"{base}/updateJob", data={**{k: str(v) for k, v in final.items()},
                                                         "xml": "y" * (8 * MB + 1)}) as resp:
                over = await resp.json(content_type=None)
                assert resp.status == 413 and over["StatusCode"] == 50 and "limit" in over["errorDialog"], over
            return text

    text = run(scenario())
    system.wait_status([pid], "finished", timeout=60)
    holding = [e for e in system.events(pid) if e["to_state"] == "holding"][-1]["body"]
    ref = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert holding["job_output_report_ref"] == ref and "job_output_report" not in holding
    assert holding["metadata"] == '{"exitCode": 0}'                        # small: stays in the event
    assert len(json.dumps(holding)) < 10_000
    with db.connect(cfg) as conn:
        assert payloads.get(conn, ref) == text
        assert conn.execute("SELECT count(*), max(size) FROM payloads").fetchone() == (1, len(text.encode()))


def test_a_command_over_the_message_limit_is_refused_for_good(cfg, background):
    cfg = cfg.replace(kafka={"max_message_bytes": 50_000})
    system = start_system(cfg, background)

    def jobs(size: int) -> str:
        return jobs_to_client_json([JobSpec(jobName="big", prodSourceLabel="user", computingSite="LOCAL",
                                            transformation="t", jobParameters="p" * size)])

    async def scenario():
        async with system.session() as s:
            status, body = await post_json(s, f"{system.url}/api/v1/job/submit", {"jobs": jobs(60_000)})
            assert status == 413 and "message limit of 50000 bytes" in body["message"], body
            status, body = await post_json(s, f"{system.url}/api/v1/job/submit", {"jobs": jobs(1_000)})
            assert status == 200 and body["success"] and body["data"][0][0], body

    run(scenario())
