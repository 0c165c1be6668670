"""What `pandaes chaos` asks the projections after its faults: the invariants' raw counts.

Why here: the jobs and job_events tables belong to the projections (only this folder queries them); the
chaos command judges the numbers (cli/chaos_checks.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

# a job's events must be seq 1, 2, …, n: n events, no repeat, starting at 1, and the jobs row at seq n
SEQ_ANOMALIES_SQL = (
    "SELECT e.pandaid, e.n, e.distinct_seqs, e.lo, e.hi, j.seq FROM"
    " (SELECT pandaid, count(*) n, count(DISTINCT seq) distinct_seqs, min(seq) lo, max(seq) hi"
    "  FROM job_events GROUP BY pandaid) e"
    " FULL JOIN jobs j ON j.pandaid = e.pandaid"
    " WHERE e.pandaid IS NULL OR j.pandaid IS NULL OR e.lo <> 1 OR e.hi <> e.n OR e.distinct_seqs <> e.n"
    " OR j.seq <> e.hi ORDER BY 1 LIMIT %s")
EVENT_TOTALS_SQL = "SELECT count(*), count(DISTINCT pandaid) FROM job_events"
# one command answered by two events (commands carry unique ids; a repeat would be a command applied twice)
DUPLICATE_COMMANDS_SQL = ("SELECT command_id, count(*), array_agg(pandaid || ':' || seq ORDER BY pandaid, seq)"
                          " FROM job_events GROUP BY command_id HAVING count(*) > 1 ORDER BY 2 DESC LIMIT %s")
DISTINCT_COMMANDS_SQL = "SELECT count(DISTINCT command_id) FROM job_events"
# dispatches by action, from the log: `dispatch` (activated → sent) and its undo (`undispatch`)
ACTION_COUNTS_SQL = "SELECT action, count(*) FROM job_events WHERE action = ANY(%s) GROUP BY action"
MISSING_SQL = "SELECT x FROM unnest(%s::bigint[]) x WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE pandaid = x)"
# the watcher's fails by the jobDispatcherErrorCode it set (its timeout rule), not by the state the job had
# by the time the ledger judged them
TIMED_OUT_SQL = ("SELECT COALESCE(body->'attrs'->>'jobDispatcherErrorCode', '?'), count(*) FROM job_events"
                 " WHERE action = 'fail' AND actor = %s GROUP BY 1 ORDER BY 1")


def seq_anomalies(conn: psycopg.Connection, limit: int = 20) -> list[tuple]:
    """(PandaID, events, distinct seqs, min seq, max seq, jobs.seq) of jobs whose seqs are not exactly 1..n
    (or that have events without a row, or a row without events)."""
    return conn.execute(SEQ_ANOMALIES_SQL, (limit,)).fetchall()


def event_totals(conn: psycopg.Connection) -> tuple[int, int]:
    """(events archived, jobs with events)."""
    row = conn.execute(EVENT_TOTALS_SQL).fetchone()
    return int(row[0]), int(row[1])


def duplicate_commands(conn: psycopg.Connection, limit: int = 20) -> list[tuple[str, int, list[str]]]:
    """Command ids that produced more than one event, with the events ("PandaID:seq")."""
    return conn.execute(DUPLICATE_COMMANDS_SQL, (limit,)).fetchall()


def distinct_commands(conn: psycopg.Connection) -> int:
    return int(conn.execute(DISTINCT_COMMANDS_SQL).fetchone()[0])


def action_counts(conn: psycopg.Connection, actions: Iterable[str]) -> dict[str, int]:
    return dict(conn.execute(ACTION_COUNTS_SQL, (list(actions),)).fetchall())


def missing(conn: psycopg.Connection, pandaids: Iterable[int]) -> list[int]:
    """The PandaIDs among ``pandaids`` with no jobs row."""
    return [r[0] for r in conn.execute(MISSING_SQL, (list(pandaids),)).fetchall()]


def timed_out(conn: psycopg.Connection, actor: str) -> dict[str, int]:
    """jobDispatcherErrorCode → jobs ``actor`` (the watcher) failed with it: work a fault left to the clock."""
    return {code: int(n) for code, n in conn.execute(TIMED_OUT_SQL, (actor,)).fetchall()}
