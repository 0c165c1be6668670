"""core/holes.py: a consumer does not read past a batch the broker had numbered but not stored yet."""

from __future__ import annotations

from core.bus import RecordTuple, TopicPartition
from core.holes import HoleGuard

TP = TopicPartition("cmds", 0)


class Log:
    """One partition as the embedded broker shows it: offsets numbered, some not stored yet (``hidden``),
    and a consumer position a fetch moves past whatever it returned (as librdkafka's does)."""

    def __init__(self, n: int, hidden: set[int] = frozenset()):
        self.records = {o: RecordTuple(TP.topic, TP.partition, o, None, f"r{o}".encode(), 0) for o in range(n)}
        self.hidden = set(hidden)
        self.position = 0
        self.seeks: list[int] = []

    # the consumer's side
    def poll(self, timeout_ms: int = 0, max_records: int | None = None):
        out = [r for o, r in sorted(self.records.items()) if o >= self.position and o not in self.hidden]
        if not out:
            return {}
        self.position = out[-1].offset + 1
        return {TP: out}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset
        self.seeks.append(offset)

    def subscribe(self, topics, *, on_assign=None, on_revoke=None) -> None:
        self.on_assign = on_assign

    def assign(self, partitions) -> None:
        pass


def read_all(consumer, polls: int = 5) -> list[int]:
    seen = []
    for _ in range(polls):
        for msgs in consumer.poll().values():
            seen += [m.offset for m in msgs]
    return seen


def test_a_plain_consumer_passes_over_a_batch_stored_late():
    """What lost commands: the later batch is fetched first and the position moves past the earlier one."""
    log = Log(10, hidden={3, 4})
    first = read_all(log, 1)
    log.hidden.clear()                      # the earlier batch is stored now, too late for this reader
    assert first + read_all(log) == [0, 1, 2, 5, 6, 7, 8, 9]


def test_the_guard_stops_at_the_hole_and_reads_it_once_stored():
    log = Log(10, hidden={3, 4})
    guard = HoleGuard(log)
    guard.seek(TP, 0)
    first = read_all(guard, 1)
    assert first == [0, 1, 2]               # up to the hole, then sought back to it
    assert log.position == 3
    assert read_all(guard, 2) == []         # still a hole: nothing past it is returned
    log.hidden.clear()
    assert read_all(guard) == [3, 4, 5, 6, 7, 8, 9]
    assert guard.stats["filled"] == 1


def test_a_gap_at_the_start_of_a_poll_is_a_hole_too():
    log = Log(6, hidden={0, 1})
    guard = HoleGuard(log)
    guard.seek(TP, 0)
    assert read_all(guard, 1) == []
    log.hidden.clear()
    assert read_all(guard) == [0, 1, 2, 3, 4, 5]


def test_a_gap_that_stays_is_passed_over_after_the_wait():
    """Offsets without a record for good (transaction markers, deleted records) do not stop the reader."""
    now = [100.0]
    log = Log(8, hidden={2, 3})
    guard = HoleGuard(log, wait_s=2.0, clock=lambda: now[0])
    guard.seek(TP, 0)
    assert read_all(guard, 3) == [0, 1]
    now[0] += 1.0
    assert read_all(guard, 1) == []
    now[0] += 1.5
    assert read_all(guard) == [4, 5, 6, 7]
    assert guard.stats["passed"] == 1


def test_without_a_known_position_the_first_records_are_taken_as_they_come():
    log = Log(5, hidden={0})
    guard = HoleGuard(log)
    assert read_all(guard) == [1, 2, 3, 4]


def test_an_assignment_forgets_the_position():
    log = Log(6, hidden={2})
    guard = HoleGuard(log)
    seen = []
    guard.subscribe(["cmds"], on_assign=seen.append)
    guard.seek(TP, 0)
    assert read_all(guard, 1) == [0, 1]
    log.on_assign({TP})                     # a rebalance: the partition starts where the group says
    assert seen == [{TP}]
    log.position = 3
    assert read_all(guard) == [3, 4, 5]
