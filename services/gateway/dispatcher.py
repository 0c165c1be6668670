"""The job dispatcher: PanDA's late binding (getJob / acquire_jobs) on top of the jobs projection.

Why it looks like this: the jobs projection lags the log, so "activated" in the table is only a hint.
The ledger is the arbiter — it accepts exactly one ``dispatch`` per activation — and a pilot gets a job
only after the ``sent`` event answering *its own* command is recorded. That alone makes a double hand-out
impossible. The lease table (``leases``, migrations/200_dispatcher.sql) keeps concurrent pilots from all
racing for the same candidate: a claim is ONE statement (``leases.claim_batch``, in a transaction of its
own) that selects the candidates, locks them with ``FOR NO KEY UPDATE SKIP LOCKED`` (pilots spread over
the candidates instead of queueing on one) and upserts their leases, which succeeds for one claimer only;
the row locks last only while that statement runs. A lease counts while the jobs row still has the ``seq``
seen at claim time and it has not expired, so it stops mattering as soon as the projection shows the job moved on.

Selection follows PanDA's ``DBProxy.getJobs``: ``projections.candidates.candidate_query``, pure (SQL text
+ parameters, told the lease relation to skip) so the rules are tested without a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from core import logs, metrics
from core.config import Config
from core.states import JobStatus
from projections import aqueries
from projections.candidates import ORDERED_WALK, claim_sources
from schemas.messages import Event, Rejected, Transition, new_id

from . import leases
from .claim_group import ClaimGroups, Seat
from .coalesce import Coalescer

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

    def __init__(self, cfg: Config, pool: AsyncConnectionPool, ask: Ask,
                 claim_pool: AsyncConnectionPool | None = None, ask_now: Ask | None = None):
        d = cfg.dispatcher
        self.pool = pool
        # the dispatches' own ask: handed straight to the ledger where it can be (Backend.ask_now); a lost one is
        # a verdict that did not come, which ``_undo`` repairs. Undos and everything else go through ``ask``
        self.ask_now = ask_now or ask
        # sessions with ORDERED_WALK's settings for good (Backend, [gateway] claim_pool_size): a claim is one
        # autocommit statement; None: claims on ``pool``, the settings SET LOCAL in each claim's transaction
        self.claim_pool = claim_pool
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
        self._sweeping: asyncio.Task | None = None   # the lease sweep running in the background, if any
        self._source_memo: dict[tuple[DispatchRequest, str], tuple[str, str, Mapping[str, Any]]] = {}
        # the claims of concurrent requests of one shape, one statement (claim_group.py)
        self._groups: ClaimGroups[leases.Claimed] = ClaimGroups(self._claim_seats, max(1, self.max_jobs))
        # and their "is there any candidate at all?" reads after finding none (_candidate_read_seats)
        self._candidate_reads: ClaimGroups[bool] = ClaimGroups(self._candidate_read_seats, self.CANDIDATE_READ_GROUP)
        self._undos: set[asyncio.Task] = set()
        self._marking: set[asyncio.Task] = set()   # delivered marks behind their answers (delivered_behind)
        # the delivered marks of concurrent requests, one statement (coalesce.py)
        self._mark_delivered = Coalescer(self._write_delivered)
        self.stats: dict[str, float] = {"claims": 0, "lost_races": 0, "sent": 0, "rejected": 0, "timeouts": 0,
                                        "claim_seconds": 0.0, "verdict_seconds": 0.0, "lock_waits_expired": 0}

    def summary(self) -> str:
        """What this dispatcher did, for the gateway's stop line: its counts, and how many statements the lease
        marks took for how many requests (``coalesce.py``)."""
        counts = ", ".join(f"{k} {v:,.0f}" if not k.endswith("seconds") else f"{k} {v:.1f}"
                           for k, v in self.stats.items())
        c, g, p = self._mark_delivered, self._groups, self._candidate_reads
        return (f"{counts}; claims {g.statements:,} statements for {g.requests:,} requests; candidate reads after"
                f" none found {p.statements:,} for {p.requests:,}; delivered marks {c.writes:,} statements for"
                f" {c.calls:,} requests")

    async def acquire(self, req: DispatchRequest, actor: str) -> DispatchResult:
        """Up to ``req.n_jobs`` jobs, each confirmed ``sent`` by the ledger for this pilot.

        A round claims as many candidates as are still wanted in one statement, asks the ledger to dispatch
        all of them at once (the verdicts come back concurrently: a Harvester batch waits for about
        one ledger round trip, not one per job), and confirms the ``sent`` ones in one statement. Candidates the
        ledger refused or did not judge in time are looked for again in the next round, at most
        ``[dispatcher] max_attempts`` rounds. The leases of the ``sent`` ones stay ``claimed`` until the answer
        is written (``delivered``): no statement between the verdict and the answer."""
        self._maybe_sweep()
        wanted = max(1, min(req.n_jobs, self.max_jobs))
        budget_end = time.monotonic() + max(1.0, min(req.timeout, 600.0) - 1.0)
        result = DispatchResult(jobs=[])
        rounds = 0
        while len(result.jobs) < wanted and rounds < self.max_attempts:
            remaining = budget_end - time.monotonic()
            if remaining <= 0:
                result.timed_out = True
                break
            t0 = time.monotonic()
            wait = min(self.dispatch_timeout, remaining)
            if result.jobs:   # those are answered after this round and its verdicts: tell the dispatch sweep
                await self._extend([(j.panda_id, j.event.command_id) for j in result.jobs], wait + self.deliver_grace)
            want = wanted - len(result.jobs)
            claimed = await self._claim(req, actor, want, wait + self.deliver_grace)
            self.stats["claim_seconds"] += time.monotonic() - t0
            if not claimed:
                break  # nothing dispatchable
            claims = [(pid, spec, cmd) for pid, spec, cmd, _ in claimed]
            files = {pid: f for pid, _, _, f in claimed}
            rounds += 1
            t0 = time.monotonic()
            outcomes = await asyncio.gather(*(self._verdict(cmd, wait) for _, _, cmd in claims),
                                            return_exceptions=True)
            self.stats["verdict_seconds"] += time.monotonic() - t0
            sent, drop, failure = self._judge(req, actor, claims, outcomes, result)
            if drop:
                await self._release(drop)
            if failure is not None:
                raise failure
            if sent:
                for panda_id, spec, outcome in sent:
                    spec = {**spec, **outcome.attrs, "jobStatus": JobStatus.SENT}
                    result.jobs.append(Dispatched(panda_id=panda_id, spec=spec, files=files[panda_id],
                                                  event=outcome))
            if len(claims) < want:
                break  # the candidates ran out: another round would find none
        metrics.GETJOB.labels("job" if result.jobs else "timeout" if result.timed_out else "nojob").inc()
        return result

    async def _verdict(self, cmd: Transition, wait: float) -> Event | Rejected:
        with logs.bind_message(cmd):
            return await self.ask_now(cmd, wait)

    def _judge(self, req: DispatchRequest, actor: str, claims: list[tuple[int, dict[str, Any], Transition]],
               outcomes: list[Any], result: DispatchResult
               ) -> tuple[list[tuple[int, dict[str, Any], Event]], list[tuple[int, str]], BaseException | None]:
        """Sort a round's verdicts: the ``sent`` ones (to confirm), the leases to release (refused, or the
        ask failed), and the first failure to raise (after the release). A dispatch without a verdict in
        time is undone (``_undo``), its lease released once the undo is judged."""
        sent: list[tuple[int, dict[str, Any], Event]] = []
        drop: list[tuple[int, str]] = []
        failure: BaseException | None = None
        for (panda_id, spec, cmd), outcome in zip(claims, outcomes, strict=True):
            if isinstance(outcome, TimeoutError):
                self.stats["timeouts"] += 1
                result.timed_out = True
                log.warning("dispatch of %s to %s got no verdict in time; asking to undo it", panda_id, actor)
                self._undo(cmd)
            elif isinstance(outcome, BaseException):
                drop.append((panda_id, cmd.id))
                failure = failure or outcome
            elif isinstance(outcome, Rejected) or outcome.to_state != JobStatus.SENT:
                self.stats["rejected"] += 1
                result.rejected += 1
                drop.append((panda_id, cmd.id))
            else:
                self.stats["sent"] += 1
                with logs.bind_message(cmd):
                    log.info("job %s dispatched to %s at %s", panda_id, actor, req.site)
                sent.append((panda_id, spec, outcome))
        return sent, drop, failure

    async def _claim(self, req: DispatchRequest, actor: str, n: int, deliver: float
                     ) -> list[tuple[int, dict[str, Any], Transition, list[dict[str, Any]]]]:
        """Up to ``n`` candidates leased to this request, each with the dispatch command to send for it and
        its job's files (read by the claim statement).

        One statement per round (``leases.claim_batch``), autocommit, shared with the concurrent requests of the
        same shape (``claim_group.py``). A lost race (another claimer's lease committed after this statement's
        snapshot) → look again; only when no unlocked candidate is found at all, one more statement that waits
        up to ``[dispatcher] lock_wait`` seconds for locked ones (a row the projector is updating: the usual
        "no jobs" finds nothing to wait for and returns at once)."""
        shape = self._shape(req)
        claimed: list[tuple[int, dict[str, Any], Transition, list[dict[str, Any]]]] = []
        for _ in range(self.CLAIM_ROUNDS):
            want = n - len(claimed)
            rows = await self._groups.claim(shape, want, actor, req.node, deliver)
            if not rows and not claimed:
                rows = await self._claim_waiting(shape, actor, req.node, want, deliver)
            won = [(pid, spec, self._command(req, actor, pid, cid), files)
                   for pid, _, spec, cid, files in rows if cid]
            self.stats["claims"] += len(won)
            self.stats["lost_races"] += len(rows) - len(won)
            claimed += won
            if len(claimed) >= n or len(won) == len(rows):
                break   # enough, or every candidate found is ours: there are no more
        return claimed

    @staticmethod
    def _shape(req: DispatchRequest) -> DispatchRequest:
        """What of a request the candidate query reads (``projections.candidates.Criteria``): requests of one
        shape are claimed together. The pilot's node, batch id, job count and budget are not part of it."""
        return dataclasses.replace(req, node="", scheduler_id=None, n_jobs=1, timeout=60.0)

    async def _claim_seats(self, shape: DispatchRequest, seats: list[Seat[leases.Claimed]]) -> list[leases.Claimed]:
        """The statement of a group of claims (``ClaimGroups``' run): every seat's candidates in one."""
        claimers = [(new_id(), s.actor, s.node, s.deliver) for s in seats for _ in range(s.want)]
        return await self._claim_statement(shape, claimers, self._sources(shape, "skip"))

    async def _claim_statement(self, shape: DispatchRequest, claimers: list[leases.Claimer],
                               sources: tuple[str, str, Mapping[str, Any]],
                               lock_timeout_ms: int | None = None) -> list[leases.Claimed]:
        """The claim statement in a transaction of its own, with the candidate query's planner settings
        (``projections.candidates.ORDERED_WALK``) and, when it waits for locked rows, a lock timeout: BEGIN,
        SET LOCAL…, the claim and COMMIT in one round trip (``_one_round_trip``: the rows stay locked only while
        it runs). On the claim pool, whose sessions have those settings already, a claim that does not wait is
        the statement alone, autocommit (its own transaction all the same): psycopg's pipeline and four more
        statements cost more CPU in the gateway and in PostgreSQL than the claim itself."""
        asked = time.monotonic()
        async with (self.claim_pool or self.pool).connection() as conn:
            # the queue for claim connections is where an overloaded gateway's getJob latency grows first
            # (docs/performance.md, sixteenth session): an operator sees it here
            metrics.CLAIM_WAIT.observe(time.monotonic() - asked)

            def statement(after: Sequence[str] = ()) -> Awaitable[list[leases.Claimed]]:
                return leases.claim_batch(conn, sources, site=shape.site, claimers=claimers, ttl=self.claim_ttl,
                                          after=after)

            if lock_timeout_ms is None and self.claim_pool is not None:
                return await statement()
            settings = [*ORDERED_WALK, *leases.CLAIM_SETTINGS]
            if lock_timeout_ms is not None:
                settings.append(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
            return await _one_round_trip(conn, settings, statement)

    def _sources(self, shape: DispatchRequest, locking: str) -> tuple[str, str, Mapping[str, Any]]:
        """``claim_sources`` for this request shape, remembered: a pilot asks the same way every time (same
        site, labels, resources), and building the candidate SQL was about 20 us of every claim. The parameters
        are read-only (shared by every claim of that shape; the statement sets its LIMIT). Bounded: emptied when
        full."""
        key = (shape, locking)
        hit = self._source_memo.get(key)
        if hit is None:
            if len(self._source_memo) >= self.SOURCE_MEMO:
                self._source_memo.clear()
            ctes, union, params = claim_sources(shape, self.share_order, 1, leases=leases.RELATION, locking=locking)
            hit = self._source_memo[key] = (ctes, union, MappingProxyType(params))
        return hit

    #: request shapes whose candidate SQL is remembered (``_sources``)
    SOURCE_MEMO = 4096

    #: requests one "any candidate?" read answers at most
    CANDIDATE_READ_GROUP = 1000

    #: claim statements per round at most (each lost race costs one more)
    CLAIM_ROUNDS = 4

    async def _candidate_read_seats(self, shape: DispatchRequest, seats: list[Seat[bool]]) -> list[bool]:
        """Whether any candidate of ``shape`` exists, read once for every request of that shape that found none
        (``ClaimGroups``' run, as for claims): pilots polling an empty queue — most getJobs of a quiet site — cost
        one read per moment, not one each. A request joins a read that starts after its own claim statement, so
        it sees that statement's leases."""
        probe = self._sources(shape, "none")
        async with (self.claim_pool or self.pool).connection() as conn:
            if self.claim_pool is not None:   # its sessions plan with ORDERED_WALK already
                found = await aqueries.any_candidate(conn, probe)
            else:
                found = await _one_round_trip(conn, ORDERED_WALK,
                                              lambda after: aqueries.any_candidate(conn, probe, after))
        return [found] * sum(seat.want for seat in seats)

    async def _claim_waiting(self, shape: DispatchRequest, actor: str, node: str, n: int,
                             deliver: float) -> list[leases.Claimed]:
        """The claim again, waiting for locked candidates instead of skipping them (in a transaction with
        a lock timeout: none found when the wait runs out) — only if a plain read (a fresh snapshot, no
        locks) still finds a candidate. Without that read, a request finding nothing would queue behind the
        row another pilot's claim statement is leasing this very moment, and every such waiter would then
        hold the row in turn only to lose the race: a queue of claimers on one row, and the winner's lease
        updates waiting behind their upserts. The read sees that claim's lease once it has committed."""
        if not (await self._candidate_reads.claim(shape, 1, actor, node, deliver))[0]:
            return []
        claimers = [(new_id(), actor, node, deliver) for _ in range(n)]
        try:
            return await self._claim_statement(shape, claimers, self._sources(shape, "wait"),
                                               lock_timeout_ms=int(self.lock_wait * 1000))
        except psycopg.errors.LockNotAvailable:
            self.stats["lock_waits_expired"] += 1
            return []

    def _command(self, req: DispatchRequest, actor: str, panda_id: int, command_id: str) -> Transition:
        return Transition(PandaID=panda_id, id=command_id, action="dispatch", actor=actor,
                          attrs=self._dispatch_attrs(req))

    @staticmethod
    def _dispatch_attrs(req: DispatchRequest) -> dict[str, Any]:
        """What PanDA's getJob UPDATE writes next to jobStatus='sent'."""
        attrs: dict[str, Any] = {"modificationHost": req.node or "unknown", "startTime": _now_text()}
        if req.computing_element:
            attrs["computingElement"] = req.computing_element
        if req.scheduler_id:
            attrs["schedulerID"] = req.scheduler_id
        return attrs

    async def _write_delivered(self, held: list[tuple[int, str]]) -> set[str]:
        async with self.pool.connection() as conn:
            return await leases.mark_delivered(conn, held, self.sent_ttl)

    async def _extend(self, held: list[tuple[int, str]], deliver: float) -> None:
        async with self.pool.connection() as conn:
            await leases.extend(conn, held, deliver)

    async def delivered(self, jobs: list[Dispatched]) -> list[Dispatched]:
        """The response carrying ``jobs`` was written: their leases are ``delivered``, so the dispatch sweep
        (services/gateway/undelivered.py) leaves them alone. A lease it already took back (this gateway
        was slower than ``deliver_by``) is logged: that pilot's updates will be refused. Returns the jobs
        marked delivered (their pilot binding is now fixed: services/gateway/bindings.py)."""
        ids = [(j.panda_id, j.event.command_id) for j in jobs]
        if not ids:
            return []
        try:   # with the marks of concurrent requests: one statement
            marked = await self._mark_delivered(ids)
        except Exception:  # the pilot has its jobs; the sweep would take them back: say so loudly
            log.exception("could not mark dispatches %s delivered", ids)
            return []
        for job in jobs:
            if job.event.command_id not in marked:
                log.error("job %s was answered to its pilot after the dispatch sweep took it back", job.panda_id)
        return [job for job in jobs if job.event.command_id in marked]

    def delivered_behind(self, jobs: list[Dispatched], then: Callable[[list[Dispatched]], None]) -> None:
        """``delivered`` in the background, then ``then`` with the jobs it marked (none if it failed).

        Why not awaited by the request's handler: HTTP/1.1 reads a connection's next request only once the
        handler of the one before has returned, and the mark is a durable commit (20-77 ms when the disk was
        busy, twentieth session). A client sending its next request on the same connection as soon as it had
        its answer (a proxy's connection pool, Harvester, the bench's open level) waited for that commit. The
        answer is written already; a call about these jobs that needs the mark waits for it where it must
        (``bindings.Bindings.confirmed_for``), and a stopping gateway waits for every mark (``drain``)."""
        async def mark() -> None:
            marked: list[Dispatched] = []
            try:
                marked = await self.delivered(jobs)
            finally:
                then(marked)

        task = asyncio.get_running_loop().create_task(mark())
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)

    async def drain(self) -> None:
        """Wait for the delivered marks still under way: a pilot has those jobs, and a mark lost with this
        process would have the dispatch sweep take them back."""
        while self._marking:
            await asyncio.gather(*list(self._marking), return_exceptions=True)

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
            await self._release([(dispatch.PandaID, dispatch.id)])

        task = asyncio.get_running_loop().create_task(send())
        self._undos.add(task)
        task.add_done_callback(self._undos.discard)

    async def _release(self, held: list[tuple[int, str]]) -> None:
        try:
            async with self.pool.connection() as conn:
                await leases.release(conn, held)
        except Exception:  # the lease expires by itself; never turn a cleanup problem into a failed request
            log.exception("could not release the leases of %s", [pid for pid, _ in held])

    #: seconds between lease sweeps (``leases.sweep``)
    LEASE_SWEEP_PERIOD = 1.0

    def _maybe_sweep(self) -> None:
        """Start a lease sweep in the background when one is due. Why not in the request that finds it due, and
        why every few seconds: at 500 getJob/s a sweep every 30 s dropped 15,000 leases in one go, 213 ms that
        its request waited while PostgreSQL was busy with it (nineteenth session); a sweep every second drops
        about 500 (3-4 ms, one statement), and no pilot waits for it. Only a gateway that dispatches sweeps:
        nothing runs while it is idle."""
        now = time.monotonic()
        if now < self._next_sweep or self._sweeping is not None:
            return
        self._next_sweep = now + self.LEASE_SWEEP_PERIOD
        self._sweeping = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        try:
            async with self.pool.connection() as conn:
                await leases.sweep(conn)
        except Exception:
            log.exception("lease sweep failed")
        finally:
            self._sweeping = None


T = TypeVar("T")


async def _one_round_trip(conn: AsyncConnection, settings: Sequence[str],
                          statement: Callable[[Sequence[str]], Awaitable[T]]) -> T:
    """``statement`` in a transaction of its own with ``settings`` (SET LOCAL …), BEGIN to COMMIT sent in one
    pipeline before its rows are read (``statement`` is handed the COMMIT to send behind itself).

    Why: reading the rows first and sending the COMMIT after them (``conn.transaction()``) keeps the
    transaction open until this coroutine runs again, which on a busy gateway took seconds (seen as "idle in
    transaction" for 0.6–3.8 s in the lifecycle bench). Meanwhile it held the candidate rows it locked (the
    projector's update of such a job waited) and its snapshot held back the horizon below which PostgreSQL
    drops the index entries of jobs that left ``activated``, so every getJob walked past all the jobs
    dispatched in those seconds. ``conn``: autocommit; on an error the transaction is rolled back."""
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            for setting in settings:
                await conn.execute(setting)  # type: ignore[arg-type]  # fixed text
            return await statement(("COMMIT",))
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            await conn.rollback()
        raise
