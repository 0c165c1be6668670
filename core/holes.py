"""A consumer that does not read past an offset the broker has handed out but not stored yet.

Why: the embedded broker (Tansu, memory storage) gives a produced batch its offsets first (it moves the
partition's high watermark) and stores the batch a moment later. A fetch in that moment, after a *later*
batch of another producer is already stored, lists only the later one: the consumer's position moves past
the earlier batch, which is then in the log for good but never delivered to that consumer. On a partition
with several writers this lost commands: the gateway's and the reactors' producers all write
panda.job-commands, and the ledger, reading it, skipped a batch now and then (in one lifecycle bench run
in ten or twenty, a few jobs never finished, with no event, no rejection and no error anywhere). A
consumer alone cannot tell such a hole from offsets that legitimately carry no record (transaction markers,
records deleted), but a hole fills within moments, a marker never: so ``HoleGuard`` stops at a gap, reads
from its start again, and only passes over it once it has stayed a gap for ``wait_s`` seconds.

Use it on topics whose offsets normally have no gaps (no transactional writer), where a gap is almost
always a hole: panda.job-commands (written by plain idempotent producers; only ``pandaes restore`` writes
it in transactions). A topic with one writer (panda.job-events: the ledger) cannot have such a hole, and
its transaction markers would make every gap wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from core.bus import Consumer, Record, TopicPartition

log = logging.getLogger(__name__)

#: seconds a gap must stay one before it is passed over (a hole fills as soon as its writer stores it)
HOLE_WAIT_S = 2.0


class HoleGuard:
    """Wraps a ``core.bus.Consumer``: ``poll`` returns each partition's records up to the first gap after the
    last record it returned (or the offset last sought), seeks back to that gap and returns the rest once
    the gap is filled, or once it has been a gap for ``wait_s`` seconds (logged). Everything else is the
    wrapped consumer's."""

    def __init__(self, inner: Consumer, *, wait_s: float = HOLE_WAIT_S, clock: Callable[[], float] = time.monotonic):
        self._inner = inner
        self.wait_s = wait_s
        self._clock = clock
        self._next: dict[TopicPartition, int] = {}                # offset the next record should have
        self._gap: dict[TopicPartition, tuple[int, float]] = {}   # gap start → when first seen
        self.stats = {"refetched": 0, "filled": 0, "passed": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    # ------------------------------------------------------------------------------ positions
    def _forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._next.pop(tp, None)
            self._gap.pop(tp, None)

    def subscribe(self, topics: Sequence[str], *,
                  on_assign: Callable[[set[TopicPartition]], None] | None = None,
                  on_revoke: Callable[[set[TopicPartition]], None] | None = None) -> None:
        def assigned(partitions: set[TopicPartition]) -> None:
            self._forget(partitions)
            if on_assign is not None:
                on_assign(partitions)

        def revoked(partitions: set[TopicPartition]) -> None:
            self._forget(partitions)
            if on_revoke is not None:
                on_revoke(partitions)

        self._inner.subscribe(topics, on_assign=assigned, on_revoke=revoked)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        self._forget(self._next.keys() - set(partitions))
        self._forget(partitions)
        self._inner.assign(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._inner.seek(partition, offset)
        self._next[partition] = offset
        gap = self._gap.get(partition)
        if gap is not None and gap[0] != offset:
            del self._gap[partition]

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        self._inner.seek_to_end(*partitions)
        self._forget(partitions)

    # ----------------------------------------------------------------------------------- reads
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Mapping[TopicPartition, Sequence[Record]]:
        polled = self._inner.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: dict[TopicPartition, Sequence[Record]] = {}
        for tp, msgs in polled.items():
            keep = self._contiguous(tp, msgs)
            if keep:
                out[tp] = keep
                self._next[tp] = keep[-1].offset + 1
        return out

    def _contiguous(self, tp: TopicPartition, msgs: Sequence[Record]) -> Sequence[Record]:
        """``msgs`` up to the first gap not to be passed over yet (then sought back to its start)."""
        at = self._next.get(tp)
        if at is None:
            return msgs
        for i, m in enumerate(msgs):
            if m.offset > at and not self._pass_over(tp, at, m.offset):
                self._inner.seek(tp, at)
                return msgs[:i]
            if m.offset >= at:
                gap = self._gap.get(tp)
                if gap is not None and gap[0] == m.offset:   # the hole was filled: its record is here now
                    del self._gap[tp]
                    self.stats["filled"] += 1
                    log.info("%s[%d]: offset %d was stored after a later one; read it on a second fetch",
                             tp.topic, tp.partition, m.offset)
            at = max(at, m.offset + 1)
        return msgs

    def _pass_over(self, tp: TopicPartition, start: int, end: int) -> bool:
        """Whether the gap [start, end) has been one long enough to go on past it."""
        now = self._clock()
        gap = self._gap.get(tp)
        if gap is None or gap[0] != start:
            self._gap[tp] = (start, now)
            self.stats["refetched"] += 1
            return False
        if now - gap[1] < self.wait_s:
            self.stats["refetched"] += 1
            return False
        del self._gap[tp]
        self.stats["passed"] += 1
        log.warning("%s[%d]: offsets %d..%d returned no record for %.1fs (transaction markers or deleted "
                    "records); going on from %d", tp.topic, tp.partition, start, end - 1, now - gap[1], end)
        return True
