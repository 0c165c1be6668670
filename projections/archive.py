"""The events archive: every event ever, append-only, queryable by PandaID and time.

It is the history behind ``pandaes history``, and the copy of the log that ``pandaes restore``
re-publishes when a broker has lost its own (the embedded broker keeps memory only).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import psycopg

from projections.base import Record


class ArchiveProjection:
    name = "archive"
    tables = ("job_events",)

    def apply(self, conn: psycopg.Connection, records: Sequence[Record]) -> None:
        rows = []
        for rec in records:
            ev = rec.event
            rows.append((
                ev.PandaID, ev.seq, ev.__struct_config__.tag, getattr(ev, "action", "submit"),
                ev.from_state, ev.to_state, dt.datetime.fromtimestamp(ev.time, dt.UTC), ev.actor,
                ev.command_id, rec.partition, rec.offset, rec.raw.decode(),
            ))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO job_events (pandaid, seq, type, action, from_state, to_state, time, actor,"
                " command_id, partition, kafka_offset, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, %s, %s::jsonb) ON CONFLICT (pandaid, seq) DO NOTHING",
                rows,
            )
