"""Values PostgreSQL cannot store are refused by the contract, the gateway's readers and the ledger's rules."""

from __future__ import annotations

import msgspec
import pytest

from core.machine import JobState, decide
from schemas.jobspec import JobSpec, SpecError, decode_job, job_from_dict, jobs_from_client_json, jobs_to_client_json
from schemas.messages import Kill, PilotUpdate, Submit, Transition, decode_command, encode
from schemas.storable import find, problem, problem_in_json, text_problem
from services.gateway.params import BadRequest, as_str
from services.gateway.updates import translate

NUL = "\x00"


def test_text_problems():
    assert text_problem("fine ünïcode") is None
    assert text_problem(f"a{NUL}b") == "contains a NUL character"
    assert "surrogate" in text_problem("\ud800")


def test_find_names_the_path_of_the_first_unstorable_value():
    cmd = Transition(PandaID=1, action="set", attrs={"ok": 1, "jobName": f"x{NUL}"})
    assert find(cmd) == ("attrs.jobName", "contains a NUL character")
    assert find({"a": [1, 2**70]}) == ("a[1]", "is an integer beyond signed 64 bits")
    assert find({"a": float("nan")}) == ("a", "is not a finite number")
    assert find({"a": [True, None, 1.5, "ok"]}) is None


def test_problem_of_a_message_about_to_be_sent():
    assert problem(Transition(PandaID=1, action="set", attrs={"commandToPilot": "ls"})) is None
    assert problem(Kill(PandaID=1, reason=f"a{NUL}")).field == "reason"
    assert problem(PilotUpdate(PandaID=1, state="running", report="\udc80")).field == "report"
    assert problem(Transition(PandaID=1, action="set", attrs={"nEvents": 2**64})).field == "attrs.nEvents"
    # an escaped backslash followed by u0000 is text, not a NUL
    assert problem(Transition(PandaID=1, action="set", attrs={"jobName": "\\u0000"})) is None


def test_problem_in_json_only_walks_when_the_bytes_hint_at_a_nul():
    ok = Transition(PandaID=1, action="set", attrs={"jobName": "plain"})
    assert problem_in_json(encode(ok), ok) is None
    bad = Transition(PandaID=1, action="set", attrs={"jobName": f"a{NUL}"})
    raw = encode(bad)
    assert b"\\u0000" in raw and problem_in_json(raw, decode_command(raw)).field == "attrs.jobName"


def test_the_contract_declares_the_integer_ranges_of_the_columns():
    # currentPriority lives in an int column: msgspec refuses more on every decode, the converters too
    with pytest.raises(SpecError, match="currentPriority"):
        decode_job(b'{"currentPriority": 1099511627776}')
    assert decode_job(b'{"currentPriority": 2147483647}').currentPriority == 2**31 - 1
    assert decode_job(b'{"nEvents": 1099511627776}').nEvents == 2**40          # bigint
    with pytest.raises(SpecError, match=r"job 0: currentPriority: expected an integer within signed 32 bits"):
        jobs_from_client_json(jobs_to_client_json([JobSpec(currentPriority=2**40)]))
    with pytest.raises(SpecError, match=r"Files\[0\].fsize: expected an integer within signed 64 bits"):
        job_from_dict({"Files": [{"lfn": "a", "fsize": 2**63}]})
    # a submit with an out-of-range priority does not decode (the ledger rejects it as bad_command)
    raw = encode(Submit(PandaID=5, job=JobSpec(currentPriority=2**40)))
    with pytest.raises(msgspec.ValidationError, match="currentPriority"):
        decode_command(raw)


def test_the_converters_refuse_unstorable_text():
    with pytest.raises(SpecError, match=r"job 0: jobName: expected storable text \(contains a NUL character\)"):
        job_from_dict({"jobName": f"a{NUL}b"})
    with pytest.raises(SpecError, match="lone surrogate"):
        job_from_dict({"jobName": "\ud800"})
    with pytest.raises(SpecError, match="jobs: is not valid Unicode"):
        jobs_from_client_json('[["\ud800", []]]')


def test_the_ledger_rules_check_attrs_against_the_jobspec():
    job = JobState(PandaID=1, state="activated", seq=2)
    for attrs, ok in [({"currentPriority": 5}, True), ({"currentPriority": "5"}, True),
                      ({"currentPriority": 2**40}, False), ({"currentPriority": "high"}, False),
                      ({"commandToPilot": 5}, False), ({"startTime": "2026-01-01T00:00:00"}, True),
                      ({"specialHandling": None}, True), ({"coreCount": "NULL"}, True)]:
        out = decide(job, Transition(PandaID=1, action="set", attrs=attrs))
        assert (getattr(out, "code", None) is None) == ok, (attrs, out)
        if not ok:
            assert out.code == "bad_attributes" and "attrs." in out.reason


def test_the_gateway_readers_name_the_field():
    with pytest.raises(BadRequest, match="siteName: contains a NUL character"):
        as_str({"siteName": f"A{NUL}"}, "siteName")
    upd = translate({"jobId": "7", "state": "failed", "pilotErrorDiag": f"x{NUL}", "pilotErrorCode": "1",
                     "xml": f"{{{NUL}}}", "metaData": "{}"})
    assert upd.ignored == ["pilotErrorDiag", "xml"]
    assert "pilotErrorDiag" not in upd.attrs and upd.attrs["pilotErrorCode"] == 1
    assert upd.report is None and upd.metadata == "{}"
