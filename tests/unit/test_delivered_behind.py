"""Dispatcher.delivered_behind: the delivered mark runs after the handler has returned (the connection's next
request is read meanwhile), its result reaches the pilot bindings, and a stopping gateway waits for every mark."""

from __future__ import annotations

import asyncio
import types

from core import config
from services.gateway.dispatcher import Dispatched, Dispatcher


def job(pid: int) -> Dispatched:
    return Dispatched(panda_id=pid, spec={}, files=[], event=types.SimpleNamespace(command_id=f"c{pid}"))  # type: ignore[arg-type]


def dispatcher_with_a_slow_disk() -> tuple[Dispatcher, asyncio.Event, list[list[tuple[int, str]]]]:
    dispatcher = Dispatcher(config.load(), None, None)   # type: ignore[arg-type]  # no query is made
    disk = asyncio.Event()
    written: list[list[tuple[int, str]]] = []

    async def write(leases: list[tuple[int, str]]) -> set[str]:
        await disk.wait()                  # the commit waits for the disk
        written.append(leases)
        return {c for _, c in leases if c != "c3"}   # c3: taken back by the dispatch sweep meanwhile

    dispatcher._mark_delivered._write = write
    return dispatcher, disk, written


def test_the_mark_runs_behind_and_hands_what_it_marked_to_the_bindings():
    async def scenario() -> None:
        dispatcher, disk, written = dispatcher_with_a_slow_disk()
        settled: list[list[int]] = []
        dispatcher.delivered_behind([job(1), job(2), job(3)], lambda m: settled.append([j.panda_id for j in m]))
        await asyncio.sleep(0.01)
        assert settled == [] and written == []        # returned at once; the mark still waits for the disk
        disk.set()
        await dispatcher.drain()
        assert written == [[(1, "c1"), (2, "c2"), (3, "c3")]] and settled == [[1, 2]]

    asyncio.run(scenario())


def test_a_stopping_gateway_waits_for_every_mark_and_a_failed_one_binds_nothing():
    async def scenario() -> None:
        dispatcher, disk, _ = dispatcher_with_a_slow_disk()
        settled: list[list[int]] = []
        dispatcher.delivered_behind([job(1)], lambda m: settled.append([j.panda_id for j in m]))
        draining = asyncio.create_task(dispatcher.drain())
        await asyncio.sleep(0.01)
        assert not draining.done()
        disk.set()
        await asyncio.wait_for(draining, 5)
        assert settled == [[1]]

        async def broken(leases: list[tuple[int, str]]) -> set[str]:
            raise OSError("the database went away")

        dispatcher._mark_delivered._write = broken
        dispatcher.delivered_behind([job(4)], lambda m: settled.append([j.panda_id for j in m]))
        await dispatcher.drain()
        assert settled == [[1], []]

    asyncio.run(scenario())
