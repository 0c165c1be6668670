"""``/api/v1/job/retry`` over HTTP with the real broker and database: the owner's retry of a failed job is
a new PandaID and the failed job is marked retried (code 7); another user is refused and nothing changes;
a job is retried once; jobs that are not failed, or JEDI's, are not retried, and the answer says why."""

from __future__ import annotations

from gateway_support import post_json, run, start_system

from core.bus import CommandSender
from schemas.messages import Transition


def _fail(system, ids: list[int]) -> None:
    sender = CommandSender(system.cfg)
    try:
        for pid in ids:
            sender.send(Transition(PandaID=pid, action="fail", actor="service:test",
                                   attrs={"pilotErrorCode": 1305, "pilotErrorDiag": "payload exited 1"}))
        sender.flush()
    finally:
        sender.close()
    system.wait_status(ids, "failed")


def test_owner_retries_a_failed_job_others_are_refused(cfg, background):
    system = start_system(cfg, background)
    mine, running = system.activated_jobs(2, prodUserID="alice", maxAttempt=1)
    _fail(system, [mine])
    (jedi,) = system.activated_jobs(1, prodUserID="alice", jediTaskID=4711)
    _fail(system, [jedi])
    api = f"{system.url}/api/v1"

    async def scenario():
        async with system.session("alice", ("user",)) as alice, system.session("bob", ("user",)) as bob:
            status, refused = await post_json(bob, f"{api}/job/retry", {"job_ids": [mine]})
            assert status == 403 and refused["success"] is False and "belongs to alice" in refused["message"], refused
            assert refused["data"] == [None]
            assert system.events(mine)[-1]["action"] == "fail"           # untouched
            status, done = await post_json(alice, f"{api}/job/retry", {"job_ids": [mine]})
            assert status == 200 and done["success"] is True, done
            (new,) = done["data"]
            assert isinstance(new, int) and new != mine and f"retried as {new}" in done["message"]
            _, again = await post_json(alice, f"{api}/job/retry", {"job_ids": [mine]})
            assert again["success"] is False and "already retried" in again["message"], again
            _, other = await post_json(alice, f"{api}/job/retry", {"job_ids": [running, jedi]})
            assert other["data"] == [None, None] and "only a failed job" in other["message"], other
            assert "JEDI retries the jobs of task 4711" in other["message"], other
            return new

    new = run(scenario())
    system.wait_status([new], "defined")
    submitted = system.events(new)[0]
    job = submitted["body"]["job"]
    assert submitted["actor"] == "user:alice" and job["attemptNr"] == 2 and job["parentID"] == mine
    assert job["prodUserID"] == "alice" and job.get("pilotErrorCode") is None
    marked = system.events(mine)[-1]
    assert (marked["action"], marked["actor"], marked["to_state"]) == ("mark_retried", "user:alice", "failed")
    assert marked["body"]["attrs"]["taskBufferErrorCode"] == 106
    assert system.status([running, jedi]) == {running: "activated", jedi: "failed"}
    assert [e["action"] for e in system.events(jedi)][-1] == "fail"
