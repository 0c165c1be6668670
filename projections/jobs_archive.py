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
