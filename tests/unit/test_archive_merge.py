"""Replay where the broker's log starts after offset 0: the archive below, the log above (pure)."""

from __future__ import annotations

import json

import pytest

from cli.logread import ArchiveGap, merge_archive
from core.bus import RecordTuple


def body(pid: int, seq: int) -> str:
    return json.dumps({"PandaID": pid, "seq": seq, "v": 2})


ARCHIVE = {0: [(0, body(1, 1)), (1, body(1, 2)), (3, body(1, 3)), (4, body(1, 4))],   # offset 2: a marker
           1: [(0, body(2, 1))]}


def archive(partition: int, below: int):
    return [(off, b) for off, b in ARCHIVE.get(partition, []) if off < below]


def fake_log(calls: list):
    def log(start):
        calls.append(start)
        yield 0, [RecordTuple("evt", 0, 4, None, b'{"PandaID":1,"seq":4}', 0)]
        yield 1, [RecordTuple("evt", 1, 0, None, b'{"PandaID":2,"seq":1}', 0)]
    return log


def test_archive_before_the_log_start_then_the_log_from_there():
    calls: list = []
    out = list(merge_archive("evt", {0: 4, 1: 0}, {0: 5, 1: 1}, archive, fake_log(calls), batch=2))
    archived = [(p, r.offset, json.loads(r.value)["seq"]) for p, recs in out[:-2] for r in recs]
    assert archived == [(0, 0, 1), (0, 1, 2), (0, 3, 3)], "partition 0 below offset 4 only; partition 1 from the log"
    assert [len(recs) for _, recs in out[:-2]] == [2, 1], "in batches"
    assert calls == [{0: 4, 1: 0}], "the log is read from where it starts"
    assert [(p, recs[0].offset) for p, recs in out[-2:]] == [(0, 4), (1, 0)]


def test_a_log_from_zero_reads_no_archive():
    calls: list = []

    def no_archive(partition, below):
        raise AssertionError("the archive is not needed")

    out = list(merge_archive("evt", {0: 0, 1: 0}, {}, no_archive, fake_log(calls)))
    assert len(out) == 2 and calls == [{0: 0, 1: 0}]


def test_an_archive_that_does_not_reach_the_log_start_is_a_gap():
    with pytest.raises(ArchiveGap, match="exist nowhere"):
        list(merge_archive("evt", {0: 10}, {0: 5}, archive, fake_log([])))
