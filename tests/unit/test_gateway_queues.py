"""The gateway's queue configuration cache (services/gateway/queues.py): one lookup per queue at a time, only
the first waited for, later ones refreshed behind the requests; client-chosen names kept bounded."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway import queues


class Sites:
    """``_from_sites`` in memory: each lookup counted, released by the test when it wants it answered."""

    def __init__(self) -> None:
        self.version = 1
        self.lookups = 0
        self.gate = asyncio.Event()

    async def __call__(self, app, function: str, name: str):
        self.lookups += 1
        await self.gate.wait()
        return {"name": name, "version": self.version}


@pytest.fixture
def sites(monkeypatch):
    s = Sites()
    monkeypatch.setattr(queues, "_from_sites", s)
    return s


def app() -> dict:
    return {"queue_cache": {}, "queue_locks": {}, "queue_refreshing": {}, "cfg": None}


def test_the_first_lookup_is_shared_and_a_stale_answer_is_served_while_one_refresh_runs(sites, monkeypatch):
    async def scenario():
        a = app()
        first = [asyncio.create_task(queues.queuedata(a, "Q")) for _ in range(5)]
        await asyncio.sleep(0)
        assert sites.lookups == 1 and not any(t.done() for t in first)   # all wait for the one lookup
        sites.gate.set()
        assert [t["version"] for t in await asyncio.gather(*first)] == [1] * 5
        sites.gate.clear()
        sites.version = 2
        monkeypatch.setattr(queues, "_TTL", 0.0)                # every answer held is now out of date
        a["queue_cache"]["Q"] = (0.0, a["queue_cache"]["Q"][1])
        answers = [await queues.queuedata(a, "Q") for _ in range(5)]
        assert [x["version"] for x in answers] == [1] * 5      # answered at once from what is held …
        await asyncio.sleep(0)
        assert sites.lookups == 2 and "Q" in a["queue_refreshing"]   # … while one lookup runs behind
        sites.gate.set()
        await a["queue_refreshing"]["Q"]
        assert a["queue_cache"]["Q"][1]["version"] == 2 and not a["queue_refreshing"]
        monkeypatch.setattr(queues, "_TTL", 60.0)
        assert (await queues.queuedata(a, "Q"))["version"] == 2

    asyncio.run(scenario())


def test_client_chosen_names_stay_bounded(sites, monkeypatch):
    monkeypatch.setattr(queues, "_MAX_NAMES", 10)

    async def scenario():
        a = app()
        sites.gate.set()
        for i in range(25):
            await queues.queuedata(a, f"Q{i}")
        assert len(a["queue_cache"]) <= 10 and "Q24" in a["queue_cache"]
        assert len(a["queue_locks"]) <= 11

    asyncio.run(scenario())


def test_stopping_cancels_the_refreshes_under_way(sites):
    async def scenario():
        a = app()
        sites.gate.set()
        await queues.queuedata(a, "Q")
        sites.gate.clear()
        a["queue_cache"]["Q"] = (0.0, a["queue_cache"]["Q"][1])
        await queues.queuedata(a, "Q")
        task = a["queue_refreshing"]["Q"]
        await queues.stop_refreshing(a)
        assert task.cancelled() and not a["queue_refreshing"]

    asyncio.run(scenario())
