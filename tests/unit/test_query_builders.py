"""Pure parts of the projections' query API: SQL builders, the candidate query's lease relation, and
the one way to wait for the jobs projection (its back-off and deadline on a fake clock)."""

from __future__ import annotations

import asyncio

import pytest

from projections import queries
from projections.candidates import candidate_queries, candidate_query, claim_sources
from projections.wait import (
    Backoff,
    PositionLag,
    ProjectionLag,
    await_projected,
    behind,
    wait_position,
    wait_projected,
)
from services.gateway.dispatcher import DispatchRequest


def test_jobs_sql_always_selects_pandaid_and_only_known_columns():
    assert queries.jobs_sql(("seq",)) == "SELECT pandaid, seq FROM jobs WHERE pandaid = ANY(%s)"
    assert queries.jobs_sql(("pandaid", "spec")) == "SELECT pandaid, spec FROM jobs WHERE pandaid = ANY(%s)"
    assert queries.jobs_sql().startswith("SELECT " + ", ".join(queries.JOB_COLUMNS) + " FROM jobs")
    with pytest.raises(ValueError, match="seq; DROP"):
        queries.jobs_sql(("seq; DROP TABLE jobs",))


def test_count_by_status_sql():
    assert queries.count_by_status_sql(None) == ("SELECT status, count(*) FROM jobs GROUP BY status", ())
    sql, params = queries.count_by_status_sql(("activated", "running"))
    assert "status = ANY(%s)" in sql and params == (["activated", "running"],)


def test_candidate_query_anti_joins_the_lease_relation_it_is_given():
    req = DispatchRequest(site="Q")
    sql, _ = candidate_query(req, [], leases="dispatch_leases")
    assert ("NOT EXISTS (SELECT 1 FROM dispatch_leases l WHERE l.pandaid = j.pandaid AND l.seq = j.seq"
            " AND l.expires_at > now())") in sql
    bare, _ = candidate_query(req, [])
    assert "NOT EXISTS" not in bare and "FOR NO KEY UPDATE OF j SKIP LOCKED" in bare
    with pytest.raises(ValueError):
        candidate_query(req, [], leases="x; DELETE FROM jobs")
    shares = candidate_queries(req, ["A", "B", "A"], leases="gw.leases")
    assert [p.get("share") for _, p in shares] == ["A", "B", None]
    assert all("FROM gw.leases l" in sql for sql, _ in shares)


def test_claim_sources_are_the_share_queries_in_order_as_parts_of_one_statement():
    req = DispatchRequest(site="Q")
    ctes, union, params = claim_sources(req, ["A", "B", "A"], 5, leases="dispatch_leases")
    # one CTE per share of the order (duplicates once), then every other share; each with its own parameter
    assert ctes.startswith("c0 AS MATERIALIZED (SELECT") and ", c2 AS MATERIALIZED (" in ctes
    assert "c3 AS" not in ctes
    assert ctes.count("SKIP LOCKED") == 3 and ctes.count("NOT EXISTS (SELECT 1 FROM dispatch_leases l") == 3
    assert "j.gshare = %(share0)s" in ctes and "j.gshare = %(share1)s" in ctes and "%(share)s" not in ctes
    assert (params["share0"], params["share1"], params["shares"], params["limit"]) == ("A", "B", ["A", "B", "A"], 5)
    assert union == "SELECT pandaid, seq, spec FROM c0 UNION ALL SELECT pandaid, seq, spec FROM c1" \
        " UNION ALL SELECT pandaid, seq, spec FROM c2"
    waiting, _, _ = claim_sources(req, [], locking="wait")
    assert waiting.endswith("FOR NO KEY UPDATE OF j)") and "SKIP" not in waiting
    with pytest.raises(ValueError, match="parameter name"):
        candidate_query(req, ["A"], share="A", share_param="s; DROP")


def test_candidate_query_skips_waits_for_or_ignores_locked_rows():
    req = DispatchRequest(site="Q")
    assert candidate_query(req, [])[0].endswith("LIMIT %(limit)s FOR NO KEY UPDATE OF j SKIP LOCKED")
    assert candidate_query(req, [], locking="wait")[0].endswith("LIMIT %(limit)s FOR NO KEY UPDATE OF j")
    assert candidate_query(req, [], locking="none")[0].endswith("LIMIT %(limit)s")
    assert all(sql.endswith(" OF j") for sql, _ in candidate_queries(req, ["A"], locking="wait"))
    with pytest.raises(ValueError, match="locking"):
        candidate_query(req, [], locking="nowait")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def test_backoff_doubles_to_its_cap_and_stops_at_the_deadline():
    clock = FakeClock()
    b = Backoff(2.0, first=0.02, most=0.5, clock=clock)
    delays = []
    while (d := b.next_delay()) is not None:
        delays.append(d)
        clock.sleep(d)
    assert delays[:6] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.5]
    assert set(delays[6:]) == {0.5}
    assert 2.0 <= sum(delays) <= 2.5


def test_behind_names_missing_and_older_rows():
    rows = {1: {"seq": 3}, 2: {"seq": 1}}
    assert behind({1: 3, 2: 2, 3: 1}, rows) == {2: 1, 3: None}
    assert behind({1: 2}, rows) == {}


def test_wait_projected_reads_only_the_jobs_still_behind():
    clock = FakeClock()
    table = {1: {"seq": 1}, 2: {"seq": 0}}
    reads: list[list[int]] = []

    def read(pids):
        reads.append(pids)
        got = {p: dict(table[p]) for p in pids if p in table}
        table[2]["seq"] += 1                      # the projector moves job 2 on between two looks
        return got

    rows = wait_projected(read, {1: 1, 2: 2}, 5.0, sleep=clock.sleep, clock=clock)
    assert rows == {1: {"seq": 1}, 2: {"seq": 2}}
    assert reads == [[1, 2], [2], [2]]
    assert clock.slept == [0.02, 0.04]


def test_wait_projected_raises_projection_lag_at_the_deadline():
    clock = FakeClock()
    with pytest.raises(ProjectionLag) as err:
        wait_projected(lambda pids: {7: {"seq": 2}}, {7: 5, 8: 1}, 1.0, sleep=clock.sleep, clock=clock)
    assert err.value.lagging == {7: 2, 8: None}
    assert "seq 2 for PandaID 7, need seq ≥ 5" in str(err.value) and "no row for PandaID 8" in str(err.value)
    assert 1.0 <= clock.now - 100.0 <= 1.5


def test_await_projected_is_the_same_logic_on_the_event_loop():
    clock = FakeClock()
    seen = {"seq": 0}

    async def read(pids):
        seen["seq"] += 1
        return {5: dict(seen)}

    rows = asyncio.run(await_projected(read, {5: 3}, 5.0, most=0.02, sleep=clock.asleep, clock=clock))
    assert rows == {5: {"seq": 3}} and clock.slept == [0.02, 0.02]
    with pytest.raises(ProjectionLag):
        asyncio.run(await_projected(read, {5: 10**6}, 0.1, sleep=clock.asleep, clock=clock))


def test_wait_position_polls_until_the_projection_reaches_the_offset():
    clock = FakeClock()
    positions = iter([3, 5, 9])
    assert wait_position(lambda: next(positions), 8, 5.0, sleep=clock.sleep, clock=clock) == 9
    assert clock.slept == [0.02, 0.04]
    with pytest.raises(PositionLag) as err:
        wait_position(lambda: 4, 8, 1.0, sleep=clock.sleep, clock=clock)
    assert (err.value.position, err.value.at_least) == (4, 8) and "need ≥ 8" in str(err.value)


def test_hot_only_readers_say_not_archived():
    """The readers that must stay fast with millions of archived jobs read the hot partition only."""
    from projections import service_queries

    sql, _ = candidate_query(DispatchRequest(site="Q"), [])
    assert "NOT j.archived" in sql
    assert "NOT j.archived" in service_queries.WATCH_CANDIDATES
    assert "NOT archived" in queries.LEDGER_STATE_SQL and "NOT IN ('finished', 'failed', 'cancelled', 'closed')" \
        in queries.LEDGER_STATE_SQL
    assert "archived" not in queries.JOB_SQL and "archived" not in queries.HISTORY_SQL


def test_archive_sweep_is_due_every_period_and_never_when_off():
    from projections.jobs_archive import ArchiveSweep

    clock = FakeClock()
    sweep = ArchiveSweep(after=3600, every=60, batch=10, clock=clock)
    assert not sweep.due()
    clock.now += 5
    assert sweep.due()
    assert not ArchiveSweep(after=3600, every=0, batch=10, clock=clock).due()


def test_many_jobs_behind_are_polled_through_one_of_them_until_it_catches_up():
    clock = FakeClock()
    want = {pid: 1 for pid in range(1, 21)}
    table: dict[int, dict] = {}
    reads: list[list[int]] = []

    def read(pids):
        reads.append(pids)
        got = {p: dict(table[p]) for p in pids if p in table}
        if len(reads) == 3:        # after the third look the projector writes every job but 7
            table.update({p: {"seq": 1} for p in want if p != 7})
        if len(reads) == 5:        # and after the fifth, job 7
            table[7] = {"seq": 1}
        return got

    rows = wait_projected(read, want, 5.0, sleep=clock.sleep, clock=clock)
    assert rows == {p: {"seq": 1} for p in want}
    # all, then the probe (the highest) while it is behind, then all once it caught up, then the one left
    assert reads == [sorted(want), [20], [20], [20], sorted(want), [7]]


def test_at_the_deadline_the_jobs_behind_are_read_again_to_say_which_they_are():
    clock = FakeClock()
    want = {pid: 2 for pid in range(1, 11)}
    reads: list[list[int]] = []

    async def read(pids):
        reads.append(pids)
        return {p: {"seq": 2 if p == 10 else 1} for p in pids}

    with pytest.raises(ProjectionLag) as err:
        asyncio.run(await_projected(read, want, 1.0, sleep=clock.asleep, clock=clock))
    assert err.value.lagging == {p: 1 for p in range(1, 10)}
    assert reads[0] == sorted(want) and reads[-1] == list(range(1, 10))
    assert len(reads) > 3 and all(r == [9] for r in reads[1:-1])   # meanwhile one job, not nine
