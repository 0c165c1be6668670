"""The one database access layer: connections, pools and versioned SQL migrations.

Migrations are plain SQL files ``projections/migrations/NNN_name.sql`` applied in numeric order,
each in its own transaction, recorded in ``schema_migrations``. A PostgreSQL advisory lock makes
concurrent starters (several components launched at once) apply them exactly once.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from core.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "projections" / "migrations"
_MIGRATION_LOCK = 0x70616E6461  # "panda"
_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")


# psycopg prepares a statement after a few executions, and PostgreSQL may then settle on a generic plan.
# A plan chosen while a table was empty (every projection starts so) stays a sequential scan as the table
# grows: seen as 15 s lookups of `files WHERE pandaid = ANY(...)` at 100k jobs. Plan every execution.
SESSION_OPTIONS = "-c plan_cache_mode=force_custom_plan"


def connect(cfg_or_url: Config | str, **kwargs) -> psycopg.Connection:
    url = cfg_or_url if isinstance(cfg_or_url, str) else cfg_or_url.db.url
    kwargs["options"] = f"{SESSION_OPTIONS} {kwargs.get('options', '')}".strip()
    return psycopg.connect(url, **kwargs)


def pool(cfg: Config, *, min_size: int = 1, max_size: int | None = None, **kwargs) -> ConnectionPool:
    kwargs["options"] = f"{SESSION_OPTIONS} {kwargs.get('options', '')}".strip()
    return ConnectionPool(cfg.db.url, min_size=min_size, max_size=max_size or cfg.db.pool_size,
                          open=True, kwargs=kwargs)


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, Path]]:
    found: dict[int, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise ValueError(f"migration file name {path.name!r} is not NNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise ValueError(f"two migrations with version {version}: {found[version].name}, {path.name}")
        found[version] = path
    return sorted(found.items())


def migrate(cfg_or_url: Config | str, log=lambda msg: None) -> list[int]:
    """Apply every migration not yet applied; returns the versions applied now."""
    applied_now: list[int] = []
    with connect(cfg_or_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, path in migration_files():
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
