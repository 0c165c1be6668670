"""``projections.queries`` for the event loop: the same SQL on psycopg's AsyncConnection.

The gateway (aiohttp) holds a ``psycopg_pool.AsyncConnectionPool``; these functions take one of its
connections (or, for the claim, the dispatcher's cursor inside its transaction). ``wait_projected``
borrows a pool connection per poll, so a waiting request holds none while it sleeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from projections import queries as q
from projections.wait import MAX_DELAY, Row, await_projected


async def jobs(conn: AsyncConnection, pandaids: Iterable[int],
               columns: Sequence[str] | None = None) -> dict[int, dict[str, Any]]:
    """PandaID → row (``columns`` and pandaid, default every column) of the known ones among ``pandaids``."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q.jobs_sql(columns), (list(pandaids),))
        return {r["pandaid"]: r for r in await cur.fetchall()}


async def job_bindings(conn: AsyncConnection, pandaids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """PandaID → {prod_user, vo, submitted_by, dispatched_to} (actors as recorded) of the known jobs."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q.JOB_BINDINGS_SQL, (list(pandaids),))
        return {r["pandaid"]: r for r in await cur.fetchall()}


async def task_jobs(conn: AsyncConnection, jedi_task_id: int) -> list[tuple[int, str]]:
    """(PandaID, status) of every job of the JEDI task, in PandaID order (archived ones included)."""
    cur = await conn.execute(q.TASK_JOBS_SQL, (jedi_task_id,))
    return [(r[0], r[1]) for r in await cur.fetchall()]


async def next_pandaids(conn: AsyncConnection, n: int) -> list[int]:
    """``n`` new PandaIDs from the database's sequence."""
    cur = await conn.execute(q.NEXT_PANDAIDS_SQL, (n,))
    return [r[0] for r in await cur.fetchall()]


async def files(conn: AsyncConnection, pandaid: int) -> list[dict[str, Any]]:
    """The job's FileSpec dicts, in (type, lfn) order."""
    cur = await conn.execute(q.FILES_SQL, (pandaid,))
    return [r[0] for r in await cur.fetchall()]


async def files_of(conn: AsyncConnection, pandaids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """PandaID → its FileSpec dicts, for the jobs of ``pandaids`` that have files."""
    cur = await conn.execute(q.FILES_OF_SQL, (list(pandaids),))
    out: dict[int, list[dict[str, Any]]] = {}
    for pid, spec in await cur.fetchall():
        out.setdefault(pid, []).append(spec)
    return out


async def first_candidates(cur: AsyncCursor, candidate_queries: Sequence[tuple[str, Mapping[str, Any]]]
                           ) -> list[dict[str, Any]]:
    """Run ``projections.candidates.candidate_queries`` in order on ``cur`` (a dict_row cursor in the
    caller's transaction: the rows stay locked until it ends); the rows of the first that finds any."""
    for sql, params in candidate_queries:
        await cur.execute(sql, params)
        rows = await cur.fetchall()
        if rows:
            return rows
    return []


async def any_candidate(conn: AsyncConnection, sources: tuple[str, str, Mapping[str, Any]],
                        after: Sequence[str] = ()) -> bool:
    """Whether ``projections.candidates.claim_sources`` (``locking="none"``) finds any job: one statement,
    a fresh snapshot, nothing locked. ``after``: statements sent behind it before its answer is read (in a
    pipeline: the COMMIT of its transaction)."""
    ctes, union, params = sources
    cur = await conn.execute(f"WITH {ctes} SELECT EXISTS ({union} LIMIT 1)", params)  # type: ignore[arg-type]
    for statement in after:
        await conn.execute(statement)  # type: ignore[arg-type]  # fixed text of the caller's
    row = await cur.fetchone()
    return bool(row and row[0])


async def wait_projected(pool: AsyncConnectionPool, want: Mapping[int, int], timeout: float,
                         columns: Sequence[str] = ("seq",), *, most: float = MAX_DELAY) -> dict[int, Row]:
    """``projections.wait.await_projected`` on the jobs table: the rows (``columns``) of the wanted jobs
    once each has reached its seq; ``ProjectionLag`` after ``timeout``."""
    cols = tuple(dict.fromkeys(("seq", *columns)))

    async def read(pids: list[int]) -> dict[int, dict[str, Any]]:
        async with pool.connection() as conn:
            return await jobs(conn, pids, cols)

    return await await_projected(read, want, timeout, most=most)
