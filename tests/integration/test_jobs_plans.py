"""The jobs projection's batch statements read jobs by primary key even before the table has statistics.

Why it matters: jobs fills faster than autovacuum analyses it (a new system, a rebuild, a burst of
submissions), and without statistics PostgreSQL does not know that PandaID is unique; the projector's
UPDATE … FROM unnest(…) of a batch of ten rows was then planned as a hash join over a sequential scan of
every job (``projections/jobs.py``, ``_BY_KEY``). The test records the plan (EXPLAIN, no ANALYZE) of every
INSERT and UPDATE that ``JobsProjection.apply`` sends for a batch once the table has thousands of rows and
no statistics, and asserts that no UPDATE (about ten rows an event batch, the projector's hot path) reads the
hot partition sequentially. (A sequential scan of the empty archive partition, or the INSERT's of a few
thousand rows when its batch is large, are the planner's fair choices and not asserted on.)
"""

from __future__ import annotations

from typing import Any

import psycopg

from core import db
from projections.base import Record
from projections.jobs import JobsProjection
from schemas.jobspec import JobSpec
from schemas.messages import JobSubmitted, JobUpdated

N = 3000


class _Explaining(psycopg.Cursor):
    """Runs EXPLAIN (FORMAT JSON) of each jobs INSERT/UPDATE before the statement itself; keeps the plans."""

    plans: list[tuple[str, Any]] = []

    def execute(self, query, params=None, **kwargs):  # type: ignore[override]
        text = query if isinstance(query, str) else ""
        if text.startswith(("INSERT INTO jobs ", "UPDATE jobs ")):
            plan = super().execute("EXPLAIN (FORMAT JSON) " + text, params).fetchone()[0]
            _Explaining.plans.append((text.split(" ", 3)[0], plan))
        return super().execute(query, params, **kwargs)


def _scans(node: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(node.get("Node Type", ""), node.get("Relation Name", ""))]
    for child in node.get("Plans", []):
        found += _scans(child)
    return found


def _submitted(i: int) -> Record:
    return Record(i % 8, i, b"", JobSubmitted(
        PandaID=10_000 + i, actor="test", seq=1, from_state="new", to_state="defined", command_id=f"s{i}",
        job=JobSpec(computingSite="SITE", jobName=f"plan.{i}", transformation="t", prodUserName=f"u{i % 7}")))


def test_batch_statements_use_the_primary_key_without_statistics(cfg):
    proj = JobsProjection()
    # a batch of ten new jobs and ten changed ones (two sets of columns), once thousands of jobs are there
    batch = [_submitted(N + i) for i in range(10)] + [Record(i % 8, 2 * N + i, b"", JobUpdated(
        PandaID=10_000 + i * 37, actor="test", seq=2, from_state="defined", to_state="assigned",
        command_id=f"u{i}", action="assign", attrs={"currentPriority": 5} if i % 2 else {}))
        for i in range(10)]
    with db.connect(cfg) as conn:
        with conn.transaction():
            proj.apply(conn, [_submitted(i) for i in range(N)])
        analysed = conn.execute("SELECT count(*) FROM pg_stats WHERE tablename = 'jobs_hot'").fetchone()[0]
        _Explaining.plans = []
        conn.cursor_factory = _Explaining
        with conn.transaction():
            proj.apply(conn, batch)
        conn.cursor_factory = psycopg.Cursor
        rows = dict(conn.execute("SELECT pandaid, status FROM jobs WHERE seq = 2").fetchall())
        new = conn.execute("SELECT count(*) FROM jobs WHERE pandaid >= %s", (10_000 + N,)).fetchone()[0]
    assert analysed == 0, "the table was analysed meanwhile: the test needs a table without statistics"
    assert rows == {10_000 + i * 37: "assigned" for i in range(10)} and new == 10
    kinds = [kind for kind, _ in _Explaining.plans]
    assert kinds.count("INSERT") == 1 and kinds.count("UPDATE") == 2, kinds
    for kind, plan in _Explaining.plans:
        scans = _scans(plan[0]["Plan"])
        if kind == "UPDATE":
            assert ("Seq Scan", "jobs_hot") not in scans, f"the UPDATE reads every hot job: {scans}"
