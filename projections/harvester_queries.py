"""What Harvester reads of the jobs projection: active-job statistics per site (asyncio, for the gateway).

PanDA answers ``statistics/active_job_stats_by_site`` from jobsDefined4 + jobsActive4 (every job not yet
archived), leaves out ``merging`` (it breaks Harvester's pilot-factory arithmetic) and fills ``assigned``,
``activated`` and ``running`` with 0 where a site has none; the detailed form splits each site by
resource_type and prodSourceLabel.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from core.states import NON_FINAL, JobStatus

COUNTED = tuple(s for s in NON_FINAL if s != JobStatus.MERGING)
ALWAYS_REPORTED = (JobStatus.ASSIGNED, JobStatus.ACTIVATED, JobStatus.RUNNING)

BY_SITE_SQL = ("SELECT computing_site, status, count(*)::bigint FROM jobs WHERE status = ANY(%s)"
               " GROUP BY computing_site, status")
DETAILED_SQL = ("SELECT computing_site, resource_type, prod_source_label, status, count(*)::bigint FROM jobs"
                " WHERE status = ANY(%s) GROUP BY computing_site, resource_type, prod_source_label, status")


def _zero_filled(counts: dict[str, int]) -> dict[str, int]:
    for state in ALWAYS_REPORTED:
        counts.setdefault(state.value, 0)
    return counts


async def active_job_stats_by_site(conn: AsyncConnection) -> dict[str, dict[str, int]]:
    """``{site: {status: n}}`` over jobs not final (merging left out)."""
    out: dict[str, dict[str, int]] = {}
    cur = await conn.execute(BY_SITE_SQL, (list(COUNTED),))
    for site, status, n in await cur.fetchall():
        out.setdefault(site, {})[status] = n
    return {site: _zero_filled(counts) for site, counts in out.items()}


async def active_job_detailed_stats_by_site(conn: AsyncConnection) -> dict[str, Any]:
    """``{site: {resource_type: {prodSourceLabel: {status: n}}}}`` over the same jobs."""
    out: dict[str, Any] = {}
    cur = await conn.execute(DETAILED_SQL, (list(COUNTED),))
    for site, resource_type, label, status, n in await cur.fetchall():
        out.setdefault(site, {}).setdefault(resource_type, {}).setdefault(label, {})[status] = n
    for by_resource in out.values():
        for by_label in by_resource.values():
            for counts in by_label.values():
                _zero_filled(counts)
    return out
