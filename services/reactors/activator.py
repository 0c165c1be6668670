"""Activator: assigned → activated once a job's dispatch blocks have arrived at its queue. In bulk.

PanDA's Activator is started when a dispatch dataset completes, and datasetManager's ActivatorThr
sweeps assigned jobs periodically. Both paths are here:

* **event**: an ``assigned`` event whose dispatch blocks are already complete (the dummy plugin, or
  a transfer faster than the setupper's round trip) is activated at once;
* **clock** (``tick``, every ``[activator] period`` s): the assigned jobs of the partitions this copy
  owns are read from the projections, their blocks asked of the plugin (``dispatch_ready``), and every
  job whose blocks are all complete is activated, in one batch of commands.

Readiness is a plugin *query*; marking the blocks ``completed`` in ``datasets`` and advancing due
transfers (``plugin.pump``) are *actions*, skipped in replay. A job is activated with its inputs
patched to ``ready``. Two copies split the jobs by partition, so none is activated twice; an
activation sent but not yet visible in the projection is not re-sent for ``resend_after`` seconds:
the view remembers what was sent (recorded by the same action that sends it), the decisions only
read that memory and get the time passed in.

At rest the clock does not ask the projections every ``period``: once a check found no assigned job and
no job was assigned for ``resend_after`` before it (a job just assigned may not be in the projection yet),
checks come every ``idle_period`` (the plugins' ``pump`` still every ``period``) until the next assigned
event or a change of partitions. A job that holds, waiting for its blocks, keeps the check every ``period``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import msgspec

from core import db
from core.config import Config
from core.states import JobStatus
from plugins import DataPlugin, for_queue, load
from projections import service_queries
from schemas.jobspec import FileSpec
from schemas.messages import Event, JobTransitioned, Transition
from services.loop import Action, Member, Output, run_alone
from services.reactors.datasets import DatasetStore

log = logging.getLogger(__name__)

NAME = "activator"
ACTOR = f"service:{NAME}"


class Assigned(msgspec.Struct, frozen=True):
    """An assigned job and the dispatch blocks (with their files) it waits for."""

    PandaID: int
    blocks: dict[str, list[str]]       # dispatch block → lfns of this job in it


class ActivatorView(Protocol):
    partitions: set[int] | None        # set by the loop before each tick: the partitions this copy owns

    def assigned(self, partitions: set[int] | None, limit: int) -> list[Assigned]: ...

    def dispatch_ready(self, block: str) -> bool: ...

    def plugins(self) -> Iterable[DataPlugin]: ...

    def in_flight(self, since: float) -> set[int]:
        """PandaIDs whose activation was sent at ``since`` (epoch s) or later."""

    def mark_sent(self, pandaids: Sequence[int], at: float | None = None) -> None:
        """Remember activations as sent at ``at`` (now if None); an action's step, skipped in replay."""

    # optional (a view without it is checked every period): the memory of quiet spells, see QuietSpell
    # quiet: QuietSpell

    @property
    def datasets(self) -> DatasetStore: ...


class SentActivations:
    """The activator's memory of activations it sent: PandaID → when (epoch s), forgotten once old.

    I/O side, not a decision: stamped when the action that sends runs (the tick's ``now``, else the clock)."""

    def __init__(self) -> None:
        self._at: dict[int, float] = {}

    def mark(self, pandaids: Sequence[int], at: float | None = None) -> None:
        when = time.time() if at is None else at
        self._at.update(dict.fromkeys(pandaids, when))

    def since(self, cutoff: float) -> set[int]:
        self._at = {pid: t for pid, t in self._at.items() if t >= cutoff}
        return set(self._at)


class QuietSpell:
    """The activator's memory of rest: when a check last found no assigned job, for which partitions, and
    when a job was last seen assigned. I/O side, stamped by actions (skipped in replay); ``may_skip`` decides."""

    def __init__(self) -> None:
        self.none_at: float | None = None
        self.none_in: set[int] | None = None
        self.seen_at = 0.0

    def found_none(self, partitions: set[int] | None, at: float) -> None:
        self.none_at, self.none_in = at, None if partitions is None else set(partitions)

    def saw_assigned(self, at: float | None = None) -> None:
        self.seen_at = time.time() if at is None else at
        self.none_at = None


def may_skip(now: float, partitions: set[int] | None, none_at: float | None, none_in: set[int] | None,
             seen_at: float, settle: float, idle_period: float) -> bool:
    """Whether the clock may skip asking for assigned jobs at ``now``: the last check (``none_at``, same
    partitions) found none, no job was seen assigned for ``settle`` s before it (the projection may lag the
    event), and it is less than ``idle_period`` old."""
    return (none_at is not None and none_in == partitions and seen_at + settle < none_at
            and now - none_at < idle_period)


def _activate(job: Assigned, why: str) -> Transition:
    files = [FileSpec(lfn=lfn, type="input", status="ready") for lfns in job.blocks.values() for lfn in lfns]
    blocks = ", ".join(sorted(job.blocks)) or "no dispatch block"
    return Transition(PandaID=job.PandaID, action="activate", actor=ACTOR, files=files,
                      reason=f"activator: {why} ({blocks})")


class Activator:
    name = NAME

    def __init__(self, resend_after: float = 30.0, batch: int = 5000, idle_period: float = 30.0):
        self.resend_after = resend_after
        self.batch = batch
        self.idle_period = idle_period

    def wants(self, event: Event) -> bool:
        return isinstance(event, JobTransitioned) and event.to_state == JobStatus.ASSIGNED

    def decide(self, event: Event, view: ActivatorView) -> Sequence[Output]:
        blocks: dict[str, list[str]] = {}
        for f in event.files:
            if f.dispatchDBlock not in (None, "NULL") and f.type == "input" and f.lfn:
                blocks.setdefault(f.dispatchDBlock, []).append(f.lfn)
        job = Assigned(PandaID=event.PandaID, blocks=blocks)
        quiet: QuietSpell | None = getattr(view, "quiet", None)
        seen: list[Output] = ([Action(label="an assigned job: the clock checks again",
                                      steps=(quiet.saw_assigned,))] if quiet is not None else [])
        if not all(view.dispatch_ready(b) for b in blocks):
            return seen                   # the clock path will see it when the transfer is done
        return seen + self._activation([job], "input already complete", view, None)

    def tick(self, now: float, view: ActivatorView) -> Sequence[Output]:
        out: list[Output] = [Action(label="advance transfers",
                                    steps=tuple(functools.partial(p.pump) for p in view.plugins()))]
        partitions = getattr(view, "partitions", None)
        if partitions is not None and not partitions:
            return out                    # owns no partition (yet): another copy does the work
        quiet: QuietSpell | None = getattr(view, "quiet", None)
        if quiet is not None and may_skip(now, partitions, quiet.none_at, quiet.none_in, quiet.seen_at,
                                          self.resend_after, self.idle_period):
            return out                    # at rest: nothing assigned, nothing assigned since
        in_flight = view.in_flight(now - self.resend_after)
        held = view.assigned(partitions, self.batch)
        if not held and quiet is not None:
            out.append(Action(label="no assigned job", steps=(functools.partial(quiet.found_none, partitions, now),)))
        jobs = [j for j in held if j.PandaID not in in_flight]
        ready_of: dict[str, bool] = {}
        ready_jobs = []
        for job in jobs:
            for b in job.blocks:
                if b not in ready_of:
                    ready_of[b] = view.dispatch_ready(b)
            if all(ready_of[b] for b in job.blocks):
                ready_jobs.append(job)
        if ready_jobs:
            log.info("activating %d job(s) whose inputs arrived", len(ready_jobs))
        return out + self._activation(ready_jobs, "inputs arrived", view, now)

    @staticmethod
    def _activation(jobs: list[Assigned], why: str, view: ActivatorView, now: float | None) -> list[Output]:
        if not jobs:
            return []
        cmds = tuple(_activate(j, why) for j in jobs)
        blocks = sorted({b for j in jobs for b in j.blocks})
        steps: list[Any] = [functools.partial(view.datasets.complete_dispatch, blocks)] if blocks else []
        steps.append(functools.partial(view.mark_sent, [j.PandaID for j in jobs], now))
        label = f"complete {len(blocks)} dispatch block(s)" if blocks else f"activate {len(jobs)} job(s)"
        return [Action(label=label, steps=tuple(steps), then=cmds)]


# ------------------------------------------------------------------------------------------ the view
class LiveView:
    """Assigned jobs from the jobs/files projections; readiness from each block's plugin."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.partitions: set[int] | None = None
        self.sent = SentActivations()
        self.quiet = QuietSpell()
        self._datasets = DatasetStore(cfg)
        self._pg = db.Reconnecting(cfg)
        self._lock = threading.Lock()
        self._plugin_of: dict[str, str | None] = {}

    @property
    def datasets(self) -> DatasetStore:
        return self._datasets

    def _db(self):
        return self._pg.conn

    def assigned(self, partitions: set[int] | None, limit: int) -> list[Assigned]:
        with self._lock:
            jobs = service_queries.assigned_jobs(self._db(), partitions, limit)
        return [Assigned(PandaID=pid, blocks=blocks) for pid, blocks in jobs.items()]

    def in_flight(self, since: float) -> set[int]:
        return self.sent.since(since)

    def mark_sent(self, pandaids: Sequence[int], at: float | None = None) -> None:
        self.sent.mark(pandaids, at)

    def _plugin_for_block(self, block: str) -> DataPlugin:
        if block not in self._plugin_of:
            row = self._datasets.get(block)
            if row is None:
                return for_queue(self.cfg, None, None)     # not recorded yet: ask the default plugin
            self._plugin_of[block] = row["plugin"]
        spec = self._plugin_of[block]
        return load(spec, self.cfg) if spec else for_queue(self.cfg, None, None)

    def dispatch_ready(self, block: str) -> bool:
        return self._plugin_for_block(block).dispatch_ready(block)

    def plugins(self) -> Iterable[DataPlugin]:
        specs = {self.cfg.plugins.default, *(s for s in self._plugin_of.values() if s)}
        return [load(s, self.cfg) for s in sorted(specs)]

    def close(self) -> None:
        self._datasets.close()
        self._pg.close()


def hosted(cfg: Config) -> Member:
    """The activator: the event path and its clock (``[activator] period``)."""
    view = LiveView(cfg)
    service = Activator(resend_after=cfg.activator.resend_after, batch=cfg.activator.batch,
                        idle_period=cfg.activator.idle_period)
    return Member(service, view, tick_every=cfg.activator.period, close=view.close)


def run_component(cfg: Config, stop: threading.Event, *, replay: bool = False) -> None:
    """`pandaes run activator`: events and a clock alone in its own consumer group."""
    run_alone(cfg, stop, hosted(cfg), replay=replay)
