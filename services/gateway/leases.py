"""The dispatcher's lease table (``dispatch_leases``, migrations/200_dispatcher.sql): its only reader and writer.

Why a lease: the jobs projection lags the log, so "activated" in the table is only a hint, and concurrent
pilots would all race for the same candidate. A getJob claims its candidate here before it asks the ledger
to dispatch it; the ledger stays the arbiter (one ``dispatch`` per activation). A lease counts while the
job still has the ``seq`` seen at claim time and it has not expired: the candidate query
(``projections.candidates``) anti-joins ``RELATION`` on (pandaid, seq, expires_at), and ``sweep`` deletes
leases that have expired or whose job the projection no longer shows activated at that seq.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncCursor

from projections import aqueries

RELATION = "dispatch_leases"   # handed to projections.candidates.candidate_query(leases=...)

_CLAIM = (
    "INSERT INTO dispatch_leases (pandaid, seq, site, node, actor, command_id, state, expires_at)"
    " VALUES (%(pandaid)s, %(seq)s, %(site)s, %(node)s, %(actor)s, %(command_id)s, 'claimed',"
    " now() + make_interval(secs => %(ttl)s))"
    " ON CONFLICT (pandaid) DO UPDATE SET seq = EXCLUDED.seq, site = EXCLUDED.site, node = EXCLUDED.node,"
    " actor = EXCLUDED.actor, command_id = EXCLUDED.command_id, state = 'claimed',"
    " claimed_at = now(), expires_at = EXCLUDED.expires_at"
    " WHERE dispatch_leases.seq <> EXCLUDED.seq OR dispatch_leases.expires_at <= now()"
    " RETURNING pandaid"
)
_MARK_SENT = ("UPDATE dispatch_leases SET state = 'sent', expires_at = now() + make_interval(secs => %s)"
              " WHERE pandaid = %s AND command_id = %s")
_SENT_TO = "SELECT actor FROM dispatch_leases WHERE pandaid = %s AND state = 'sent'"
_RELEASE = "DELETE FROM dispatch_leases WHERE pandaid = %s AND command_id = %s"
_EXPIRE = "DELETE FROM dispatch_leases WHERE expires_at < now()"
_HELD = "SELECT pandaid, seq FROM dispatch_leases"
_DROP = ("DELETE FROM dispatch_leases l USING unnest(%s::bigint[], %s::int[]) AS s(pandaid, seq)"
         " WHERE l.pandaid = s.pandaid AND l.seq = s.seq")


async def claim(cur: AsyncCursor, *, pandaid: int, seq: int, site: str, node: str, actor: str,
                command_id: str, ttl: float) -> bool:
    """Take the lease of (pandaid, seq) for ``ttl`` seconds, in the caller's transaction; False if another
    claimer holds a live lease on the same seq (a lost race)."""
    params: dict[str, Any] = {"pandaid": pandaid, "seq": seq, "site": site, "node": node, "actor": actor,
                              "command_id": command_id, "ttl": ttl}
    await cur.execute(_CLAIM, params)
    return await cur.fetchone() is not None


async def mark_sent(conn: AsyncConnection, pandaid: int, command_id: str, ttl: float) -> None:
    """The ledger recorded our ``sent``: keep the lease ``ttl`` seconds more, until the projection shows it."""
    await conn.execute(_MARK_SENT, (ttl, pandaid, command_id))


async def sent_to(conn: AsyncConnection, pandaid: int) -> str | None:
    """The actor a job was just dispatched to, while the projection may not show its ``sent`` yet."""
    row = await (await conn.execute(_SENT_TO, (pandaid,))).fetchone()
    return row[0] if row else None


async def release(conn: AsyncConnection, pandaid: int, command_id: str) -> None:
    """Give up our claim (rejected, or no verdict in time)."""
    await conn.execute(_RELEASE, (pandaid, command_id))


async def sweep(conn: AsyncConnection) -> int:
    """Delete expired leases and those whose job has moved on (the projection no longer shows it activated
    at the leased seq). A job's seq only grows, so a lease found stale stays stale: reading the jobs and
    deleting in two steps cannot drop a live lease (a re-claim carries the new seq)."""
    cur = await conn.execute(_EXPIRE)
    dropped = cur.rowcount
    held = [(pid, seq) for pid, seq in await (await conn.execute(_HELD)).fetchall()]
    stale = set(held) - await aqueries.still_activated(conn, held)
    if stale:
        cur = await conn.execute(_DROP, ([p for p, _ in stale], [s for _, s in stale]))
        dropped += cur.rowcount
    return dropped
