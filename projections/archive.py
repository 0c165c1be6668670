"""The events archive: every event ever, append-only, queryable by PandaID and time.

It is the history behind ``pandaes history``, and the copy of the log that ``pandaes restore``
re-publishes when a broker has lost its own (the embedded broker keeps memory only).

A batch is one ``INSERT … SELECT FROM unnest(…)`` (binary array parameters), not one statement per event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

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
