"""The Harvester tables (migrations/220_harvester.sql): the one module that reads and writes them.

Why a table and not events: workers are Harvester's own records, reported whole and repeatedly (every
update_workers call sends the current WorkSpec), so the careful way to keep them is an idempotent upsert
keyed by (harvester_id, worker_id) in one transaction per call, as PanDA's updateWorkers does; nothing
about a job's lifecycle is decided from them except where a kill must go (killer.py).

The gateway calls the ``async`` functions on its pool's connections; the killer (a ServiceLoop reactor)
calls the two plain ones on a psycopg connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

#: a worker in one of these states keeps it for 3 hours whatever a late update says (PanDA's updateWorkers)
FINAL_WORKER_STATES = ("finished", "failed", "cancelled", "missed")
STATS_WINDOW_HOURS = 4          # getWorkerStats: only statistics reported in the last 4 hours
KILL_COMMAND = "SYNC_WORKERS_KILL"   # Harvester's sweeper marks the listed workerIDs to be killed

HEARTBEAT_SQL = (
    "INSERT INTO harvester_instances (harvester_id, owner, host, metadata, last_heartbeat)"
    " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (harvester_id) DO UPDATE SET owner = EXCLUDED.owner,"
    " host = EXCLUDED.host, metadata = harvester_instances.metadata || EXCLUDED.metadata,"
    " last_heartbeat = EXCLUDED.last_heartbeat")
#: how a reported worker merges into its row (both upserts below)
_WORKER_MERGE = (
    " ON CONFLICT (harvester_id, worker_id) DO UPDATE SET"
    " computing_site = COALESCE(EXCLUDED.computing_site, w.computing_site),"
    " status = CASE WHEN w.status = ANY(%s) AND w.last_update > now() - interval '3 hours'"
    "          THEN w.status ELSE COALESCE(EXCLUDED.status, w.status) END,"
    " resource_type = COALESCE(EXCLUDED.resource_type, w.resource_type),"
    " job_type = COALESCE(EXCLUDED.job_type, w.job_type), n_jobs = COALESCE(EXCLUDED.n_jobs, w.n_jobs),"
    " spec = w.spec || EXCLUDED.spec, last_update = EXCLUDED.last_update")
WORKER_SQL = (
    "INSERT INTO harvester_workers AS w (harvester_id, worker_id, computing_site, status, resource_type, job_type,"
    " n_jobs, spec, last_update) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())"
    + _WORKER_MERGE)
#: a call's distinct workers and their jobs in one statement, so in one round trip and one transaction (the pool
#: is autocommit): the workers' columns travel as one JSON array that the server unpacks (psycopg binding fifty
#: rows' column arrays element by element cost the gateway more than the database's work on them), the links
#: are written by the statement's main INSERT, the workers by its data-modifying WITH (always run whole). Only
#: for a batch whose workers are each listed once and each link once: one INSERT ... ON CONFLICT may not touch
#: a row twice. Parameters: the JSON array, harvester_id, the final states, harvester_id.
WORKERS_SQL = (
    "WITH t AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS t(worker_id bigint, computing_site text,"
    " status text, resource_type text, job_type text, n_jobs int, spec jsonb, pandaids bigint[])),"
    " workers AS (INSERT INTO harvester_workers AS w (harvester_id, worker_id, computing_site, status,"
    " resource_type, job_type, n_jobs, spec, last_update) SELECT %s, t.worker_id, t.computing_site, t.status,"
    " t.resource_type, t.job_type, t.n_jobs, t.spec, now() FROM t" + _WORKER_MERGE + ")"
    " INSERT INTO harvester_worker_jobs (harvester_id, worker_id, pandaid, last_update)"
    " SELECT %s, t.worker_id, j.pandaid, now() FROM t, unnest(t.pandaids) AS j(pandaid)"
    " ON CONFLICT (harvester_id, worker_id, pandaid) DO UPDATE SET last_update = EXCLUDED.last_update")
#: the links of the per-row path (a batch that lists a worker twice), deduplicated before they are sent
WORKER_JOBS_SQL = (
    "INSERT INTO harvester_worker_jobs (harvester_id, worker_id, pandaid, last_update)"
    " SELECT %s, t.worker_id, t.pandaid, now() FROM unnest(%s::bigint[], %s::bigint[]) AS t(worker_id, pandaid)"
    " ON CONFLICT (harvester_id, worker_id, pandaid) DO UPDATE SET last_update = EXCLUDED.last_update")
WORKER_JOB_SQL = (
    "INSERT INTO harvester_worker_jobs (harvester_id, worker_id, pandaid, last_update) VALUES (%s, %s, %s, now())"
    " ON CONFLICT (harvester_id, worker_id, pandaid) DO UPDATE SET last_update = EXCLUDED.last_update")
MAX_WORKER_SQL = "SELECT max(worker_id) FROM harvester_workers WHERE harvester_id = %s"
STATS_DELETE_SQL = "DELETE FROM harvester_worker_stats WHERE harvester_id = %s AND computing_site = %s"
STATS_INSERT_SQL = (
    "INSERT INTO harvester_worker_stats (harvester_id, computing_site, job_type, resource_type, status, n_workers,"
    " last_update) VALUES (%s, %s, %s, %s, %s, %s, now())")
STATS_SQL = (
    "SELECT computing_site, harvester_id, job_type, resource_type, status, sum(n_workers)::bigint"
    " FROM harvester_worker_stats WHERE last_update >= now() - make_interval(hours => %s)"
    " GROUP BY computing_site, harvester_id, job_type, resource_type, status")
METRICS_SQL = (
    "INSERT INTO harvester_service_metrics (harvester_id, harvester_host, creation_time, metrics)"
    " VALUES (%s, %s, %s, %s) ON CONFLICT (harvester_id, harvester_host, creation_time)"
    " DO UPDATE SET metrics = EXCLUDED.metrics")
DIALOG_SQL = (
    "INSERT INTO harvester_dialogs (harvester_id, diag_id, module_name, identifier, creation_time, message_level,"
    " diag_message) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (harvester_id, diag_id) DO NOTHING")
ACQUIRE_SQL = (
    "UPDATE harvester_commands SET status = 'retrieved', status_date = now() WHERE command_id IN"
    " (SELECT command_id FROM harvester_commands WHERE harvester_id = %s AND status = 'new'"
    "  ORDER BY creation_date, command_id LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING command_id, command, params, ack_requested, creation_date")
ACK_SQL = ("UPDATE harvester_commands SET status = 'acknowledged', status_date = now()"
           " WHERE command_id = ANY(%s) AND status <> 'acknowledged'")
ADD_COMMAND_SQL = (
    "INSERT INTO harvester_commands (harvester_id, command, params, ack_requested, dedup_key, creation_date,"
    " status_date) VALUES (%s, %s, %s, %s, %s, now(), now()) ON CONFLICT (dedup_key) DO NOTHING RETURNING command_id")
WORKERS_OF_JOBS_SQL = (
    "SELECT m.pandaid, m.harvester_id, m.worker_id FROM harvester_worker_jobs m"
    " JOIN harvester_workers w USING (harvester_id, worker_id)"
    " WHERE m.pandaid = ANY(%s) AND NOT (w.status = ANY(%s)) ORDER BY m.pandaid, m.harvester_id, m.worker_id")


_encode = msgspec.json.Encoder().encode


class BadWorker(ValueError):
    """A worker record without a usable workerID."""


def as_id(value: Any) -> int | None:
    """An integer id from what Harvester sent (int or text), None if it is not one."""
    try:
        return None if value in (None, "", "NULL") else int(value)
    except (TypeError, ValueError):
        return None


def worker_row(harvester_id: str, worker: Mapping[str, Any]) -> tuple[Any, ...]:
    """One WorkSpec dict (convert_to_propagate's fields) → the upsert's parameters (pure)."""
    worker_id = as_id(worker.get("workerID"))
    if worker_id is None:
        raise BadWorker(f"workerID missing or not an integer: {worker.get('workerID')!r}")
    spec = {k: v for k, v in worker.items() if k != "pandaid_list"}
    return (harvester_id, worker_id, worker.get("computingSite"), worker.get("status"), worker.get("resourceType"),
            worker.get("jobType"), as_id(worker.get("nJobs")), Jsonb(spec), list(FINAL_WORKER_STATES))


async def heartbeat(conn: AsyncConnection, harvester_id: str, owner: str | None, host: str | None,
                    metadata: Mapping[str, Any]) -> None:
    await conn.execute(HEARTBEAT_SQL, (harvester_id, owner, host, Jsonb(dict(metadata))))


async def upsert_workers(conn: AsyncConnection, harvester_id: str, workers: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Record the workers and their jobs in one transaction; one True per worker recorded, False for a
    worker record that cannot be (no workerID). Harvester reports its workers a hundred at a time: a batch of
    distinct workers is one statement (``WORKERS_SQL``: one round trip, no BEGIN/COMMIT of its own); a batch
    that lists a worker twice, or sends a text field as something else, keeps one upsert per worker in the
    workers' order (pipelined in one transaction) and answers exactly as before."""
    results: list[bool] = []
    rows: list[tuple[Any, ...]] = []
    links: list[list[int]] = []
    for worker in workers:
        try:
            row = worker_row(harvester_id, worker)
        except BadWorker:
            results.append(False)
            continue
        rows.append(row)
        # each job once per worker (one INSERT may not touch a link twice)
        links.append(list(dict.fromkeys(pid for pid in map(as_id, worker.get("pandaid_list") or [])
                                        if pid is not None)))
        results.append(True)
    if not rows:
        return results
    document = _as_document(rows, links)
    if document is not None:
        await conn.execute(WORKERS_SQL, (document, harvester_id, list(FINAL_WORKER_STATES), harvester_id))
        return results
    pairs = list(dict.fromkeys((r[1], pid) for r, pids in zip(rows, links, strict=True) for pid in pids))
    async with conn.transaction(), conn.cursor() as cur:
        # in the workers' order: a worker listed twice ends as its last record says
        await cur.executemany(WORKER_SQL, rows)
        if pairs:
            await cur.execute(WORKER_JOBS_SQL, (harvester_id, [w for w, _ in pairs], [p for _, p in pairs]))
    return results


_TEXT_FIELDS = (2, 3, 4, 5)   # computing_site, status, resource_type, job_type in a worker_row


def _as_document(rows: list[tuple[Any, ...]], links: list[list[int]]) -> str | None:
    """The workers' rows and their jobs as ``WORKERS_SQL``'s JSON array, or None where that statement would not
    do what one upsert per row does: a worker listed twice, or a text field Harvester sent as something else
    (left to the per-row statement, which answers it as before). Pure."""
    if len({r[1] for r in rows}) != len(rows):
        return None
    records = []
    for r, pids in zip(rows, links, strict=True):
        for k in _TEXT_FIELDS:
            if r[k] is not None and not isinstance(r[k], str):
                return None
        records.append({"worker_id": r[1], "computing_site": r[2], "status": r[3], "resource_type": r[4],
                        "job_type": r[5], "n_jobs": r[6], "spec": r[7].obj, "pandaids": pids})
    return _encode(records).decode()


async def current_worker_id(conn: AsyncConnection, harvester_id: str) -> int | None:
    row = await (await conn.execute(MAX_WORKER_SQL, (harvester_id,))).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def stats_rows(harvester_id: str, site: str, stats: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """``{jobType: {resourceType: {status: n}}}`` → rows (pure); ValueError if it has another shape."""
    rows = []
    for job_type, by_resource in stats.items():
        if not isinstance(by_resource, Mapping):
            raise ValueError(f"statistics[{job_type!r}] is not an object")
        for resource_type, by_status in by_resource.items():
            if not isinstance(by_status, Mapping):
                raise ValueError(f"statistics[{job_type!r}][{resource_type!r}] is not an object")
            for status, n in by_status.items():
                rows.append((harvester_id, site, str(job_type), str(resource_type), str(status), int(n)))
    return rows


async def report_worker_stats(conn: AsyncConnection, harvester_id: str, site: str, stats: Mapping[str, Any]) -> None:
    """Replace the instance's statistics of one queue (PanDA's reportWorkerStats_jobtype)."""
    rows = stats_rows(harvester_id, site, stats)
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(STATS_DELETE_SQL, (harvester_id, site))
        if rows:
            await cur.executemany(STATS_INSERT_SQL, rows)


async def worker_stats(conn: AsyncConnection) -> dict[str, Any]:
    """``{site: {harvester_id: {jobType: {resourceType: {status: n}}}}}`` of the last 4 hours' reports."""
    out: dict[str, Any] = {}
    cur = await conn.execute(STATS_SQL, (STATS_WINDOW_HOURS,))
    for site, hid, job_type, resource_type, status, n in await cur.fetchall():
        out.setdefault(site, {}).setdefault(hid, {}).setdefault(job_type, {}).setdefault(resource_type, {})[status] = n
    return out


async def add_metrics(conn: AsyncConnection, harvester_id: str, metrics: Iterable[Sequence[Any]]) -> int:
    """``[[creation_time, host, metric_json], ...]`` (Harvester's triplets); the number recorded."""
    rows = []
    for item in metrics:
        creation_time, host, metric = item
        value = json.loads(metric) if isinstance(metric, str) else metric
        rows.append((harvester_id, str(host), str(creation_time), Jsonb(value)))
    async with conn.transaction(), conn.cursor() as cur:
        if rows:
            await cur.executemany(METRICS_SQL, rows)
    return len(rows)


async def add_dialogs(conn: AsyncConnection, harvester_id: str, dialogs: Iterable[Mapping[str, Any]]) -> int:
    rows = [(harvester_id, int(d["diagID"]), d.get("moduleName"), d.get("identifier"),
             None if d.get("creationTime") is None else str(d["creationTime"]), d.get("messageLevel"),
             d.get("diagMessage")) for d in dialogs]
    async with conn.transaction(), conn.cursor() as cur:
        if rows:
            await cur.executemany(DIALOG_SQL, rows)
    return len(rows)


async def acquire_commands(conn: AsyncConnection, harvester_id: str, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` new commands, oldest first, marked retrieved in the same statement (getCommands)."""
    async with conn.transaction():
        cur = await conn.execute(ACQUIRE_SQL, (harvester_id, n))
        rows = await cur.fetchall()
    rows.sort(key=lambda r: (r[4], r[0]))
    return [{"command_id": cid, "command": command, "params": params, "ack_requested": ack,
             "creation_date": created.replace(tzinfo=None).isoformat()}
            for cid, command, params, ack, created in rows]


async def acknowledge_commands(conn: AsyncConnection, command_ids: Sequence[int]) -> int:
    cur = await conn.execute(ACK_SQL, (list(command_ids),))
    return cur.rowcount


# ------------------------------------------------------------------ the killer's reads and writes (sync)
def workers_of_jobs(conn: psycopg.Connection, pandaids: Sequence[int]) -> dict[int, list[tuple[str, int]]]:
    """PandaID → the (harvester_id, worker_id) of its workers that are not over yet."""
    out: dict[int, list[tuple[str, int]]] = {}
    for pid, hid, wid in conn.execute(WORKERS_OF_JOBS_SQL, (list(pandaids), list(FINAL_WORKER_STATES))):
        out.setdefault(pid, []).append((hid, wid))
    return out


def add_command(conn: psycopg.Connection, harvester_id: str, command: str, params: Any, dedup_key: str,
                ack_requested: bool = True) -> int | None:
    """Queue a command once per ``dedup_key``; its id, or None if it was queued before."""
    row = conn.execute(ADD_COMMAND_SQL, (harvester_id, command, Jsonb(params), ack_requested, dedup_key)).fetchone()
    return None if row is None else int(row[0])


async def add_command_async(conn: AsyncConnection, harvester_id: str, command: str, params: Any, dedup_key: str,
                            ack_requested: bool = True) -> int | None:
    cur = await conn.execute(ADD_COMMAND_SQL, (harvester_id, command, Jsonb(params), ack_requested, dedup_key))
    row = await cur.fetchone()
    return None if row is None else int(row[0])
