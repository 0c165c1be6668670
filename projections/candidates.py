"""Which activated jobs a pilot may get: PanDA's getJob selection as SQL on the jobs projection (pure).

Selection follows PanDA's ``DBProxy.getJobs`` (PANDA-REFERENCE §3.3): activated jobs of the site, the
prodSourceLabel rules, memory/disk/walltime/resource-type/core filters, ordered by global share, then
currentPriority DESC, then PandaID. ``candidate_query`` returns SQL text and parameters and runs nothing,
so the rules are tested without a database; the dispatcher (services/gateway/dispatcher.py) runs them
as parts of its one-statement claim (``claim_sources``).

The dispatcher's leases are its own table (services/gateway/leases.py): the query does not know it by
name but is told the lease relation to anti-join (``leases=``), a relation with ``pandaid``, ``seq`` and
``expires_at`` columns. A job is skipped while such a row has its PandaID and current ``seq`` and has not
expired, so a lease stops mattering as soon as the projection shows the job moved on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

# prodSourceLabel families (PanDA JobUtils / construct_where_clause)
ANALYSIS_LABELS = ("user", "panda", "install")
PRODUCTION_LABELS = ("managed", "test", "prod_test", "install")
UNIFIED_LABELS = ("managed", "test", "prod_test", "install", "user", "panda")

# how the candidate rows are locked (``candidate_query(locking=...)``)
LOCKING = {"skip": " FOR NO KEY UPDATE OF j SKIP LOCKED", "wait": " FOR NO KEY UPDATE OF j", "none": ""}

_RELATION = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


class Criteria(Protocol):
    """What the selection reads of a pilot's request (services.gateway.dispatcher.DispatchRequest has it)."""

    site: str
    prod_source_label: str | None
    computing_element: str | None
    job_type: str | None
    queue_status: str | None
    memory: int
    disk: int
    remaining_time: int
    resource_type: str | None
    core_count: int | None
    task_id: int | None


def label_filter(label: str | None, computing_element: str | None, job_type: str | None,
                 queue_status: str | None) -> tuple[str, dict[str, Any]]:
    """PanDA's prodSourceLabel rule for a pilot's label → SQL condition on jobs and its parameters."""
    if queue_status == "test" and label in ("user", "managed", "unified"):
        label = "test"
    if label == "user":
        return "j.prod_source_label = ANY(%(labels)s)", {"labels": list(ANALYSIS_LABELS)}
    if label in (None, "", "managed"):
        return "j.prod_source_label = ANY(%(labels)s)", {"labels": list(PRODUCTION_LABELS)}
    if label == "unified":
        return "j.prod_source_label = ANY(%(labels)s)", {"labels": list(UNIFIED_LABELS)}
    if label == "test" and computing_element:
        robot = "j.spec->>'processingType' = 'gangarobot'"
        if job_type == "user":
            return robot, {}
        return f"({robot} OR j.prod_source_label = ANY(%(labels)s))", {"labels": ["prod_test", "install", "test"]}
    return "j.prod_source_label = %(label)s", {"label": label}


def candidate_query(req: Criteria, share_order: Sequence[str], limit: int = 1,
                    share: str | None = None, *, leases: str | None = None,
                    locking: str = "skip", share_param: str = "share") -> tuple[str, dict[str, Any]]:
    """The SELECT that finds and row-locks dispatchable jobs for ``req`` (pure: SQL + parameters).

    One row at a time by default: with SKIP LOCKED each concurrent claimer then locks a different job
    instead of a block of ten, so the order (share, priority, PandaID) is kept under contention.

    The share order is kept by asking share by share (``candidate_queries``): the jobs of ``share`` (one
    of ``share_order``), or with ``share=None`` the jobs of every share not listed. Each query is then
    ordered by (priority, PandaID) alone, which the partial indexes on activated jobs serve directly, so
    its cost does not grow with the backlog (ordering by a share rank expression sorted every activated
    job of the site for every getJob: 0.4 s at 100k activated jobs).

    ``leases``: the relation of live claims to skip (see the module docstring); None skips none.

    ``locking``: ``"skip"`` locks the rows found and skips rows others hold; ``"wait"`` waits for a locked
    row instead; ``"none"`` only reads. A row is locked by another pilot's claim, but also by the projector
    while it applies another event of that job (a priority change): before it answers "no jobs", the
    dispatcher looks whether any candidate exists at all and, if so, asks again waiting for the lock
    (services/gateway/dispatcher.py).

    ``share_param``: the name of the share's parameter, so that the queries of several shares can be
    parts of one statement (``claim_sources``)."""
    if locking not in LOCKING:
        raise ValueError(f"locking: expected one of {', '.join(LOCKING)}, not {locking!r}")
    # NOT archived: only the hot partition of jobs (060_jobs_archive.sql), however many jobs are archived
    where = ["NOT j.archived", "j.status = 'activated'", "j.computing_site = %(site)s"]
    params: dict[str, Any] = {"site": req.site, "limit": limit}
    if share is not None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", share_param):
            raise ValueError(f"not a parameter name: {share_param!r}")
        where.append(f"j.gshare = %({share_param})s")
        params[share_param] = share
    elif share_order:
        where.append("(j.gshare IS NULL OR j.gshare <> ALL(%(shares)s::text[]))")
        params["shares"] = list(share_order)
    cond, more = label_filter(req.prod_source_label, req.computing_element, req.job_type, req.queue_status)
    where.append(cond)
    params.update(more)
    if req.memory > 0:
        where.append("(j.min_ram_count <= %(memory)s OR j.min_ram_count = 0)")
        params["memory"] = req.memory
    if req.disk > 0:
        where.append("(j.max_disk_count <= %(disk)s OR j.max_disk_count = 0)")
        params["disk"] = req.disk
    if req.remaining_time > 0:
        where.append("(j.max_walltime IS NULL OR j.max_walltime <= %(remaining)s)")
        params["remaining"] = req.remaining_time
    if req.resource_type:
        where.append("j.resource_type = %(resource_type)s")
        params["resource_type"] = req.resource_type
    if req.core_count:
        where.append("COALESCE(j.core_count, 1) <= %(cores)s")
        params["cores"] = req.core_count
    if req.task_id is not None:
        where.append("j.jedi_task_id = %(task_id)s")
        params["task_id"] = req.task_id
    if leases is not None:
        if not _RELATION.match(leases):
            raise ValueError(f"not a relation name: {leases!r}")
        where.append(f"NOT EXISTS (SELECT 1 FROM {leases} l WHERE l.pandaid = j.pandaid"
                     " AND l.seq = j.seq AND l.expires_at > now())")
    sql = (
        "SELECT j.pandaid, j.seq, j.spec FROM jobs j WHERE " + " AND ".join(where)
        + " ORDER BY j.current_priority DESC, j.pandaid LIMIT %(limit)s" + LOCKING[locking]
    )
    return sql, params


def candidate_queries(req: Criteria, share_order: Sequence[str], limit: int = 1, *,
                      leases: str | None = None, locking: str = "skip") -> list[tuple[str, dict[str, Any]]]:
    """The candidate queries in the order they are tried: each share of ``share_order``, then the rest."""
    return [candidate_query(req, share_order, limit, s, leases=leases, locking=locking)
            for s in dict.fromkeys(share_order)] + [
        candidate_query(req, share_order, limit, leases=leases, locking=locking)]


#: Planner settings for every statement built from ``candidate_query``, run as ``SET LOCAL`` in that statement's
#: own transaction. Why: candidates must come from an ordered walk of ``jobs_dispatch``/``jobs_dispatch_share``
#: that stops at the LIMIT. With statistics taken before a burst of submissions (autovacuum analyzes a minute or
#: more later), the planner estimated 1 activated job where there were 100,000, chose a bitmap scan and sorted
#: them all: 1.6-1.75 s and 107k buffers per getJob in the full dispatch bench (``pandaes bench --only
#: dispatch``). Without sorts and bitmap scans the ordered index walk is the plan left, whatever the statistics.
#: No sequential scans either: every table a claim reads has the index it needs (the dispatch indexes, the leases'
#: and the files' primary keys), and on a young lease table the planner otherwise probes the leases with a
#: sequential scan per candidate, a plan that must not outlive the table's growth (see ORDERED_WALK_OPTIONS).
ORDERED_WALK_SETTINGS = (("enable_sort", "off"), ("enable_bitmapscan", "off"), ("enable_seqscan", "off"))
ORDERED_WALK = tuple(f"SET LOCAL {name} = {value}" for name, value in ORDERED_WALK_SETTINGS)
#: The same settings for a whole session (libpq ``options``), for connections that run nothing but candidate
#: statements (the gateway's claim pool): each claim is then one autocommit statement, no BEGIN, SET LOCAL, COMMIT.
#: These sessions also plan each statement once (``plan_cache_mode=force_generic_plan``; psycopg prepares a
#: statement from its fifth execution) instead of at every execution as every other session does
#: (``core.db.SESSION_OPTIONS``). Why: planning the claim statement (a CTE per share, the lease upsert, the
#: files) and parsing it were three quarters of its CPU in PostgreSQL (perf on a backend running claims: planner
#: 47-51 %, parse and analysis 21 %; 735-755 µs → 180-350 µs per claim), about 0.5 ms per getJob. A generic plan is
#: safe here because the settings above leave one plan shape whatever the statistics or the parameters: the ordered
#: walk of a dispatch index to its LIMIT, the leases and the files probed by their keys
#: (tests/integration/test_dispatch_claim.py); ANALYZE of a table it reads replans it anyway.
ORDERED_WALK_OPTIONS = (" ".join(f"-c {name}={value}" for name, value in ORDERED_WALK_SETTINGS)
                        + " -c plan_cache_mode=force_generic_plan")


def claim_sources(req: Criteria, share_order: Sequence[str], limit: int = 1, *, leases: str | None = None,
                  locking: str = "skip") -> tuple[str, str, dict[str, Any]]:
    """The candidate queries of ``candidate_queries`` as parts of ONE statement (pure): the CTE list
    ``c0 AS MATERIALIZED (…), c1 AS …`` (one per share, in order, each locking its rows), a SELECT that
    reads them in that order (``c0`` UNION ALL ``c1`` …), and the parameters of all of them.

    Why one statement: the claim (services/gateway/leases.py ``claim_batch``) selects, locks and leases
    its candidates in one round trip, so a candidate row is locked only while that statement runs, not
    across the gateway's round trips; the projector's update of the row (the job's next event) and the
    other pilots' claims do not queue behind a busy gateway. A CTE is read only as far as the outer
    LIMIT needs it: when the first share has enough jobs, the others are not scanned at all.
    (``FOR UPDATE`` is not allowed in a UNION's branches; it is in a CTE the UNION reads.)"""
    ctes: list[str] = []
    params: dict[str, Any] = {}
    shares: list[str | None] = [*dict.fromkeys(share_order), None]
    for i, share in enumerate(shares):
        sql, more = candidate_query(req, share_order, limit, share, leases=leases, locking=locking,
                                    share_param=f"share{i}")
        ctes.append(f"c{i} AS MATERIALIZED ({sql})")
        params.update(more)
    union = " UNION ALL ".join(f"SELECT pandaid, seq, spec FROM c{i}" for i in range(len(shares)))
    return ", ".join(ctes), union, params


def files_json(pandaid: str) -> str:
    """SQL for the FileSpec dicts of the job whose PandaID is the expression ``pandaid``, as one JSON array in
    (type, lfn) order (NULL when it has none), like ``queries.FILES_OF_SQL``. The claim statement selects it
    for the candidates it won, so a dispatched job's files need no second read after the ledger's verdict
    (the files of an activated job do not change until it runs)."""
    return f"(SELECT json_agg(f.spec ORDER BY f.type, f.lfn) FROM files f WHERE f.pandaid = {pandaid})"
