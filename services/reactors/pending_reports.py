"""The adder's store: the ``adder_pending`` table (migrations/151_adder_pending.sql beside this module).

Why a table of the adder's own: a report whose plugin call failed temporarily must be tried again
later, by whichever adder copy owns the job then, and must not be tried by two at once. The report
itself stays in the event log (``job_events``); a row here only points at that event (PandaID, seq)
and carries the retry schedule and a lease (PanDA's job_output_report with lockJobOutputReport).

Only this module writes or reads the table: the adder (``defer``/``done``/``due``/``lease``) and the
finisher (``pandaids``/``forget`` for jobs that are over). Functions take an open connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import psycopg

from core import db


def _stamp(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def defer(conn: psycopg.Connection, pandaid: int, seq: int, error: str, *, now: float, retry_delay: float,
          max_delay: float) -> tuple[int, float]:
    """Schedule the report of event (pandaid, seq) again, backing off per attempt; (attempts, delay)."""
    row = conn.execute("SELECT attempts FROM adder_pending WHERE pandaid = %s", (pandaid,)).fetchone()
    attempts = (row[0] + 1) if row else 1
    delay = min(retry_delay * 2 ** (attempts - 1), max_delay)
    conn.execute(
        "INSERT INTO adder_pending (pandaid, seq, attempts, next_try, last_error) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (pandaid) DO UPDATE SET seq = EXCLUDED.seq, attempts = EXCLUDED.attempts,"
        " next_try = EXCLUDED.next_try, last_error = EXCLUDED.last_error, locked_until = NULL, locked_by = NULL",
        (pandaid, seq, attempts, _stamp(now + delay), error[:1000]))
    return attempts, delay


def done(conn: psycopg.Connection, pandaid: int) -> None:
    """The job's report is dealt with (or never was pending)."""
    conn.execute("DELETE FROM adder_pending WHERE pandaid = %s", (pandaid,))


def done_many(conn: psycopg.Connection, pandaids: Iterable[int]) -> None:
    """The reports of these jobs are dealt with (one statement for a poll's jobs)."""
    pids = sorted(set(pandaids))
    if pids:
        conn.execute("DELETE FROM adder_pending WHERE pandaid = ANY(%s)", (pids,))


def due(conn: psycopg.Connection, now: float) -> list[tuple[int, int]]:
    """(PandaID, seq) of the reports due at ``now`` and not leased by anyone."""
    stamp = _stamp(now)
    rows = conn.execute("SELECT pandaid, seq FROM adder_pending WHERE next_try <= %s"
                        " AND (locked_until IS NULL OR locked_until < %s) ORDER BY next_try, pandaid",
                        (stamp, stamp)).fetchall()
    return [(r[0], r[1]) for r in rows]


def lease(conn: psycopg.Connection, keys: Iterable[tuple[int, int]], now: float, seconds: float,
          holder: str) -> list[tuple[int, int]]:
    """Lease these due reports to ``holder`` until ``now + seconds``; the ones this call got (a report
    rescheduled or leased by another adder meanwhile is not among them)."""
    keys = sorted(set(keys))
    if not keys:
        return []
    stamp = _stamp(now)
    rows = conn.execute(
        "UPDATE adder_pending p SET locked_until = %s, locked_by = %s"
        "  FROM unnest(%s::bigint[], %s::int[]) AS k(pandaid, seq)"
        " WHERE p.pandaid = k.pandaid AND p.seq = k.seq AND p.next_try <= %s"
        "   AND (p.locked_until IS NULL OR p.locked_until < %s)"
        " RETURNING p.pandaid, p.seq",
        (_stamp(now + seconds), holder, [k[0] for k in keys], [k[1] for k in keys], stamp, stamp)).fetchall()
    return sorted((r[0], r[1]) for r in rows)


def pandaids(conn: psycopg.Connection) -> list[int]:
    """Every job with a pending report."""
    return [r[0] for r in conn.execute("SELECT pandaid FROM adder_pending ORDER BY pandaid").fetchall()]


def forget(conn: psycopg.Connection, pandaids: Iterable[int]) -> int:
    """Drop the pending reports of these jobs; how many there were."""
    pids = sorted(set(pandaids))
    if not pids:
        return 0
    return conn.execute("DELETE FROM adder_pending WHERE pandaid = ANY(%s)", (pids,)).rowcount


def rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The whole table, by PandaID (for tools and tests)."""
    return db.fetch_all(conn, "SELECT * FROM adder_pending ORDER BY pandaid")
