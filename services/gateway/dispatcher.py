"""The job dispatcher: PanDA's late binding (getJob / acquire_jobs) on top of the jobs projection.

Why it looks like this: the jobs projection lags the log, so "activated" in the table is only a hint.
The ledger is the arbiter — it accepts exactly one ``dispatch`` per activation — and a pilot gets a job
only after the ``sent`` event answering *its own* command is recorded. That alone makes a double hand-out
impossible. The lease table (``leases``, migrations/200_dispatcher.sql) keeps concurrent pilots from all
racing for the same candidate: a claim is a row lock taken with ``FOR NO KEY UPDATE SKIP LOCKED`` (pilots
spread over the candidates instead of queueing on one) plus an upsert into the leases that succeeds for one
claimer only. A lease counts while the jobs row still has the ``seq`` seen at claim time and it has not
expired, so it stops mattering as soon as the projection shows the job moved on.

Selection follows PanDA's ``DBProxy.getJobs``: ``projections.candidates.candidate_query``, pure (SQL text
+ parameters, told the lease relation to skip) so the rules are tested without a database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import AsyncCursor
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from core import logs, metrics
from core.config import Config
from core.states import JobStatus
from projections import aqueries
from projections.candidates import candidate_queries, candidate_query
from schemas.messages import Event, Rejected, Transition

from . import leases

log = logging.getLogger(__name__)

#: ``ask(command, timeout)`` → the ledger's event or rejection; raises TimeoutError when none came in time.
Ask = Callable[[Transition, float], Awaitable[Event | Rejected]]


@dataclasses.dataclass(frozen=True)
class DispatchRequest:
    """What a pilot asks for (legacy getJob fields and v1 acquire_jobs fields both map onto this)."""

    site: str
    node: str = ""
    prod_source_label: str | None = None
    computing_element: str | None = None
    memory: int = 0              # MB the pilot can give a job (0: no limit)
    disk: int = 0                # MB of scratch space (0: no limit)
    remaining_time: int = 0      # seconds left in the pilot's slot (0: no limit)
    resource_type: str | None = None
    core_count: int | None = None  # cores the pilot has (None: no limit)
    task_id: int | None = None
    job_type: str | None = None
    scheduler_id: str | None = None
    n_jobs: int = 1
    timeout: float = 60.0        # the pilot's own budget for the whole call
    queue_status: str | None = None  # queuedata status; "test" turns managed/user pilots into test pilots


@dataclasses.dataclass
class Dispatched:
    """A job handed to a pilot: its JobSpec attributes (as stored) and file rows."""

    panda_id: int
    spec: dict[str, Any]
    files: list[dict[str, Any]]
    event: Event


@dataclasses.dataclass
class DispatchResult:
    jobs: list[Dispatched]
    timed_out: bool = False      # some dispatch got no verdict in time (ledger slow or down)
    rejected: int = 0            # candidates the ledger refused (killed/changed meanwhile)


def _now_text() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")


class Dispatcher:
    """Hands activated jobs to pilots, one ledger-confirmed ``dispatch`` at a time."""

    def __init__(self, cfg: Config, pool: AsyncConnectionPool, ask: Ask):
        d = cfg.dispatcher
        self.pool = pool
        self.ask = ask
        self.dispatch_timeout = float(d.dispatch_timeout)
        self.claim_ttl = float(d.claim_ttl)
        self.sent_ttl = float(d.sent_ttl)
        self.deliver_grace = float(d.deliver_grace)
        self.lock_wait = float(d.lock_wait)
        self.max_attempts = int(d.max_attempts)
        self.max_jobs = int(d.max_jobs)
        self.share_order = list(d.share_order)
        self._next_sweep = 0.0
        self._undos: set[asyncio.Task] = set()
        self.stats: dict[str, float] = {"claims": 0, "lost_races": 0, "sent": 0, "rejected": 0, "timeouts": 0,
                                        "claim_seconds": 0.0, "verdict_seconds": 0.0, "lock_waits_expired": 0}

    async def acquire(self, req: DispatchRequest, actor: str) -> DispatchResult:
        """Up to ``req.n_jobs`` jobs, each confirmed ``sent`` by the ledger for this pilot."""
        await self._maybe_sweep()
        wanted = max(1, min(req.n_jobs, self.max_jobs))
        budget_end = time.monotonic() + max(1.0, min(req.timeout, 600.0) - 1.0)
        result = DispatchResult(jobs=[])
        attempts = 0
        while len(result.jobs) < wanted and attempts < self.max_attempts * wanted:
            remaining = budget_end - time.monotonic()
            if remaining <= 0:
                result.timed_out = True
                break
            t0 = time.monotonic()
            wait = min(self.dispatch_timeout, remaining)
            if result.jobs:   # those are answered after this claim and its verdict: tell the dispatch sweep
                await self._extend([j.event.command_id for j in result.jobs], wait + self.deliver_grace)
            claim = await self._claim(req, actor, wait + self.deliver_grace)
            self.stats["claim_seconds"] += time.monotonic() - t0
            if claim is None:
                break  # nothing dispatchable
            attempts += 1
            panda_id, spec, cmd = claim
            t0 = time.monotonic()
            try:
                with logs.bind_message(cmd):
                    outcome = await self.ask(cmd, wait)
            except TimeoutError:
                self.stats["timeouts"] += 1
                result.timed_out = True
                log.warning("dispatch of %s to %s got no verdict in time; asking to undo it", panda_id, actor)
                self._undo(cmd)
                continue
            except Exception:
                await self._release(panda_id, cmd.id)
                raise
            finally:
                self.stats["verdict_seconds"] += time.monotonic() - t0
            if isinstance(outcome, Rejected) or outcome.to_state != JobStatus.SENT:
                self.stats["rejected"] += 1
                result.rejected += 1
                await self._release(panda_id, cmd.id)
                continue
            self.stats["sent"] += 1
            with logs.bind_message(cmd):
                log.info("job %s dispatched to %s at %s", panda_id, actor, req.site)
            files = await self._confirm(panda_id, cmd.id)
            spec = {**spec, **outcome.attrs, "jobStatus": JobStatus.SENT}
            result.jobs.append(Dispatched(panda_id=panda_id, spec=spec, files=files, event=outcome))
        metrics.GETJOB.labels("job" if result.jobs else "timeout" if result.timed_out else "nojob").inc()
        return result

    async def _claim(self, req: DispatchRequest, actor: str,
                     deliver: float) -> tuple[int, dict[str, Any], Transition] | None:
        queries = candidate_queries(req, self.share_order, 1, leases=leases.RELATION)
        waiting = candidate_queries(req, self.share_order, 1, leases=leases.RELATION, locking="wait")
        any_at_all = candidate_query(req, [], 1, leases=leases.RELATION, locking="none")
        async with self.pool.connection() as conn:
            # a lost race (another pilot's lease committed after our snapshot) → read the candidates again;
            # only an empty candidate list (in every share group) means "no jobs"
            for _ in range(50):
                async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    rows = await aqueries.first_candidates(cur, queries)
                    if not rows:
                        # SKIP LOCKED also skips a row the projector is updating (another event of the job, a
                        # priority change): before "no jobs", wait a little for locked candidates
                        rows = await self._locked_candidates(cur, any_at_all, waiting)
                    if not rows:
                        return None
                    for row in rows:
                        cmd = Transition(PandaID=row["pandaid"], action="dispatch", actor=actor,
                                         attrs=self._dispatch_attrs(req))
                        if await leases.claim(cur, pandaid=row["pandaid"], seq=row["seq"], site=req.site,
                                              node=req.node, actor=actor, command_id=cmd.id, ttl=self.claim_ttl,
                                              deliver=deliver):
                            self.stats["claims"] += 1
                            return row["pandaid"], row["spec"], cmd
                        self.stats["lost_races"] += 1
        return None

    async def _locked_candidates(self, cur: AsyncCursor, any_at_all: tuple[str, dict[str, Any]],
                                 waiting: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """When none was found unlocked: the candidates again, waiting up to ``[dispatcher] lock_wait`` seconds
        for rows other transactions hold; none if there is no candidate at all (one plain read: the usual
        "no jobs" costs one query more) or the wait runs out (in a savepoint: the claim's transaction goes on)."""
        if not await aqueries.first_candidates(cur, [any_at_all]):
            return []
        try:
            async with cur.connection.transaction():
                await cur.execute(f"SET LOCAL lock_timeout = {int(self.lock_wait * 1000)}")
                rows = await aqueries.first_candidates(cur, waiting)
                await cur.execute("SET LOCAL lock_timeout TO DEFAULT")
                return rows
        except psycopg.errors.LockNotAvailable:
            self.stats["lock_waits_expired"] += 1
            return []

    @staticmethod
    def _dispatch_attrs(req: DispatchRequest) -> dict[str, Any]:
        """What PanDA's getJob UPDATE writes next to jobStatus='sent'."""
        attrs: dict[str, Any] = {"modificationHost": req.node or "unknown", "startTime": _now_text()}
        if req.computing_element:
            attrs["computingElement"] = req.computing_element
        if req.scheduler_id:
            attrs["schedulerID"] = req.scheduler_id
        return attrs

    async def _confirm(self, panda_id: int, command_id: str) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            await leases.mark_sent(conn, panda_id, command_id, self.sent_ttl, self.deliver_grace)
            return await aqueries.files(conn, panda_id)

    async def _extend(self, command_ids: list[str], deliver: float) -> None:
        async with self.pool.connection() as conn:
            await leases.extend(conn, command_ids, deliver)

    async def delivered(self, jobs: list[Dispatched]) -> list[Dispatched]:
        """The response carrying ``jobs`` was written: their leases are ``delivered``, so the dispatch sweep
        (services/gateway/undelivered.py) leaves them alone. A lease it already took back (this gateway
        was slower than ``deliver_by``) is logged: that pilot's updates will be refused. Returns the jobs
        marked delivered (their pilot binding is now fixed: services/gateway/bindings.py)."""
        ids = [j.event.command_id for j in jobs]
        if not ids:
            return []
        try:
            async with self.pool.connection() as conn:
                marked = await leases.mark_delivered(conn, ids)
        except Exception:  # the pilot has its jobs; the sweep would take them back: say so loudly
            log.exception("could not mark dispatches %s delivered", ids)
            return []
        for job in jobs:
            if job.event.command_id not in marked:
                log.error("job %s was answered to its pilot after the dispatch sweep took it back", job.panda_id)
        return [job for job in jobs if job.event.command_id in marked]

    def _undo(self, dispatch: Transition) -> None:
        """Take back a dispatch whose verdict did not come in time: the pilot was answered "no job", so if the
        ledger applies the dispatch late, the job would sit ``sent`` to nobody until the sent timeout. The
        ``undispatch`` names its dispatch and the ledger judges it (core.machine): it moves the job back to
        ``activated`` only while that very dispatch holds it, and is refused harmlessly otherwise (the
        dispatch was never applied, or the job moved on). Fire and forget: nobody waits for its verdict.
        The lease is released only once the undo was judged: should this gateway die first, the lease is
        left undelivered and the dispatch sweep (services/gateway/undelivered.py) sends the undo itself."""
        undo = Transition(PandaID=dispatch.PandaID, action="undispatch", actor=dispatch.actor,
                          correlation_id=dispatch.correlation_id, undoes=dispatch.id,
                          reason=f"the verdict of dispatch {dispatch.id} came after the pilot's wait")

        async def send() -> None:
            try:
                with logs.bind_message(undo):
                    out = await self.ask(undo, max(self.dispatch_timeout, 30.0))
                    log.info("undo of dispatch %s of %s: %s", dispatch.id, dispatch.PandaID,
                             out.code if isinstance(out, Rejected) else out.to_state)
            except Exception as exc:  # the lease stays: the dispatch sweep sends the undo again
                log.warning("undo of dispatch %s of %s got no verdict: %s", dispatch.id, dispatch.PandaID, exc)
                return
            await self._release(dispatch.PandaID, dispatch.id)

        task = asyncio.get_running_loop().create_task(send())
        self._undos.add(task)
        task.add_done_callback(self._undos.discard)

    async def _release(self, panda_id: int, command_id: str) -> None:
        try:
            async with self.pool.connection() as conn:
                await leases.release(conn, panda_id, command_id)
        except Exception:  # the lease expires by itself; never turn a cleanup problem into a failed request
            log.exception("could not release the lease of %s", panda_id)

    async def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 30.0
        try:
            async with self.pool.connection() as conn:
                await leases.sweep(conn)
        except Exception:
            log.exception("lease sweep failed")

