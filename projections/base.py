"""What a projection is: a named set of tables plus a batch apply function.

A projection never reads Kafka itself: ``projections.runner`` hands it decoded events in log order
inside an open database transaction, and stores the projection's position in the same transaction.
That is what makes redelivery a no-op and a rebuild from offset 0 give identical rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import psycopg

from schemas.messages import Event


class Record(NamedTuple):
    partition: int
    offset: int
    raw: bytes
    event: Event


class Projection(Protocol):
    name: str
    tables: tuple[str, ...]          # dropped and recreated by a rebuild (in dependency order)

    def apply(self, conn: psycopg.Connection, records: Sequence[Record]) -> None:
        """Write the effect of ``records``: new events of one or more partitions, each partition's in offset
        order. A job's events are all in one partition, so each job's events come in log order; the runner
        hands a whole poll to one call (one set of statements per poll, not per partition)."""


POSITIONS_TABLE = "consumer_positions"   # 001_core.sql; a rebuild or verify makes a copy in its own schema


def load_positions(conn: psycopg.Connection, projection: str, topic: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT partition, next_offset FROM consumer_positions WHERE projection = %s AND topic = %s",
        (projection, topic),
    ).fetchall()
    return {p: off for p, off in rows}


def save_position(conn: psycopg.Connection, projection: str, topic: str, partition: int, next_offset: int) -> None:
    conn.execute(
        "INSERT INTO consumer_positions (projection, topic, partition, next_offset) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
        (projection, topic, partition, next_offset),
    )


def save_positions(conn: psycopg.Connection, topic: str, moved: Sequence[tuple[str, int, int]]) -> None:
    """``save_position`` for many (projection, partition, next offset) at once: one statement per poll instead
    of one per projection and partition (each key at most once)."""
    if not moved:
        return
    conn.execute(
        "INSERT INTO consumer_positions (projection, topic, partition, next_offset)"
        " SELECT v.projection, %s, v.partition, v.next_offset"
        " FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(projection, partition, next_offset)"
        " ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
        (topic, [m[0] for m in moved], [m[1] for m in moved], [m[2] for m in moved]),
    )


def drop_positions(conn: psycopg.Connection, projection: str, topic: str) -> None:
    """Forget where ``projection`` got to on ``topic`` (a rebuilt projection then takes over its positions)."""
    conn.execute("DELETE FROM consumer_positions WHERE projection = %s AND topic = %s", (projection, topic))
