"""The dispatcher's lease table (``dispatch_leases``, migrations/200_dispatcher.sql): its only reader and writer.

Why a lease: the jobs projection lags the log, so "activated" in the table is only a hint, and concurrent
pilots would all race for the same candidate. A getJob claims its candidate here before it asks the ledger
to dispatch it; the ledger stays the arbiter (one ``dispatch`` per activation). A lease counts while the
job still has the ``seq`` seen at claim time and it has not expired: the candidate query
(``projections.candidates``) anti-joins ``RELATION`` on (pandaid, seq, expires_at), and ``sweep`` deletes
delivered leases that have expired or whose job the projection no longer shows activated at that seq.

Delivery (migrations/202_dispatch_delivery.sql): a lease goes ``claimed`` → ``sent`` (the ledger's verdict)
→ ``delivered`` (the HTTP response carrying the job was written). Until it is delivered it carries
``deliver_by``, the time by which a live gateway has answered its pilot; a lease past it that is still
``claimed`` or ``sent`` is the dispatch sweep's (``services/gateway/undelivered.py``, ``undelivered``,
``mark_undone``, ``forget`` below): such a lease is never deleted by ``sweep``, since it is the only trace
of a dispatch that may hold a job for a pilot that never got it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor

from projections import aqueries

RELATION = "dispatch_leases"   # handed to projections.candidates.candidate_query(leases=...)

_CLAIM = (
    "INSERT INTO dispatch_leases (pandaid, seq, site, node, actor, command_id, state, expires_at, deliver_by)"
    " VALUES (%(pandaid)s, %(seq)s, %(site)s, %(node)s, %(actor)s, %(command_id)s, 'claimed',"
    " now() + make_interval(secs => %(ttl)s), now() + make_interval(secs => %(deliver)s))"
    " ON CONFLICT (pandaid) DO UPDATE SET seq = EXCLUDED.seq, site = EXCLUDED.site, node = EXCLUDED.node,"
    " actor = EXCLUDED.actor, command_id = EXCLUDED.command_id, state = 'claimed',"
    " claimed_at = now(), expires_at = EXCLUDED.expires_at, deliver_by = EXCLUDED.deliver_by"
    " WHERE dispatch_leases.seq <> EXCLUDED.seq OR dispatch_leases.expires_at <= now()"
    " RETURNING pandaid"
)
_MARK_SENT = ("UPDATE dispatch_leases SET state = 'sent', expires_at = now() + make_interval(secs => %s),"
              " deliver_by = now() + make_interval(secs => %s) WHERE pandaid = %s AND command_id = %s")
_EXTEND = ("UPDATE dispatch_leases SET deliver_by = now() + make_interval(secs => %s)"
           " WHERE command_id = ANY(%s) AND state IN ('claimed', 'sent')")
_MARK_DELIVERED = ("UPDATE dispatch_leases SET state = 'delivered', deliver_by = NULL"
                   " WHERE command_id = ANY(%s) AND state = 'sent' RETURNING command_id")
_SENT_TO = "SELECT actor FROM dispatch_leases WHERE pandaid = %s AND state IN ('sent', 'delivered')"
_RELEASE = "DELETE FROM dispatch_leases WHERE pandaid = %s AND command_id = %s"
# an undelivered lease waits for the dispatch sweep; one older than a day is gone with its job's sent timeout
_EXPIRE = ("DELETE FROM dispatch_leases WHERE expires_at < now() AND (state IN ('delivered', 'undone')"
           " OR claimed_at < now() - interval '1 day')")
_HELD = "SELECT pandaid, seq FROM dispatch_leases WHERE state IN ('delivered', 'undone')"
_DROP = ("DELETE FROM dispatch_leases l USING unnest(%s::bigint[], %s::int[]) AS s(pandaid, seq)"
         " WHERE l.pandaid = s.pandaid AND l.seq = s.seq AND l.state IN ('delivered', 'undone')")


async def claim(cur: AsyncCursor, *, pandaid: int, seq: int, site: str, node: str, actor: str,
                command_id: str, ttl: float, deliver: float | None = None) -> bool:
    """Take the lease of (pandaid, seq) for ``ttl`` seconds, in the caller's transaction; False if another
    claimer holds a live lease on the same seq (a lost race). ``deliver``: seconds within which the claimer
    answers its pilot (``ttl`` if not given)."""
    params: dict[str, Any] = {"pandaid": pandaid, "seq": seq, "site": site, "node": node, "actor": actor,
                              "command_id": command_id, "ttl": ttl, "deliver": ttl if deliver is None else deliver}
    await cur.execute(_CLAIM, params)
    return await cur.fetchone() is not None


async def mark_sent(conn: AsyncConnection, pandaid: int, command_id: str, ttl: float, deliver: float) -> None:
    """The ledger recorded our ``sent``: keep the lease ``ttl`` seconds more, until the projection shows it,
    and answer the pilot within ``deliver`` seconds."""
    await conn.execute(_MARK_SENT, (ttl, deliver, pandaid, command_id))


async def extend(conn: AsyncConnection, command_ids: list[str], deliver: float) -> None:
    """The request is still at work (more jobs to claim): its pilot is answered within ``deliver`` seconds."""
    if command_ids:
        await conn.execute(_EXTEND, (deliver, command_ids))


async def mark_delivered(conn: AsyncConnection, command_ids: list[str]) -> set[str]:
    """The response carrying these dispatches was written; the ones marked (a lease the dispatch sweep
    already took back is not: its job was undone before the pilot had it)."""
    cur = await conn.execute(_MARK_DELIVERED, (command_ids,))
    return {row[0] for row in await cur.fetchall()}


async def sent_to(conn: AsyncConnection, pandaid: int) -> str | None:
    """The actor a job was just dispatched to, while the projection may not show its ``sent`` yet."""
    row = await (await conn.execute(_SENT_TO, (pandaid,))).fetchone()
    return row[0] if row else None


async def release(conn: AsyncConnection, pandaid: int, command_id: str) -> None:
    """Give up our claim (rejected, or no verdict in time)."""
    await conn.execute(_RELEASE, (pandaid, command_id))


async def sweep(conn: AsyncConnection) -> int:
    """Delete expired delivered (or undone) leases and those whose job has moved on (the projection no longer
    shows it activated at the leased seq); undelivered leases are the dispatch sweep's. A job's seq only
    grows, so a lease found stale stays stale: reading the jobs and deleting in two steps cannot drop a live
    lease (a re-claim carries the new seq)."""
    cur = await conn.execute(_EXPIRE)
    dropped = cur.rowcount
    held = [(pid, seq) for pid, seq in await (await conn.execute(_HELD)).fetchall()]
    stale = set(held) - await aqueries.still_activated(conn, held)
    if stale:
        cur = await conn.execute(_DROP, ([p for p, _ in stale], [s for _, s in stale]))
        dropped += cur.rowcount
    return dropped


# ----------------------------------------------------------------------------- the dispatch sweep's side
_UNDELIVERED = ("SELECT pandaid, seq, command_id, actor, state, extract(epoch FROM deliver_by)::float8"
                " FROM dispatch_leases WHERE state IN ('claimed', 'sent')"
                " AND deliver_by < now() + make_interval(secs => %s)"
                " ORDER BY deliver_by LIMIT %s")
_MARK_UNDONE = ("UPDATE dispatch_leases l SET state = 'undone', expires_at = now(), deliver_by = NULL"
                " FROM unnest(%s::bigint[], %s::text[]) AS u(pandaid, command_id)"
                " WHERE l.pandaid = u.pandaid AND l.command_id = u.command_id AND l.state IN ('claimed', 'sent')"
                " RETURNING l.pandaid, l.command_id")
_FORGET = ("DELETE FROM dispatch_leases l USING unnest(%s::bigint[], %s::text[]) AS u(pandaid, command_id)"
           " WHERE l.pandaid = u.pandaid AND l.command_id = u.command_id AND l.state IN ('claimed', 'sent')")


Undelivered = tuple[int, int, str, str, str, float]


def undelivered(conn: psycopg.Connection, limit: int, slack: float = 0.0) -> list[Undelivered]:
    """Undelivered leases whose ``deliver_by`` is less than ``slack`` seconds ahead, soonest first:
    (pandaid, seq, command_id, actor, state, deliver_by as seconds since the epoch)."""
    return [tuple(r) for r in conn.execute(_UNDELIVERED, (slack, limit)).fetchall()]


def mark_undone(conn: psycopg.Connection, leases: list[tuple[int, str]]) -> set[tuple[int, str]]:
    """(pandaid, dispatch command id) pairs whose dispatch is being taken back: inert from now on (the job is
    free for the next claim: its new dispatch comes after the undo on the job's partition). The pairs marked:
    a lease its gateway marked delivered meanwhile is not (``mark_delivered`` and this exclude each other)."""
    if not leases:
        return set()
    rows = conn.execute(_MARK_UNDONE, ([p for p, _ in leases], [c for _, c in leases])).fetchall()
    return {(p, c) for p, c in rows}


def forget(conn: psycopg.Connection, leases: list[tuple[int, str]]) -> int:
    """Delete undelivered leases whose job left their dispatch without help (a pilot has it, it was killed …)."""
    if not leases:
        return 0
    return conn.execute(_FORGET, ([p for p, _ in leases], [c for _, c in leases])).rowcount
