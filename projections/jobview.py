"""Reading a job from the projections *as of* an event, for the services that react to events.

Why: a service consumes panda.job-events in its own group, so it can see an event before the
projector has written it (or the events before it). Deciding on a stale row would lose, e.g., a
``commandToPilot=tobekilled`` set one event earlier. ``JobReader.job(pid, at_least)`` waits (briefly,
``projections.wait``) until the jobs row has reached the wanted ``seq`` and raises ``ProjectionLag`` if
it does not, so the caller does not commit its offset and the event is delivered again later.
"""

from __future__ import annotations

from typing import Any

import psycopg

from core import db
from core.config import Config
from projections import queries
from projections.wait import ProjectionLag, wait_projected

__all__ = ["JobReader", "ProjectionLag"]


class JobReader:
    """Job rows and file rows from the jobs/files projections on one reconnecting connection."""

    def __init__(self, cfg: Config, wait: float = 30.0):
        self.cfg = cfg
        self.wait = wait
        self.db = db.Reconnecting(cfg)

    @property
    def conn(self) -> psycopg.Connection:
        """The open connection (subclasses run their own tables' statements on it)."""
        return self.db.conn

    def row(self, pandaid: int) -> dict[str, Any] | None:
        return self.db.run(queries.job, pandaid)

    def job(self, pandaid: int, at_least: int) -> dict[str, Any]:
        """The jobs row once its seq is ≥ ``at_least``; ProjectionLag after ``wait`` seconds."""
        return wait_projected(self._rows, {pandaid: at_least}, self.wait)[pandaid]

    def jobs(self, at_least: dict[int, int]) -> dict[int, dict[str, Any]]:
        """The jobs rows once each has reached its ``seq`` (PandaID → at least), read together; ProjectionLag
        after ``wait`` seconds."""
        return wait_projected(self._rows, at_least, self.wait)

    def files_of(self, pandaids: list[int]) -> dict[int, list[dict[str, Any]]]:
        """PandaID → the job's FileSpec dicts, for several jobs in one read."""
        return self.db.run(queries.files_of, pandaids)

    def _rows(self, pandaids: list[int]) -> dict[int, dict[str, Any]]:
        try:
            return self.db.run(queries.jobs, pandaids)
        except psycopg.OperationalError:
            return {}     # the database is away: keep waiting, the next poll reconnects

    def files(self, pandaid: int) -> list[dict[str, Any]]:
        """The job's FileSpec dicts (the files projection's ``spec`` column)."""
        return self.db.run(queries.files, pandaid)

    def exists(self, pandaid: int) -> bool:
        return self.db.run(queries.exists, pandaid)

    def close(self) -> None:
        self.db.close()
