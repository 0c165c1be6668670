"""What the monitor reads of the projections: filtered, sorted, paged job lists, counts by state per
queue or task, and a job's archived events — paged and indexed (050_monitor_indexes.sql) so the jobs
page stays fast on 100,000s of jobs.

The SQL is built by a pure function (``JobFilter`` in, text + parameters out) so the filter rules are
tested without a database; every value travels as a parameter, and sort keys come from a fixed list.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from projections import queries as q
from projections.fold import Placement, counts_by, placements

# the monitor's sort keys → SQL (ties broken by pandaid so pages do not overlap)
SORTS = {"pandaid": "pandaid", "modified": "modification_time", "created": "creation_time", "status": "status",
         "queue": "computing_site", "task": "jedi_task_id", "priority": "current_priority"}
NULLABLE_SORTS = {"computing_site", "jedi_task_id"}
ERROR_FIELDS = {"pilot": "pilotErrorCode", "exe": "exeErrorCode", "ddm": "ddmErrorCode", "jd": "jobDispatcherErrorCode",
                "tb": "taskBufferErrorCode", "sup": "supErrorCode", "brokerage": "brokerageErrorCode"}
LIST_COLUMNS = ("pandaid, status, seq, attempt_nr, computing_site, prod_source_label, jedi_task_id, current_priority,"
                " creation_time, modification_time, spec->>'prodUserName' AS owner, spec->>'jobName' AS job_name,"
                " " + ", ".join(f"spec->>'{f}' AS \"{f}\"" for f in ERROR_FIELDS.values()))
MAX_PAGE = 500


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """The jobs page's filters (all optional) with its sort and page."""

    status: str | None = None
    queue: str | None = None
    owner: str | None = None          # JobSpec prodUserName
    task: int | None = None           # jediTaskID
    label: str | None = None          # prodSourceLabel
    error: str | None = None          # "1212" (any error code field) or "pilot:1212"
    since: dt.datetime | None = None  # modificationTime ≥
    until: dt.datetime | None = None  # modificationTime <
    sort: str = "pandaid"
    desc: bool = True
    page: int = 1
    size: int = 50


def where(f: JobFilter, *, with_status: bool = True) -> tuple[str, list[Any]]:
    """``WHERE …`` (or "") and its parameters; ``with_status=False`` leaves the state filter out (the
    counts by state are of the other filters)."""
    parts: list[str] = []
    params: list[Any] = []
    if with_status and f.status:
        parts.append("status = %s")
        params.append(f.status)
    if f.queue:
        parts.append("computing_site = %s")
        params.append(f.queue)
    if f.owner:
        parts.append("(spec->>'prodUserName') = %s")
        params.append(f.owner)
    if f.task is not None:
        parts.append("jedi_task_id = %s")
        params.append(int(f.task))
    if f.label:
        parts.append("prod_source_label = %s")
        params.append(f.label)
    if f.error:
        kind, _, code = f.error.rpartition(":")
        fields = [ERROR_FIELDS[kind]] if kind in ERROR_FIELDS else list(ERROR_FIELDS.values())
        if kind and kind not in ERROR_FIELDS:
            raise ValueError(f"error filter {f.error!r}: expected CODE or one of {', '.join(ERROR_FIELDS)}:CODE")
        parts.append("(" + " OR ".join(f"(spec->>'{fld}') = %s" for fld in fields) + ")")
        params += [code.strip()] * len(fields)
    if f.since is not None:
        parts.append("modification_time >= %s")
        params.append(f.since)
    if f.until is not None:
        parts.append("modification_time < %s")
        params.append(f.until)
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def jobs_page_sql(f: JobFilter) -> tuple[str, list[Any]]:
    """The page of jobs (keyed order, LIMIT/OFFSET) for ``f``."""
    if f.sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    order = "DESC" if f.desc else "ASC"
    clause, params = where(f)
    col = SORTS[f.sort]
    # NULLS LAST only where a column can be NULL: on NOT NULL columns it would keep PostgreSQL from reading
    # the page off an index in order (it would sort every matching job instead)
    nulls = " NULLS LAST" if col in NULLABLE_SORTS else ""
    key = f"{col} {order}{nulls}" + (f", pandaid {order}" if col != "pandaid" else "")
    size = max(1, min(int(f.size), MAX_PAGE))
    sql = (f"SELECT {LIST_COLUMNS} FROM jobs{clause} ORDER BY {key} LIMIT %s OFFSET %s")
    return sql, [*params, size + 1, (max(1, int(f.page)) - 1) * size]


def counts_sql(f: JobFilter) -> tuple[str, list[Any]]:
    """Jobs by state under every filter but the state one."""
    clause, params = where(f, with_status=False)
    return f"SELECT status, count(*) FROM jobs{clause} GROUP BY status", params


QUEUES_SQL = "SELECT computing_site, status, count(*) FROM jobs GROUP BY computing_site, status"
TASK_SQL = "SELECT status, count(*) FROM jobs WHERE jedi_task_id = %s GROUP BY status"
TASKS_SQL = ("SELECT jedi_task_id, status, count(*) FROM jobs WHERE jedi_task_id IS NOT NULL"
             " GROUP BY jedi_task_id, status")
RECENT_EVENTS_SQL = ("SELECT pandaid, seq, time, actor, type, action, from_state, to_state FROM job_events"
                     " ORDER BY time DESC LIMIT %s")


async def jobs_page(conn: AsyncConnection, f: JobFilter) -> tuple[list[dict[str, Any]], bool]:
    """The page's rows and whether a next page exists."""
    sql, params = jobs_page_sql(f)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        rows = await cur.fetchall()
    size = max(1, min(int(f.size), MAX_PAGE))
    return rows[:size], len(rows) > size


async def counts(conn: AsyncConnection, f: JobFilter) -> dict[str, int]:
    sql, params = counts_sql(f)
    cur = await conn.execute(sql, params)
    return {s: n for s, n in await cur.fetchall()}


async def queues(conn: AsyncConnection) -> dict[str, dict[str, int]]:
    """Queue → state → jobs."""
    out: dict[str, dict[str, int]] = {}
    for site, status, n in await (await conn.execute(QUEUES_SQL)).fetchall():
        out.setdefault(site or "", {})[status] = n
    return out


async def task(conn: AsyncConnection, task_id: int) -> dict[str, int]:
    return {s: n for s, n in await (await conn.execute(TASK_SQL, (task_id,))).fetchall()}


async def tasks(conn: AsyncConnection) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for tid, status, n in await (await conn.execute(TASKS_SQL)).fetchall():
        out.setdefault(tid, {})[status] = n
    return out


async def job(conn: AsyncConnection, pandaid: int) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q.JOB_SQL, (pandaid,))
        return await cur.fetchone()


async def files(conn: AsyncConnection, pandaid: int) -> list[dict[str, Any]]:
    """The job's FileSpec dicts as the files projection has them now."""
    return [r[0] for r in await (await conn.execute(q.FILES_SQL, (pandaid,))).fetchall()]


async def history(conn: AsyncConnection, pandaid: int) -> list[dict[str, Any]]:
    """The job's archived events by seq (as ``queries.history``, which `pandaes history` prints)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q.HISTORY_SQL, (pandaid,))
        return await cur.fetchall()


async def recent_events(conn: AsyncConnection, n: int = 50) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(RECENT_EVENTS_SQL, (n,))
        return await cur.fetchall()


# ------------------------------------------------------------------------------------------- as of
# A view at a past moment is folded from the archived events up to it (projections.fold.placements): each
# job's state is its last event's destination, and its queue and task the last ones its events had named
# by then, so a job that moved counts where it was, not where the jobs table has it now.
_NAMED = "COALESCE(body->'attrs'->>'{0}', body->'job'->>'{0}')"
AS_OF_EVENTS_SQL = (f"SELECT pandaid, seq, to_state, {_NAMED.format('computingSite')}, {_NAMED.format('jediTaskID')}"
                    " FROM job_events WHERE time <= %s ORDER BY pandaid, seq")


async def placements_as_of(conn: AsyncConnection, when: dt.datetime) -> dict[int, Placement]:
    """PandaID → state, queue and task at ``when`` (jobs submitted later are absent), streamed and folded."""
    async with conn.cursor() as cur:
        return placements([row async for row in cur.stream(AS_OF_EVENTS_SQL, (when,))])


async def queues_as_of(conn: AsyncConnection, when: dt.datetime) -> dict[str, dict[str, int]]:
    """Queue → state → jobs as they were at ``when``."""
    return counts_by((await placements_as_of(conn, when)).values(), "queue")


async def tasks_as_of(conn: AsyncConnection, when: dt.datetime) -> dict[int, dict[str, int]]:
    return counts_by((await placements_as_of(conn, when)).values(), "task")


async def task_as_of(conn: AsyncConnection, task_id: int, when: dt.datetime) -> dict[str, int]:
    return counts_by((await placements_as_of(conn, when)).values(), "task").get(task_id, {})


# ------------------------------------------------------------------------------------ queue detail
THROUGHPUT_SQL = ("SELECT e.to_state, floor(extract(epoch FROM e.time) / %s)::bigint AS bucket, count(*)"
                  " FROM job_events e JOIN jobs j ON j.pandaid = e.pandaid"
                  " WHERE e.time >= %s AND e.to_state = ANY(%s) AND e.from_state <> e.to_state"
                  " AND j.computing_site = %s GROUP BY 1, 2")
TOP_ERRORS_SQL = ("SELECT f.kind, f.code, count(*), min(j.pandaid), min(f.diag) FROM jobs j, LATERAL (VALUES "
                  + ", ".join(f"('{k}', j.spec->>'{v}', j.spec->>'{v[:-4]}Diag')" for k, v in ERROR_FIELDS.items())
                  + ") AS f(kind, code, diag) WHERE j.status = %s AND j.computing_site = %s"
                  " AND f.code IS NOT NULL AND f.code NOT IN ('0', 'NULL', '')"
                  " GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT %s")


async def throughput(conn: AsyncConnection, queue: str, states: list[str], since: dt.datetime,
                     bucket_s: int) -> dict[str, dict[int, int]]:
    """State → bucket start (epoch seconds) → jobs that reached it in the queue since ``since``."""
    out: dict[str, dict[int, int]] = {s: {} for s in states}
    rows = await (await conn.execute(THROUGHPUT_SQL, (bucket_s, since, states, queue))).fetchall()
    for state, bucket, n in rows:
        out[state][int(bucket) * bucket_s] = n
    return out


async def top_errors(conn: AsyncConnection, queue: str, failed: str, n: int = 10) -> list[dict[str, Any]]:
    """The queue's most frequent error codes among its failed jobs, each with an example job and diag."""
    rows = await (await conn.execute(TOP_ERRORS_SQL, (failed, queue, n))).fetchall()
    return [{"kind": k, "code": c, "jobs": cnt, "example": ex, "diag": diag} for k, c, cnt, ex, diag in rows]
