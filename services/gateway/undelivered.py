"""The dispatch sweep: takes back dispatches whose pilot was never answered, within seconds.

Why: a getJob claims a lease, sends ``dispatch``, waits for the ledger's ``sent`` and only then writes the
job into its HTTP response. A gateway that dies (or a pilot that hangs up) between the dispatch and that
response leaves the job ``sent`` to nobody, and only the watcher's sent timeout (30 minutes) would free it.
The gateway marks a lease ``delivered`` once the response is written (``services.gateway.pilot.deliver``)
and gives every undelivered lease a ``deliver_by`` (the verdict's wait plus ``[dispatcher] deliver_grace``,
extended while a multi-job request goes on). A lease still ``claimed`` or ``sent`` after it was never
answered; this sweep sends an ``undispatch`` naming the lease's dispatch command and marks the lease
``undone``. The ledger judges it (core.machine): it moves the job back to ``activated`` (a recorded event)
only while that very dispatch holds the job, so a dispatch a pilot received and spoke about (``starting``,
``running`` …) is never touched, and a job told to be killed meanwhile gets that kill instead.

Why it is safe to send without knowing whether the dispatch was applied: the dispatch and the undo are both
keyed by the PandaID, so they are on one partition of the command topic and the ledger judges them in that
order. A dispatch still in flight (the ledger down) is judged before the undo; a dispatch never written makes
the undo a harmless rejection; and a later claim of the job sends its own dispatch after the undo.

``UndeliveredSweep.tick(now, view)`` is pure (now passed in, effects as ``Action``s); the daemon runs
``run_once`` every ``[dispatcher] sweep_period`` seconds under its cluster-wide lock, on a ``ServiceLoop``
that does not consume. The lease table is read and written only through ``services.gateway.leases``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from core.config import Config
from core.states import JobStatus
from projections import service_queries
from schemas.messages import Transition
from services.loop import Action, Output, ServiceLoop

from . import leases

log = logging.getLogger(__name__)

ACTOR = "service:dispatch-sweep"
#: how far ahead of the database's clock the view reads leases (the decision's own ``now`` decides)
SLACK = 60.0


@dataclass(frozen=True)
class Lease:
    """An undelivered lease as the sweep reads it; ``deliver_by`` in seconds since the epoch."""

    pandaid: int
    seq: int              # the job's seq when it was claimed (it was activated then)
    command_id: str       # the dispatch command sent for the claim
    actor: str            # the pilot it was meant for
    state: str            # claimed | sent
    deliver_by: float


class SweepView(Protocol):
    def undelivered(self) -> Iterable[Lease]: ...

    def jobs(self, pandaids: Iterable[int]) -> Mapping[int, tuple[str, int]]:
        """PandaID → (status, seq) in the jobs projection."""

    def mark_undone(self, leases: list[tuple[int, str]]) -> set[tuple[int, str]]:
        """Mark them undone; the pairs marked (not those delivered meanwhile)."""

    def forget(self, leases: list[tuple[int, str]]) -> Any: ...


def holds(lease: Lease, job: tuple[str, int] | None) -> bool:
    """Whether the lease's dispatch may hold its job, as far as the (lagging) projection tells: the job is
    ``sent`` with no pilot word since, or still ``activated`` at the claimed seq (the dispatch not applied
    yet, or never sent). Anything else — a pilot's update, a kill, a reset, the job undone — and the lease
    has nothing left to undo."""
    if job is None:
        return False
    status, seq = job
    return status == JobStatus.SENT or (status == JobStatus.ACTIVATED and seq == lease.seq)


def undo(lease: Lease) -> Transition:
    return Transition(PandaID=lease.pandaid, action="undispatch", actor=ACTOR, undoes=lease.command_id,
                      reason=f"dispatch {lease.command_id} to {lease.actor} was never delivered to the pilot")


class UndeliveredSweep:
    """The sweep as a clock-only service (no events of interest)."""

    name = "dispatch_sweep"

    def wants(self, event: Any) -> bool:
        return False

    def decide(self, event: Any, view: Any) -> Sequence[Output]:
        return []

    def tick(self, now: float, view: SweepView) -> list[Output]:
        due = [lease for lease in view.undelivered() if lease.deliver_by <= now]
        if not due:
            return []
        jobs = view.jobs(lease.pandaid for lease in due)
        taken = [lease for lease in due if holds(lease, jobs.get(lease.pandaid))]
        gone = [(lease.pandaid, lease.command_id) for lease in due if not holds(lease, jobs.get(lease.pandaid))]
        out: list[Output] = []
        if taken:
            # marked first, then sent, and only for the leases marked: a gateway that marked its lease
            # delivered in the meantime keeps its job (if sending fails, the watcher's sent timeout remains)
            def undos(marked: set[tuple[int, str]]) -> list[Transition]:
                return [undo(lease) for lease in taken if (lease.pandaid, lease.command_id) in marked]

            out.append(Action(label=f"dispatch sweep: {len(taken)} undelivered dispatch(es) taken back",
                              steps=(functools.partial(view.mark_undone,
                                                       [(lease.pandaid, lease.command_id) for lease in taken]),),
                              then=undos))
        if gone:
            out.append(Action(label=f"dispatch sweep: {len(gone)} lease(s) whose job moved on",
                              steps=(functools.partial(view.forget, gone),)))
        return out


# ------------------------------------------------------------------------------------------------ I/O
class SqlSweepView:
    """Leases through their owner (``leases``), job states through the projections' service queries."""

    def __init__(self, conn: psycopg.Connection, limit: int):
        self.conn = conn
        self.limit = limit

    def undelivered(self) -> list[Lease]:
        rows = leases.undelivered(self.conn, self.limit, SLACK)
        self.conn.commit()
        return [Lease(*row) for row in rows]

    def jobs(self, pandaids: Iterable[int]) -> dict[int, tuple[str, int]]:
        found = service_queries.job_states(self.conn, pandaids)
        self.conn.commit()
        return found

    def mark_undone(self, pairs: list[tuple[int, str]]) -> set[tuple[int, str]]:
        with self.conn.transaction():
            return leases.mark_undone(self.conn, pairs)

    def forget(self, pairs: list[tuple[int, str]]) -> int:
        with self.conn.transaction():
            return leases.forget(self.conn, pairs)


def run_once(cfg: Config, ctx: Any) -> int:
    """One sweep (the daemon's ``dispatch_sweep`` script): the number of undispatch commands sent."""
    view = SqlSweepView(ctx.conn, int(cfg.dispatcher.sweep_batch))
    cmds = ServiceLoop(cfg, UndeliveredSweep(), view, sender=ctx.sender, consume=False).tick(time.time())
    if cmds:
        log.warning("dispatch sweep: took back %d undelivered dispatch(es): %s", len(cmds),
                    ", ".join(str(c.PandaID) for c in cmds[:20]))
    return len(cmds)
