"""Moving final jobs out of the hot jobs table, as PanDA moves them to jobsArchived4.

Why: the readers that must stay fast however many jobs have ever run — the ledger's snapshot of a
partition, getJob's candidates, the watcher — read live jobs, but a table that never sheds finished jobs
grows by millions a week. ``jobs`` is partitioned by ``archived`` (060_jobs_archive.sql): those readers
say ``NOT archived`` and read the hot partition only; status, history and the monitor read ``jobs`` and
see both.

The projector owns the move (one writer of the table): between batches it sweeps the partitions it
holds, in its own transaction on its own connection, so a sweep never races the projector's updates of the
same rows. A job is archived once it has been final for ``[projections] archive_after`` seconds (by its
``modification_time``, the time of its last event). Final states are never left (core/states.py), so an
archived row only changes again by an update in place (a failed job's retry mark), which finds it there.

Whether a row is archived depends on when the sweep ran, not on the log: ``verify`` compares the jobs
table without the column, and a rebuild archives what is old enough before it switches (``sweep`` with no
limit).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from core.states import FINAL_STATES

log = logging.getLogger(__name__)

#: the column that says where a row lives; not a fact of the log (verify leaves it out)
PLACEMENT_COLUMNS = ("archived",)

_SWEEP_SQL = (
    "UPDATE jobs SET archived = true WHERE NOT archived AND pandaid IN ("
    " SELECT pandaid FROM jobs WHERE NOT archived AND status = ANY(%(final)s)"
    " AND modification_time < %(before)s AND (%(partitions)s::int[] IS NULL OR partition = ANY(%(partitions)s))"
    " ORDER BY modification_time LIMIT %(limit)s)"
)
_SWEEP_ALL_SQL = (
    "UPDATE jobs SET archived = true WHERE NOT archived AND status = ANY(%(final)s)"
    " AND modification_time < %(before)s"
)


def sweep(conn: psycopg.Connection, *, before: float, partitions: Iterable[int] | None = None,
          limit: int | None = None) -> int:
    """Archive up to ``limit`` (None: every) final jobs last changed before epoch ``before``, of
    ``partitions`` (None: all), oldest first; returns how many moved. Runs in the caller's transaction."""
    params = {"final": list(FINAL_STATES), "before": dt.datetime.fromtimestamp(before, dt.UTC),
              "partitions": sorted(partitions) if partitions is not None else None, "limit": limit}
    if limit is None and partitions is None:
        return conn.execute(_SWEEP_ALL_SQL, params).rowcount
    return conn.execute(_SWEEP_SQL, params).rowcount


def counts(conn: psycopg.Connection) -> dict[str, int]:
    """``{"hot": n, "archived": m}``: rows in each partition of the jobs table."""
    rows = dict(conn.execute("SELECT archived, count(*) FROM jobs GROUP BY archived").fetchall())
    return {"hot": rows.get(False, 0), "archived": rows.get(True, 0)}


class ArchiveSweep:
    """When the projector sweeps, and how much: every ``every`` seconds, batches of ``batch`` rows until a
    batch comes back short (or ``rounds`` batches, so a backlog does not hold up the projection)."""

    def __init__(self, after: float, every: float, batch: int, *, rounds: int = 10,
                 clock=time.monotonic, wall=time.time):
        self.after, self.every, self.batch, self.rounds = after, every, batch, rounds
        self._clock, self._wall = clock, wall
        self._next = clock() + min(every, 5.0)    # soon after start, not at once

    def due(self) -> bool:
        return self.every > 0 and self._clock() >= self._next

    def run(self, conn: psycopg.Connection, partitions: Iterable[int]) -> int:
        """Archive in the projector's partitions, each batch in its own transaction; the rows moved."""
        self._next = self._clock() + self.every
        parts = sorted(partitions)
        if not parts:
            return 0
        before = self._wall() - self.after
        moved = 0
        for _ in range(self.rounds):
            with conn.transaction():
                n = sweep(conn, before=before, partitions=parts, limit=self.batch)
            moved += n
            if n < self.batch:
                break
        if moved:
            log.info("archived %d final jobs (final for more than %.0fs) of partitions %s", moved, self.after, parts)
        return moved


def load_archived(conn: psycopg.Connection, first: int, n: int, partitions: int, *,
                  before: float, log=lambda msg: None) -> None:
    """Put ``n`` synthetic archived jobs (PandaIDs ``first`` …) straight into the archive partition: the scale
    bench's way to have millions of finished jobs without running them. The partition is detached, filled
    without indexes (one INSERT … SELECT FROM generate_series) and attached again, which builds its indexes
    once instead of row by row (the parent's on attach, the partition's own after it). Rows are final, last
    changed before epoch ``before``; ``conn`` in autocommit."""
    stamp = dt.datetime.fromtimestamp(before, dt.UTC)
    conn.execute("SET maintenance_work_mem = '512MB'")
    # the indexes of the archive partition alone (070_jobs_hot_indexes.sql): the attach builds only the
    # parent's, so these are built again after it (read before the detach, which makes every index the
    # partition's own)
    own = [d for (d,) in conn.execute("SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i"
                                      " WHERE i.indrelid = 'jobs_archived'::regclass AND NOT i.indisprimary"
                                      " AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)")]
    conn.execute("ALTER TABLE jobs DETACH PARTITION jobs_archived")
    for (name,) in conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'jobs_archived'::regclass"
                                " AND contype IN ('p', 'u')").fetchall():
        conn.execute(f'ALTER TABLE jobs_archived DROP CONSTRAINT "{name}"')
    for (name,) in conn.execute("SELECT indexrelid::regclass::text FROM pg_index"
                                " WHERE indrelid = 'jobs_archived'::regclass").fetchall():
        conn.execute(f"DROP INDEX {name}")
    started = time.monotonic()
    conn.execute(
        "INSERT INTO jobs_archived (pandaid, partition, seq, status, attempt_nr, computing_site, prod_source_label,"
        " current_priority, gshare, resource_type, core_count, jedi_task_id, creation_time, modification_time,"
        " state_change_time, last_command_id, spec, archived)"
        " SELECT g, g %% %(parts)s, 9, s.status, 1, 'ARCHIVE_SITE_' || (g %% 50), 'managed', 1000, 'Express', 'SCORE',"
        " 1, 1000000 + g / 5000, t, t, t, 'cmd-' || g,"
        " jsonb_build_object('PandaID', g, 'jobStatus', s.status, 'computingSite', 'ARCHIVE_SITE_' || (g %% 50),"
        "   'prodSourceLabel', 'managed', 'jobName', 'scale.' || g, 'prodUserName', 'user' || (g %% 100),"
        "   'attemptNr', 1, 'transformation', 'run.sh'), true"
        " FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,"
        " LATERAL (SELECT (ARRAY['finished', 'failed', 'cancelled', 'closed'])[1 + g %% 4] AS status,"
        "          %(stamp)s - make_interval(secs => g %% 2000000) AS t) AS s",
        {"parts": partitions, "first": first, "last": first + n - 1, "stamp": stamp})
    log(f"  {n:,} archived rows written in {time.monotonic() - started:.0f}s; attaching (builds the indexes)")
    started = time.monotonic()
    conn.execute("ALTER TABLE jobs_archived ADD CONSTRAINT jobs_archived_only CHECK (archived)")  # no scan on attach
    conn.execute("ALTER TABLE jobs ATTACH PARTITION jobs_archived FOR VALUES IN (true)")
    conn.execute("ALTER TABLE jobs_archived DROP CONSTRAINT jobs_archived_only")
    for definition in own:
        conn.execute(definition)
    conn.execute("ANALYZE jobs")
    log(f"  attached and analysed in {time.monotonic() - started:.0f}s")


def plan_reads(conn: psycopg.Connection, sql: str, params: Any) -> dict[str, Any]:
    """What one execution of ``sql`` read: the relations its plan scanned and the shared buffers it touched
    (EXPLAIN ANALYZE BUFFERS), a figure a loaded machine does not blur. Rolled back (a candidate query
    locks what it finds); ``conn`` not in autocommit mode."""
    try:
        (plan,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()[0]
    finally:
        conn.rollback()
    relations: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node:
            relations.add(node["Relation Name"])
        for child in node.get("Plans", ()):
            walk(child)
    top = plan["Plan"]
    walk(top)
    buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    return {"relations": sorted(relations), "buffers": buffers, "rows": top.get("Actual Rows", 0),
            "ms": plan.get("Execution Time", 0.0)}
