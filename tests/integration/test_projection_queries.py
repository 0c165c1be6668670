"""The projections' query API (sync and asyncio) and the one projection wait, on the real PostgreSQL.

The rows are written by the projections themselves: commands are judged by the pure state machine and
the resulting events applied by ``projections.runner.ALL`` with their positions, in one transaction per
batch, as the projector does (no broker is needed to read tables).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections import defaultdict

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from core import db
from core.machine import JobState, apply, decide
from projections import aqueries, queries
from projections.base import Record, save_position
from projections.candidates import candidate_queries
from projections.jobview import JobReader
from projections.runner import ALL
from projections.wait import ProjectionLag, wait_projected
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Event, PilotUpdate, Rejected, Submit, Transition, decode_event, encode
from services.gateway import leases
from services.gateway.dispatcher import DispatchRequest

PARTITIONS = 2


class Projector:
    """Judges commands with core.machine and applies the events with the real projections."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.states: dict[int, JobState] = {}
        self.offsets: dict[int, int] = defaultdict(int)
        self.events: list[Event] = []

    def judge(self, cmds) -> list[Record]:
        records = []
        for cmd in cmds:
            ev = decide(self.states.get(cmd.PandaID), cmd, [0, len(self.events)])
            assert not isinstance(ev, Rejected), ev
            self.states[cmd.PandaID] = apply(self.states.get(cmd.PandaID), ev)
            self.events.append(ev)
            p = cmd.PandaID % PARTITIONS
            raw = encode(ev)
            records.append(Record(p, self.offsets[p], raw, decode_event(raw)))
            self.offsets[p] += 1
        return records

    def project(self, cmds) -> None:
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for rec in self.judge(cmds):
            by_partition[rec.partition].append(rec)
        with db.connect(self.cfg) as conn, conn.transaction():
            for p, recs in by_partition.items():
                for proj in ALL.values():
                    proj.apply(conn, recs)
                    save_position(conn, proj.name, self.cfg.kafka.events_topic, p, recs[-1].offset + 1)


def submit(pid: int, site: str = "SITE", priority: int = 0, gshare: str | None = None) -> Submit:
    files = [FileSpec(lfn=f"in.{pid}", type="input", dataset="ds.in", status="ready"),
             FileSpec(lfn=f"out.{pid}", type="output", destinationDBlock="ds.out_sub01")]
    return Submit(PandaID=pid, actor="user:test", job=JobSpec(
        computingSite=site, attemptNr=1, currentPriority=priority, prodSourceLabel="managed", gshare=gshare,
        Files=files))


def activate(pid: int) -> Transition:
    return Transition(PandaID=pid, action="activate", actor="service:setupper")


@pytest.fixture
def projected(cfg) -> Projector:
    proj = Projector(cfg)
    proj.project([c for pid in (10, 11, 12) for c in (submit(pid, priority=pid), activate(pid))])
    proj.project([Transition(PandaID=12, action="dispatch", actor="service:dispatcher"),
                  PilotUpdate(PandaID=12, state="running", attempt_nr=1, actor="pilot:p")])
    return proj


def test_sync_queries_read_what_the_projections_wrote(cfg, projected):
    topic = cfg.kafka.events_topic
    with db.connect(cfg, autocommit=True) as conn:
        row = queries.job(conn, 12)
        assert row["status"] == "running" and row["seq"] == 4 and row["spec"]["computingSite"] == "SITE"
        assert queries.job(conn, 99) is None
        assert queries.exists(conn, 10) and not queries.exists(conn, 99)
        some = queries.jobs(conn, [10, 12, 99], ("status",))
        assert some == {10: {"pandaid": 10, "status": "activated"}, 12: {"pandaid": 12, "status": "running"}}
        assert [f["lfn"] for f in queries.files(conn, 10)] == ["in.10", "out.10"]
        assert set(queries.files_of(conn, [10, 11, 99])) == {10, 11}
        assert [(e["seq"], e["to_state"]) for e in queries.history(conn, 12)] == [
            (1, "defined"), (2, "activated"), (3, "sent"), (4, "running")]
        assert queries.count_by_status(conn) == {"activated": 2, "running": 1}
        assert queries.count_by_status(conn, ["running", "finished"]) == {"running": 1}
        assert queries.archived_count(conn) == 8
        pos = {(name, p): off for name, p, off in queries.positions(conn, topic)}
        assert pos[("jobs", 0)] == projected.offsets[0] and pos[("archive", 1)] == projected.offsets[1]
        assert len(queries.event_times(conn)) == 8
        assert {stage for stage, _ in queries.stage_seconds(conn)} >= {"defined → activated (activate)"}
        assert queries.finish_latencies(conn) == []


def test_partition_snapshot_is_the_ledgers_view_of_a_partition(cfg, projected):
    with db.connect(cfg) as conn:
        snap = queries.partition_snapshot(conn, cfg.kafka.events_topic, 0)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        empty = queries.partition_snapshot(conn, "no.such.topic", 0)
    assert snap.next_offset == projected.offsets[0]
    folded = {pid: st for pid, st in projected.states.items() if pid % PARTITIONS == 0}
    assert {r.pandaid: (r.status, r.seq, r.attempt_nr, r.command_to_pilot, r.special_handling, r.prod_source_label)
            for r in snap.jobs} == {
        pid: (st.state, st.seq, st.attempt_nr, st.command_to_pilot, st.special_handling, st.label)
        for pid, st in folded.items()}
    assert empty == (0, [])


def test_partition_snapshot_knows_a_sent_jobs_dispatch(cfg, projected):
    """A ledger rebuilt from the snapshot can still judge an undispatch (core.machine)."""
    dispatches = {pid: Transition(PandaID=pid, action="dispatch", actor="pilot:p") for pid in (10, 11)}
    projected.project(list(dispatches.values()))
    with db.connect(cfg) as conn:
        rows = [r for p in range(PARTITIONS)
                for r in queries.partition_snapshot(conn, cfg.kafka.events_topic, p).jobs]
    assert {r.pandaid: r.dispatch_id for r in rows} == {10: dispatches[10].id, 11: dispatches[11].id, 12: None}
    assert {r.pandaid: r.dispatch_id for r in rows} == {pid: st.dispatch_id for pid, st in projected.states.items()}


def test_job_reader_waits_for_the_projection_and_survives_a_lost_connection(cfg, projected):
    reader = JobReader(cfg, wait=0.3)
    try:
        assert reader.job(10, 2)["status"] == "activated"
        with pytest.raises(ProjectionLag, match="PandaID 10, need seq ≥ 3"):
            reader.job(10, 3)
        # the projector writes the next event while the reader waits: the read in between does it
        moved = threading.Event()

        def read(pids):
            rows = queries.jobs(reader.conn, pids, ("seq", "status"))
            if not moved.is_set():
                moved.set()
                projected.project([Transition(PandaID=10, action="dispatch", actor="service:dispatcher")])
            return rows

        assert wait_projected(read, {10: 3}, 10.0)[10]["status"] == "sent"
        # the server drops the reader's connection: the next read reconnects
        with db.connect(cfg, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (reader.conn.info.backend_pid,))
        assert reader.row(11)["status"] == "activated"
        assert reader.files(11) and reader.exists(11)
    finally:
        reader.close()


def test_async_queries_candidates_and_lease_sweep(cfg, projected):
    async def scenario() -> None:
        pool = AsyncConnectionPool(cfg.db.url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True})
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                assert (await aqueries.jobs(conn, [11, 12], ("seq",))) == {11: {"pandaid": 11, "seq": 2},
                                                                            12: {"pandaid": 12, "seq": 4}}
                assert [f["lfn"] for f in await aqueries.files(conn, 11)] == ["in.11", "out.11"]
                assert set(await aqueries.files_of(conn, [11, 12])) == {11, 12}
            assert (await aqueries.wait_projected(pool, {11: 2, 12: 3}, 1.0, ("status",)))[12]["status"] == "running"
            with pytest.raises(ProjectionLag):
                await aqueries.wait_projected(pool, {11: 3}, 0.1)

            # candidates in priority order; a live lease on the current seq hides a job, an old seq does not
            queries_ = candidate_queries(DispatchRequest(site="SITE"), [], leases=leases.RELATION)
            async with pool.connection() as conn:
                async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    first = await aqueries.first_candidates(cur, queries_)
                    assert [r["pandaid"] for r in first] == [11]
                    assert await leases.claim(cur, pandaid=11, seq=2, site="SITE", node="n", actor="pilot:a",
                                              command_id="c1", ttl=60)
                async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    assert not await leases.claim(cur, pandaid=11, seq=2, site="SITE", node="n", actor="pilot:b",
                                                  command_id="c2", ttl=60)
                    assert [r["pandaid"] for r in await aqueries.first_candidates(cur, queries_)] == [10]
                    assert await leases.claim(cur, pandaid=10, seq=1, site="SITE", node="n", actor="pilot:b",
                                              command_id="c3", ttl=60)     # a seq the job has left
                    assert [r["pandaid"] for r in await aqueries.first_candidates(cur, queries_)] == [10]
                # the sweep keeps the live lease and an undelivered one (the dispatch sweep's), and drops a
                # delivered one on a seq the job has left
                assert await leases.sweep(conn) == 0
                # a claimed lease names its pilot before its answer is marked (that pilot may speak at once);
                # a command id names its lease only with its PandaID
                assert await leases.sent_to(conn, 11) == "pilot:a"
                assert await leases.mark_delivered(conn, [(10, "c3"), (10, "c1")], 60) == {"c3"}
                assert await leases.sweep(conn) == 1
                cur = await conn.execute("SELECT pandaid, seq FROM dispatch_leases")
                assert await cur.fetchall() == [(11, 2)]
                # delivered on the seq its job is still activated at (the projection not there yet): kept
                assert await leases.mark_delivered(conn, [(11, "c1")], 60) == {"c1"}
                assert await leases.sweep(conn) == 0
                await leases.release(conn, [(11, "c1")])
                cur = await conn.execute("SELECT count(*) FROM dispatch_leases")
                assert (await cur.fetchone())[0] == 0
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_as_of_views_count_a_moved_job_where_it_was(cfg):
    """The monitor's "as of" queue view folds each job's queue from its archived events up to the moment."""
    from projections import monitor_queries as mq

    proj = Projector(cfg)
    proj.project([submit(20, site="SITE_A"), activate(20), submit(21, site="SITE_A")])
    before = dt.datetime.now(dt.UTC)
    proj.project([Transition(PandaID=20, action="reset", actor="user:test", attrs={"computingSite": "SITE_B"})])
    after = dt.datetime.now(dt.UTC)

    async def scenario() -> None:
        conn = await psycopg.AsyncConnection.connect(cfg.db.url, autocommit=True)
        try:
            assert await mq.queues_as_of(conn, before) == {"SITE_A": {"activated": 1, "defined": 1}}
            assert await mq.queues_as_of(conn, after) == {"SITE_A": {"defined": 1}, "SITE_B": {"defined": 1}}
            assert await mq.queues(conn) == await mq.queues_as_of(conn, after)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_every_session_plans_each_execution_and_never_compiles_with_jit(cfg):
    """core.db's session options reach every kind of connection the components open (plain, pooled, the
    gateway's asyncio pool): a batched read whose estimate crossed jit_above_cost spent seconds compiling."""
    with db.connect(cfg) as conn:
        assert conn.execute("SHOW jit").fetchone()[0] == "off"
        assert conn.execute("SHOW plan_cache_mode").fetchone()[0] == "force_custom_plan"
    with db.pool(cfg, min_size=1, max_size=1) as pool, pool.connection() as conn:
        assert conn.execute("SHOW jit").fetchone()[0] == "off"

    async def pooled() -> str:
        async with AsyncConnectionPool(cfg.db.url, min_size=1, max_size=1, open=False,
                                       kwargs={"options": db.SESSION_OPTIONS}) as apool:
            async with apool.connection() as conn:
                return (await (await conn.execute("SHOW jit")).fetchone())[0]

    assert asyncio.run(pooled()) == "off"
