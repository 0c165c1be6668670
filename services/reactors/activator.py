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


def _activate(job: Assigned, why: str) -> Transition:
    files = [FileSpec(lfn=lfn, type="input", status="ready") for lfns in job.blocks.values() for lfn in lfns]
    blocks = ", ".join(sorted(job.blocks)) or "no dispatch block"
    return Transition(PandaID=job.PandaID, action="activate", actor=ACTOR, files=files,
                      reason=f"activator: {why} ({blocks})")


class Activator:
    name = NAME

    def __init__(self, resend_after: float = 30.0, batch: int = 5000):
        self.resend_after = resend_after
        self.batch = batch

    def wants(self, event: Event) -> bool:
        return isinstance(event, JobTransitioned) and event.to_state == JobStatus.ASSIGNED

    def decide(self, event: Event, view: ActivatorView) -> Sequence[Output]:
        blocks: dict[str, list[str]] = {}
        for f in event.files:
            if f.dispatchDBlock not in (None, "NULL") and f.type == "input" and f.lfn:
                blocks.setdefault(f.dispatchDBlock, []).append(f.lfn)
        job = Assigned(PandaID=event.PandaID, blocks=blocks)
        if not all(view.dispatch_ready(b) for b in blocks):
            return []                     # the clock path will see it when the transfer is done
        return self._activation([job], "input already complete", view, None)

    def tick(self, now: float, view: ActivatorView) -> Sequence[Output]:
        out: list[Output] = [Action(label="advance transfers",
                                    steps=tuple(functools.partial(p.pump) for p in view.plugins()))]
        partitions = getattr(view, "partitions", None)
        if partitions is not None and not partitions:
            return out                    # owns no partition (yet): another copy does the work
        in_flight = view.in_flight(now - self.resend_after)
        jobs = [j for j in view.assigned(partitions, self.batch) if j.PandaID not in in_flight]
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
    service = Activator(resend_after=cfg.activator.resend_after, batch=cfg.activator.batch)
    return Member(service, view, tick_every=cfg.activator.period, close=view.close)


def run_component(cfg: Config, stop: threading.Event, *, replay: bool = False) -> None:
    """`pandaes run activator`: events and a clock alone in its own consumer group."""
    run_alone(cfg, stop, hosted(cfg), replay=replay)
