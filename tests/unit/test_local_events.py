"""The ledger's committed runs handed to readers on this host: the wire format, the chaining and taking rules
(pure), and the reader's consumer fed by hand over an in-memory stand-in of the port (no broker: what is under test
is only which records the wrapper hands out and when it pauses, seeks and resumes)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from core import local_events
from core.bus import RecordTuple, TopicPartition
from core.local_events import (
    NOT_KNOWN,
    FedConsumer,
    chained_after,
    continues,
    in_step,
    pack,
    readers_linked,
    starting_at,
    take_runs,
    unpack,
)

TOPIC = "panda.job-events"


def rec(offset: int, partition: int = 0) -> RecordTuple:
    return RecordTuple(TOPIC, partition, offset, str(offset).encode(), b"v%d" % offset, 0)


def test_a_run_survives_the_wire_and_long_runs_split_with_their_own_after():
    records = [(o, str(o).encode(), b"x" * 20_000) for o in range(10, 15)]
    datagrams = pack(3, 7, records, 1234)
    assert len(datagrams) > 1 and all(len(d) <= local_events.MAX_DATAGRAM for d in datagrams)
    runs = [unpack(d, TOPIC) for d in datagrams]
    assert runs[0][1] == 7                                    # the first names the run's own predecessor
    for (_, _, before), (_, after, _) in zip(runs, runs[1:], strict=False):
        assert after == before[-1].offset                     # each later one the last record of the one before
    got = [r for _, _, recs in runs for r in recs]
    assert [(r.partition, r.offset, r.key, r.value) for r in got] == [(3, o, k, v) for o, k, v in records]
    assert unpack(b"\x00\x01", TOPIC) is None                 # malformed: refused
    assert unpack(datagrams[0][:-1], TOPIC) is None


def test_the_ledger_chains_a_run_only_across_its_own_commit_marker():
    assert chained_after(41, 43) == 41                        # records …41, marker 42, next run from 43
    assert chained_after(41, 44) == NOT_KNOWN                 # something else lies between
    assert chained_after(None, 43) == NOT_KNOWN               # no run of this ledger before


def test_a_reader_takes_only_what_continues_its_last_record():
    assert continues(41, 41) and not continues(41, 40) and not continues(None, 41)
    assert not continues(41, NOT_KNOWN)
    runs = [(45, [rec(47), rec(48)]), (41, [rec(43), rec(44), rec(45)]), (30, [rec(32)])]
    taken, last, gap = take_runs(41, runs)
    assert [r.offset for r in taken] == [43, 44, 45, 47, 48] and last == 48 and not gap and runs == []
    runs = [(60, [rec(62)]), (48, [rec(50)])]
    taken, last, gap = take_runs(48, runs)                    # 50 continues, 62 does not (a gap: the topic fills it)
    assert [r.offset for r in taken] == [50] and last == 50 and gap and runs == [(60, [rec(62)])]
    taken, last, gap = take_runs(None, [(5, [rec(7)])])       # last not known (after a seek): nothing taken
    assert taken == [] and last is None and gap


def test_a_reader_the_topic_brought_to_where_a_run_ends_is_in_step_with_the_runs():
    assert in_step(48, [(45, [rec(47), rec(48)])])            # the topic brought 47, 48 before their run came
    assert not in_step(50, [(45, [rec(47), rec(48)])])        # the topic is past it: the next run may be behind
    assert not in_step(46, [(45, [rec(47), rec(48)])])
    assert not in_step(None, [(45, [rec(47), rec(48)])]) and not in_step(48, [])


def test_a_reader_sought_to_where_a_run_starts_takes_it_without_the_topic():
    runs = [(41, [rec(43)])]
    assert starting_at(42, runs) == 41 and starting_at(43, runs) == 41   # behind the marker, or at the record
    assert starting_at(41, runs) is None and starting_at(44, runs) is None
    assert starting_at(44, [(NOT_KNOWN, [rec(43)])]) is None and starting_at(42, [(NOT_KNOWN, [rec(43)])]) is None


def test_a_run_the_ledger_could_not_chain_is_taken_where_its_first_record_is_the_next_one():
    # the ledger's first transaction after its start (or on a fresh partition) names no ``after``
    assert starting_at(43, [(NOT_KNOWN, [rec(43)])]) == 42
    assert starting_at(0, [(NOT_KNOWN, [rec(0), rec(1)])]) == -1
    taken, last, gap = take_runs(-1, [(NOT_KNOWN, [rec(0), rec(1)]), (1, [rec(3)])])
    assert [r.offset for r in taken] == [0, 1, 3] and last == 3 and not gap
    taken, last, gap = take_runs(41, [(NOT_KNOWN, [rec(43)])])   # 42 may be a record: only the topic knows
    assert taken == [] and last == 41 and gap


class Inner:
    """The port's consumer, in memory: what the wrapper asks of it is recorded."""

    def __init__(self) -> None:
        self.queue: dict[TopicPartition, list[RecordTuple]] = {}
        self.paused: set[TopicPartition] = set()
        self.seeks: list[tuple[int, int]] = []
        self.callbacks = None
        self.wakes = 0

    def wake(self):
        self.wakes += 1

    def subscribe(self, topics, *, on_assign=None, on_revoke=None):
        self.callbacks = (on_assign, on_revoke)

    def poll(self, timeout_ms=0, max_records=None):
        out = {tp: recs for tp, recs in self.queue.items() if recs and tp not in self.paused}
        for tp in out:
            self.queue[tp] = []
        return out

    def seek(self, tp, offset):
        self.seeks.append((tp.partition, offset))

    def pause(self, *tps):
        self.paused.update(tps)

    def resume(self, *tps):
        self.paused.difference_update(tps)

    def close(self):
        pass


@pytest.fixture
def short_dir():
    """A state dir short enough for a socket path (pytest's tmp_path under xdist can be too long)."""
    path = Path(tempfile.mkdtemp(prefix="le", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fed_consumer(state_dir, **kw) -> tuple[FedConsumer, Inner]:
    from core.config import load

    cfg = load({"PANDAES_STATE_DIR": str(state_dir)})
    inner = Inner()
    c = FedConsumer(inner, cfg, "g", gather_s=kw.get("gather_s", 0.0), look_s=kw.get("look_s", 60.0))
    assert c.bound
    c.subscribe([cfg.kafka.events_topic])
    inner.callbacks[0]({TopicPartition(cfg.kafka.events_topic, 0)})
    return c, inner


def hand(c: FedConsumer, after: int, offsets: list[int]) -> None:
    """What the listener thread does with a datagram."""
    with c._lock:
        c._parts[0].runs.append((after, [rec(o) for o in offsets]))


def offsets(polled) -> list[int]:
    return [r.offset for recs in polled.values() for r in recs]


def test_the_reader_goes_to_the_ledgers_runs_and_back_to_the_topic_at_a_gap(short_dir):
    c, inner = fed_consumer(short_dir)
    tp = TopicPartition(c.topic, 0)
    try:
        hand(c, 9, [11, 12])
        assert c.poll(0) == {}                                # last record not known yet: nothing taken
        assert inner.wakes >= 1                               # but the topic has news: a dozing reader looks now
        inner.queue[tp] = [rec(10), rec(11), rec(12)]         # the topic brings them
        assert offsets(c.poll(0)) == [10, 11, 12] and tp in inner.paused   # in step with the held run: paused
        assert c.stats["in_step"] == 1 and c.stats["fed"] == 0
        hand(c, 12, [14, 15])
        assert offsets(c.poll(0)) == [14, 15]                 # continues: taken
        assert tp in inner.paused
        inner.queue[tp] = [rec(14), rec(15)]                  # a late copy from the topic is not handed out twice
        hand(c, 20, [22])                                     # 17-20 lost on the way: a gap
        assert c.poll(0) == {}
        assert tp not in inner.paused and inner.seeks[-1] == (0, 16) and c.stats["gaps"] == 1
        inner.queue[tp] = [rec(17), rec(18), rec(20)]         # the topic fills it, the held run continues
        assert offsets(c.poll(0)) == [17, 18, 20, 22]
        assert tp in inner.paused
    finally:
        c.close()


def test_a_reader_whose_topic_fetch_wins_the_race_goes_back_to_the_runs(short_dir):
    c, inner = fed_consumer(short_dir)
    tp = TopicPartition(c.topic, 0)
    try:
        inner.queue[tp] = [rec(0), rec(1)]
        assert offsets(c.poll(0)) == [0, 1] and tp not in inner.paused   # no run told: read from the topic
        inner.queue[tp] = [rec(3), rec(4)]                    # the topic brings the next transaction first …
        assert offsets(c.poll(0)) == [3, 4] and tp not in inner.paused
        hand(c, 1, [3, 4])                                    # … then its run comes: in step, the topic paused
        assert c.poll(0) == {} and tp in inner.paused
        hand(c, 4, [6])
        assert offsets(c.poll(0)) == [6] and c.stats["fed"] == 1 and c.stats["in_step"] == 1
    finally:
        c.close()


def test_a_fed_partition_without_runs_is_looked_at_on_the_topic(short_dir):
    c, inner = fed_consumer(short_dir, look_s=0.0)
    tp = TopicPartition(c.topic, 0)
    try:
        inner.queue[tp] = [rec(0)]
        c.poll(0)
        hand(c, 0, [2])
        assert offsets(c.poll(0)) == [2] and tp in inner.paused
        assert c.poll(0) == {}                                # nothing told since: fetched again from 3
        assert tp not in inner.paused and inner.seeks[-1] == (0, 3) and c.stats["looks"] == 1
    finally:
        c.close()


def test_a_seek_sends_the_partition_back_to_the_topic(short_dir):
    c, inner = fed_consumer(short_dir)
    tp = TopicPartition(c.topic, 0)
    try:
        inner.queue[tp] = [rec(0)]
        c.poll(0)
        hand(c, 0, [2])
        c.poll(0)
        assert tp in inner.paused
        c.seek(tp, 1)                                         # the caller reads again from 1 (a failed apply)
        assert tp not in inner.paused and inner.seeks[-1] == (0, 1)
        hand(c, 2, [4])                                       # not taken: it does not start where the reader stands
        inner.queue[tp] = [rec(2)]
        assert offsets(c.poll(0)) == [2, 4]                   # the topic again from 1, then the run continues
        c.seek(tp, 5)                                         # sought to just behind the run's marker: taken at once
        hand(c, 4, [6, 7])
        assert offsets(c.poll(0)) == [6, 7] and tp in inner.paused
    finally:
        c.close()


def test_a_fresh_partitions_first_run_is_taken_without_the_topic(short_dir):
    c, inner = fed_consumer(short_dir)
    tp = TopicPartition(c.topic, 0)
    try:
        c.seek(tp, 0)                                         # a new group on a new topic starts at 0
        hand(c, NOT_KNOWN, [0, 1, 2])                         # the ledger's first transaction on it
        assert offsets(c.poll(0)) == [0, 1, 2] and tp in inner.paused and inner.wakes == 0
        hand(c, 2, [4])
        assert offsets(c.poll(0)) == [4]
    finally:
        c.close()


def test_taken_runs_wait_for_the_gather_and_respect_max_records(short_dir):
    c, inner = fed_consumer(short_dir, gather_s=3600.0)
    tp = TopicPartition(c.topic, 0)
    try:
        inner.queue[tp] = [rec(0)]
        assert c.poll(0) == {}                                # taken, held for the gather
        with c._lock:
            c._parts[0].taken_at -= 7200
        hand(c, 0, [2, 3, 4])
        assert offsets(c.poll(0, max_records=2)) == [0, 2]
        assert offsets(c.poll(0, max_records=10)) == [3, 4]
    finally:
        c.close()


def test_readers_linked_names_each_groups_partitions_while_its_reader_lives(short_dir):
    from core.config import load

    assert readers_linked(load({"PANDAES_STATE_DIR": str(short_dir)})) == {}
    c, inner = fed_consumer(short_dir)                        # group "g", partition 0 assigned
    try:
        inner.callbacks[0]({TopicPartition(c.topic, 3)})
        assert readers_linked(c.cfg) == {"g": {0, 3}}
        inner.callbacks[1]({TopicPartition(c.topic, 3)})      # revoked: unlinked
        assert readers_linked(c.cfg) == {"g": {0}}
    finally:
        c.close()
    assert readers_linked(c.cfg) == {}
