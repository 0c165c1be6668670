"""The one database access layer: connections, pools and versioned SQL migrations.

Migrations are plain SQL files ``NNN_name.sql`` kept beside the code that owns their tables (the
projections' folder, each service's own ``migrations/``). ``migrate(cfg, folders=...)`` applies the
files of all the given folders in one numeric order (a version number is unique across folders, as
databases record applied versions by number), each in its own transaction, recorded in
``schema_migrations``. A PostgreSQL advisory lock makes concurrent starters (several components
launched at once) apply them exactly once. Which folders make up the system is not core's to know:
the list lives above core (``services.migrations.MIGRATIONS``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from core.config import Config

_MIGRATION_LOCK = 0x70616E6461  # "panda"
_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")


# psycopg prepares a statement after a few executions, and PostgreSQL may then settle on a generic plan.
# A plan chosen while a table was empty (every projection starts so) stays a sequential scan as the table
# grows: seen as 15 s lookups of `files WHERE pandaid = ANY(...)` at 100k jobs. Plan every execution.
# No JIT: these are short statements, and once a table's statistics make one look expensive (above
# jit_above_cost, e.g. a fast-growing projection not analyzed yet) PostgreSQL compiles it on every execution:
# the gateway's job-bindings read (a few index probes) took 40 ms per call, 99% of it JIT, and was most of the
# database's time in the full lifecycle; a 20-job read by PandaID spent 1.65 s compiling for 1 ms of work.
SESSION_OPTIONS = "-c plan_cache_mode=force_custom_plan -c jit=off"


class ReadModelBehind(RuntimeError):
    """A read that waited for a read model to reach a position, and it did not in time (raised by
    projections.wait; declared here so that core can tell it from a bug without importing projections)."""


def connect(cfg_or_url: Config | str, **kwargs) -> psycopg.Connection:
    url = cfg_or_url if isinstance(cfg_or_url, str) else cfg_or_url.db.url
    kwargs["options"] = f"{SESSION_OPTIONS} {kwargs.get('options', '')}".strip()
    return psycopg.connect(url, **kwargs)


def pool(cfg: Config, *, min_size: int = 1, max_size: int | None = None, **kwargs) -> ConnectionPool:
    kwargs["options"] = f"{SESSION_OPTIONS} {kwargs.get('options', '')}".strip()
    return ConnectionPool(cfg.db.url, min_size=min_size, max_size=max_size or cfg.db.pool_size,
                          open=True, kwargs=kwargs)


T = TypeVar("T")


class Reconnecting:
    """One autocommit connection that is opened on first use and again after the server dropped it.

    Why one class: every long-lived component (services, their stores, the projection readers) keeps a
    connection across many short reads and writes, and must survive a database restart without a crash
    loop. ``run(fn, ...)`` calls ``fn(conn, ...)``; on ``OperationalError`` (connection lost) it reconnects
    and tries once more, then raises. Calls are serialised, so one holder may be shared by threads.
    """

    def __init__(self, cfg_or_url: Config | str, **kwargs):
        self._target = cfg_or_url
        self._kwargs = {"autocommit": True, **kwargs}
        self._conn: psycopg.Connection | None = None
        self._lock = threading.RLock()

    @property
    def conn(self) -> psycopg.Connection:
        """The open connection (opened now if there is none or it was closed)."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._target, **self._kwargs)
            return self._conn

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        with self._lock:
            for attempt in (1, 2):
                conn = self.conn
                try:
                    return fn(conn, *args, **kwargs)
                except psycopg.OperationalError:
                    self.reset()
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def reset(self) -> None:
        """Forget the connection (closing it if it is still open); the next use opens a new one."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def close(self) -> None:
        self.reset()


def migration_files(folders: Iterable[Path]) -> list[tuple[int, Path]]:
    """(version, file) of every migration in ``folders``, in version order; a version used twice is an error."""
    found: dict[int, Path] = {}
    for directory in folders:
        if not directory.is_dir():
            raise FileNotFoundError(f"migrations folder {directory} does not exist")
        for path in sorted(directory.glob("*.sql")):
            m = _NAME.match(path.name)
            if not m:
                raise ValueError(f"migration file name {path.name!r} is not NNN_name.sql")
            version = int(m.group(1))
            if version in found:
                raise ValueError(f"two migrations with version {version}: {found[version]}, {path}")
            found[version] = path
    return sorted(found.items())


def migrate(cfg_or_url: Config | str, *, folders: Iterable[Path], log=lambda msg: None) -> list[int]:
    """Apply every migration of ``folders`` not yet applied; returns the versions applied now."""
    files = migration_files(folders)     # checked before anything is applied
    applied_now: list[int] = []
    with connect(cfg_or_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, path in files:
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (version, path.name))
                log(f"applied migration {path.name}")
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


def fetch_all(conn: psycopg.Connection, sql: str, params=None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()
