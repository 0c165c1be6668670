"""Events a projection cannot apply: what counts as one, and the table they are recorded in.

Why: a projection applies a batch of events in one transaction. If one event holds a value the database
refuses (or does not decode at all), failing the batch and starting again would fail the same way forever,
and every job behind that event would look frozen. The runner therefore applies such a batch again event
by event, records the event that still fails here — in the same transaction as the position that moves
past it — logs it at ERROR, and goes on. The raw bytes are kept, so the event can be applied again once
the cause is fixed: ``pandaes dead-letters retry`` requests it (``request``), and the projector that owns
the partition applies it in its own transaction (``ProjectionRunner.retry_dead_letters``, ``reapply``
below). A row applied is marked resolved; one that fails again keeps the new error; both keep their
history (every earlier error and attempt).

Applying one event late is not enough for a projection that folds a job's events into one row (jobs,
files): the job's later events were applied without it, and its row has moved past its seq. Such a
projection has ``forget(conn, pandaids)``; the job is folded again from all its events — the archive's
(``job_events``, written in the same transaction as the other projections) with the dead letters of the
same job filling the archive's own gaps — so the row becomes what a rebuild from the log would make.

Not poison: a lost connection or a server shutting down (``psycopg.OperationalError``) — the runner
reconnects and applies the batch again from the stored positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg

from core import db
from projections.base import Projection, Record
from schemas.messages import decode_event

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


# ------------------------------------------------------------------------------------------- retries
_COLUMNS = ("id, projection, topic, partition, kafka_offset, pandaid, seq, error, attempts, recorded_at,"
            " retry_requested_at, resolved_at, history")


def listing(conn: psycopg.Connection, *, resolved: bool = False) -> list[dict[str, Any]]:
    """The dead letters without their raw bytes (unresolved only unless ``resolved``), oldest first."""
    where = "" if resolved else " WHERE resolved_at IS NULL"
    return db.fetch_all(conn, f"SELECT {_COLUMNS} FROM projection_dead_letters{where} ORDER BY id")


def request(conn: psycopg.Connection, ids: Sequence[int] | None) -> list[int]:
    """Ask for unresolved dead letters (``ids``, or all with None) to be applied again; the ids asked for."""
    where = "" if ids is None else " AND id = ANY(%s)"
    rows = conn.execute("UPDATE projection_dead_letters SET retry_requested_at = now()"
                        f" WHERE resolved_at IS NULL{where} RETURNING id", () if ids is None else (list(ids),))
    return sorted(r[0] for r in rows.fetchall())


def take_requested(conn: psycopg.Connection, projections: Sequence[str], partitions: Sequence[int]
                   ) -> list[dict[str, Any]]:
    """The requested dead letters of these projections and partitions, the request taken (in the caller's
    transaction: a failure before commit leaves them requested)."""
    return db.fetch_all(
        conn, "UPDATE projection_dead_letters SET retry_requested_at = NULL WHERE retry_requested_at IS NOT NULL"
        " AND resolved_at IS NULL AND projection = ANY(%s) AND partition = ANY(%s)"
        " RETURNING id, projection, topic, partition, kafka_offset, pandaid, seq, raw",
        (list(projections), list(partitions)))


def job_records(conn: psycopg.Connection, pandaid: int, extra: Sequence[Record] = ()) -> list[Record]:
    """Every event of a job for folding it again, in seq order: the archive's, with the job's dead letters
    (and ``extra``) filling the seqs the archive lacks. ValueError if a seq is still missing."""
    by_seq: dict[int, Record] = {}
    for partition, offset, body in conn.execute(
            "SELECT partition, kafka_offset, body::text FROM job_events WHERE pandaid = %s", (pandaid,)):
        raw = body.encode()
        ev = decode_event(raw)
        by_seq[ev.seq] = Record(partition, offset, raw, ev)
    dead = conn.execute("SELECT partition, kafka_offset, raw FROM projection_dead_letters WHERE pandaid = %s",
                        (pandaid,)).fetchall()
    for rec in [*extra, *(Record(p, o, bytes(r), None) for p, o, r in dead)]:
        try:
            ev = rec.event or decode_event(rec.raw)
        except msgspec.DecodeError:
            continue
        if ev.PandaID == pandaid and ev.seq not in by_seq:
            by_seq[ev.seq] = Record(rec.partition, rec.offset, rec.raw, ev)
    seqs = sorted(by_seq)
    if seqs != list(range(1, len(seqs) + 1)):
        missing = sorted(set(range(1, (seqs[-1] if seqs else 0) + 1)) - set(seqs))
        raise ValueError(f"job {pandaid}: events {missing or [1]} are neither archived nor dead letters")
    return [by_seq[s] for s in seqs]


def reapply(conn: psycopg.Connection, projection: Projection, row: dict[str, Any]) -> list[int]:
    """Apply one dead letter to ``projection`` again (in the caller's transaction or savepoint); the seqs of
    the job now applied (for a projection folded again, every seq of the job). Raises what applying raises."""
    raw = bytes(row["raw"])
    rec = Record(row["partition"], row["kafka_offset"], raw, decode_event(raw))
    forget = getattr(projection, "forget", None)
    if forget is None:
        projection.apply(conn, [rec])
        return [rec.event.seq]
    records = job_records(conn, rec.event.PandaID, [rec])
    forget(conn, [rec.event.PandaID])
    projection.apply(conn, records)
    return [r.event.seq for r in records]


def resolved(conn: psycopg.Connection, projection: str, pandaid: int | None, seqs: Sequence[int],
             ids: Sequence[int]) -> None:
    """Mark ``ids`` — and the same projection's dead letters of the job at ``seqs`` (applied by a fold) — resolved."""
    conn.execute(
        "UPDATE projection_dead_letters SET resolved_at = now(), attempts = attempts + 1, retry_requested_at = NULL,"
        " history = history || jsonb_build_array(jsonb_build_object('at', now(), 'error', error, 'resolved', true))"
        " WHERE resolved_at IS NULL AND (id = ANY(%s) OR (projection = %s AND pandaid = %s AND seq = ANY(%s)))",
        (list(ids), projection, pandaid, list(seqs)))


def failed_again(conn: psycopg.Connection, dead_letter_id: int, exc: BaseException) -> None:
    """The dead letter still cannot be applied: the new error, the old one kept in the history."""
    conn.execute(
        "UPDATE projection_dead_letters SET attempts = attempts + 1, error = %s,"
        " history = history || jsonb_build_array(jsonb_build_object('at', now(), 'error', error))"
        " WHERE id = %s", (describe(exc), dead_letter_id))
