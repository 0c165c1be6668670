"""The event-range tables (migrations/230_event_ranges.sql): the one module that reads and writes them.

Every change of a range's status is a row of ``event_range_changes`` written in the same transaction as
the new status (with the range's next ``seq``), so the state can be replayed from the changes like a job's
from its events. Acquisition takes ready ranges with ``FOR UPDATE SKIP LOCKED`` and moves them to sent in
that statement: two concurrent acquisitions never get the same range, and a sent range is never ready again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from . import ranges
from .ranges import RangeDef

DEFINE_SQL = (
    "INSERT INTO event_ranges (pandaid, range_id, process_id, lfn, guid, scope, start_event, last_event, status, seq)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'ready', 1) ON CONFLICT DO NOTHING RETURNING range_id")
CHANGE_SQL = (
    "INSERT INTO event_range_changes (range_id, seq, pandaid, from_status, to_status, actor, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)")
ACQUIRE_SQL = (
    "UPDATE event_ranges SET status = 'sent', seq = seq + 1 WHERE (pandaid, range_id) IN"
    " (SELECT pandaid, range_id FROM event_ranges WHERE pandaid = %s AND status = 'ready'"
    "  ORDER BY process_id LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING pandaid, range_id, process_id, lfn, guid, scope, start_event, last_event, seq")
COUNT_SQL = "SELECT count(*) FROM event_ranges WHERE pandaid = %s AND status = 'ready'"
LOCK_SQL = "SELECT pandaid, status, seq FROM event_ranges WHERE range_id = %s FOR UPDATE"
SET_SQL = "UPDATE event_ranges SET status = %s, seq = %s WHERE range_id = %s"
CHANGES_SQL = ("SELECT range_id, from_status, to_status FROM event_range_changes WHERE pandaid = %s"
               " ORDER BY range_id, seq")
STATUS_SQL = "SELECT range_id, status FROM event_ranges WHERE pandaid = %s"
JOBS_OF_SQL = "SELECT DISTINCT pandaid FROM event_ranges WHERE range_id = ANY(%s)"


def define(conn: psycopg.Connection, pandaid: int, defs: Sequence[RangeDef], actor: str) -> int:
    """Record a job's ranges once (a redelivered submission adds nothing); how many were new."""
    new = 0
    with conn.transaction():
        for d in defs:
            row = conn.execute(DEFINE_SQL, (pandaid, d.range_id, d.process_id, d.lfn, d.guid, d.scope,
                                            d.start_event, d.last_event)).fetchone()
            if row is not None:
                conn.execute(CHANGE_SQL, (d.range_id, 1, pandaid, None, ranges.READY, actor, None))
                new += 1
    return new


async def acquire(conn: AsyncConnection, pandaid: int, n: int, actor: str) -> list[dict[str, Any]]:
    """Up to ``n`` ready ranges of the job, in order, now sent (each handed out once, ever)."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(ACQUIRE_SQL, (pandaid, n))
        rows = sorted(await cur.fetchall(), key=lambda r: r["process_id"])
        for r in rows:
            await cur.execute(CHANGE_SQL, (r["range_id"], r["seq"], pandaid, ranges.READY, ranges.SENT, actor, None))
    return rows


async def available(conn: AsyncConnection, pandaid: int) -> int:
    row = await (await conn.execute(COUNT_SQL, (pandaid,))).fetchone()
    return int(row[0])


async def report(conn: AsyncConnection, range_id: str, status: str, actor: str,
                 detail: dict[str, Any] | None = None) -> bool:
    """Apply one reported status if the table allows it; False (nothing recorded) otherwise."""
    async with conn.transaction():
        row = await (await conn.execute(LOCK_SQL, (range_id,))).fetchone()
        if row is None:
            return False
        pandaid, current, seq = row
        if not ranges.may_change(current, status):
            return False
        await conn.execute(SET_SQL, (status, seq + 1, range_id))
        await conn.execute(CHANGE_SQL, (range_id, seq + 1, pandaid, current, status, actor,
                                        Jsonb(detail) if detail else None))
    return True


async def jobs_of(conn: AsyncConnection, range_ids: Sequence[str]) -> list[int]:
    """The PandaIDs owning these ranges as the table records them (unknown ids add nothing), ascending."""
    cur = await conn.execute(JOBS_OF_SQL, (list(range_ids),))
    return sorted(r[0] for r in await cur.fetchall())


def changes(conn: psycopg.Connection, pandaid: int) -> list[tuple[str, str | None, str]]:
    """Every recorded change of the job's ranges, in order (what ``ranges.fold`` replays)."""
    return [tuple(r) for r in conn.execute(CHANGES_SQL, (pandaid,))]


def statuses(conn: psycopg.Connection, pandaid: int) -> dict[str, str]:
    return dict(conn.execute(STATUS_SQL, (pandaid,)).fetchall())
