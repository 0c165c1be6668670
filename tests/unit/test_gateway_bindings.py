"""The gateway's memory of delivered pilot bindings (services/gateway/bindings.py) and how the pilot check
(access.refused) uses it: a shortcut to "allowed" for the very pilot a job was delivered to, the query for
everyone and everything else, so a wrong pilot is still refused."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import pytest

from services.gateway import access, leases
from services.gateway.auth.model import Identity
from services.gateway.bindings import Bindings
from services.gateway.identity import Caller, Credentials


def test_remembers_pilots_only_and_forgets_the_oldest():
    b = Bindings(2)
    b.remember(1, "pilot:alice")
    b.remember(2, "user:bob")          # not a pilot: nothing to remember
    b.remember(3, "pilot:carol")
    assert b.known_for([1, 2, 3], "alice") == {1}
    assert b.known_for([1, 3], "carol") == {3}
    b.remember(4, "pilot:dave")        # over the bound: the least recently used (1 was used before 3) goes
    assert b.known_for([1, 3, 4], "alice") == set()
    assert b.known_for([3, 4], "carol") == {3} and b.known_for([4], "dave") == {4}
    assert len(b) == 2


def test_size_zero_remembers_nothing():
    b = Bindings(0)
    b.remember(1, "pilot:alice")
    assert b.known_for([1], "alice") == set() and len(b) == 0


class _Pool:
    def __init__(self) -> None:
        self.used = 0

    @contextlib.asynccontextmanager
    async def connection(self):
        self.used += 1
        yield object()


class _Request:
    def __init__(self, bindings: Bindings) -> None:
        self.pool = _Pool()
        self.app: dict[Any, Any] = {access.BINDINGS: bindings, "backend": type("B", (), {"pool": self.pool})(),
                                    "gate": type("G", (), {"refusals": collections.Counter()})()}


def _pilot(name: str) -> Caller:
    return Caller("pilot", name, Credentials(), Identity(name, "oidc", "local", frozenset({"pilot"})))


@pytest.fixture
def projection(monkeypatch):
    """The binding query's answer: job 7 dispatched to pilot alice (as the projection records it)."""
    asked: list[list[int]] = []

    async def job_bindings(conn, ids):
        asked.append(list(ids))
        return {pid: {"pandaid": pid, "prod_user": None, "vo": None, "submitted_by": "user:someone",
                      "dispatched_to": "pilot:alice"} for pid in ids if pid == 7}

    async def sent_to(conn, pid):
        return None

    monkeypatch.setattr(access.aqueries, "job_bindings", job_bindings)
    monkeypatch.setattr(leases, "sent_to", sent_to)
    return asked


def test_the_remembered_pilot_needs_no_query(projection):
    b = Bindings(10)
    b.remember(7, "pilot:alice")
    req = _Request(b)
    assert asyncio.run(access.refused(req, _pilot("alice"), [7], "update")) == {}
    assert req.pool.used == 0 and projection == []


def test_another_pilot_is_refused_by_the_query(projection):
    b = Bindings(10)
    b.remember(7, "pilot:alice")
    req = _Request(b)
    refused = asyncio.run(access.refused(req, _pilot("mallory"), [7], "update"))
    assert "dispatched to pilot:alice" in refused[7] and projection == [[7]]


def test_an_unknown_job_falls_back_to_the_query(projection):
    req = _Request(Bindings(10))   # delivered by another process, or before this one started
    assert asyncio.run(access.refused(req, _pilot("alice"), [7], "update")) == {}
    assert projection == [[7]]
    assert "dispatched to pilot:alice" in asyncio.run(access.refused(req, _pilot("bob"), [7], "update"))[7]


def test_only_the_jobs_not_remembered_are_asked(projection):
    b = Bindings(10)
    b.remember(8, "pilot:alice")
    req = _Request(b)
    assert asyncio.run(access.refused(req, _pilot("alice"), [7, 8], "update")) == {}
    assert projection == [[7]]


def test_an_update_during_the_delivery_mark_waits_for_it(projection):
    async def scenario(marked: bool) -> tuple[dict[int, str], int]:
        b = Bindings(10)
        req = _Request(b)
        pending = b.delivering([(7, "pilot:alice")])
        asking = asyncio.ensure_future(access.refused(req, _pilot("alice"), [7], "update"))
        await asyncio.sleep(0)
        assert not asking.done()            # waits for the mark rather than asking the database
        b.settle(pending, [(7, "pilot:alice")] if marked else [])
        return await asking, req.pool.used

    assert asyncio.run(scenario(marked=True)) == ({}, 0)
    assert projection == []
    # not marked (the sweep took the dispatch back first): decided by the query
    assert asyncio.run(scenario(marked=False)) == ({}, 1)
    assert projection == [[7]]


def test_another_pilot_does_not_wait_for_a_delivery_mark(projection):
    async def scenario() -> dict[int, str]:
        b = Bindings(10)
        pending = b.delivering([(7, "pilot:alice")])
        try:
            return await access.refused(_Request(b), _pilot("mallory"), [7], "update")
        finally:
            b.settle(pending, [(7, "pilot:alice")])

    assert "dispatched to pilot:alice" in asyncio.run(scenario())[7]


def test_a_delivery_mark_that_never_comes_falls_back_to_the_query(projection):
    async def scenario() -> set[int]:
        b = Bindings(10)
        b.delivering([(7, "pilot:alice")])
        return await b.confirmed_for([7], "alice", wait=0.01)

    assert asyncio.run(scenario()) == set()
