"""The retrier's store: the ``retries`` table (migrations/150_retries.sql beside this module).

Why a table of the retrier's own: the new PandaID of a retry must be the same however often the
``failed`` event is decided (a redelivery after a crash, a second copy of the retrier). The PandaID is
allocated and recorded here, keyed by the failed job, *before* anything is sent; this is the side
effect of the retrier's Action, so replay never allocates one.
"""

from __future__ import annotations

import psycopg

CLAIM_SQL = ("INSERT INTO retries (old_pandaid, new_pandaid, attempt_nr, reason)"
             " VALUES (%s, nextval('pandaid_seq'), %s, %s) ON CONFLICT (old_pandaid) DO NOTHING RETURNING new_pandaid")
RECORDED_SQL = "SELECT new_pandaid FROM retries WHERE old_pandaid = %s"


def claim(conn: psycopg.Connection, old_pandaid: int, attempt_nr: int, reason: str) -> int:
    """The PandaID of the retry of ``old_pandaid``: allocated from ``pandaid_seq`` and recorded the first
    time, the recorded one every later time."""
    row = conn.execute(CLAIM_SQL, (old_pandaid, attempt_nr, reason)).fetchone()
    if row is None:
        row = conn.execute(RECORDED_SQL, (old_pandaid,)).fetchone()
    return int(row[0])


async def aclaim(conn: psycopg.AsyncConnection, old_pandaid: int, attempt_nr: int, reason: str) -> int:
    """``claim`` for the gateway's asyncio connections (a retry asked for through ``/api/v1/job/retry``):
    the same row, so a job is retried once whether the retrier or a person got there first."""
    row = await (await conn.execute(CLAIM_SQL, (old_pandaid, attempt_nr, reason))).fetchone()
    if row is None:
        row = await (await conn.execute(RECORDED_SQL, (old_pandaid,))).fetchone()
    return int(row[0])

