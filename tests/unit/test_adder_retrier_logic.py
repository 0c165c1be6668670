"""Adder and retrier decisions on plain data (no Kafka, no database)."""

from __future__ import annotations

import json

import msgspec
import pytest
from fakes import FakeAdderView, FakeRetrierView

from plugins.base import PluginError
from schemas.messages import JobTransitioned, Kill, Submit, Transition
from services.loop import Action
from services.reactors.adder import Adder, judge
from services.reactors.retrier import Retrier, RetryRules, asked_verdict, next_job, parse_codes, verdict

PID = 77
FILES = [
    {"lfn": "in.1", "type": "input", "dataset": "ds.in"},
    {"lfn": "out.1", "type": "output", "dataset": "ds.out", "destinationDBlock": "ds.out_sub01", "scope": "s"},
    {"lfn": "log.1", "type": "log", "dataset": "ds.log", "destinationDBlock": "ds.log_sub01", "scope": "s"},
]
GOOD = {"out.1": {"guid": "g1", "fsize": 10, "adler32": "0a0b0c0d", "surl": "file:///x/out.1"},
        "log.1": {"guid": "g2", "fsize": 20, "md5sum": "abc"}}


def holding(pilot_state="finished", report=GOOD, seq=6, **attrs):
    return JobTransitioned(PandaID=PID, seq=seq, from_state="running", to_state="holding", command_id="c",
                           action="pilot_holding", pilot_state=pilot_state,
                           report=report if isinstance(report, str | None) else json.dumps(report), attrs=attrs)


def test_finished_report_registers_everything_and_finishes():
    out = judge(holding(), {}, FILES, "EP")
    assert out.action == "finish" and not out.attrs
    assert {f.lfn for f in out.register} == {"out.1", "log.1"} and out.transfer == ()
    patch = {f.lfn: f for f in out.files}
    assert patch["out.1"].status == "ready" and patch["out.1"].GUID == "g1" and patch["out.1"].checksum == "ad:0a0b0c0d"
    assert patch["log.1"].checksum == "md5:abc" and patch["log.1"].md5sum == "abc" and patch["log.1"].fsize == 20
    reg = {f.lfn: f for f in out.register}
    assert reg["out.1"].block == "ds.out_sub01" and reg["out.1"].dataset == "ds.out" and reg["out.1"].surl


@pytest.mark.parametrize("report", [
    {"out.1": {"guid": "g1", "fsize": 10}, "log.1": GOOD["log.1"]},          # no checksum
    {"out.1": {"fsize": 10, "adler32": "x"}, "log.1": GOOD["log.1"]},         # no GUID
    {"out.1": {"guid": "NULL", "fsize": 10, "adler32": "x"}, "log.1": GOOD["log.1"]},   # PanDA's unset GUID
    {"out.1": {"guid": "g", "adler32": "x"}, "log.1": GOOD["log.1"]},         # no size
    {"log.1": GOOD["log.1"]},                                                  # output missing
    "not json",
])
def test_incomplete_report_fails_with_ddm_200(report):
    out = judge(holding(report=report), {}, FILES, "EP")
    assert out.action == "fail" and out.attrs["ddmErrorCode"] == 200
    assert "Could not get GUID/LFN/MD5/FSIZE/SURL from pilot JSON" in out.attrs["ddmErrorDiag"]
    assert out.register == ()


def test_unknown_lfn_fails():
    out = judge(holding(report={**GOOD, "surprise.root": GOOD["out.1"]}), {}, FILES, "EP")
    assert out.action == "fail" and "inconsistently with jobdef" in out.attrs["ddmErrorDiag"]


def test_killed_job_whose_pilot_failed_is_cancelled():
    out = judge(holding("failed", report={}), {"commandToPilot": "tobekilled"}, FILES, "EP")
    assert out.action == "adder_cancel" and out.register == ()


def test_failed_pilot_fails_but_keeps_its_log():
    out = judge(holding("failed", report={"log.1": GOOD["log.1"]}), {}, FILES, "EP")
    assert out.action == "fail" and [f.lfn for f in out.register] == ["log.1"]
    assert out.files[0].status == "ready"


def test_transfer_and_merge():
    files = [dict(f, destinationSE="REMOTE") if f["type"] == "output" else f for f in FILES]
    out = judge(holding(), {}, files, "EP")
    assert out.action == "transfer" and [f.lfn for f in out.transfer] == ["out.1"]
    assert {f.lfn: f.status for f in out.files} == {"out.1": "transferring", "log.1": "ready"}
    out = judge(holding(), {"specialHandling": "dm,merge"}, FILES, "EP")
    assert out.action == "merge"


def test_adder_registers_before_it_finishes_and_defers_on_temporary_errors():
    view = FakeAdderView(files=FILES)
    [action] = Adder().decide(holding(), view)
    assert isinstance(action, Action) and view.calls == []          # decide itself does nothing
    [cmd] = action.execute()
    assert isinstance(cmd, Transition) and cmd.action == "finish" and cmd.actor == "service:adder"
    assert view.calls == [("register", "EP", ["log.1", "out.1"]), ("registered", PID), ("done", PID)]

    view = FakeAdderView(files=FILES)
    view.error = PluginError("storage down", temporary=True)
    [action] = Adder().decide(holding(), view)
    assert action.execute() == [] and view.calls[-1] == ("defer", PID, 6)

    view = FakeAdderView(files=FILES)
    view.error = PluginError("no such endpoint")
    [action] = Adder().decide(holding(), view)
    [cmd] = action.execute()
    assert cmd.action == "fail" and cmd.attrs["ddmErrorCode"] == 200


def test_adder_batch_registers_job_by_job_then_settles_the_poll_in_one_write():
    view = FakeAdderView(files=FILES)
    view.errors = {78: PluginError("storage busy", temporary=True)}
    events = [holding(), msgspec.structs.replace(holding(), PandaID=78),
              msgspec.structs.replace(holding(report={"out.1": {"fsize": 1}}), PandaID=79)]
    [action] = Adder().decide_batch(events, view)
    assert isinstance(action, Action) and view.calls == []
    cmds = {c.PandaID: c for c in action.execute()}
    assert cmds[PID].action == "finish" and cmds[79].action == "fail" and 78 not in cmds   # 78 waits
    assert ("defer", 78, 6) in view.calls
    assert view.calls[-1] == ("settle", [PID], [PID, 79])                             # one write at the end


def test_adder_skips_jobs_already_decided():
    view = FakeAdderView(status="finished", seq=7, files=FILES)
    [action] = Adder().decide(holding(), view)
    assert action.execute() == [] and view.calls == [("done", PID)]


# ------------------------------------------------------------------------------------------- retrier
RULES = RetryRules(default_max_attempt=0, no_retry=parse_codes(["pilot:1244"], "t"),
                   memory_errors=parse_codes(["pilot:1212"], "t"))


def test_verdict():
    assert verdict({"attemptNr": 1, "maxAttempt": 3}, RULES)[0]
    assert not verdict({"attemptNr": 3, "maxAttempt": 3}, RULES)[0]
    assert not verdict({"attemptNr": 1}, RULES)[0]                         # no maxAttempt, default 0
    assert not verdict({"attemptNr": 1, "maxAttempt": 3, "pilotErrorCode": -1244}, RULES)[0]
    assert not verdict({"attemptNr": 1, "maxAttempt": 99}, RetryRules(max_attempts=1))[0]
    with pytest.raises(ValueError):
        parse_codes(["foo:1"], "t")


def test_jedi_retries_its_own_jobs():
    ok, why = verdict({"attemptNr": 1, "maxAttempt": 3, "jediTaskID": 4242}, RULES)
    assert not ok and "JEDI" in why and "4242" in why
    for empty in (None, "NULL", 0, "0"):   # PanDA's ways of saying "no task": the retrier keeps the job
        assert verdict({"attemptNr": 1, "maxAttempt": 3, "jediTaskID": empty}, RULES)[0]
    ev = JobTransitioned(PandaID=PID, seq=5, from_state="running", to_state="failed", command_id="c",
                         action="fail", attrs={"jobDispatcherErrorCode": 100, "jediTaskID": 31})
    view = FakeRetrierView(FILES)
    assert Retrier(RULES).decide(ev, view) == [] and view.claims == {}


def test_next_job_resets_runtime_links_and_adds_memory():
    spec = {"attemptNr": 2, "maxAttempt": 5, "minRamCount": 2000, "pilotErrorCode": 1212, "jobsetID": 9,
            "jobStatus": "failed", "pilotID": "p", "jobParameters": "run out.1 --log log.1", "computingSite": "X"}
    job, note = next_job(spec, FILES, 77, RULES)
    assert job.attemptNr == 3 and job.parentID == 77 and job.jobsetID == 9 and job.minRamCount == 3000
    assert job.pilotID is None and job.pilotErrorCode is None and job.jobStatus is None and job.PandaID is None
    assert {f.lfn for f in job.Files} == {"in.1", "out.1.3", "log.1.3"}
    assert job.jobParameters == "run out.1.3 --log log.1.3" and "minRamCount 2000 -> 3000" in note
    again, _ = next_job({**spec, "attemptNr": 3}, [{"lfn": "out.1.3", "type": "output"}], 78, RULES)
    assert [f.lfn for f in again.Files] == ["out.1.4"]     # the attempt suffix is replaced, not stacked


def test_retrier_sends_submit_and_kill7_once_per_claim():
    ev = JobTransitioned(PandaID=PID, seq=5, from_state="running", to_state="failed", command_id="c",
                         action="fail", attrs={"jobDispatcherErrorCode": 100})
    view, r = FakeRetrierView(FILES), Retrier(RULES)
    [action] = r.decide(ev, view)
    assert isinstance(action, Action) and view.claims == {}         # deciding allocates nothing (replay-safe)
    sub, kill = action.execute()
    assert isinstance(sub, Submit) and sub.PandaID == 5000 and sub.job.attemptNr == 2 and sub.job.parentID == PID
    assert isinstance(kill, Kill) and kill.PandaID == PID and kill.code == 7
    view.existing.add(5000)
    [again] = r.decide(ev, view)
    assert [type(c) for c in again.execute()] == [Kill]             # redelivered: same PandaID, no new Submit
    assert r.decide(JobTransitioned(PandaID=PID, seq=5, from_state="running", to_state="failed", command_id="c",
                                    action="fail", attrs={"attemptNr": 2}), view) == []


def test_a_retry_asked_for_overrides_max_attempt_and_no_retry_codes_but_not_the_cap():
    rules = RetryRules(no_retry=frozenset({("pilotErrorCode", 1305)}), max_attempts=3)
    spec = {"attemptNr": 1, "maxAttempt": 1, "pilotErrorCode": 1305}
    assert asked_verdict("failed", spec, rules) == (True, "attempt 2, asked for")
    assert asked_verdict("failed", {**spec, "attemptNr": 3}, rules)[0] is False
    assert "only a failed job" in asked_verdict("running", spec, rules)[1]
    assert "already retried" in asked_verdict("failed", {**spec, "taskBufferErrorCode": 106}, rules)[1]
    assert "JEDI" in asked_verdict("failed", {**spec, "jediTaskID": 9}, rules)[1]
