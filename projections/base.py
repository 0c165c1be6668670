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
        """Write the effect of ``records`` (one partition's new events, in offset order)."""


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


def drop_positions(conn: psycopg.Connection, projection: str, topic: str) -> None:
    """Forget where ``projection`` got to on ``topic`` (a rebuilt projection then takes over its positions)."""
    conn.execute("DELETE FROM consumer_positions WHERE projection = %s AND topic = %s", (projection, topic))
