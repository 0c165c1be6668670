"""The rebuild's event decoder (``decode_event_fast``) gives what ``decode_event`` gives and refuses what it
refuses, with the same error; and the bulk fold's row spec is apply()'s (``projections.jobs._spec_json``)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

from core.bus import RecordTuple
from projections.jobs import JobsBulk, _spec_json
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import SCHEMA_VERSION, JobSubmitted, VersionError, decode_event, decode_event_fast, encode

SAMPLES = Path(__file__).parent / "samples" / "events"
ALL = sorted(SAMPLES.glob("v*/*.json"))


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_stored_sample_decodes_as_decode_event_decodes_it(path):
    raw = path.read_bytes()
    fast, slow = decode_event_fast(raw), decode_event(raw)
    assert fast == slow and type(fast) is type(slow) and fast.v == SCHEMA_VERSION


def _submitted() -> dict:
    return json.loads((SAMPLES / f"v{SCHEMA_VERSION}" / "submitted.json").read_text())


def _heartbeat() -> dict:
    return json.loads((SAMPLES / f"v{SCHEMA_VERSION}" / "updated_heartbeat.json").read_text())


def _with(body: dict, path: tuple, value) -> bytes:
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(body).encode()


BAD = {
    "unknown JobSpec attribute": lambda: _with(_submitted(), ("job", "noSuchAttribute"), 1),
    "int32 attribute out of range": lambda: _with(_submitted(), ("job", "attemptNr"), 2**31),
    "int64 attribute out of range": lambda: _with(_submitted(), ("job", "jediTaskID"), 2**63),
    "string for an int attribute": lambda: _with(_submitted(), ("job", "currentPriority"), "5"),
    "int for a string attribute": lambda: _with(_submitted(), ("job", "computingSite"), 5),
    "bad datetime": lambda: _with(_submitted(), ("job", "creationTime"), "yesterday"),
    "unknown FileSpec attribute": lambda: _with(_submitted(), ("job", "Files"), [{"lfn": "a", "bogus": 1}]),
    "FileSpec int out of range": lambda: _with(_submitted(), ("job", "Files"), [{"lfn": "a", "attemptNr": 2**40}]),
    "job not an object": lambda: _with(_submitted(), ("job",), [1, 2]),
    "seq not an int": lambda: _with(_heartbeat(), ("seq",), "x"),
    "missing to_state": lambda: json.dumps({k: v for k, v in _heartbeat().items() if k != "to_state"}).encode(),
    "unknown type": lambda: _with(_heartbeat(), ("type",), "exploded"),
    "newer version": lambda: _with(_heartbeat(), ("v",), SCHEMA_VERSION + 1),
    "version not an int": lambda: _with(_heartbeat(), ("v",), "2"),
    "attrs not an object": lambda: _with(_heartbeat(), ("attrs",), [1]),
    "not JSON": lambda: b"this is not an event",
    "truncated": lambda: encode(decode_event(json.dumps(_submitted()).encode()))[:-3],
    "empty": lambda: b"",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_what_decode_event_refuses_is_refused_with_its_error(name):
    raw = BAD[name]()
    with pytest.raises(msgspec.DecodeError) as slow:
        decode_event(raw)
    with pytest.raises(msgspec.DecodeError) as fast:
        decode_event_fast(raw)
    assert type(fast.value) is type(slow.value) and str(fast.value) == str(slow.value)
    assert str(fast.value), "the error says what was wrong"


@pytest.mark.parametrize("version", [0, 1, SCHEMA_VERSION])
def test_any_version_decode_event_takes_is_taken_alike(version):
    raw = _with(_heartbeat(), ("v",), version)
    assert decode_event_fast(raw) == decode_event(raw)
    spaced = raw.replace(b'"v": ', b'"v"  :  ')   # the byte search misses it: the slow path decides
    assert decode_event_fast(spaced) == decode_event(spaced)


def test_a_newer_version_is_a_version_error_on_the_fast_path_too():
    with pytest.raises(VersionError):
        decode_event_fast(BAD["newer version"]())


def test_the_bulk_fold_hands_what_does_not_decode_to_refused_and_folds_the_rest():
    good = _submitted()
    raws = [json.dumps(good).encode(), BAD["unknown JobSpec attribute"](), BAD["not JSON"]()]
    refused: list[tuple[int, int, str]] = []
    bulk = JobsBulk()
    n = bulk.add(3, [RecordTuple("t", 3, i, None, r, 0) for i, r in enumerate(raws)], decode_event_fast,
                 lambda p, off, exc: refused.append((p, off, type(exc).__name__)))
    assert n == 1 and list(bulk.rows) == [good["PandaID"]]
    assert refused == [(3, 1, "ValidationError"), (3, 2, "DecodeError")]


def test_the_row_spec_is_apply_s_merged_dict():
    job = JobSpec(PandaID=5, jobName="n\\1\t2", computingSite="SITE", attemptNr=2, cpuConversion=1.5,
                  creationTime=datetime(2026, 1, 2, 3, 4, 5, 60000), jobStatus="defined",
                  Files=[FileSpec(lfn="a", type="output")])
    merged = {"computingSite": "OTHER", "nEvents": 10, "extra": {"x": [1, None]}, "jobStatus": "running"}
    expected = msgspec.to_builtins(job)
    expected.pop("Files")
    expected.update(merged)
    got = _spec_json(job, merged)
    assert got[:1] == b"\x01"    # jsonb's binary form; json.loads, like jsonb, keeps a repeated key's last value
    assert json.loads(got[1:]) == expected
    assert json.loads(_spec_json(job, None)[1:]) == {k: v for k, v in expected.items() if k not in merged} | {
        "computingSite": "SITE", "jobStatus": "defined"}
    assert json.loads(_spec_json(JobSpec(), {"jobStatus": "x"})[1:]) == {"jobStatus": "x"}
    assert _spec_json(JobSpec(), None) == b"\x01{}"


def test_a_submission_whose_column_value_does_not_fit_leaves_the_fold():
    ev = JobSubmitted(PandaID=9, seq=1, from_state="new", to_state="defined", command_id="c",
                      job=JobSpec(attemptNr=2**40))   # built in Python: not checked by a decoder
    bulk = JobsBulk()
    bulk.add(0, [RecordTuple("t", 0, 0, None, b"{}", 0)], lambda _raw: ev, lambda *_: None)
    assert not bulk.rows and [r.event for r in bulk.leftover] == [ev]
