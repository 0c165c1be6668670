"""Commands handed to the ledger on this host once the broker stored them (core/local_commands.py): framing, the
log's order whatever copy comes first (never past a gap), the socket round trip from a delivery report to the
ledger's intake, and what is never handed over (a failed send, a partition the ledger does not hold)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import config, local_commands
from core.bus import Delivered, RecordTuple
from core.local_commands import CommandForwarder, CommandIntake, in_log_order, pack, unpack

pytestmark = pytest.mark.skipif(not local_commands.SUPPORTED, reason="Unix sockets with SO_PASSCRED (Linux) only")
TOPIC = "t.job-commands"


@pytest.fixture
def tmp_path():
    """A short state dir: a Unix socket's path has at most 107 bytes, which pytest's own temporary paths can pass."""
    path = Path(tempfile.mkdtemp(prefix="lc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cfg(tmp_path, on: bool = True) -> config.Config:
    return config.load().replace(state={"dir": str(tmp_path)}, ledger={"local_commands": on},
                                 kafka={"bootstrap": "127.0.0.1:1", "commands_topic": TOPIC})


class _Pair(NamedTuple):
    cfg: config.Config
    wake: threading.Event
    intake: CommandIntake
    forwarder: CommandForwarder


@pytest.fixture
def pair(tmp_path):
    """A ledger's intake (instance "0") and a sender's forwarder on one state dir, both closed at the end."""
    cfg = _cfg(tmp_path)
    wake = threading.Event()
    intake = CommandIntake(cfg, "0", wake)
    forwarder = CommandForwarder(cfg)
    try:
        yield _Pair(cfg, wake, intake, forwarder)
    finally:
        forwarder.close()
        intake.close()


def _rec(offset: int, partition: int = 0) -> RecordTuple:
    return RecordTuple(TOPIC, partition, offset, str(offset).encode(), f"v{offset}".encode(), 0)


def test_pack_and_unpack_give_back_the_records_with_or_without_a_key():
    keys = (b"123", b"", None)
    data = b"".join(pack(3, 2**40 + i, key, b'{"type":"Kill"}', 1234) for i, key in enumerate(keys))
    assert unpack(data, TOPIC) == [RecordTuple(TOPIC, 3, 2**40 + i, key, b'{"type":"Kill"}', 1234)
                                   for i, key in enumerate(keys)]


def test_a_truncated_or_padded_datagram_is_refused():
    data = pack(1, 5, b"k", b"value", 0) * 2
    assert unpack(data[:-1], TOPIC) is None
    assert unpack(data + b"x", TOPIC) is None
    assert unpack(b"short", TOPIC) is None


def test_frames_are_joined_into_datagrams_under_the_limit():
    frames = [pack(0, i, b"k", b"v" * 1000, 0) for i in range(200)]
    datagrams = list(local_commands._datagrams(frames))
    assert len(datagrams) > 1 and all(len(d) <= local_commands.MAX_DATAGRAM for d, _ in datagrams)
    assert sum(n for _, n in datagrams) == 200
    assert [r.offset for d, _ in datagrams for r in unpack(d, TOPIC)] == list(range(200))


def test_held_commands_are_taken_only_at_their_turn_and_a_gap_waits_for_the_topic():
    held = {10: _rec(10), 11: _rec(11), 13: _rec(13)}
    assert [r.offset for r in in_log_order(10, [], held)] == [10, 11]
    assert list(held) == [13]                                   # 12 missing: 13 waits
    assert [r.offset for r in in_log_order(12, [_rec(12)], held)] == [12, 13]
    assert held == {}


def test_fetched_records_vouch_for_what_lies_before_them_and_stale_ones_are_skipped():
    held = {5: _rec(5), 9: _rec(9), 10: _rec(10), 4: _rec(4)}
    # the topic brought 3 (already judged), 6 and 8: offset 7 is no record (a marker), so 9 and 10 follow 8
    taken = in_log_order(5, [_rec(3), _rec(6), _rec(8)], held)
    assert [r.offset for r in taken] == [5, 6, 8, 9, 10]
    assert held == {}                                           # 4 lay below the start: dropped


@given(st.sets(st.integers(0, 40)), st.sets(st.integers(0, 40)), st.integers(0, 40))
def test_whatever_arrives_the_batch_is_the_log_in_order_from_the_start(fetched_at, held_at, start):
    """The taken offsets rise strictly from ``start``; every fetched record at or after ``start`` is taken; a held
    one is taken only where nothing the log could hold lies unread before it."""
    fetched = [_rec(o) for o in sorted(fetched_at)]
    held = {o: _rec(o) for o in held_at}
    taken = [r.offset for r in in_log_order(start, fetched, held)]
    assert taken == sorted(set(taken)) and all(o >= start for o in taken)
    assert {o for o in fetched_at if o >= start} <= set(taken)
    vouched = start
    for o in taken:
        assert o in fetched_at or o == vouched, (o, vouched)
        vouched = o + 1
    assert all(o > vouched for o in held)                       # what is left waits beyond a gap


class _Delivery(Future):
    pass


def test_a_stored_command_reaches_the_ledger_holding_its_partition_and_no_other(pair):
    cfg, wake, intake, forwarder = pair
    assert intake.bound
    intake.link(2)
    sent = _Delivery()
    forwarder.follow(sent, b"77", b"cmd-77")
    other = _Delivery()
    forwarder.follow(other, b"78", b"cmd-78")      # partition 5 is not held here
    failed = _Delivery()
    forwarder.follow(failed, b"79", b"cmd-79")     # the broker refused it: never handed over
    other.set_result(Delivered(TOPIC, 5, 0))
    failed.set_exception(RuntimeError("not stored"))
    sent.set_result(Delivered(TOPIC, 2, 41))
    assert wake.wait(10)
    assert intake.ready({2: 41})
    [rec] = intake.take(2, 41, [])
    assert (rec.partition, rec.offset, rec.key, rec.value) == (2, 41, b"77", b"cmd-77")
    forwarder.close()
    assert forwarder.stats == {"handed": 1, "left": 1, "direct": 0, "direct refused": 0}


def test_a_partition_given_up_is_unlinked_and_its_held_commands_forgotten(pair):
    cfg, wake, intake, forwarder = pair
    intake.link(1)
    first = _Delivery()
    forwarder.follow(first, b"1", b"one")
    first.set_result(Delivered(TOPIC, 1, 0))
    assert wake.wait(10)
    intake.unlink(1)
    assert not local_commands.link_path(cfg, 1).exists()
    assert not intake.ready({1: 0}) and intake.take(1, 0, []) == []
    late = _Delivery()
    forwarder.follow(late, b"1", b"two")
    late.set_result(Delivered(TOPIC, 1, 1))
    forwarder.close()
    # no link: left to the topic
    assert forwarder.stats == {"handed": 1, "left": 1, "direct": 0, "direct refused": 0}


def test_a_burst_beyond_the_socket_queue_goes_packed_and_nothing_is_lost(pair):
    """Thousands of acknowledgements at once (a bulk submit): a datagram socket queues only a few datagrams, so they
    go packed, a few hundred commands a datagram; each command is either handed over (and arrives, in order) or left
    to the topic (when the listener, starved of CPU, makes no room in time) — never lost between the two."""
    cfg, wake, intake, forwarder = pair
    intake.link(0)
    deliveries = [_Delivery() for _ in range(3000)]
    for i, d in enumerate(deliveries):
        forwarder.follow(d, str(i).encode(), b"x" * 200)
    for i, d in enumerate(deliveries):
        d.set_result(Delivered(TOPIC, 0, i))
    forwarder.close()
    handed = forwarder.stats["handed"]
    assert handed > 0 and handed + forwarder.stats["left"] == 3000
    while intake.stats["commands"] < handed:
        assert wake.wait(5), f"{intake.stats['commands']} of {handed} commands arrived"
        wake.clear()
    assert intake.stats["commands"] == handed
    assert intake.stats["datagrams"] <= handed // 100 + 1
    held = intake.take(0, 0, [])
    assert [r.offset for r in held] == list(range(len(held)))   # the first ones in order, up to any gap


def test_switched_off_nothing_is_bound_or_sent(tmp_path):
    cfg = _cfg(tmp_path, on=False)
    intake = CommandIntake(cfg, "0", threading.Event())
    forwarder = CommandForwarder(cfg)
    d = _Delivery()
    forwarder.follow(d, b"1", b"x")
    d.set_result(Delivered(TOPIC, 0, 0))
    assert not intake.bound and forwarder.stats == {"handed": 0, "left": 0, "direct": 0, "direct refused": 0}
    assert not (tmp_path / "commands").exists()
    intake.close()
    forwarder.close()


def test_a_partition_fed_by_hand_is_paused_and_fetched_again_at_a_gap_or_a_quiet_spell():
    from core.local_commands import feed_changes

    def changes(paused, handed_at, gap_since, now):
        return feed_changes([0, 1], paused, handed_at, gap_since, now, look_s=1.0, gap_s=0.02)

    assert changes(set(), {0: 9.9}, {}, 10.0) == ({0}, set())            # handed over lately, no gap: pause 0
    assert changes(set(), {0: 9.9}, {0: 9.995}, 10.0) == (set(), set())   # a gap (maybe just reordered): wait
    assert changes({0}, {0: 9.9}, {0: 9.995}, 10.0) == (set(), set())     # paused, the gap too young to fetch
    assert changes({0}, {0: 9.9}, {0: 9.9}, 10.0) == (set(), {0})         # the gap lasted: fetch it
    assert changes({0}, {0: 8.5}, {}, 10.0) == (set(), {0})               # nothing by hand for a while: a look
    assert changes({1}, {}, {}, 10.0) == (set(), {1})                     # never handed over: fetched


def test_ledgers_linked_names_the_partitions_a_live_ledger_holds(pair):
    cfg, _, intake, _ = pair
    assert local_commands.ledgers_linked(cfg, range(4)) == set()
    intake.link(0)
    intake.link(2)
    assert local_commands.ledgers_linked(cfg, range(4)) == {0, 2}
    intake.unlink(2)
    assert local_commands.ledgers_linked(cfg, range(4)) == {0}
    intake.close()                                           # its socket gone: a link left behind does not count
    assert local_commands.ledgers_linked(cfg, range(4)) == set()


def test_a_direct_command_reaches_the_ledger_of_its_partition_only_while_it_holds_it(pair):
    cfg, wake, intake, forwarder = pair
    assert not forwarder.hand(3, b"30", b"cmd-30")          # no ledger holds partition 3 here: the topic's job
    intake.link(3)
    assert forwarder.hand(3, b"30", b"cmd-30") and forwarder.hand(3, b"31", b"cmd-31")
    assert wake.wait(10)
    while len(taken := intake.take_direct()) < 2:            # the listener may hold the second one a moment later
        intake.give_back(taken)
        wake.clear()
        assert wake.wait(10)
    assert [(r.partition, r.offset, r.key, r.value) for r in taken] == [
        (3, local_commands.DIRECT, b"30", b"cmd-30"), (3, local_commands.DIRECT, b"31", b"cmd-31")]
    assert intake.take_direct() == [] and not intake.ready({3: 0})
    # taken but not judged (the database away): given back, they come first next time
    intake.give_back(taken[1:])
    assert forwarder.hand(3, b"32", b"cmd-32")
    _until(lambda: intake.stats["direct"] == 3)
    assert intake.ready({}) and [r.key for r in intake.take_direct()] == [b"31", b"32"]
    # a partition given up drops what it held and refuses what comes after
    assert forwarder.hand(3, b"33", b"cmd-33")
    _until(lambda: intake.stats["direct"] == 4)
    intake.unlink(3)
    assert intake.take_direct() == [] and not forwarder.hand(3, b"34", b"cmd-34")
    forwarder.close()
    assert (forwarder.stats["direct"], forwarder.stats["direct refused"]) == (4, 2)


def _until(condition, seconds: float = 10.0) -> None:
    """Wait for the listener's thread to have done something (checked every 10 ms, at most ``seconds``)."""
    tick = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        tick.wait(0.01)
    raise AssertionError("the listener did not get there in time")


def test_switched_off_nothing_is_handed_directly(tmp_path):
    forwarder = CommandForwarder(_cfg(tmp_path, on=False))
    assert not forwarder.hand(0, b"1", b"cmd")
    forwarder.close()
