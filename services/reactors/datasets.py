"""The ``datasets`` and ``dataset_files`` tables (migration 101): PanDA's data blocks, by their services.

Why a service-owned table and not a projection: blocks change for reasons that are not job events
(a transfer finished, a closer decided), exactly as PanDA's ``datasets`` table is written by Setupper,
Activator, Adder and Closer. Every write here is idempotent (upserts, and counters moved only by the file
rows a statement actually changed), so an action repeated after a crash leaves the same rows.

Cost does not grow with history (migration 155): a block's counters (``nfiles``, ``nfiles_done``,
``nfiles_failed``) are kept in step in the transaction that writes its files, the closer's event path reads
only the files of the jobs that ended and their blocks' counters, and its sweep only the files not settled
yet and the sub blocks not closed yet (partial indexes), so registering or closing in a block of 100,000
files costs what it costs in one of 10. Rows are found by key (files by block, job and lfn), never by a
join the planner may turn into a scan of a table that holds every block ever made.

Used by: the setupper (``record`` new blocks), the activator (``complete_dispatch``, ``get``), the adder
(``set_files_status_many`` on registration), the closer (``set_status``, ``set_files_status_many``,
``sub_files_of_jobs`` on its event path, ``open_subs`` and ``unsettled_files`` on its sweep) and the bench
(``load_history``). No other module names these tables in SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
import psycopg

from core import db
from core.config import Config

TYPES = ("dispatch", "destination", "sub")


class Block(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``datasets`` as a service creates it."""

    name: str
    type: str                      # dispatch | destination | sub
    site: str | None = None
    endpoint: str | None = None
    parent: str | None = None
    plugin: str | None = None
    vo: str | None = None


class BlockFile(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``dataset_files``: a file a block is expected to hold for a job."""

    dataset: str
    pandaid: int
    lfn: str
    type: str                      # input | output | log
    status: str                    # pending / ready (inputs); unknown / ready / failed (outputs)


def _lock(cur: psycopg.Cursor, names: Iterable[str]) -> None:
    """Lock the blocks' rows in name order before any of their files is touched: a transaction that touches
    many blocks (a whole poll of the setupper or the adder) then waits for another one instead of
    deadlocking, and the counters below are changed by one transaction at a time."""
    names = sorted(set(names))
    if names:
        cur.execute("SELECT 1 FROM datasets WHERE name = ANY(%s) ORDER BY name FOR UPDATE", (names,))


# The counters move by the file rows a statement actually changed, never by a recount: the cost of
# registering or failing a file is the same in a block of 10 files as in one of 100,000, and a repeated
# statement (a redelivered poll) changes no row, so it counts nothing twice. ``_CHANGED`` is the
# tail of both writes: ``changed`` holds (dataset, old status, new status) of each row written
# (old NULL for a new row).
_CHANGED = (
    " UPDATE datasets d SET nfiles = d.nfiles + c.added,"
    "  nfiles_done = d.nfiles_done + c.to_ready - c.from_ready,"
    "  nfiles_failed = d.nfiles_failed + c.to_failed - c.from_failed, modification_time = now()"
    " FROM (SELECT dataset, count(*) FILTER (WHERE old IS NULL) AS added,"
    "        count(*) FILTER (WHERE new = 'ready') AS to_ready, count(*) FILTER (WHERE old = 'ready') AS from_ready,"
    "        count(*) FILTER (WHERE new = 'failed') AS to_failed,"
    "        count(*) FILTER (WHERE old = 'failed') AS from_failed"
    "       FROM changed GROUP BY dataset) c"
    " WHERE d.name = c.dataset"
)


def _transition(cur: psycopg.Cursor, status: str, rows_sql: str, params: dict) -> None:
    """Set ``status`` on the file rows ``rows_sql`` selects and move their blocks' counters by the rows that
    changed, in one statement. ``rows_sql`` returns ``ctid`` and ``status`` of ``dataset_files`` rows not in
    ``status`` yet, locked (named parameters ``params`` and ``%(status)s``); the update finds them by their
    ``ctid`` (``= ANY(ARRAY(…))``: a TID scan, one page per row, where a join on ``ctid`` let the planner hash
    a sequential scan of the table). The caller holds the blocks' locks (``_lock``)."""
    cur.execute(
        f"WITH o AS MATERIALIZED ({rows_sql}),"
        " changed AS (UPDATE dataset_files f SET status = %(status)s FROM o"
        "   WHERE f.ctid = ANY(ARRAY(SELECT ctid FROM o)) AND f.ctid = o.ctid"
        "   RETURNING f.dataset, o.status AS old, f.status AS new)" + _CHANGED,
        {**params, "status": status},
    )


def record(conn: psycopg.Connection, blocks: Sequence[Block], files: Sequence[BlockFile], actor: str) -> None:
    """Create blocks (existing ones keep their status) and the files they expect; one transaction of three
    statements however many jobs they are for (the setupper records a whole poll at once). Rows go in in key
    order, so two setuppers recording the same blocks wait for each other instead of deadlocking."""
    for b in blocks:
        if b.type not in TYPES:
            raise ValueError(f"dataset {b.name}: type {b.type!r} is not one of {TYPES}")
    by_name = sorted({b.name: b for b in reversed(blocks)}.values(), key=lambda b: b.name)
    by_key = sorted({(f.dataset, f.pandaid, f.lfn): f for f in reversed(files)}.items())
    with conn.transaction(), conn.cursor() as cur:
        if by_name:
            cur.execute(
                "INSERT INTO datasets (name, type, site, endpoint, parent, plugin, vo, created_by)"
                " SELECT n, t, s, e, p, pl, v, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::text[]) AS b(n, t, s, e, p, pl, v) ORDER BY n"
                " ON CONFLICT (name) DO NOTHING",
                (actor, *([getattr(b, col) for b in by_name]
                          for col in ("name", "type", "site", "endpoint", "parent", "plugin", "vo"))),
            )
        _lock(cur, [b.name for b in blocks] + [f.dataset for f in files])
        if by_key:
            rows = [f for _, f in by_key]
            cur.execute(
                "WITH changed AS (INSERT INTO dataset_files (dataset, pandaid, lfn, type, status)"
                " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[])"
                " ON CONFLICT (dataset, pandaid, lfn) DO NOTHING RETURNING dataset, NULL::text AS old, status AS new)"
                + _CHANGED,
                ([f.dataset for f in rows], [f.pandaid for f in rows], [f.lfn for f in rows], [f.type for f in rows],
                 [f.status for f in rows]),
            )


def set_files_status(conn: psycopg.Connection, dataset: str, status: str, *, pandaids: Sequence[int] | None = None,
                     lfns: Sequence[str] | None = None) -> None:
    """Mark a block's files (all, or those of some jobs / some lfns); its counters follow. With ``pandaids``
    the rows come through the primary key (led by the PandaID, 157); without, all the block's rows are read
    (no index leads by the block's name alone: no service path marks a whole block)."""
    where, params = "f.dataset = %(dataset)s", {"dataset": dataset}
    if pandaids is not None:
        where += " AND f.pandaid = ANY(%(pandaids)s)"
        params["pandaids"] = list(pandaids)
    if lfns is not None:
        where += " AND f.lfn = ANY(%(lfns)s)"
        params["lfns"] = list(lfns)
    with conn.transaction(), conn.cursor() as cur:
        _lock(cur, [dataset])
        _transition(cur, status, f"SELECT f.ctid, f.status FROM dataset_files f WHERE {where}"
                    " AND f.status <> %(status)s FOR UPDATE OF f", params)


def set_files_status_many(conn: psycopg.Connection, files: Iterable[tuple[str, int, str]], status: str) -> None:
    """Mark files given as (dataset, pandaid, lfn) — of any blocks and jobs — and move their blocks'
    counters, in two statements (the adder's registrations of a whole poll).

    Each key is looked up on its own through the primary key (a LATERAL subquery with a locking clause,
    which the planner cannot flatten into a join): as a join, the keys' estimate made the planner hash a
    sequential scan of the whole table — a cost that grew with every file ever recorded."""
    rows = sorted(set(files))
    if not rows:
        return
    with conn.transaction(), conn.cursor() as cur:
        _lock(cur, [r[0] for r in rows])
        _transition(cur, status,
                    "SELECT r.ctid, r.status"
                    " FROM unnest(%(ds)s::text[], %(pids)s::bigint[], %(lfns)s::text[]) AS k(dataset, pandaid, lfn)"
                    " CROSS JOIN LATERAL (SELECT f.ctid, f.status FROM dataset_files f WHERE f.dataset = k.dataset"
                    "   AND f.pandaid = k.pandaid AND f.lfn = k.lfn AND f.status <> %(status)s FOR UPDATE OF f) r",
                    {"ds": [r[0] for r in rows], "pids": [r[1] for r in rows], "lfns": [r[2] for r in rows]})


def set_status(conn: psycopg.Connection, names: Sequence[str], status: str) -> int:
    """Set the status of blocks; returns how many rows changed. The rows are locked in name order first, as
    every other write here does, so a closer and an adder touching the same blocks never deadlock."""
    with conn.transaction(), conn.cursor() as cur:
        _lock(cur, names)
        cur.execute("UPDATE datasets SET status = %s, modification_time = now()"
                    " WHERE name = ANY(%s) AND status <> %s", (status, list(names), status))
        return cur.rowcount


def complete_dispatch(conn: psycopg.Connection, names: Sequence[str]) -> None:
    """Dispatch blocks whose inputs arrived: files ready, block completed (PanDA's Activator). Only the files
    not settled are read (index ``dataset_files_unsettled``), so a block completed again by a later job of
    its job set costs nothing per file it already holds; a file someone marked failed stays failed."""
    with conn.transaction(), conn.cursor() as cur:
        _lock(cur, names)
        _transition(cur, "ready", "SELECT f.ctid, f.status FROM dataset_files f"
                    " WHERE f.dataset = ANY(%(names)s) AND f.status NOT IN ('ready', 'failed')"
                    " AND f.status <> %(status)s FOR UPDATE OF f", {"names": list(names)})
        cur.execute("UPDATE datasets SET status = 'completed', modification_time = now()"
                    " WHERE name = ANY(%s) AND type = 'dispatch' AND status = 'defined'", (list(names),))


def get(conn: psycopg.Connection, name: str) -> dict | None:
    rows = db.fetch_all(conn, "SELECT * FROM datasets WHERE name = %s", (name,))
    return rows[0] if rows else None


def subs_of(conn: psycopg.Connection, destination: str) -> list[dict]:
    return db.fetch_all(conn, "SELECT * FROM datasets WHERE parent = %s ORDER BY name", (destination,))


# ------------------------------------------------------------------------------- the closer's reads
def subs_named(conn: psycopg.Connection, names: Iterable[str]) -> dict[str, tuple[str | None, str, int]]:
    """Sub blocks among ``names``: name → (parent, status, nfiles)."""
    names = sorted(set(names))
    if not names:
        return {}
    rows = conn.execute("SELECT name, parent, status, nfiles FROM datasets WHERE name = ANY(%s) AND type = 'sub'",
                        (names,))
    return {name: (parent, status, n) for name, parent, status, n in rows.fetchall()}


def unsettled_files(conn: psycopg.Connection, blocks: Iterable[str]) -> list[tuple[str, int, str, str]]:
    """(dataset, pandaid, lfn, status) of the output and log files of the blocks that are neither ready nor
    failed: the only ones the closer must look at (index ``dataset_files_unsettled``, however many files
    the blocks already hold)."""
    return conn.execute("SELECT dataset, pandaid, lfn, status FROM dataset_files WHERE dataset = ANY(%s)"
                        " AND status NOT IN ('ready', 'failed') AND type IN ('output', 'log')",
                        (sorted(blocks),)).fetchall()


def unclosed_subs_of_parents(conn: psycopg.Connection, parents: Sequence[str]) -> list[tuple[str, str, str]]:
    """(name, parent, status) of the sub blocks of these destination blocks that are not closed (index
    ``datasets_unclosed_subs``: closed subs of earlier job sets are never read again)."""
    return conn.execute("SELECT name, parent, status FROM datasets WHERE type = 'sub' AND parent = ANY(%s)"
                        " AND status <> 'closed'", (list(parents),)).fetchall()


def statuses(conn: psycopg.Connection, names: Sequence[str]) -> dict[str, str]:
    """name → status of these blocks."""
    return dict(conn.execute("SELECT name, status FROM datasets WHERE name = ANY(%s)", (list(names),)).fetchall())


def parents(conn: psycopg.Connection, names: Iterable[str]) -> dict[str, str | None]:
    """name → parent of these blocks."""
    names = sorted(set(names))
    if not names:
        return {}
    return dict(conn.execute("SELECT name, parent FROM datasets WHERE name = ANY(%s)", (names,)).fetchall())


def sub_files_of_jobs(conn: psycopg.Connection, pandaids: Iterable[int]) -> list[tuple]:
    """The files of these jobs in sub blocks, each with its block: (dataset, pandaid, lfn, status, parent,
    block status, nfiles, files of the block not settled yet) — the closer's event path. One statement, so
    the counters and the files are of one snapshot. The jobs' rows come through the primary key (led by the
    PandaID, 157) and each block's row through its primary key (a LATERAL subquery the planner cannot turn
    into a scan of every sub block: a misestimated ``type = 'sub'`` once drove the read from all of them), so
    the cost is the jobs' own rows, whatever the blocks and the tables hold."""
    pids = sorted(set(pandaids))
    if not pids:
        return []
    return conn.execute(
        "SELECT f.dataset, f.pandaid, f.lfn, f.status, d.parent, d.status, d.nfiles,"
        "       d.nfiles - d.nfiles_done - d.nfiles_failed"
        " FROM dataset_files f CROSS JOIN LATERAL (SELECT parent, status, nfiles, nfiles_done, nfiles_failed"
        "   FROM datasets d WHERE d.name = f.dataset AND d.type = 'sub' OFFSET 0) d"
        " WHERE f.pandaid = ANY(%s)", (pids,)).fetchall()


def open_subs(conn: psycopg.Connection, limit: int) -> list[str]:
    """Sub blocks neither closed nor failed, least recently changed first (index ``datasets_open_subs``, 156:
    the open subs only, sorted here — as many as the job sets still running, however many blocks closed)."""
    rows = conn.execute("SELECT name FROM datasets WHERE type = 'sub' AND status NOT IN ('closed', 'failed')"
                        " ORDER BY modification_time LIMIT %s", (limit,)).fetchall()
    return [r[0] for r in rows]


# ------------------------------------------------------------------------- history, for benchmarks and tools
def load_history(conn: psycopg.Connection, destination: str, n: int, first_pandaid: int, actor: str) -> str:
    """A destination block and its open sub block ``<destination>_sub000001`` holding ``n`` registered files
    each (counters set as the services would have left them), and ``n // 100`` closed sub blocks of earlier
    job sets, written straight in (generate_series), then the tables analyzed; returns the open sub's name.
    What a dataset looks like after a long task, without running the jobs (``bench/prefilled.py``)."""
    sub = f"{destination}_sub000001"
    with conn.transaction():
        conn.execute("INSERT INTO datasets (name, type, parent, created_by, nfiles, nfiles_done)"
                     " VALUES (%s, 'destination', NULL, %s, %s, %s), (%s, 'sub', %s, %s, %s, %s)",
                     (destination, actor, n, n, sub, destination, actor, n, n))
        conn.execute("INSERT INTO datasets (name, type, status, parent, created_by)"
                     " SELECT %s || '_sub' || lpad((i + 1)::text, 6, '0'), 'sub', 'closed', %s, %s"
                     " FROM generate_series(1, %s) i", (destination, destination, actor, n // 100))
        for block in (destination, sub):
            conn.execute("INSERT INTO dataset_files (dataset, pandaid, lfn, type, status)"
                         " SELECT %s, %s + i, 'old.' || i || '.root', 'output', 'ready'"
                         " FROM generate_series(1, %s) i", (block, first_pandaid, n))
    conn.execute("ANALYZE datasets")
    conn.execute("ANALYZE dataset_files")
    return sub


class DatasetStore:
    """A service's handle on the tables: one ``core.db.Reconnecting`` connection (calls serialised).

    Actions returned by ``decide`` call ``store.record(...)`` etc.; the connection is reopened once
    if the database went away between actions.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._db = db.Reconnecting(cfg)

    def _run(self, fn, *args, **kwargs):
        return self._db.run(fn, *args, **kwargs)

    def record(self, blocks: Sequence[Block], files: Sequence[BlockFile], actor: str) -> None:
        self._run(record, blocks, files, actor)

    def set_files_status(self, dataset: str, status: str, **kwargs) -> None:
        self._run(set_files_status, dataset, status, **kwargs)

    def set_status(self, names: Sequence[str], status: str) -> int:
        return self._run(set_status, names, status)

    def complete_dispatch(self, names: Sequence[str]) -> None:
        self._run(complete_dispatch, names)

    def get(self, name: str) -> dict | None:
        return self._run(get, name)

    def close(self) -> None:
        self._db.close()
