"""Gateway processes claim reply partitions of their own (PostgreSQL advisory locks), share one only when all are
taken, and a claim ends with its session."""

from __future__ import annotations

import asyncio

from services.gateway import replies


def test_processes_claim_different_partitions_and_share_only_when_all_are_taken(cfg):
    async def scenario() -> tuple[list[int], list[bool], int]:
        claims = [await replies.claim(cfg, 3, pid=pid) for pid in (4, 4, 7, 4)]   # 4 % 3 = 1 and 7 % 3 = 1 start alike
        try:
            partitions = [c.partition for c in claims]
            held = [c.conn is not None for c in claims]
            await claims[1].release()                  # a gateway that stopped (or died) frees its partition
            again = await replies.claim(cfg, 3, pid=5)  # 5 % 3 = 2: free again, so it is taken
            await again.release()
            return partitions, held, again.partition
        finally:
            for c in claims:
                await c.release()

    partitions, held, again = asyncio.run(scenario())
    assert partitions[:3] == [1, 2, 0] and held[:3] == [True, True, True]
    assert partitions[3] == 1 and held[3] is False, "with every partition claimed, the first is shared, unlocked"
    assert again == 2


def test_no_database_means_sharing_the_first_partition_not_failing(cfg):
    broken = cfg.replace(db={"url": "postgresql://nobody@127.0.0.1:1/none"})
    claim = asyncio.run(replies.claim(broken, 8, pid=13))
    assert claim.partition == 5 and claim.conn is None
