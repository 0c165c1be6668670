"""Large fields beside the event: stored once in PostgreSQL, referenced from the event by their digest.

Why: a Kafka message has a size limit (about 1 MB on a default broker; ``[kafka] max_message_bytes``), but
PanDA accepts pilot reports (``job_output_report``, ``metaData``) of many megabytes. An update whose report
is larger than ``[gateway] inline_payload_bytes`` has the text stored here first and carries only
``job_output_report_ref`` / ``metadata_ref`` = ``"sha256:<hex>"`` of its UTF-8 bytes; the event the ledger
writes carries the same reference. Readers (the adder, JEDI, replay tools) load the text by reference and
can check it against the digest. The table is append-only and content-addressed, so a retried update stores
nothing twice, and a rebuild or replay of the log finds every referenced text where it was.

Limits, from the outside in: a request body over ``[gateway] max_body_bytes`` is refused by the HTTP server
(413); a report up to that size is stored here; a command that would still exceed ``[kafka]
max_message_bytes`` after that is refused with 413 by the gateway, never retried.
"""

from __future__ import annotations

import hashlib

import psycopg

PREFIX = "sha256:"


class PayloadMissing(LookupError):
    """An event names a payload this database does not hold (or holds a different text under its name)."""


def ref_of(text: str) -> str:
    return PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


_INSERT = "INSERT INTO payloads (ref, size, body) VALUES (%s, %s, %s) ON CONFLICT (ref) DO NOTHING"


def put(conn: psycopg.Connection, text: str) -> str:
    """Store ``text`` (once); its reference."""
    ref = ref_of(text)
    conn.execute(_INSERT, (ref, len(text.encode("utf-8")), text))
    return ref


async def aput(conn: psycopg.AsyncConnection, text: str) -> str:
    """``put`` on an asyncio connection (the gateway's pool)."""
    ref = ref_of(text)
    await conn.execute(_INSERT, (ref, len(text.encode("utf-8")), text))
    return ref


def get(conn: psycopg.Connection, ref: str) -> str:
    """The text stored under ``ref``, checked against its digest."""
    row = conn.execute("SELECT body FROM payloads WHERE ref = %s", (ref,)).fetchone()
    if row is None:
        raise PayloadMissing(f"no payload {ref}")
    if ref_of(row[0]) != ref:
        raise PayloadMissing(f"payload {ref} does not match its digest")
    return row[0]
