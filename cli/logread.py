"""Reading panda.job-events directly, for tools that must not trust the projections.

``read_log`` reads many partitions with one group-less consumer (no offsets are committed, so no
service notices), from given start offsets up to the end offsets seen when it was called. It yields
``(partition, records)`` batches, each in offset order; partitions interleave, which is fine because
a job lives in exactly one partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from core import bus, db
from core.bus import Record, RecordTuple, TopicPartition
from core.config import Config
from projections import queries
from projections.base import load_positions


def topic_partitions(cfg: Config, topic: str) -> list[int]:
    return bus.partitions(cfg, topic)


def log_bounds(cfg: Config, topic: str | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """(beginning, end) offsets of every partition; beginning > 0 means retention deleted events."""
    topic = topic or cfg.kafka.events_topic
    c = bus.consumer(cfg, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions(topic)]
        begin = {tp.partition: off for tp, off in c.beginning_offsets(tps).items()}
        end = {tp.partition: off for tp, off in c.end_offsets(tps).items()}
        return begin, end
    finally:
        c.close()


def read_log(cfg: Config, *, topic: str | None = None, start: dict[int, int] | None = None,
             end: dict[int, int] | None = None,
             partitions: list[int] | None = None) -> Iterator[tuple[int, list[Record]]]:
    """Every record of the chosen partitions in ``[start, end)``; ``end`` defaults to the current end."""
    topic = topic or cfg.kafka.events_topic
    c = bus.consumer(cfg, group_id=None, max_poll_records=10000)
    try:
        parts = partitions if partitions is not None else c.partitions(topic)
        tps = {p: TopicPartition(topic, p) for p in parts}
        if end is None:
            end = {tp.partition: off for tp, off in c.end_offsets(list(tps.values())).items()}
        start = start or {}
        todo = {p: tp for p, tp in tps.items() if start.get(p, 0) < end.get(p, 0)}
        if not todo:
            return
        c.assign(list(todo.values()))
        for p, tp in todo.items():
            c.seek(tp, start.get(p, 0))
        while todo:
            polled = c.poll(timeout_ms=1000)
            for tp, recs in polled.items():
                if tp.partition not in todo:
                    continue
                stop = end[tp.partition]
                batch = recs if recs and recs[-1].offset < stop else [r for r in recs if r.offset < stop]
                if batch:
                    yield tp.partition, batch
            # transaction markers take offsets but are never returned: the position says when we are done
            for p, tp in list(todo.items()):
                if c.position(tp) >= end[p]:
                    del todo[p]
                    c.pause(tp)
    finally:
        c.close()


class ArchiveGap(RuntimeError):
    """The broker's log starts later than the archive reaches: events exist in neither."""


ArchiveReader = Callable[[int, int], Iterable[tuple[int, str]]]   # (partition, below offset) → (offset, body)
LogReader = Callable[[dict[int, int]], Iterator[tuple[int, list[Record]]]]   # start offsets → batches


def merge_archive(topic: str, begin: Mapping[int, int], archived_to: Mapping[int, int], archive: ArchiveReader,
                  log: LogReader, batch: int = 5000) -> Iterator[tuple[int, list[Record]]]:
    """The whole history of ``topic``: for each partition whose log starts after 0 (``begin``), the
    archived events below that offset first, then the log from where it starts.

    ``archived_to[p]`` is the archive projection's position (the next offset it would archive): below
    ``begin[p]`` the archive is the only copy, so it must have reached it, else ``ArchiveGap``. Archive
    bodies are the log's records as written (JSON), so the caller decodes both alike."""
    short = {p: (archived_to.get(p, 0), off) for p, off in begin.items() if off > archived_to.get(p, 0)}
    if short:
        raise ArchiveGap(f"{topic}: the log starts at {dict(begin)} but the PostgreSQL archive (job_events) only "
                         f"reaches {dict(archived_to)}; the events in between exist nowhere "
                         f"(partition: (archived to, log start) = {short})")
    for p in sorted(begin):
        if begin[p] <= 0:
            continue
        chunk: list[Record] = []
        for offset, body in archive(p, begin[p]):
            chunk.append(RecordTuple(topic, p, offset, None, body.encode(), 0))
            if len(chunk) >= batch:
                yield p, chunk
                chunk = []
        if chunk:
            yield p, chunk
    yield from log(dict(begin))


def read_history(cfg: Config, *, end: dict[int, int], begin: dict[int, int]) -> Iterator[tuple[int, list[Record]]]:
    """``read_log`` from offset 0, with what retention deleted (``begin`` > 0) read from the archive."""
    topic = cfg.kafka.events_topic
    if not any(begin.values()):
        yield from read_log(cfg, end=end)
        return
    with db.connect(cfg) as conn:
        archived_to = load_positions(conn, "archive", topic)

        def archive(partition: int, below: int) -> Iterable[tuple[int, str]]:
            return queries.archived_before(conn, partition, below)

        yield from merge_archive(topic, begin, archived_to, archive,
                                 lambda start: read_log(cfg, start=start, end=end))


def count_between(start: dict[int, int], end: dict[int, int]) -> int:
    """An upper bound of the records in [start, end) (markers take offsets too), for progress bars."""
    return sum(max(0, off - start.get(p, 0)) for p, off in end.items())
