"""Watcher and timeouts: PanDA's copyArchive timeout rules and its Watcher, as one clock-driven check.

Why one pure function: every rule is "a job has been in state S for longer than T (by some clock
of the job) → fail it with a jobDispatcherErrorCode, or kill it with a PanDA kill code". ``rules``
evaluates that on plain ``JobRow`` data so each rule is tested in milliseconds; ``SqlWatcherView``
only preselects candidates from the jobs projection, with the SQL that lives with the projections
(``projections.service_queries.WATCH_CANDIDATES``: read it beside ``rule_for`` and ``WATCHED`` below,
it selects by the same states and clocks). The daemon runs ``run_once`` every ``[watcher] period``
seconds under a cluster-wide lock (copyArchive is a ``sync`` daemon), on a ``ServiceLoop`` that does not
consume (the clock is read there, not here), so two daemons never both act; were they to, the ledger
rejects the second fail/kill of a job anyway.

Clocks (all from the jobs projection, i.e. from event times, never the projector's clock):
* ``modification_time``: last event (a pilot heartbeat updates it) — heartbeat, sent, holding rules;
* ``state_change_time``: entry into the current state — "too long in state S" rules;
* ``creation_time``: submission — maximum-age rules.

Outcomes (PANDA-REFERENCE §5/§6):
* running/starting without heartbeat → failed, jobDispatcherErrorCode 100 (EC_Watcher) "lost heartbeat"
* sent without pilot reply → failed, 102 (EC_SendError)
* holding too long → failed, 103 (EC_Holding); transferring (entered by the pilot) without heartbeat → 104
* defined/activated/waiting/pending/throttled/starting too long, or too old → Kill with code 2, 4 or 51
Transferring jobs the *adder* put there wait for their outputs and are the Finisher's (taskBufferErrorCode
101 after the transfer timeout), as PanDA's Watcher skips production transferring jobs.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from core.config import Config
from core.states import NON_FINAL, JobStatus, PilotState
from projections import service_queries
from schemas.messages import Command, Kill, Transition
from services.loop import Action, Output, ServiceLoop

log = logging.getLogger(__name__)

ACTOR = "service:watcher"
ANALYSIS_LABELS = ("user", "panda")
PRODUCTION_JEDI_LABELS = ("managed", "test")
# the states some rule of ``rule_for`` watches (every non-final one but merging, which no rule times out): the
# preselection (service_queries.WATCH_CANDIDATES) reads only these
WATCHED = tuple(s for s in NON_FINAL if s != JobStatus.MERGING)

# jobDispatcherErrorCode (jobdispatcher/ErrorCode.py)
EC_WATCHER, EC_SEND_ERROR, EC_HOLDING, EC_TRANSFERRING = 100, 102, 103, 104


@dataclass(frozen=True)
class JobRow:
    """What the rules read about one job; times are seconds since the epoch."""

    pandaid: int
    status: JobStatus | str
    seq: int
    creation_time: float
    modification_time: float
    state_change_time: float
    label: str | None = None               # prodSourceLabel
    priority: int = 0                      # currentPriority
    jedi_task_id: int | None = None
    command_to_pilot: str | None = None
    entered_by: str | None = None          # action of the event that entered the current state
    entered_pilot_state: PilotState | str | None = None  # pilot_state of that event (holding: finished/failed = report)

    @property
    def analysis(self) -> bool:
        return self.label in ANALYSIS_LABELS


@dataclass(frozen=True)
class Timeouts:
    """``[watcher]`` in seconds; a ``*_analysis`` value of 0 means "same as the general one"."""

    heartbeat: float = 7200
    heartbeat_analysis: float = 0
    sent: float = 1800
    holding: float = 172800
    holding_analysis: float = 10800
    defined: float = 14400
    defined_max_age: float = 604800
    activated: float = 604800
    activated_jedi: float = 172800
    pending: float = 3600
    waiting: float = 3600
    throttled: float = 604800
    starting: float = 172800
    active_max_age: float = 1814400

    @classmethod
    def from_config(cls, cfg: Config) -> Timeouts:
        w = cfg.watcher
        return cls(
            heartbeat=w.heartbeat_timeout, heartbeat_analysis=w.heartbeat_timeout_analysis,
            sent=w.sent_timeout, holding=w.holding_timeout, holding_analysis=w.holding_timeout_analysis,
            defined=w.defined_timeout, defined_max_age=w.defined_max_age, activated=w.activated_timeout,
            activated_jedi=w.activated_timeout_jedi, pending=w.pending_timeout, waiting=w.waiting_timeout,
            throttled=w.throttled_timeout, starting=w.starting_timeout, active_max_age=w.active_max_age,
        )

    def heartbeat_for(self, job: JobRow) -> float:
        return (self.heartbeat_analysis or self.heartbeat) if job.analysis else self.heartbeat

    def shortest(self) -> float:
        """The smallest timeout: jobs untouched for less than this cannot match any rule."""
        values = [v for v in vars(self).values() if v > 0]
        return min(values) if values else 0.0


def _stamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fail(job: JobRow, code: int, diag: str, reason: str) -> Transition:
    return Transition(PandaID=job.pandaid, action="fail", actor=ACTOR, reason=reason,
                      attrs={"jobDispatcherErrorCode": code, "jobDispatcherErrorDiag": diag[:250]})


def _kill(job: JobRow, code: int, reason: str) -> Kill:
    return Kill(PandaID=job.pandaid, code=code, actor=ACTOR, reason=reason)


def _older(now: float, since: float, limit: float) -> bool:
    return limit > 0 and now - since > limit


def rule_for(job: JobRow, now: float, t: Timeouts) -> Command | None:
    """The one command a timeout rule asks for ``job`` at ``now``, or None. First match wins."""
    st = job.status
    age = now - job.creation_time
    # --- Watcher proper: pilot-owned and post-run states (failed with a jobDispatcherErrorCode)
    if st == JobStatus.SENT and _older(now, job.modification_time, t.sent):
        return _fail(job, EC_SEND_ERROR, f"Sent job didn't receive reply from pilot within {t.sent / 60:g} min",
                     "sent timeout")
    if st in (JobStatus.RUNNING, JobStatus.STARTING) and _older(now, job.modification_time, t.heartbeat_for(job)):
        return _fail(job, EC_WATCHER, f"lost heartbeat : {_stamp(job.modification_time)}", "lost heartbeat")
    if st == JobStatus.TRANSFERRING and job.entered_by == "pilot_transferring" \
            and _older(now, job.modification_time, t.heartbeat_for(job)):
        return _fail(job, EC_TRANSFERRING, f"transferring too long : {_stamp(job.modification_time)}",
                     "transferring timeout")
    if st == JobStatus.HOLDING:
        has_report = job.entered_pilot_state in (PilotState.FINISHED, PilotState.FAILED)
        short = not has_report and (job.analysis or job.priority > 800)
        limit = t.holding_analysis if short else t.holding
        if _older(now, job.modification_time, limit):
            return _fail(job, EC_HOLDING, f"holding too long : {_stamp(job.modification_time)}", "holding timeout")
        return None
    # --- copyArchive kills (state too long / too old)
    if st == JobStatus.STARTING and job.label in PRODUCTION_JEDI_LABELS \
            and _older(now, job.state_change_time, t.starting):
        return _kill(job, 51, "starting too long")
    if st in (JobStatus.SENT, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.TRANSFERRING, JobStatus.ACTIVATED,
              JobStatus.THROTTLED) \
            and _older(now, job.creation_time, t.active_max_age):
        return _kill(job, 2, f"active for {age / 86400:.1f} days")
    if st in (JobStatus.PENDING, JobStatus.WAITING):
        limit = t.pending if st == JobStatus.PENDING else t.waiting
        if _older(now, job.state_change_time, limit):
            return _kill(job, 4, f"{st} too long")
        if _older(now, job.creation_time, t.defined_max_age):
            return _kill(job, 2, f"{st} for {age / 86400:.1f} days")
        return None
    if st in (JobStatus.DEFINED, JobStatus.ASSIGNED):
        if _older(now, job.creation_time, t.defined_max_age):
            return _kill(job, 2, f"{st} for {age / 86400:.1f} days")
        if st == JobStatus.DEFINED and _older(now, job.state_change_time, t.defined):
            jedi = job.jedi_task_id is not None and job.label in PRODUCTION_JEDI_LABELS
            return _kill(job, 51 if jedi else 2, "defined too long")
        return None
    if st == JobStatus.ACTIVATED:
        jedi = job.jedi_task_id is not None and job.label in PRODUCTION_JEDI_LABELS
        if jedi and _older(now, job.state_change_time, t.activated_jedi):
            return _kill(job, 51, "activated too long (reassign)")
        if _older(now, job.state_change_time, t.activated):
            return _kill(job, 2, "activated too long")
        return None
    if st == JobStatus.THROTTLED and _older(now, job.state_change_time, t.throttled):
        return _kill(job, 2, "throttled too long")
    return None


def rules(now: float, jobs: Iterable[JobRow], t: Timeouts) -> list[Command]:
    return [cmd for job in jobs if (cmd := rule_for(job, now, t)) is not None]


class WatcherView(Protocol):
    def candidates(self, now: float, shortest: float) -> Iterable[JobRow]: ...

    def acted(self) -> Mapping[int, int]:
        """PandaID → the seq the previous tick acted on."""

    def remember(self, acted: dict[int, int]) -> None:
        """Replace that memory (an action: skipped in replay)."""


class Watcher:
    """The timeout service: no events of interest, only ``tick``.

    What the previous tick acted on, (PandaID, seq), is kept by the view, so while the projection has
    not yet seen the ledger's answer the same command is not sent again on the next tick. The tick
    itself keeps nothing: it reads the memory and asks to replace it, in the Action that sends.
    """

    name = "watcher"

    def __init__(self, timeouts: Timeouts):
        self.timeouts = timeouts

    def wants(self, event: Any) -> bool:
        return False

    def decide(self, event: Any, view: Any) -> Sequence[Command]:
        return []

    def tick(self, now: float, view: WatcherView) -> list[Output]:
        acted = view.acted()
        jobs = [j for j in view.candidates(now, self.timeouts.shortest()) if acted.get(j.pandaid) != j.seq]
        out = rules(now, jobs, self.timeouts)
        if not out and not acted:
            return []
        seqs = {j.pandaid: j.seq for j in jobs}
        memory = {cmd.PandaID: seqs[cmd.PandaID] for cmd in out}
        return [Action(label=f"watcher: {len(out)} timeout command(s)", then=tuple(out),
                       steps=(functools.partial(view.remember, memory),))]


# ------------------------------------------------------------------------------------------------ I/O
class SqlWatcherView:
    """Candidates from the jobs projection: watched states, untouched for at least the shortest timeout.

    ``memory`` holds what the previous tick acted on; pass the same dict to the next pass's view."""

    def __init__(self, conn: psycopg.Connection, limit: int = 10000, memory: dict[int, int] | None = None):
        self.conn = conn
        self.limit = limit
        self._memory = memory if memory is not None else {}

    def candidates(self, now: float, shortest: float) -> list[JobRow]:
        rows = service_queries.watch_candidates(self.conn, WATCHED, now - shortest, self.limit)
        self.conn.commit()
        return [JobRow(**row) for row in rows]

    def acted(self) -> Mapping[int, int]:
        return dict(self._memory)

    def remember(self, acted: dict[int, int]) -> None:
        self._memory.clear()
        self._memory.update(acted)


_memory: dict[Timeouts, dict[int, int]] = {}


def run_once(cfg: Config, ctx: Any) -> int:
    """One watcher pass (the daemon's ``watcher`` script): returns the number of commands sent.

    The memory of what was already asked is kept per process (per set of timeouts), so it survives passes."""
    timeouts = Timeouts.from_config(cfg)
    view = SqlWatcherView(ctx.conn, cfg.watcher.batch, _memory.setdefault(timeouts, {}))
    cmds = ServiceLoop(cfg, Watcher(timeouts), view, sender=ctx.sender, consume=False).tick(time.time())
    if cmds:
        log.info("watcher: %d timeout command(s): %s", len(cmds),
                 ", ".join(f"{c.PandaID}:{getattr(c, 'reason', '')}" for c in cmds[:20]))
    return len(cmds)
