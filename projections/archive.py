"""The events archive: every event ever, append-only, queryable by PandaID and time.

It is the history behind ``pandaes history``, and the copy of the log that ``pandaes restore``
re-publishes when a broker has lost its own (the embedded broker keeps memory only), and what
``pandaes verify``/``rebuild`` read below the broker's log start when the log was trimmed
(``cli.logread``). After such a re-publication the offsets are new: ``realign`` maps the archive and
every projection's position onto them.

A batch is one ``INSERT … SELECT FROM unnest(…)`` (binary array parameters), not one statement per event.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import psycopg

from projections.base import Record

_INSERT_SQL = (
    "INSERT INTO job_events (pandaid, seq, type, action, from_state, to_state, time, actor, command_id, partition,"
    " kafka_offset, body) SELECT * FROM unnest(%b::bigint[], %b::int[], %b::text[], %b::text[], %b::text[],"
    " %b::text[], %b::timestamptz[], %b::text[], %b::text[], %b::int[], %b::bigint[], %b::text[]::jsonb[])"
    " ON CONFLICT (pandaid, seq) DO NOTHING"
)
_UTC = dt.UTC
_fromtimestamp = dt.datetime.fromtimestamp


class ArchiveProjection:
    name = "archive"
    tables = ("job_events",)

    def apply(self, conn: psycopg.Connection, records: Sequence[Record]) -> None:
        if not records:
            return
        events = [rec.event for rec in records]
        # one batch may hold an event twice only if the log does; the first one wins, as row by row
        seen: set[tuple[int, int]] = set()
        if len({(ev.PandaID, ev.seq) for ev in events}) != len(events):
            keep = []
            for rec in records:
                key = (rec.event.PandaID, rec.event.seq)
                if key not in seen:
                    seen.add(key)
                    keep.append(rec)
            records = keep
            events = [rec.event for rec in records]
        with conn.cursor() as cur:
            cur.execute(_INSERT_SQL, [
                [ev.PandaID for ev in events],
                [ev.seq for ev in events],
                [ev.__struct_config__.tag for ev in events],
                [getattr(ev, "action", "submit") for ev in events],
                [ev.from_state for ev in events],
                [ev.to_state for ev in events],
                [_fromtimestamp(ev.time, _UTC) for ev in events],
                [ev.actor for ev in events],
                [ev.command_id for ev in events],
                [rec.partition for rec in records],
                [rec.offset for rec in records],
                [rec.raw.decode() for rec in records],
            ])


class NotInLog(ValueError):
    """Archived events are missing from the re-published topic: realigning would lose them."""


class Realigned(NamedTuple):
    positions: dict[tuple[str, int], tuple[int, int]]   # (projection, partition) → (old, new) next offset
    warnings: list[str]


def realign(conn: psycopg.Connection, topic: str, new: Mapping[tuple[int, int], int],
            end: Mapping[int, int]) -> Realigned:
    """Map archive offsets and projection positions onto a re-published ``topic``, in one transaction.

    ``new`` is the offset of every (PandaID, seq) in the topic now, ``end`` its partitions' end offsets.
    A position "next = old offset X" becomes the new offset of the first event at or after X. The
    archive's ``kafka_offset`` takes the new offsets and loses ``src`` (the commands it pointed at are
    gone with the old log)."""
    positions: dict[tuple[str, int], tuple[int, int]] = {}
    warnings: list[str] = []
    with conn.transaction():
        old_to_new: dict[int, list[tuple[int, int]]] = {}
        rows = conn.execute("SELECT partition, kafka_offset, pandaid, seq FROM job_events").fetchall()
        missing = 0
        for partition, old, pid, seq in rows:
            if (pid, seq) in new:
                old_to_new.setdefault(partition, []).append((old, new[(pid, seq)]))
            else:
                missing += 1
        if missing:
            raise NotInLog(f"{missing} archived event(s) are not in {topic} after publishing: not realigning")
        for pairs in old_to_new.values():
            pairs.sort()
        for proj, partition, pos in conn.execute(
                "SELECT projection, partition, next_offset FROM consumer_positions WHERE topic = %s",
                (topic,)).fetchall():
            pairs = old_to_new.get(partition, [])
            i = bisect.bisect_left(pairs, (pos, -1))
            moved = pairs[i][1] if i < len(pairs) else end.get(partition, 0)
            if pairs and pos > pairs[-1][0] + 1:
                warnings.append(
                    f"{proj} had applied partition {partition} up to offset {pos}, beyond the archive's last "
                    f"event ({pairs[-1][0]}): events the archive never saw are gone (or were transaction markers)")
            if moved != pos:
                conn.execute("UPDATE consumer_positions SET next_offset = %s WHERE projection = %s AND topic = %s"
                             " AND partition = %s", (moved, proj, topic, partition))
            positions[(proj, partition)] = (pos, moved)
        conn.execute("CREATE TEMP TABLE restore_map (pandaid bigint, seq int, kafka_offset bigint) ON COMMIT DROP")
        with conn.cursor().copy("COPY restore_map (pandaid, seq, kafka_offset) FROM STDIN") as copy:
            for (pid, seq), off in new.items():
                copy.write_row((pid, seq, off))
        conn.execute("UPDATE job_events j SET kafka_offset = m.kafka_offset, body = j.body - 'src'"
                     " FROM restore_map m WHERE j.pandaid = m.pandaid AND j.seq = m.seq"
                     " AND (j.kafka_offset <> m.kafka_offset OR j.body ? 'src')")
    return Realigned(positions, warnings)
