"""The dispatcher's lease table (``dispatch_leases``, migrations/200_dispatcher.sql): its only reader and writer.

Why a lease: the jobs projection lags the log, so "activated" in the table is only a hint, and concurrent
pilots would all race for the same candidate. A getJob claims its candidate here before it asks the ledger
to dispatch it; the ledger stays the arbiter (one ``dispatch`` per activation). A lease counts while the
job still has the ``seq`` seen at claim time and it has not expired: the candidate query
(``projections.candidates``) anti-joins ``RELATION`` on (pandaid, seq, expires_at), and ``sweep`` deletes
delivered leases that have expired or whose job the projection no longer shows activated at that seq.

Delivery (migrations/202_dispatch_delivery.sql): a lease goes ``claimed`` → ``delivered`` (the HTTP response
carrying the job was written; until the eighteenth session it went through ``sent`` at the ledger's verdict, a
statement in every getJob's path that told nothing the delivery mark does not: a state rows written by earlier
versions may still hold, treated as ``claimed``). Until it is delivered it carries
``deliver_by``, the time by which a live gateway has answered its pilot; a lease past it that is still
``claimed`` or ``sent`` is the dispatch sweep's (``services/gateway/undelivered.py``, ``undelivered``,
``mark_undone``, ``forget`` below): such a lease is never deleted by ``sweep``, since it is the only trace
of a dispatch that may hold a job for a pilot that never got it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor

from projections.candidates import files_json
from projections.queries import activated_at

RELATION = "dispatch_leases"   # handed to projections.candidates.candidate_query(leases=...)

# A claim commits without waiting for its WAL to reach the disk (synchronous_commit = off), in the claim pool's
# sessions and in a claim's own transaction on the shared pool. Why: a getJob waits for its claim, and a claim
# waiting for fsync waited for whatever else the disk was doing (claims of 40-96 ms at once, their verdicts 8-12
# ms, in the getJob level, eighteenth session). What a PostgreSQL crash can then lose is the last fraction of a
# second of claims: the ledger still accepts one dispatch per activation, so a lost claim never dispatches a job
# twice; its gateway's delivered mark then finds no lease (logged) and the pilot's binding comes from the jobs
# projection. The delivered mark itself stays durable: the dispatch sweep must never take back a job its pilot has.
CLAIM_SESSION_OPTIONS = "-c synchronous_commit=off"
CLAIM_SETTINGS = ("SET LOCAL synchronous_commit = off",)

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
# the claim of a getJob: its candidates (projections.candidates.claim_sources, locked by the same statement)
# leased in one statement; a candidate whose live lease another claimer committed after this statement's
# snapshot comes back without a command id (a lost race); the files of the candidates won come with them
_CLAIM_BATCH = (
    "WITH {ctes}, picked AS MATERIALIZED (SELECT p.pandaid, p.seq, p.spec, row_number() OVER () AS i"
    " FROM ({union} LIMIT %(limit)s) p),"
    " won AS (INSERT INTO dispatch_leases AS d (pandaid, seq, site, node, actor, command_id, state, expires_at,"
    " deliver_by) SELECT pandaid, seq, %(site)s, (%(nodes)s::text[])[i], (%(actors)s::text[])[i],"
    " (%(command_ids)s::text[])[i], 'claimed', now() + make_interval(secs => %(ttl)s),"
    " now() + make_interval(secs => (%(delivers)s::float8[])[i]) FROM picked"
    " ON CONFLICT (pandaid) DO UPDATE SET seq = EXCLUDED.seq, site = EXCLUDED.site, node = EXCLUDED.node,"
    " actor = EXCLUDED.actor, command_id = EXCLUDED.command_id, state = 'claimed',"
    " claimed_at = now(), expires_at = EXCLUDED.expires_at, deliver_by = EXCLUDED.deliver_by"
    " WHERE d.seq <> EXCLUDED.seq OR d.expires_at <= now()"
    " RETURNING d.pandaid, d.command_id)"
    " SELECT p.pandaid, p.seq, p.spec, w.command_id,"
    " CASE WHEN w.command_id IS NOT NULL THEN " + files_json("p.pandaid")  # (no braces)
    + " END FROM picked p LEFT JOIN won w USING (pandaid) ORDER BY p.i"
)
# the leases are named by (pandaid, dispatch command id): the primary key finds them
_PAIRS = "unnest(%(pandaids)s::bigint[], %(command_ids)s::text[]) AS u(pandaid, command_id)"
_EXTEND = ("UPDATE dispatch_leases l SET deliver_by = now() + make_interval(secs => %(deliver)s) FROM " + _PAIRS
           + " WHERE l.pandaid = u.pandaid AND l.command_id = u.command_id AND l.state IN ('claimed', 'sent')")
_MARK_DELIVERED = ("UPDATE dispatch_leases l SET state = 'delivered', deliver_by = NULL,"
                   " expires_at = now() + make_interval(secs => %(ttl)s) FROM " + _PAIRS
                   + " WHERE l.pandaid = u.pandaid AND l.command_id = u.command_id AND l.state IN ('claimed', 'sent')"
                   " RETURNING l.command_id")
# a claimed lease is in flight (its pilot cannot name the job before the verdict) or answered and not marked yet
_SENT_TO = "SELECT actor FROM dispatch_leases WHERE pandaid = %s AND state IN ('claimed', 'sent', 'delivered')"
_RELEASE = ("DELETE FROM dispatch_leases l USING " + _PAIRS
            + " WHERE l.pandaid = u.pandaid AND l.command_id = u.command_id")
# an undelivered lease waits for the dispatch sweep; one older than a day is gone with its job's sent timeout
# expired delivered (or undone) leases, those whose job has moved on (no longer activated at the leased seq: a
# job's seq only grows, so such a lease stays stale), and any lease claimed a day ago; undelivered leases are
# the dispatch sweep's. One statement: the gateway reads no lease (it read them all, and asked the projection
# about each, every sweep: milliseconds of its event loop at 500 getJob/s). A lease re-claimed meanwhile is
# 'claimed' again when the DELETE re-checks its row, and is kept.
_SWEEP = ("DELETE FROM dispatch_leases l WHERE (l.state IN ('delivered', 'undone')"
          " AND (l.expires_at < now() OR NOT " + activated_at("l.pandaid", "l.seq") + "))"
          " OR (l.expires_at < now() AND l.claimed_at < now() - interval '1 day')")


async def claim(cur: AsyncCursor, *, pandaid: int, seq: int, site: str, node: str, actor: str,
                command_id: str, ttl: float, deliver: float | None = None) -> bool:
    """Take the lease of (pandaid, seq) for ``ttl`` seconds, in the caller's transaction; False if another
    claimer holds a live lease on the same seq (a lost race). ``deliver``: seconds within which the claimer
    answers its pilot (``ttl`` if not given)."""
    params: dict[str, Any] = {"pandaid": pandaid, "seq": seq, "site": site, "node": node, "actor": actor,
                              "command_id": command_id, "ttl": ttl, "deliver": ttl if deliver is None else deliver}
    await cur.execute(_CLAIM, params)
    return await cur.fetchone() is not None


#: a candidate of ``claim_batch``: (pandaid, seq, spec, command id or None, files)
Claimed = tuple[int, int, dict[str, Any], str | None, list[dict[str, Any]]]


@functools.lru_cache(maxsize=4096)
def _claim_sql(ctes: str, union: str) -> str:
    """The claim statement's text for one request shape (formatting the 2 kB statement each claim cost ~5 us)."""
    return _CLAIM_BATCH.format(ctes=ctes, union=union)


#: who a candidate of ``claim_batch`` is leased to: (dispatch command id, actor, node, seconds to deliver within)
Claimer = tuple[str, str, str, float]


async def claim_batch(conn: AsyncConnection, sources: tuple[str, str, Mapping[str, Any]], *, site: str,
                      claimers: Sequence[Claimer], ttl: float, after: Sequence[str] = ()) -> list[Claimed]:
    """Lease up to ``len(claimers)`` candidates in one statement (autocommit: the candidate rows are locked only
    while it runs), the ``i``-th candidate found to the ``i``-th claimer: the getJobs of one request shape
    claimed together (``claim_group.py``) each get their own leases. ``sources``:
    ``projections.candidates.claim_sources`` (locking "skip", or "wait" inside the caller's transaction with a
    lock timeout; its LIMIT is set here). (pandaid, seq, spec, command id, files) per candidate found, in
    order; the command id is None for one another claimer leased first (a lost race), which the caller may look
    for again; files: the FileSpec dicts of a candidate won (read in the same statement), [] for a lost one.
    ``after``: statements sent behind the claim before its rows are read (in a pipeline: the COMMIT of the
    claim's transaction, which then ends in the same round trip)."""
    if not claimers:
        raise ValueError("claim_batch: no claimers given")
    ctes, union, params = sources
    sql = _claim_sql(ctes, union)
    params = {**params, "limit": len(claimers), "site": site, "ttl": ttl,
              "command_ids": [c[0] for c in claimers], "actors": [c[1] for c in claimers],
              "nodes": [c[2] for c in claimers], "delivers": [c[3] for c in claimers]}
    cur = await conn.execute(sql, params)   # type: ignore[arg-type]  # composed of fixed text
    for statement in after:
        await conn.execute(statement)   # type: ignore[arg-type]  # fixed text of the caller's
    return [(r[0], r[1], r[2], r[3], r[4] or []) for r in await cur.fetchall()]


def _pairs(leases: list[tuple[int, str]], **more: Any) -> dict[str, Any]:
    return {"pandaids": [p for p, _ in leases], "command_ids": [c for _, c in leases], **more}


async def extend(conn: AsyncConnection, leases: list[tuple[int, str]], deliver: float) -> None:
    """The request is still at work (more jobs to claim): its pilot is answered within ``deliver`` seconds."""
    if leases:
        await conn.execute(_EXTEND, _pairs(leases, deliver=deliver))


async def mark_delivered(conn: AsyncConnection, leases: list[tuple[int, str]], ttl: float) -> set[str]:
    """The response carrying these (pandaid, command id) dispatches was written: keep their leases ``ttl`` seconds
    more (until the projection shows the job ``sent``); the command ids of those marked (a lease the dispatch
    sweep already took back is not: its job was undone before the pilot had it). Only the gateway whose dispatch
    the ledger recorded ``sent`` calls this."""
    if not leases:
        return set()
    cur = await conn.execute(_MARK_DELIVERED, _pairs(leases, ttl=ttl))
    return {row[0] for row in await cur.fetchall()}


async def sent_to(conn: AsyncConnection, pandaid: int) -> str | None:
    """The actor a job was just dispatched to, while the projection may not show its ``sent`` yet."""
    row = await (await conn.execute(_SENT_TO, (pandaid,))).fetchone()
    return row[0] if row else None


async def release(conn: AsyncConnection, leases: list[tuple[int, str]]) -> None:
    """Give up our claims (rejected, or no verdict in time), named by (pandaid, command id)."""
    if leases:
        await conn.execute(_RELEASE, _pairs(leases))


async def sweep(conn: AsyncConnection) -> int:
    """Delete expired delivered (or undone) leases and those whose job has moved on (the projection no longer
    shows it activated at the leased seq), in one statement (``_SWEEP``); undelivered leases are the dispatch
    sweep's. How many were deleted."""
    return (await conn.execute(_SWEEP)).rowcount


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
