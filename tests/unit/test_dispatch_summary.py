"""Dispatcher.summary: the gateway's stop line counts what the dispatcher did and how the lease marks coalesced."""

from __future__ import annotations

import asyncio

from core import config
from services.gateway.dispatcher import Dispatcher


def test_the_summary_counts_claims_and_the_statements_of_the_lease_marks():
    dispatcher = Dispatcher(config.load(), None, None)   # type: ignore[arg-type]  # no query is made
    written: list[list[tuple[int, str]]] = []

    async def write(leases: list[tuple[int, str]]) -> set[str]:
        written.append(leases)
        await asyncio.sleep(0)
        return {c for _, c in leases}

    dispatcher._mark_delivered._write = write   # the statement itself is the integration tests'

    async def three_requests_at_once() -> None:
        await asyncio.gather(*(dispatcher._mark_delivered([(i, f"c{i}")]) for i in range(3)))

    asyncio.run(three_requests_at_once())
    dispatcher.stats["claims"] += 3
    dispatcher.stats["claim_seconds"] += 0.5
    line = dispatcher.summary()
    assert "claims 3," in line and "claim_seconds 0.5" in line
    assert f"delivered marks {len(written)} statements for 3 requests" in line and len(written) < 3
