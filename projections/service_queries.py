"""The services' reads of the projection tables (jobs, files, job_events), one function per question.

Why here: projections own their tables, so the SQL that reads them lives with them and a schema change
of a read model is made in one package. The services (services/reactors, services/clock) call these
functions with a connection they hold and turn the plain rows into their own types; their own tables
(datasets, retries, adder_pending, sites) stay with their store modules, so a question that spans both
is asked in two steps (e.g. the adder's due reports: candidates from its store, jobs and events here).

Every function takes an open connection and returns plain data; none waits or retries. The services'
candidate reads of live jobs say ``NOT archived``: they read the hot partition of ``jobs`` only, however many
final jobs the archive holds (060_jobs_archive.sql, ``projections.jobs_archive``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from core.states import FINAL_STATES


# ------------------------------------------------------------------------------------------ activator
def assigned_jobs(conn: psycopg.Connection, partitions: set[int] | None, limit: int) -> dict[int, dict[str, list[str]]]:
    """Assigned jobs (highest priority first, at most ``limit``; only ``partitions`` unless None) and, for
    each, its dispatch blocks → the lfns of its inputs in them that are not ready yet."""
    sql = ("SELECT j.pandaid, f.dispatch_dblock, f.lfn FROM jobs j"
           " LEFT JOIN files f ON f.pandaid = j.pandaid AND f.type = 'input'"
           "  AND f.dispatch_dblock IS NOT NULL AND f.status IS DISTINCT FROM 'ready'"
           " WHERE NOT j.archived"
           " AND j.pandaid IN (SELECT pandaid FROM jobs WHERE NOT archived AND status = 'assigned'")
    params: list[Any] = []
    if partitions is not None:
        sql += " AND partition = ANY(%s)"
        params.append(sorted(partitions))
    sql += " ORDER BY current_priority DESC, pandaid LIMIT %s) ORDER BY j.pandaid"
    params.append(limit)
    jobs: dict[int, dict[str, list[str]]] = {}
    for pid, block, lfn in conn.execute(sql, params).fetchall():
        blocks = jobs.setdefault(pid, {})
        if block is not None:
            blocks.setdefault(block, []).append(lfn)
    return jobs


# ------------------------------------------------------------------------------------------- setupper
def stale_defined(conn: psycopg.Connection, partitions: set[int] | None, before: float,
                  limit: int) -> list[tuple[int, int]]:
    """(PandaID, seq) of jobs ``defined`` since before epoch ``before`` (oldest first, at most ``limit``;
    only ``partitions`` unless None): the setupper's sweep candidates."""
    sql = ("SELECT pandaid, seq FROM jobs WHERE NOT archived AND status = 'defined'"
           " AND state_change_time < to_timestamp(%s)")
    params: list[Any] = [before]
    if partitions is not None:
        sql += " AND partition = ANY(%s)"
        params.append(sorted(partitions))
    sql += " ORDER BY state_change_time, pandaid LIMIT %s"
    params.append(limit)
    return [(pid, seq) for pid, seq in conn.execute(sql, params).fetchall()]


# ------------------------------------------------------------------------------ closer, finisher, adder
def final_jobs(conn: psycopg.Connection, pandaids: Iterable[int]) -> set[int]:
    """Those of ``pandaids`` whose job is in a final state (the closer's sweep, the finisher: long lists).
    The planner picks the primary key, the status index or both; for a few PandaIDs the status index's
    final entries (every ended job not archived yet) would cost more than the jobs themselves, which is why
    the closer's event path does not ask this (services/reactors/closer.py)."""
    pids = sorted(set(pandaids))
    if not pids:
        return set()
    rows = conn.execute("SELECT pandaid FROM jobs WHERE pandaid = ANY(%s) AND status = ANY(%s)",
                        (pids, list(FINAL_STATES))).fetchall()
    return {r[0] for r in rows}


def job_states(conn: psycopg.Connection, pandaids: Iterable[int]) -> dict[int, tuple[str, int]]:
    """PandaID → (status, seq) of those of ``pandaids`` the jobs projection has (the dispatch sweep's read)."""
    pids = sorted(set(pandaids))
    if not pids:
        return {}
    rows = conn.execute("SELECT pandaid, status, seq FROM jobs WHERE pandaid = ANY(%s)", (pids,)).fetchall()
    return {pid: (status, seq) for pid, status, seq in rows}


def jobs_among(conn: psycopg.Connection, pandaids: Iterable[int], partitions: set[int] | None) -> set[int]:
    """Those of ``pandaids`` the jobs projection has, in ``partitions`` (any partition if None)."""
    pids = sorted(set(pandaids))
    if not pids:
        return set()
    parts = sorted(partitions) if partitions is not None else None
    rows = conn.execute("SELECT pandaid FROM jobs WHERE pandaid = ANY(%s)"
                        " AND (%s::int[] IS NULL OR partition = ANY(%s::int[]))", (pids, parts, parts)).fetchall()
    return {r[0] for r in rows}


def event_bodies(conn: psycopg.Connection, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored events (encoded JSON) at these (PandaID, seq); missing ones are left out."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT e.pandaid, e.seq, e.body::text FROM job_events e"
        " JOIN unnest(%s::bigint[], %s::int[]) AS k(pandaid, seq) ON e.pandaid = k.pandaid AND e.seq = k.seq",
        ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
    return {(pid, seq): body.encode() for pid, seq, body in rows}


def adder_transferring(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    """The finisher's jobs: in ``transferring`` because the *adder* put them there (not the pilot),
    lowest priority first as PanDA's FinisherThr; with their output/log FileSpec dicts.

    Keys: pandaid, seq, state_change_time (epoch s), priority, label, spec, files.
    """
    rows = conn.execute(
        "SELECT j.pandaid, j.seq, extract(epoch FROM j.state_change_time), j.current_priority,"
        "       j.prod_source_label, j.spec,"
        "       (SELECT coalesce(jsonb_agg(f.spec), '[]') FROM files f"
        "         WHERE f.pandaid = j.pandaid AND f.type IN ('output', 'log'))"
        "  FROM jobs j WHERE NOT j.archived AND j.status = 'transferring'"
        "   AND NOT EXISTS (SELECT 1 FROM job_events e WHERE e.pandaid = j.pandaid AND e.seq ="
        "       (SELECT max(seq) FROM job_events x WHERE x.pandaid = j.pandaid AND x.to_state = 'transferring'"
        "          AND x.from_state <> 'transferring') AND e.action = 'pilot_transferring')"
        " ORDER BY j.current_priority, j.pandaid LIMIT %s", (limit,)).fetchall()
    return [{"pandaid": r[0], "seq": r[1], "state_change_time": float(r[2]), "priority": r[3] or 0,
             "label": r[4], "spec": r[5], "files": tuple(r[6])} for r in rows]


# -------------------------------------------------------------------------------------------- watcher
# The preselection of the watcher's timeout rules. It mirrors services/clock/watcher.py: the states are
# its ``WATCHED`` and the three clocks are the ones ``rule_for`` measures (modification_time: heartbeats,
# sent, holding; state_change_time: "too long in state S"; creation_time: maximum age). ``cut`` is
# ``now`` minus the shortest timeout: a job all of whose clocks are younger cannot match any rule, so
# the rules (pure, in the watcher) see every job they could act on and few others. The subselect finds
# how the job entered its current state (the action and pilot_state of that event), which tells a
# pilot's transferring from the adder's and a holding with a final report from one without.
WATCH_CANDIDATES = """
SELECT j.pandaid, j.status, j.seq, j.prod_source_label, j.current_priority, j.jedi_task_id,
       j.command_to_pilot, extract(epoch FROM j.creation_time), extract(epoch FROM j.modification_time),
       extract(epoch FROM j.state_change_time),
       (SELECT e.action || '|' || coalesce(e.body->>'pilot_state', '') FROM job_events e
         WHERE e.pandaid = j.pandaid AND e.to_state = j.status AND e.from_state <> e.to_state
         ORDER BY e.seq DESC LIMIT 1)
  FROM jobs j
 WHERE NOT j.archived AND j.status = ANY(%(states)s)
   AND (j.modification_time < %(cut)s OR j.state_change_time < %(cut)s OR j.creation_time < %(cut)s)
 ORDER BY j.pandaid
 LIMIT %(limit)s
"""


def watch_candidates(conn: psycopg.Connection, states: Sequence[str], cut: float, limit: int) -> list[dict[str, Any]]:
    """Jobs in ``states`` with some clock older than ``cut`` (epoch s), as dicts with the field names of
    ``services.clock.watcher.JobRow`` (times in epoch seconds). See ``WATCH_CANDIDATES`` above."""
    stamp = dt.datetime.fromtimestamp(cut, dt.UTC)
    rows = conn.execute(WATCH_CANDIDATES, {"states": list(states), "cut": stamp, "limit": limit}).fetchall()
    out = []
    for pid, status, seq, label, prio, task, ctp, ctime, mtime, sctime, entered in rows:
        by, _, pstate = (entered or "|").partition("|")
        out.append({"pandaid": pid, "status": status, "seq": seq, "label": label, "priority": prio or 0,
                    "jedi_task_id": task, "command_to_pilot": ctp, "creation_time": float(ctime),
                    "modification_time": float(mtime), "state_change_time": float(sctime),
                    "entered_by": by or None, "entered_pilot_state": pstate or None})
    return out
