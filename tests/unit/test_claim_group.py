"""ClaimGroups (services/gateway/claim_group.py): concurrent claims of one shape share a statement, each request
gets the rows of its own seats, a lone request is claimed at once, shapes do not wait for each other."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.claim_group import ClaimGroups, Seat


class Statements:
    """A fake statement runner: records each statement's seats, returns rows named by shape and row index,
    ``found`` rows at most; statements are held until ``release`` when ``gate`` is set."""

    def __init__(self, found: int = 1000, gate: bool = False):
        self.found = found
        self.runs: list[tuple[str, list[tuple[int, str, str, float]]]] = []
        self.gate = asyncio.Event() if gate else None
        self.started = asyncio.Event()

    async def __call__(self, shape, seats: list[Seat[str]]) -> list[str]:
        self.runs.append((shape, [(s.want, s.actor, s.node, s.deliver) for s in seats]))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        n = sum(s.want for s in seats)
        return [f"{shape}#{i}" for i in range(min(n, self.found))]


async def _first_in_flight(groups: ClaimGroups, run: Statements, actor: str = "p1", node: str = "n",
                           deliver: float = 1.0) -> asyncio.Future:
    """A first request whose statement is running (held by ``run``'s gate): what comes now waits for the next."""
    first = asyncio.ensure_future(groups.claim("A", 1, actor, node, deliver))
    await run.started.wait()
    return first


def test_a_lone_request_is_claimed_at_once_with_its_own_seats():
    async def scenario():
        run = Statements()
        groups = ClaimGroups(run, max_rows=100)
        rows = await groups.claim("A", 2, "pilot:a", "wn1", 70.0)
        return rows, run.runs, groups.statements, groups.requests
    rows, runs, statements, requests = asyncio.run(scenario())
    assert rows == ["A#0", "A#1"]
    assert runs == [("A", [(2, "pilot:a", "wn1", 70.0)])]
    assert (statements, requests) == (1, 1)


def test_requests_arriving_while_a_statement_runs_share_the_next_and_each_gets_its_rows():
    async def scenario():
        run = Statements(gate=True)
        groups = ClaimGroups(run, max_rows=100)
        first = await _first_in_flight(groups, run, node="n1", deliver=10.0)
        later = [asyncio.ensure_future(groups.claim("A", want, f"p{i}", f"n{i}", 20.0 + i))
                 for i, want in ((2, 1), (3, 3), (4, 1))]
        await asyncio.sleep(0)
        run.gate.set()
        return await first, await asyncio.gather(*later), run.runs, groups.statements
    first, later, runs, statements = asyncio.run(scenario())
    assert first == ["A#0"]
    assert later == [["A#0"], ["A#1", "A#2", "A#3"], ["A#4"]]   # the second statement's rows, split in order
    assert runs[1] == ("A", [(1, "p2", "n2", 22.0), (3, "p3", "n3", 23.0), (1, "p4", "n4", 24.0)])
    assert statements == 2


def test_when_the_candidates_run_out_the_earliest_seats_are_filled_first():
    async def scenario():
        run = Statements(found=2, gate=True)
        groups = ClaimGroups(run, max_rows=100)
        first = await _first_in_flight(groups, run, node="n1", deliver=10.0)
        later = [asyncio.ensure_future(groups.claim("A", 1, f"p{i}", "n", 10.0)) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        run.gate.set()
        await first
        return await asyncio.gather(*later)
    assert asyncio.run(scenario()) == [["A#0"], ["A#1"], []]


def test_a_statement_carries_at_most_max_rows_candidates_and_never_splits_a_request():
    async def scenario():
        run = Statements(gate=True)
        groups = ClaimGroups(run, max_rows=4)
        first = await _first_in_flight(groups, run, actor="p0")
        later = [asyncio.ensure_future(groups.claim("A", want, f"p{i}", "n", 1.0))
                 for i, want in ((1, 3), (2, 2), (3, 2), (4, 9))]
        await asyncio.sleep(0)
        run.gate.set()
        await first
        return await asyncio.gather(*later), [[w for w, *_ in seats] for _, seats in run.runs]
    rows, wants = asyncio.run(scenario())
    assert wants == [[1], [3], [2, 2], [4]]   # a request wanting more than max_rows gets max_rows
    assert [len(r) for r in rows] == [3, 2, 2, 4]


def test_shapes_do_not_wait_for_each_other():
    async def scenario():
        held = Statements(gate=True)
        free = Statements()

        async def run(shape, seats):
            return await (held if shape == "A" else free)(shape, seats)
        groups = ClaimGroups(run, max_rows=10)
        a = asyncio.ensure_future(groups.claim("A", 1, "p", "n", 1.0))
        await held.started.wait()
        b = await asyncio.wait_for(groups.claim("B", 1, "q", "n", 1.0), 5)   # A's statement still in flight
        done_a = a.done()
        held.gate.set()
        return b, done_a, await a
    assert asyncio.run(scenario()) == (["B#0"], False, ["A#0"])


def test_a_failed_statement_fails_every_request_in_it_and_the_next_statement_runs():
    async def scenario():
        calls = []
        gate = asyncio.Event()

        async def run(shape, seats):
            calls.append(len(seats))
            if len(calls) == 1:
                await gate.wait()
                return ["x"]
            if len(calls) == 2:
                raise RuntimeError("statement failed")
            return ["ok"] * sum(s.want for s in seats)
        groups = ClaimGroups(run, max_rows=10)
        first = asyncio.ensure_future(groups.claim("A", 1, "p", "n", 1.0))
        while not calls:
            await asyncio.sleep(0)
        doomed = [asyncio.ensure_future(groups.claim("A", 1, f"p{i}", "n", 1.0)) for i in range(2)]
        await asyncio.sleep(0)
        gate.set()
        outcomes = await asyncio.gather(*doomed, return_exceptions=True)
        after = await groups.claim("A", 1, "p9", "n", 1.0)
        return await first, outcomes, after
    first, outcomes, after = asyncio.run(scenario())
    assert first == ["x"]
    assert [str(o) for o in outcomes] == ["statement failed", "statement failed"]
    assert after == ["ok"]


def test_a_cancelled_request_does_not_cancel_the_statement_of_the_others():
    async def scenario():
        run = Statements(gate=True)
        groups = ClaimGroups(run, max_rows=10)
        first = await _first_in_flight(groups, run)
        first.cancel()
        other = asyncio.ensure_future(groups.claim("A", 1, "p2", "n", 1.0))
        await asyncio.sleep(0)
        run.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await other, len(run.runs)
    assert asyncio.run(scenario()) == (["A#0"], 2)


def test_max_rows_below_one_is_refused_by_name():
    with pytest.raises(ValueError, match="max_rows"):
        ClaimGroups(Statements(), max_rows=0)
