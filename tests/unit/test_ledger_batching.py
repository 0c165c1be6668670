"""The ledger's gathering under load: a busy poll gathers more commands into one transaction (core/ledger.py,
[ledger] gather_ms). Pure: a fake consumer."""

from __future__ import annotations

from core.bus import RecordTuple, TopicPartition
from core.ledger import Ledger

A, B = TopicPartition("cmds", 0), TopicPartition("cmds", 1)


def _rec(tp: TopicPartition, offset: int) -> RecordTuple:
    return RecordTuple(tp.topic, tp.partition, offset, b"1", b"{}", 0)


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
    ledger._projected, ledger._let_go_at, ledger.resume_at = {}, {}, {}
    ledger.consumer = _Consumer(ledger, polls, revoke_at)
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


def test_a_rebalance_inside_a_gather_ends_it_and_drops_the_revoked_partitions_records():
    ledger = _ledger([{B: [_rec(B, 0)]}, {A: [_rec(A, 2)]}], revoke_at=1)
    out = ledger._gather({A: [_rec(A, 0), _rec(A, 1)], B: [_rec(B, 5)]})
    assert out == {A: [_rec(A, 0), _rec(A, 1)]}
    assert ledger.consumer.calls == 1
