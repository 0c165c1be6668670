"""Which partition of the replies topic a gateway process reads its verdicts from.

Every command the gateway sends names that partition (``reply_to``) and the ledger writes the verdict there,
so the gateway's waiter fetches one partition instead of every partition of the events and rejected topics.
Several gateway processes (on one host or many) should each have a partition of their own, or each reads the
others' replies too: still correct (the waiter takes only the command ids it waits for, by the record's key,
without parsing the others), only wasted work.

A process claims a partition with a PostgreSQL session advisory lock, keyed by the replies topic and the
partition, held on a connection of its own for as long as it runs: the database every gateway already uses is
the one place they all see, and a lock goes away with its session, so a crashed gateway's partition is free
again at once. The first partition tried is the process id modulo the partition count (processes forked one
after the other start on different partitions, so they rarely contend), then the next ones in turn. With every
partition taken, or the database unreachable for the claim, the process shares that first partition.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass

import psycopg

from core import db
from core.config import Config

log = logging.getLogger(__name__)


@dataclass
class ReplyClaim:
    """The partition this process reads, and the session holding its lock (None: shared, unlocked)."""

    partition: int
    conn: psycopg.AsyncConnection | None = None

    async def release(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                await conn.close()   # the session's advisory lock goes with it
            except psycopg.Error:
                pass


def lock_space(topic: str) -> int:
    """The first key of the two-key advisory locks of ``topic``'s partitions (a positive int4; the second key
    is the partition). Two-key locks never collide with the daemon's one-key (bigint) script locks."""
    return zlib.crc32(topic.encode()) & 0x7FFFFFFF


def order(partitions: int, pid: int) -> list[int]:
    """The partitions in the order a process tries them: its pid modulo the count first, then onwards."""
    if partitions < 1:
        raise ValueError(f"the replies topic has {partitions} partitions")
    first = pid % partitions
    return [(first + i) % partitions for i in range(partitions)]


async def claim(cfg: Config, partitions: int, *, pid: int | None = None) -> ReplyClaim:
    """Claim a partition of ``partitions`` of the replies topic for this process (see the module docstring)."""
    tries = order(partitions, os.getpid() if pid is None else pid)
    space = lock_space(cfg.kafka.replies_topic)
    try:
        conn = await psycopg.AsyncConnection.connect(cfg.db.url, autocommit=True, options=db.SESSION_OPTIONS)
    except psycopg.Error as exc:
        log.warning("gateway: cannot claim a reply partition (%s); reading partition %d, perhaps with others",
                    exc, tries[0])
        return ReplyClaim(tries[0])
    try:
        for partition in tries:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (space, partition))
            row = await cur.fetchone()
            if row is not None and row[0]:
                log.info("gateway: verdicts come on partition %d of %s", partition, cfg.kafka.replies_topic)
                return ReplyClaim(partition, conn)
    except psycopg.Error as exc:
        log.warning("gateway: cannot claim a reply partition (%s); reading partition %d, perhaps with others",
                    exc, tries[0])
    else:
        log.warning("gateway: all %d partitions of %s are claimed by other gateways; sharing partition %d "
                    "(add partitions to the topic: [kafka] reply_partitions)", partitions,
                    cfg.kafka.replies_topic, tries[0])
    await conn.close()
    return ReplyClaim(tries[0])
