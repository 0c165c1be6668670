"""Events a projection cannot apply: what counts as one, and the table they are recorded in.

Why: a projection applies a batch of events in one transaction. If one event holds a value the database
refuses (or does not decode at all), failing the batch and starting again would fail the same way forever,
and every job behind that event would look frozen. The runner therefore applies such a batch again event
by event, records the event that still fails here — in the same transaction as the position that moves
past it — logs it at ERROR, and goes on. The raw bytes are kept, so the event can be looked at and
applied by hand once the cause is fixed.

Not poison: a lost connection or a server shutting down (``psycopg.OperationalError``) — the runner
reconnects and applies the batch again from the stored positions.
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg

from core import db

#: What one event can do to fail on its own: values the database refuses, messages that do not decode,
#: values Python cannot hand to the database (UnicodeEncodeError is a ValueError).
POISON: tuple[type[BaseException], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.DatatypeMismatch,
    msgspec.DecodeError,
    ValueError,
    TypeError,
)

TABLE = "projection_dead_letters"   # 002_projection_dead_letters.sql


def describe(exc: BaseException) -> str:
    """One storable line for the error column (database messages may quote the refused value)."""
    text = f"{type(exc).__name__}: {exc}".replace("\x00", "\\0")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:2000]


def record(conn: psycopg.Connection, projection: str, topic: str, partition: int, offset: int, raw: bytes,
           exc: BaseException, event: Any = None) -> None:
    """Write one dead letter (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO projection_dead_letters (projection, topic, partition, kafka_offset, pandaid, seq, error, raw)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (projection, topic, partition, offset, getattr(event, "PandaID", None), getattr(event, "seq", None),
         describe(exc), raw),
    )


def dead_letters(conn: psycopg.Connection, projection: str | None = None) -> list[dict[str, Any]]:
    """The recorded dead letters (all projections, or one), oldest first."""
    where = "" if projection is None else " WHERE projection = %s"
    return db.fetch_all(conn, "SELECT projection, topic, partition, kafka_offset, pandaid, seq, error, raw,"
                        f" recorded_at FROM projection_dead_letters{where} ORDER BY recorded_at, kafka_offset",
                        None if projection is None else (projection,))
