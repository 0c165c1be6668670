"""The monitor's jobs page over 100,000 jobs: the default views read off an index, no filter or sort costs more than
about one pass over the table.

The jobs are written straight into the jobs projection (what the projector would have written), so the
test holds the monitor's queries and indexes (050_monitor_indexes.sql), not the pipeline. It asserts what
the database reads, not how long it takes (timings belong to the bench: docs/performance.md, "Monitor jobs
page"): the default views must touch a handful of buffers, and no page's statement twice as many as a
sequential read of the jobs table would (no sort of every job's spec, no per-row look-ups). Three filter pairs
(a queue with a state, a state sorted by queue, a time sorted by creation) read about one table's worth today."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
import urllib.request

import psycopg
import pytest

from core.ports import free_port
from core.states import JobStatus
from projections import monitor_queries as mq
from services.monitor import app as monitor

N = 100_000
STATES = [s.value for s in JobStatus]

FILL = """
INSERT INTO jobs (pandaid, partition, seq, status, attempt_nr, computing_site, prod_source_label, jedi_task_id,
                  current_priority, creation_time, modification_time, state_change_time, last_command_id, spec)
SELECT i, i %% 8, 3, (%(states)s::text[])[1 + i %% %(n_states)s], 1, 'SITE_' || (i %% 40),
       CASE WHEN i %% 5 = 0 THEN 'user' ELSE 'managed' END, 1000 + i / 500, i %% 1000,
       now() - make_interval(secs => %(n)s - i), now() - make_interval(secs => %(n)s - i),
       now() - make_interval(secs => %(n)s - i), 'c' || i,
       jsonb_build_object('prodUserName', 'user' || (i %% 300), 'jobName', 'job' || i,
                          'pilotErrorCode', CASE WHEN i %% 97 = 0 THEN '1212' ELSE '0' END)
FROM generate_series(1, %(n)s) AS i
"""

PAGES = [
    "/jobs", "/jobs?status=running", "/jobs?queue=SITE_12&status=finished", "/jobs?owner=user42",
    "/jobs?task=1100", "/jobs?label=user&sort=modified", "/jobs?error=pilot:1212", "/jobs?sort=modified&desc=0",
    "/jobs?status=failed&sort=queue&page=20", "/jobs?since=2020-01-01T00:00:00&sort=created",
]


@pytest.fixture
def filled(cfg):
    with psycopg.connect(cfg.db.url, autocommit=True) as conn:
        conn.execute(FILL, {"states": STATES, "n_states": len(STATES), "n": N})
        conn.execute("ANALYZE jobs")
    return cfg


def buffers_of(conn: psycopg.Connection, sql: str, params: list) -> int:
    """Shared buffers (hit + read) the statement touches, from EXPLAIN (ANALYZE, BUFFERS)."""
    plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params).fetchone()[0][0]["Plan"]
    return plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)


def test_jobs_pages_on_100k_jobs_cost_at_most_about_one_pass_over_the_table(filled, background):
    import threading
    port = free_port()
    ready = threading.Event()
    background.start(lambda stop: asyncio.run(monitor.serve(filled, stop, port=port, ready=ready)), "monitor")
    assert ready.wait(60)
    timings = {}
    for page in PAGES:
        url = f"http://127.0.0.1:{port}{page}"
        urllib.request.urlopen(url, timeout=30).read()          # warm the pool and the cache
        t0 = time.monotonic()
        html = urllib.request.urlopen(url, timeout=30).read().decode()
        timings[page] = time.monotonic() - t0
        assert re.search(r'<tr data-pandaid="\d+"', html), page
    t0 = time.monotonic()
    queue = urllib.request.urlopen(f"http://127.0.0.1:{port}/queue/SITE_5", timeout=30).read().decode()
    timings["/queue/SITE_5"] = time.monotonic() - t0
    assert 'data-code="pilot:1212"' in queue
    print({p: round(t * 1000) for p, t in timings.items()})   # for the reader of -s; asserted below: buffers
    with psycopg.connect(filled.db.url, autocommit=True) as conn:
        table_pages = conn.execute(   # jobs is partitioned (hot and archived): the pages of all its partitions
            "SELECT sum(pg_relation_size(relid)) / current_setting('block_size')::int"
            " FROM pg_partition_tree('jobs') WHERE isleaf").fetchone()[0]
        assert table_pages > 1000   # the fill made a table whose sequential read is worth avoiding
        touched = {}
        for page in PAGES:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page).query))
            sql, params = mq.jobs_page_sql(monitor.job_filter(query))
            touched[page] = buffers_of(conn, sql, params)
    print(touched, "table pages", table_pages)
    assert max(touched.values()) < 2 * table_pages, (touched, table_pages)
    for page in ("/jobs", "/jobs?sort=modified&desc=0", "/jobs?status=running", "/jobs?task=1100"):
        assert touched[page] < 100, (page, touched)   # read off an index in order: a page, not the table
