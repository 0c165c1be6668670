"""Reading a job from the projections *as of* an event, for the services that react to events.

Why: a service consumes panda.job-events in its own group, so it can see an event before the
projector has written it (or the events before it). Deciding on a stale row would lose, e.g., a
``commandToPilot=tobekilled`` set one event earlier. ``JobReader.job(pid, at_least)`` waits (briefly)
until the jobs row has reached the wanted ``seq`` and raises ``ProjectionLag`` if it does not, so the
caller does not commit its offset and the event is delivered again later.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core import db
from core.config import Config


class ProjectionLag(RuntimeError):
    """The jobs projection has not reached the event a service is deciding on."""


class JobReader:
    """Job rows and file rows from the jobs/files projections on one (reconnecting) connection."""

    def __init__(self, cfg: Config, wait: float = 30.0):
        self.cfg = cfg
        self.wait = wait
        self._conn: psycopg.Connection | None = None

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.cfg, autocommit=True)
        return self._conn

    def row(self, pandaid: int) -> dict[str, Any] | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT * FROM jobs WHERE pandaid = %s", (pandaid,))
            return cur.fetchone()

    def job(self, pandaid: int, at_least: int) -> dict[str, Any]:
        """The jobs row once its seq is ≥ ``at_least``; ProjectionLag after ``wait`` seconds."""
        deadline = time.monotonic() + self.wait
        delay = 0.02
        while True:
            try:
                row = self.row(pandaid)
            except psycopg.OperationalError:
                self._conn = None
                row = None
            if row is not None and row["seq"] >= at_least:
                return row
            if time.monotonic() > deadline:
                have = "no row" if row is None else f"seq {row['seq']}"
                raise ProjectionLag(f"jobs projection has {have} for PandaID {pandaid}, need seq ≥ {at_least}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def files(self, pandaid: int) -> list[dict[str, Any]]:
        """The job's FileSpec dicts (the files projection's ``spec`` column)."""
        rows = self.conn.execute("SELECT spec FROM files WHERE pandaid = %s ORDER BY type, lfn", (pandaid,))
        return [r[0] for r in rows.fetchall()]

    def exists(self, pandaid: int) -> bool:
        return self.conn.execute("SELECT 1 FROM jobs WHERE pandaid = %s", (pandaid,)).fetchone() is not None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
