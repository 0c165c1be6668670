"""services.gateway.coalesce: concurrent lease writes share one statement, and each caller still gets its
statement's result or failure."""

import asyncio

import pytest

from services.gateway.coalesce import Coalescer


def test_callers_arriving_during_a_write_share_the_next_one():
    writes: list[list[tuple[int, str]]] = []
    release = asyncio.Event()

    async def write(leases):
        writes.append(list(leases))
        if len(writes) == 1:
            await release.wait()
        return {cid for _, cid in leases}

    async def scenario():
        c = Coalescer(write)
        first = asyncio.create_task(c([(1, "a")]))
        while not writes:      # the first write is in flight
            await asyncio.sleep(0)
        others = [asyncio.create_task(c([(i, f"c{i}")])) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        release.set()
        return await first, await asyncio.gather(*others), c

    first, others, c = asyncio.run(scenario())
    assert writes == [[(1, "a")], [(2, "c2"), (3, "c3"), (4, "c4")]]
    assert first == {"a"} and all(o == {"c2", "c3", "c4"} for o in others)
    assert (c.writes, c.calls) == (2, 4)


def test_a_failed_write_fails_every_caller_in_it_and_the_next_write_still_runs():
    calls = 0

    async def write(leases):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database gone")
        return {cid for _, cid in leases}

    async def scenario():
        c = Coalescer(write)
        a, b = c([(1, "a")]), c([(2, "b")])
        out = await asyncio.gather(a, b, return_exceptions=True)
        return out, await c([(3, "c")])

    (a, b), after = asyncio.run(scenario())
    assert isinstance(a, OSError) and isinstance(b, OSError)
    assert after == {"c"}


def test_nothing_to_write_runs_no_statement():
    async def write(leases):
        raise AssertionError("no write expected")

    assert asyncio.run(Coalescer(write)([])) == set()


@pytest.mark.parametrize("n", [1, 5])
def test_a_lone_caller_gets_its_own_write(n):
    seen = []

    async def write(leases):
        seen.append(len(leases))
        return {cid for _, cid in leases}

    async def scenario():
        c = Coalescer(write)
        return [await c([(i, str(i))]) for i in range(n)]

    assert asyncio.run(scenario()) == [{str(i)} for i in range(n)]
    assert seen == [1] * n
