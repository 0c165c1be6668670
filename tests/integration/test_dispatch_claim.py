"""The dispatcher's one-statement claim and its batches, on the real PostgreSQL (no broker).

The jobs are written by the projections themselves (``test_projection_queries.Projector``: commands judged by
core.machine, events applied as the projector does); the ledger's verdict is that same judgement, given to
the dispatcher as its ``ask``.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from test_projection_queries import Projector, activate, submit

from core import db
from projections.candidates import ORDERED_WALK, ORDERED_WALK_OPTIONS, claim_sources
from schemas.messages import Transition
from services.gateway import leases
from services.gateway.dispatcher import Dispatcher, DispatchRequest


async def _pool(cfg, options: str = "") -> AsyncConnectionPool:
    kwargs = {"autocommit": True, **({"options": options} if options else {})}
    pool = AsyncConnectionPool(cfg.db.url, min_size=1, max_size=4, open=False, kwargs=kwargs)
    await pool.open(wait=True)
    return pool


async def _claim_pool(cfg, wanted: bool) -> AsyncConnectionPool | None:
    """The gateway's claim pool (sessions with the candidate query's planner settings), or None: claims on the
    shared pool with SET LOCAL (``[gateway] claim_pool_size = 0``)."""
    return await _pool(cfg, f"{db.SESSION_OPTIONS} {ORDERED_WALK_OPTIONS}") if wanted else None


ON_BOTH_POOLS = pytest.mark.parametrize("claim_pool", [False, True], ids=["shared-pool", "claim-pool"])


def _lease_states(cfg) -> dict[int, str]:
    with db.connect(cfg, autocommit=True) as conn:
        return dict(conn.execute("SELECT pandaid, state FROM dispatch_leases").fetchall())


@ON_BOTH_POOLS
def test_a_batch_is_claimed_in_share_order_and_its_dispatches_asked_at_once(cfg, claim_pool):
    """n_jobs=3: one claim (the "Test" share first, then by priority), three dispatches in flight together,
    every lease ``sent`` before the answer and ``delivered`` after it; a fourth job stays for the next."""
    proj = Projector(cfg)
    proj.project([c for pid, prio, share in ((20, 5, None), (21, 9, None), (22, 1, "Test"), (23, 3, None))
                  for c in (submit(pid, priority=prio, gshare=share), activate(pid))])
    in_flight: list[int] = []
    all_asked = asyncio.Event()

    async def ask(cmd: Transition, timeout: float):
        in_flight.append(cmd.PandaID)
        if len(in_flight) == 3:
            all_asked.set()
        await asyncio.wait_for(all_asked.wait(), 30)   # only a concurrent batch gets past this
        await asyncio.to_thread(proj.project, [cmd])
        return next(e for e in reversed(proj.events) if e.PandaID == cmd.PandaID)

    async def scenario():
        pool = await _pool(cfg)
        claims = await _claim_pool(cfg, claim_pool)
        try:
            dispatcher = Dispatcher(cfg, pool, ask, claim_pool=claims)
            result = await dispatcher.acquire(DispatchRequest(site="SITE", n_jobs=3), "pilot:h")
            states_before = _lease_states(cfg)
            await dispatcher.delivered(result.jobs)
            return result, states_before, dispatcher.stats
        finally:
            await pool.close()
            if claims is not None:
                await claims.close()

    result, before, stats = asyncio.run(scenario())
    assert [j.panda_id for j in result.jobs] == [22, 21, 20]
    assert sorted(in_flight) == [20, 21, 22]
    assert all(j.spec["jobStatus"] == "sent" and [f["lfn"] for f in j.files] == [f"in.{j.panda_id}",
                                                                              f"out.{j.panda_id}"]
               for j in result.jobs)
    with db.connect(cfg, autocommit=True) as conn:
        assert dict(conn.execute("SELECT pandaid, command_id FROM dispatch_leases").fetchall()) == {
            j.panda_id: j.event.command_id for j in result.jobs}
    assert before == {20: "claimed", 21: "claimed", 22: "claimed"}   # until the answer is written
    assert _lease_states(cfg) == {20: "delivered", 21: "delivered", 22: "delivered"}
    assert stats["claims"] == 3 and stats["sent"] == 3 and stats["lost_races"] == 0


@ON_BOTH_POOLS
def test_concurrent_requests_of_one_shape_share_a_claim_statement_each_with_its_own_leases(cfg, claim_pool):
    """Four pilots on different nodes asking at once (one wants two jobs): one claim statement (claim_group.py),
    every request its own jobs in candidate order, each lease naming its own pilot, node and deadline; a pilot
    of another site is claimed apart."""
    proj = Projector(cfg)
    proj.project([c for pid in range(50, 56) for c in (submit(pid, priority=100 - pid), activate(pid))])
    proj.project([submit(60, site="OTHER"), activate(60)])

    async def scenario():
        pool = await _pool(cfg)
        claims = await _claim_pool(cfg, claim_pool)
        try:
            dispatcher = Dispatcher(cfg, pool, None, claim_pool=claims)   # type: ignore[arg-type]  # claims only
            asks = [(DispatchRequest(site="SITE", node=f"wn{i}"), f"pilot:{i}", want, 10.0 + i)
                    for i, want in ((1, 1), (2, 2), (3, 1), (4, 1))]
            asks.append((DispatchRequest(site="OTHER", node="wn9"), "pilot:9", 1, 19.0))
            got = await asyncio.gather(*(dispatcher._claim(req, actor, want, deliver)
                                         for req, actor, want, deliver in asks))
            return got, dispatcher._groups.statements, dispatcher._groups.requests
        finally:
            await pool.close()
            if claims is not None:
                await claims.close()

    got, statements, requests = asyncio.run(scenario())
    assert [[pid for pid, *_ in rows] for rows in got] == [[50], [51, 52], [53], [54], [60]]
    assert (statements, requests) == (2, 5)   # SITE's four requests in one statement, OTHER's in its own
    assert all(cmd.actor == f"pilot:{i}" for i, rows in zip((1, 2, 3, 4, 9), got, strict=True)
               for _, _, cmd, _ in rows)
    with db.connect(cfg, autocommit=True) as conn:
        leased = {pid: (actor, node, cid, round(left)) for pid, actor, node, cid, left in conn.execute(
            "SELECT pandaid, actor, node, command_id, extract(epoch FROM deliver_by - claimed_at)"
            " FROM dispatch_leases").fetchall()}
    assert leased == {pid: (cmd.actor, f"wn{cmd.actor.split(':')[1]}", cmd.id, 10 + int(cmd.actor.split(':')[1]))
                      for rows in got for pid, _, cmd, _ in rows}


@ON_BOTH_POOLS
def test_pilots_polling_an_empty_queue_together_share_the_claim_and_the_candidate_read(cfg, claim_pool):
    """Five pilots asking at once where there is nothing to dispatch: "no job" for each, after one claim statement
    and one "any candidate at all?" read for all of them (a quiet site's pilots poll all the time)."""
    async def scenario():
        pool = await _pool(cfg)
        claims = await _claim_pool(cfg, claim_pool)
        try:
            dispatcher = Dispatcher(cfg, pool, None, claim_pool=claims)   # type: ignore[arg-type]  # claims only
            got = await asyncio.gather(*(dispatcher._claim(DispatchRequest(site="EMPTY", node=f"wn{i}"),
                                                           f"pilot:{i}", 1, 10.0) for i in range(5)))
            return got, (dispatcher._groups.statements, dispatcher._groups.requests), \
                (dispatcher._candidate_reads.statements, dispatcher._candidate_reads.requests)
        finally:
            await pool.close()
            if claims is not None:
                await claims.close()

    got, claimed, probed = asyncio.run(scenario())
    assert got == [[]] * 5
    assert claimed == (1, 5) and probed == (1, 5)


def test_a_candidate_leased_after_the_claims_snapshot_comes_back_as_a_lost_race(cfg):
    """The claim's lease check reads its statement's snapshot; a lease committed later (while the claim
    waited for the row) is caught by the lease upsert: the candidate comes back without a command id."""
    proj = Projector(cfg)
    proj.project([c for pid in (30, 31) for c in (submit(pid, priority=pid), activate(pid))])
    holder = db.connect(cfg)
    holder.execute("SELECT 1 FROM jobs WHERE pandaid = 31 FOR NO KEY UPDATE")   # another claimer's row lock

    def waiting_on_a_lock() -> bool:
        with db.connect(cfg, autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                " AND wait_event_type = 'Lock'").fetchone()[0] > 0

    async def scenario():
        pool = await _pool(cfg)
        try:
            async with pool.connection() as conn:
                async def claim():
                    async with conn.transaction():
                        await conn.execute("SET LOCAL lock_timeout = 30000")
                        return await leases.claim_batch(
                            conn, claim_sources(DispatchRequest(site="SITE"), [], 1, leases=leases.RELATION,
                                                locking="wait"),
                            site="SITE", claimers=[("cb", "pilot:b", "n", 10.0)], ttl=60)

                task = asyncio.create_task(claim())
                for _ in range(600):   # until the claim waits for the row (or has answered: then it fails)
                    if task.done() or await asyncio.to_thread(waiting_on_a_lock):
                        break
                    await asyncio.sleep(0.05)
                # the other claimer leases its row and commits
                holder.execute("INSERT INTO dispatch_leases (pandaid, seq, site, actor, command_id, expires_at)"
                               " VALUES (31, 2, 'SITE', 'pilot:a', 'ca', now() + interval '60 s')")
                holder.commit()
                lost = await task
            dispatcher = Dispatcher(cfg, pool, None)   # type: ignore[arg-type]  # claims only
            won = await dispatcher._claim(DispatchRequest(site="SITE"), "pilot:b", 1, 10)
            return lost, won
        finally:
            holder.close()
            await pool.close()

    lost, won = asyncio.run(scenario())
    assert [(pid, seq, cid, files) for pid, seq, _, cid, files in lost] == [(31, 2, None, [])]
    assert [(pid, cmd.action, cmd.actor) for pid, _, cmd, _ in won] == [(30, "dispatch", "pilot:b")]
    with db.connect(cfg, autocommit=True) as conn:
        assert conn.execute("SELECT pandaid, command_id FROM dispatch_leases ORDER BY pandaid").fetchall() == [
            (30, won[0][2].id), (31, "ca")]


@ON_BOTH_POOLS
def test_a_candidate_locked_past_the_lock_wait_is_no_job_and_the_connection_stays_usable(cfg, claim_pool):
    """The waiting claim gives up after ``lock_wait`` (its transaction rolled back, the pool connection
    fine for the next request): "no jobs", and the same candidate once its row is free."""
    proj = Projector(cfg)
    proj.project([submit(40), activate(40)])
    holder = db.connect(cfg)
    holder.execute("SELECT 1 FROM jobs WHERE pandaid = 40 FOR NO KEY UPDATE")   # the projector, say

    async def scenario():
        pool = await _pool(cfg)
        claims = await _claim_pool(cfg, claim_pool)
        try:
            dispatcher = Dispatcher(cfg, pool, None, claim_pool=claims)   # type: ignore[arg-type]  # claims only
            dispatcher.lock_wait = 0.2
            none = await dispatcher._claim(DispatchRequest(site="SITE"), "pilot:c", 1, 10)
            holder.rollback()
            some = await dispatcher._claim(DispatchRequest(site="SITE"), "pilot:c", 1, 10)
            return none, some, dispatcher.stats
        finally:
            holder.close()
            await pool.close()
            if claims is not None:
                await claims.close()

    none, some, stats = asyncio.run(scenario())
    assert none == [] and stats["lock_waits_expired"] == 1
    assert [pid for pid, _, _, _ in some] == [40]


def test_sessions_plan_every_execution_and_never_compile(cfg):
    """core.db's session options reach both kinds of connection: a custom plan per execution, and no JIT
    (which compiled short reads on every call once a table's statistics made them look expensive)."""
    with db.connect(cfg, autocommit=True) as conn:
        assert conn.execute("SHOW jit").fetchone()[0] == "off"
        assert conn.execute("SHOW plan_cache_mode").fetchone()[0] == "force_custom_plan"

    async def pooled() -> tuple[str, str]:
        pool = AsyncConnectionPool(cfg.db.url, min_size=1, max_size=1, open=False,
                                   kwargs={"autocommit": True, "options": db.SESSION_OPTIONS})
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                return ((await (await conn.execute("SHOW jit")).fetchone())[0],
                        (await (await conn.execute("SHOW plan_cache_mode")).fetchone())[0])
        finally:
            await pool.close()

    assert asyncio.run(pooled()) == ("off", "force_custom_plan")


def _candidate_plan(cfg, settings: tuple[str, ...], options: str = "") -> str:
    """EXPLAIN of the candidate query a getJob at SITE runs, under ``settings`` (SET LOCAL in its transaction)
    on a session opened with ``options``."""
    ctes, union, params = claim_sources(DispatchRequest(site="SITE", prod_source_label="managed"), ["Test"], 1,
                                        leases=leases.RELATION, locking="none")
    with db.connect(cfg, autocommit=True, options=options) as conn, conn.transaction():
        for setting in settings:
            conn.execute(setting)
        return json.dumps(conn.execute(f"EXPLAIN (FORMAT JSON) WITH {ctes} {union} LIMIT 1", params).fetchone()[0])


def test_candidates_come_from_an_ordered_index_walk_whatever_the_statistics(cfg):
    """A burst of activated jobs the statistics have not seen (analyzed before it): under the claim's planner
    settings the candidate query walks the dispatch index to its LIMIT, with no sort and no bitmap scan. Without
    them, in the full dispatch bench, the planner believed one row, took a bitmap scan and sorted the whole
    backlog (1.7 s per getJob at 100k); which statistics lead there is hard to rebuild in a test, so this checks
    that the settings leave the walk as the plan."""
    with db.connect(cfg, autocommit=True) as conn:
        conn.execute("ALTER TABLE jobs_hot SET (autovacuum_enabled = false)")
        try:
            conn.execute("ANALYZE jobs_hot")
            conn.execute(
                "INSERT INTO jobs (pandaid, partition, seq, status, computing_site, prod_source_label,"
                " current_priority, creation_time, modification_time, state_change_time, last_command_id, spec)"
                " SELECT 900000 + g, 0, 2, 'activated', 'SITE', 'managed', g % 100, now(), now(), now(), 'c', '{}'"
                " FROM generate_series(1, 30000) g")
            walked = _candidate_plan(cfg, ORDERED_WALK)
            assert '"Sort"' not in walked and "Bitmap" not in walked, walked
            assert "jobs_hot_computing_site_current_priority" in walked or "dispatch" in walked, walked
            # the claim pool's sessions (the same settings as options) plan it the same way
            assert _candidate_plan(cfg, (), options=ORDERED_WALK_OPTIONS) == walked
        finally:
            conn.execute("DELETE FROM jobs WHERE pandaid > 900000")
            conn.execute("ALTER TABLE jobs_hot RESET (autovacuum_enabled)")


def _generic_claim_plan(conn, sources) -> str:
    """EXPLAIN of the generic plan of the whole claim statement (``leases.claim_batch``) prepared on ``conn``:
    each ``%(name)s`` of the statement a ``$n`` whose type PREPARE infers, then EXECUTE with literal values."""
    ctes, union, params = sources
    params = {**params, "n": 1, "site": "SITE", "nodes": ["node"], "actors": ["pilot"], "command_ids": ["c"],
              "ttl": 60.0, "delivers": [60.0]}
    order: list[str] = []

    def number(m: re.Match) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", number, leases._CLAIM_BATCH.format(ctes=ctes, union=union))
    conn.execute(f"PREPARE claim_plan AS {text}")
    try:
        args = ", ".join(sql.Literal(params[name]).as_string(conn) for name in order)
        return json.dumps(conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE claim_plan({args})").fetchone()[0])
    finally:
        conn.execute("DEALLOCATE claim_plan")


def test_the_claim_pool_plans_a_claim_once_and_that_plan_walks_and_probes_by_key(cfg):
    """The claim pool's sessions keep a generic plan of each claim statement (planning it was most of its CPU in
    PostgreSQL). That plan is made once, possibly on tables just created: it must still be the ordered walk of a
    dispatch index and probes of the leases and the files by key, never a scan of a table that grows (a young,
    empty lease table otherwise gets a sequential scan per candidate)."""
    with db.connect(cfg, autocommit=True, options=ORDERED_WALK_OPTIONS) as conn:
        assert conn.execute("SHOW plan_cache_mode").fetchone()[0] == "force_generic_plan"
        conn.execute("TRUNCATE dispatch_leases")
        conn.execute("VACUUM ANALYZE dispatch_leases")    # its statistics say empty: a scan looks cheapest
        for req in (DispatchRequest(site="SITE", prod_source_label="managed"),
                    DispatchRequest(site="SITE", prod_source_label="user", memory=2000, disk=100)):
            plan = _generic_claim_plan(conn, claim_sources(req, ["Test"], 1, leases=leases.RELATION))
            assert "Seq Scan" not in plan and "Bitmap" not in plan, plan
            assert "dispatch_leases_pkey" in plan and "files_pkey" in plan, plan
            assert "jobs_hot_computing_site_gshare_current_priority" in plan, plan     # the share's walk
            assert "jobs_hot_computing_site_current_priority" in plan, plan            # the others'
        # psycopg prepares a statement from its fifth execution; PostgreSQL then reuses the generic plan
        ctes, union, params = claim_sources(DispatchRequest(site="NOWHERE", prod_source_label="managed"), ["Test"],
                                            1, leases=leases.RELATION)
        statement = leases._CLAIM_BATCH.format(ctes=ctes, union=union)
        for _ in range(7):
            conn.execute(statement, {**params, "n": 1, "site": "NOWHERE", "nodes": ["n"], "actors": ["a"],
                                     "command_ids": ["c"], "ttl": 60.0, "delivers": [60.0]}).fetchall()
        generic, custom = conn.execute("SELECT sum(generic_plans), sum(custom_plans) FROM pg_prepared_statements"
                                       ).fetchone()
        assert generic >= 2 and custom == 0, (generic, custom)


def test_the_gateways_claims_commit_without_waiting_for_the_disk_and_its_other_writes_do(cfg):
    """A claim is on getJob's path and may be lost in a PostgreSQL crash (the ledger still dispatches a job once):
    the claim pool's sessions commit asynchronously; the shared pool (delivered marks, releases) durably."""
    from services.gateway.backend import Backend

    async def scenario() -> tuple[str, str]:
        backend = Backend(cfg)
        await backend.start()
        try:
            async with backend.claim_pool.connection() as conn:
                claims = (await (await conn.execute("SHOW synchronous_commit")).fetchone())[0]
            async with backend.pool.connection() as conn:
                others = (await (await conn.execute("SHOW synchronous_commit")).fetchone())[0]
            return claims, others
        finally:
            await backend.close()

    assert asyncio.run(scenario()) == ("off", "on")
