"""The service loops' dead letters: events a service could not decide on, kept instead of crash-looping.

Why: ``services.loop.ServiceLoop`` commits a batch's offsets only after every event of it was decided and
its commands sent. An event that fails the same way every time (it does not decode, or a value it carries
is refused by the service's own tables, or the decision itself raises) would otherwise be decided again
after every restart, forever, and the service would do nothing else. Such an event is written here (raw
bytes and the error), logged at ERROR, and the loop goes on. Transient failures (the database or the
broker unreachable, the jobs projection behind) are not dead letters: the loop stops and the events are
decided again after the restart, as before.

The table is ``service_dead_letters`` (``migrations/190_service_dead_letters.sql`` beside this module).

Once the cause is fixed, ``pandaes dead-letters retry`` asks for a row to be decided again (``request``); a
running loop of that service takes the request (``DeadLetterStore.take_requested``), decides the event as
if it had just arrived and sends what the decision asks (the ledger rejects what no longer applies), and
marks the row resolved, or keeps it with the new error. Either way the row keeps its history
(``migrations/191_service_dead_letter_retries.sql``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import psycopg

from core import db
from core.config import Config

#: Failures that go away by themselves: the loop stops and the event is decided again after the restart.
TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OSError,              # ConnectionError, TimeoutError, a storage endpoint away
    BufferError,          # a Kafka client's local queue full
)
#: Transient failures known by class name: the jobs projection behind, the Kafka clients' own errors
#: (this floor neither imports the projections nor a Kafka client)
_TRANSIENT_NAMES = frozenset({"ProjectionLag", "KafkaError", "KafkaException", "BrokerUnreachable"})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass if the same event is decided again later (else it is a dead letter)."""
    if isinstance(exc, TRANSIENT):
        return True
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__)


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\x00", "\\0")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:2000]


class Sink(Protocol):
    def record(self, service: str, topic: str, partition: int, offset: int, raw: bytes, exc: BaseException,
               event: Any = None) -> None: ...


class DeadLetterStore:
    """Writes ``service_dead_letters`` rows through its own reconnecting connection (opened on first use)."""

    def __init__(self, cfg: Config):
        self.db = db.Reconnecting(cfg)

    def record(self, service: str, topic: str, partition: int, offset: int, raw: bytes, exc: BaseException,
               event: Any = None) -> None:
        self.db.run(lambda conn: conn.execute(
            "INSERT INTO service_dead_letters (service, topic, partition, kafka_offset, pandaid, seq, error, raw)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (service, topic, partition, offset, getattr(event, "PandaID", None), getattr(event, "seq", None),
             describe(exc), raw)))

    def take_requested(self, service: str, limit: int = 100) -> list[dict[str, Any]]:
        """The requested dead letters of ``service``, the request taken (a loop that dies meanwhile leaves
        them unresolved; ask again)."""
        return self.db.run(lambda conn: db.fetch_all(
            conn, "UPDATE service_dead_letters SET retry_requested_at = NULL WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM service_dead_letters WHERE service = %s AND retry_requested_at IS NOT NULL"
            " AND resolved_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED))"
            " RETURNING id, topic, partition, kafka_offset, pandaid, seq, raw", (service, limit)))

    def resolved(self, dead_letter_id: int) -> None:
        self.db.run(lambda conn: conn.execute(
            "UPDATE service_dead_letters SET resolved_at = now(), attempts = attempts + 1,"
            " history = history || jsonb_build_array(jsonb_build_object('at', now(), 'error', error, 'resolved', true))"
            " WHERE id = %s", (dead_letter_id,)))

    def failed_again(self, dead_letter_id: int, exc: BaseException) -> None:
        self.db.run(lambda conn: conn.execute(
            "UPDATE service_dead_letters SET attempts = attempts + 1, error = %s,"
            " history = history || jsonb_build_array(jsonb_build_object('at', now(), 'error', error))"
            " WHERE id = %s", (describe(exc), dead_letter_id)))

    def request_again(self, dead_letter_id: int) -> None:
        """A transient failure while deciding it: leave it requested for the next look."""
        self.db.run(lambda conn: conn.execute(
            "UPDATE service_dead_letters SET retry_requested_at = now() WHERE id = %s", (dead_letter_id,)))

    def close(self) -> None:
        self.db.close()


def dead_letters(conn: psycopg.Connection, service: str | None = None) -> list[dict[str, Any]]:
    """The recorded dead letters (all services, or one), oldest first."""
    where = "" if service is None else " WHERE service = %s"
    return db.fetch_all(conn, "SELECT service, topic, partition, kafka_offset, pandaid, seq, error, raw,"
                        f" recorded_at FROM service_dead_letters{where} ORDER BY recorded_at, kafka_offset",
                        None if service is None else (service,))


_COLUMNS = ("id, service, topic, partition, kafka_offset, pandaid, seq, error, attempts, recorded_at,"
            " retry_requested_at, resolved_at, history")


def listing(conn: psycopg.Connection, *, resolved: bool = False) -> list[dict[str, Any]]:
    """The dead letters without their raw bytes (unresolved only unless ``resolved``), oldest first."""
    where = "" if resolved else " WHERE resolved_at IS NULL"
    return db.fetch_all(conn, f"SELECT {_COLUMNS} FROM service_dead_letters{where} ORDER BY id")


def request(conn: psycopg.Connection, ids: Sequence[int] | None) -> list[int]:
    """Ask for unresolved dead letters (``ids``, or all with None) to be decided again; the ids asked for."""
    where = "" if ids is None else " AND id = ANY(%s)"
    rows = conn.execute("UPDATE service_dead_letters SET retry_requested_at = now()"
                        f" WHERE resolved_at IS NULL{where} RETURNING id", () if ids is None else (list(ids),))
    return sorted(r[0] for r in rows.fetchall())
