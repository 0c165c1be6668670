"""No single bad message stalls a consumer.

Through the real HTTP API, values PostgreSQL cannot store (a NUL in a pilot's diagnostics or in a command
for the pilot, a priority beyond the ``int`` column) are refused at the edge with the field named; sent
straight to the command topic they are rejected by the ledger; and events that hold them anyway (written
before these checks existed, or by a foreign producer) are set aside by the projector and by a service
loop as dead letters while every other job keeps flowing.
"""

from __future__ import annotations

from gateway_support import post_form, post_json, run, start_system
from helpers import wait_for_no_lag, wait_until

from cli.rebuild import rebuild
from cli.verify import verify
from core import bus, db
from core.bus import CommandSender, OutcomeWaiter
from projections import deadletters
from schemas.jobspec import JobSpec, jobs_to_client_json
from schemas.messages import JobSubmitted, JobUpdated, Rejected, Transition, encode, key_of
from services import dead_letters as service_dead_letters
from services.loop import ServiceLoop

NUL = "\x00"


def _row(cfg, pid: int) -> dict:
    with db.connect(cfg) as conn:
        return db.fetch_all(conn, "SELECT seq, partition, command_to_pilot, current_priority FROM jobs"
                            " WHERE pandaid = %s", (pid,))[0]


def test_unstorable_values_are_refused_at_the_edge_and_by_the_ledger(cfg, background):
    system = start_system(cfg, background)
    p1, p2 = system.activated_jobs(2)
    sender = CommandSender(cfg)
    try:
        sender.send(Transition(PandaID=p1, action="dispatch", actor="test"))   # p1 is a pilot's now
        sender.flush()
    finally:
        sender.close()
    system.wait_status([p1], "sent")
    before = _row(cfg, p1)["seq"]

    async def scenario():
        async with system.session() as s:
            # a pilot's update with a NUL in its diagnostics: the field is dropped and named, the update kept
            status, upd = await post_form(s, f"{system.url}/server/panda/updateJob",
                                          {"jobId": p1, "state": "running", "pilotErrorDiag": f"bad{NUL}diag"})
            assert status == 200 and "pilotErrorDiag" in upd.get("errorDialog", ""), upd
            # the same through /api/v1, and the report of a final update
            status, upd = await post_json(s, f"{system.url}/api/v1/pilot/update_job",
                                          {"job_id": p1, "job_status": "running", "pilot_error_diag": f"x{NUL}"})
            assert status == 200 and "pilotErrorDiag" in upd["data"].get("errorDialog", ""), upd
            # a command for the pilot with a NUL: refused, naming the field
            status, sc = await post_json(s, f"{system.url}/api/v1/job/set_command",
                                         {"job_id": p2, "command": f"ls{NUL}-l"})
            assert status == 400 and sc["success"] is False and sc["message"].startswith("command:"), sc
            # a priority the int column cannot hold: refused, naming job and attribute
            jobs = jobs_to_client_json([JobSpec(jobName="too.high", prodSourceLabel="user", currentPriority=2**40,
                                                computingSite="LOCAL", transformation="t")])
            status, sub = await post_json(s, f"{system.url}/api/v1/job/submit", {"jobs": jobs})
            assert status == 400 and "currentPriority" in sub["message"] and "32 bits" in sub["message"], sub
            # a NUL in getJob's site name never reaches a query
            status, gj = await post_form(s, f"{system.url}/server/panda/getJob", {"siteName": f"LOC{NUL}AL"})
            assert status == 400 and gj["StatusCode"] == 50 and "siteName" in gj["errorDialog"], gj

    run(scenario())
    # what another road brings straight to the command topic is rejected by the ledger, naming the field
    waiter = OutcomeWaiter(cfg)
    sender = CommandSender(cfg)
    try:
        bad = [Transition(PandaID=p2, action="set", actor="test", attrs={"commandToPilot": f"a{NUL}b"}),
               Transition(PandaID=p2, action="set", actor="test", attrs={"currentPriority": 2**40}),
               Transition(PandaID=p2, action="set", actor="test", attrs={"currentPriority": "high"})]
        futures = [waiter.expect(c.id) for c in bad]
        sender.send_many(bad)
        sender.flush()
        outs = [f.result(60) for f in futures]
    finally:
        sender.close()
        waiter.close()
    assert all(isinstance(o, Rejected) for o in outs), outs
    assert outs[0].code == "unstorable" and outs[0].reason.startswith("attrs.commandToPilot"), outs[0]
    assert outs[1].code == "bad_attributes" and "attrs.currentPriority" in outs[1].reason, outs[1]
    assert outs[2].code == "bad_attributes" and "attrs.currentPriority" in outs[2].reason, outs[2]
    # the pilot's updates went in (without the refused field); the jobs projection shows them
    wait_until(lambda: _row(cfg, p1)["seq"] > before, 30, 0.1, "the pilot's update projected")
    assert all(NUL not in str(e["body"]) for e in system.events(p1))


class _Picky:
    """A service that wants every event and cannot decide on one job's (a bug, or a value its tables refuse)."""

    name = "picky"

    def __init__(self, refuse: int):
        self.refuse = refuse
        self.decided: list[int] = []

    def wants(self, event) -> bool:
        return True

    def decide(self, event, view):
        if event.PandaID == self.refuse:
            raise ValueError(f"cannot handle {event.PandaID}")
        self.decided.append(event.PandaID)
        return []


def test_events_nobody_can_store_become_dead_letters_and_the_rest_keeps_flowing(cfg, background):
    system = start_system(cfg, background)
    target, *others = system.activated_jobs(4)
    row = _row(cfg, target)
    partition, seq = row["partition"], row["seq"]
    picky = _Picky(refuse=others[0])
    loop = ServiceLoop(cfg, picky, view=None)
    background.run(loop, "picky")

    # events that hold what the database refuses, written past the ledger (as a foreign producer could)
    def updated(n: int, attrs: dict) -> bytes:
        return encode(JobUpdated(PandaID=target, actor="intruder", seq=seq + n, from_state="activated",
                                 to_state="activated", command_id=f"poison-{n}", action="set", attrs=attrs))
    big = JobSubmitted(PandaID=target + 10_000, actor="intruder", seq=1, from_state="new", to_state="defined",
                       command_id="poison-big", job=JobSpec(currentPriority=2**40))
    poison = [updated(1, {"pilotErrorDiag": f"x{NUL}y"}), updated(2, {"currentPriority": 2**40}),
              encode(big), b"this is not an event"]
    producer = bus.producer(cfg)
    try:
        for value in poison:
            producer.send(cfg.kafka.events_topic, value, key=key_of(target), partition=partition)
        for p in bus.partitions(cfg, cfg.kafka.events_topic):   # garbage in every partition
            producer.send(cfg.kafka.events_topic, b"\xff\xfe garbage", key=b"0", partition=p)
        producer.flush()
    finally:
        producer.close()

    # everything else keeps flowing: commands for the other jobs and new jobs are projected
    sender = CommandSender(cfg)
    try:
        sender.send_many(Transition(PandaID=pid, action="set", actor="test", attrs={"commandToPilot": "go"})
                         for pid in [target, *others])
        sender.flush()
    finally:
        sender.close()
    fresh = system.activated_jobs(4)
    wait_until(lambda: all(_row(cfg, pid)["command_to_pilot"] == "go" for pid in [target, *others]), 60, 0.1,
               "the other jobs' commands projected")

    with db.connect(cfg) as conn:
        dead = deadletters.dead_letters(conn)
    where = {(d["projection"], d["partition"], d["pandaid"], d["seq"]) for d in dead}
    assert ("jobs", partition, target, seq + 1) in where                    # NUL: jsonb refuses it
    assert ("archive", partition, target, seq + 1) in where
    assert ("jobs", partition, target, seq + 2) in where                    # 2**40 in an int column
    assert ("archive", partition, target, seq + 2) not in where             # the archive could store it
    raws = {bytes(d["raw"]) for d in dead if d["pandaid"] is None}
    assert encode(big) in raws and b"this is not an event" in raws and b"\xff\xfe garbage" in raws
    assert all(d["error"] for d in dead)
    assert system.runner.dead_letters == len(dead)
    # the target's own later event was applied in order after the refused ones were set aside
    assert _row(cfg, target)["current_priority"] == 1000

    # the service loop set aside what does not decode and the one event it cannot decide on, nothing else
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-picky", cfg.kafka.events_topic)
    with db.connect(cfg) as conn:
        sdead = service_dead_letters.dead_letters(conn, "picky")
    assert any(d["pandaid"] == others[0] and "cannot handle" in d["error"] for d in sdead), sdead
    assert {bytes(d["raw"]) for d in sdead if d["pandaid"] is None} >= {encode(big), b"this is not an event"}
    assert set(fresh) <= set(picky.decided) and target in picky.decided
    assert loop.stats["dead_letters"] == len(sdead)

    # a rebuild from the log leaves out the same events and gives the same rows, and verify reports, not crashes
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-projector", cfg.kafka.events_topic)
    rebuild(cfg, "jobs", into="rebuilt", log=lambda *_: None, show_progress=False)
    with db.connect(cfg) as conn:
        def rows(schema: str) -> list:
            return conn.execute(f"SELECT pandaid, seq, status, current_priority, command_to_pilot, spec"
                                f" FROM {schema}.jobs ORDER BY pandaid").fetchall()
        assert rows("rebuilt") == rows("public")
    report = verify(cfg, show_progress=False)
    assert report.events > 0 and report.problems    # the intruder's events break the seq rule: reported
