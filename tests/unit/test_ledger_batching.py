"""The ledger's gathering under load: a busy poll gathers more commands into one transaction (core/ledger.py,
[ledger] gather_ms), also through the hole guard (core/holes.py) it reads with. Pure: fake consumers."""

from __future__ import annotations

import threading
import time

from core import config
from core.bus import RecordTuple, TopicPartition
from core.holes import HoleGuard
from core.ledger import Ledger
from core.local_commands import CommandIntake
from core.local_events import EventTeller

A, B = TopicPartition("cmds", 0), TopicPartition("cmds", 1)


# the commands' write time as a sender whose clock runs ahead would stamp it: no wait counted, the whole gather_ms
# is gathered (as for a command written just now), however long after collection a test runs
WRITTEN_MS = 4_102_444_800_000


def _rec(tp: TopicPartition, offset: int, written_ms: int = WRITTEN_MS) -> RecordTuple:
    return RecordTuple(tp.topic, tp.partition, offset, b"1", b"{}", written_ms)


class _Consumer:
    """Hands out prepared polls; ``revoke_at`` runs the ledger's revocation callback inside that poll."""

    def __init__(self, ledger: Ledger, polls: list[dict], revoke_at: int | None = None):
        self.ledger, self.polls, self.revoke_at, self.calls = ledger, list(polls), revoke_at, 0
        self.assigned = {A, B}

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.calls += 1
        if self.calls == self.revoke_at:
            self.assigned = {A}
            self.ledger._drop_partitions({B})
        return self.polls.pop(0) if self.polls else {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)


def _ledger(polls: list[dict], *, gather_s: float = 60.0, max_batch: int = 5, revoke_at: int | None = None) -> Ledger:
    ledger = Ledger.__new__(Ledger)
    ledger.gather_s, ledger.gather_from, ledger.max_batch = gather_s, 2, max_batch
    ledger._rebalances, ledger.stats = 0, {"gathered": 0}
    ledger.to_rebuild, ledger.jobs, ledger.recent, ledger.floor = set(), {}, {}, {}
    ledger._projected, ledger._let_go_at, ledger.resume_at, ledger.taken_to = {}, {}, {}, {}
    ledger.consumer = _Consumer(ledger, polls, revoke_at)
    ledger.intake = CommandIntake(config.load().replace(ledger={"local_commands": False}), "0", threading.Event())
    ledger.teller = EventTeller(config.load().replace(ledger={"local_events": False}))
    ledger._paused, ledger._handed_at, ledger._gap_since, ledger._direct = set(), {}, {}, []
    return ledger


def test_a_busy_poll_gathers_further_polls_in_order_up_to_the_batch_limit():
    first = {A: [_rec(A, 0), _rec(A, 1)]}
    ledger = _ledger([{B: [_rec(B, 0)]}, {A: [_rec(A, 2)], B: [_rec(B, 1)]}, {A: [_rec(A, 3)]}])
    out = ledger._gather(first)
    assert [r.offset for r in out[A]] == [0, 1, 2] and [r.offset for r in out[B]] == [0, 1]
    assert ledger.consumer.polls == [{A: [_rec(A, 3)]}]     # stopped at max_batch: the rest is the next batch's
    assert first == {A: [_rec(A, 0), _rec(A, 1)]}           # the caller's poll is not changed under it


def test_a_gather_ends_at_its_deadline():
    ledger = _ledger([{B: [_rec(B, 0)]}], gather_s=0.0)
    assert ledger._gather({A: [_rec(A, 0), _rec(A, 1)]}) == {A: [_rec(A, 0), _rec(A, 1)]}
    assert ledger.consumer.calls == 0


def test_a_burst_that_already_waited_its_gather_is_judged_at_once():
    """Commands that piled up while a slow commit ran: the oldest was written a whole gather ago, so no further
    poll is waited for (the gather must not lengthen the tail it follows)."""
    long_ago = int(time.time() * 1000) - 61_000
    ledger = _ledger([{B: [_rec(B, 0)]}])
    first = {A: [_rec(A, 0, long_ago), _rec(A, 1)]}
    assert ledger._gather(first) == first
    assert ledger.consumer.calls == 0


def test_a_rebalance_inside_a_gather_ends_it_and_drops_the_revoked_partitions_records():
    ledger = _ledger([{B: [_rec(B, 0)]}, {A: [_rec(A, 2)]}], revoke_at=1)
    out = ledger._gather({A: [_rec(A, 0), _rec(A, 1)], B: [_rec(B, 5)]})
    assert out == {A: [_rec(A, 0), _rec(A, 1)]}
    assert ledger.consumer.calls == 1


# ------------------------------------------------------------------ a gather through the hole guard
class _Log:
    """The commands topic as the embedded broker shows it (as the stand-in of tests/unit/test_holes.py, over
    several partitions): offsets numbered but not stored yet are ``hidden``; a fetch moves a partition's position
    past whatever it returned; ``on_poll`` runs before the n-th poll (the late batch stored meanwhile)."""

    def __init__(self, sizes: dict[TopicPartition, int], hidden: dict[TopicPartition, set[int]],
                 on_poll: dict[int, object] | None = None):
        self.records = {tp: [_rec(tp, o) for o in range(n)] for tp, n in sizes.items()}
        self.hidden = {tp: set(hidden.get(tp, ())) for tp in sizes}
        self.position = dict.fromkeys(sizes, 0)
        self.on_poll, self.calls = dict(on_poll or {}), 0

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.calls += 1
        if self.calls in self.on_poll:
            self.on_poll[self.calls]()
        out, left = {}, max_records or 10_000
        for tp, recs in self.records.items():
            got = [r for r in recs if r.offset >= self.position[tp] and r.offset not in self.hidden[tp]][:left]
            if got:
                out[tp], left = got, left - len(got)
                self.position[tp] = got[-1].offset + 1
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position[tp] = offset

    def assignment(self) -> set[TopicPartition]:
        return set(self.records)


def _guarded(log: _Log, *, gather_s: float, max_batch: int = 100) -> Ledger:
    ledger = _ledger([], gather_s=gather_s, max_batch=max_batch)
    ledger.consumer = HoleGuard(log)
    for tp in log.records:
        ledger.consumer.seek(tp, 0)     # where the rebuild puts a partition
    return ledger


def _offsets(polled: dict) -> dict[int, list[int]]:
    return {tp.partition: [r.offset for r in msgs] for tp, msgs in polled.items()}


def test_a_hole_filled_inside_a_gather_is_read_there_once_and_in_order():
    log = _Log({A: 10, B: 4}, {A: {3, 4}}, on_poll={3: lambda: log.hidden[A].clear()})
    ledger = _guarded(log, gather_s=60.0, max_batch=14)
    first = ledger.consumer.poll()
    assert _offsets(first) == {0: [0, 1, 2], 1: [0, 1, 2, 3]}     # up to the hole, sought back to it
    out = ledger._gather(first)                   # poll 2: still a hole, nothing of A; poll 3: stored
    assert _offsets(out) == {0: list(range(10)), 1: [0, 1, 2, 3]}
    assert ledger.consumer.stats["filled"] == 1 and ledger.consumer.stats["passed"] == 0
    assert ledger.consumer.poll() == {}           # nothing returned twice afterwards


def test_a_hole_still_open_when_a_gather_ends_is_read_by_the_next_batch():
    """The gather's transaction commits A's offset at the hole (its last record + 1), and the next poll
    starts there: the late batch is neither skipped nor the records before it read twice."""
    log = _Log({A: 10, B: 4}, {A: {3, 4}})
    ledger = _guarded(log, gather_s=0.02)
    out = ledger._gather(ledger.consumer.poll())
    assert _offsets(out) == {0: [0, 1, 2], 1: [0, 1, 2, 3]}
    assert log.calls > 2 and log.position[A] == 3   # polled on and on, each time back to the hole
    log.hidden[A].clear()
    assert _offsets(ledger.consumer.poll()) == {0: list(range(3, 10))}
    assert ledger.consumer.stats["passed"] == 0
