"""Finisher: transferring jobs → finished when their outputs have arrived, failed after the transfer timeout.

PanDA's datasetManager FinisherThr + dataservice/finisher.py. Only jobs the *adder* moved to
``transferring`` (outputs registered, still moving to their ``destinationSE``) are the Finisher's;
a job the pilot reported as transferring is still the pilot's (and the watcher's). Each pass asks the
job's data plugin ``outputs_arrived`` (a query) and ``pump``s its transfers, then:
* every output in transferring has arrived → ``finish`` with the files patched ``ready``;
* the job has been transferring longer than the transfer timeout → ``fail`` with
  taskBufferErrorCode 101 (EC_Transfer): ``[finisher] transfer_timeout_hi`` (2 d) for non-user jobs of
  priority ≥ 800, ``transfer_timeout_lo`` (6 d) for the others.

Final archival: in PanDA a final job moves from jobsActive4 to jobsArchived4 (and later to the
archive schema). Here the state *is* the residence: the ``jobs`` projection keeps one row per job
whatever its state (``core.states.FINAL_STATES`` = PanDA's jobsArchived4) and ``job_events`` keeps the
whole history, so archiving needs no data move. What the Finisher does archive is service-side work
left behind by a job that became final some other way (the watcher, a kill): its ``adder_pending``
row, so no adder retries a report for a job that is over.

How it runs: the daemon's ``finisher`` script ticks a ``Finisher`` on a ``ServiceLoop`` that does not
consume, with ``now`` read there. The tick decides nothing by itself: advancing transfers (``pump``)
and forgetting reports are Actions, and the judgement of the transferring jobs is the ``then`` of the
pump action, so it sees what this pass's pump moved (as PanDA's FinisherThr). ``judge`` is the pure
part: ``now`` and the view's answers in, commands out.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from core.config import Config
from plugins.base import DataPlugin, OutputFile
from projections import service_queries
from schemas.jobspec import FileSpec
from schemas.messages import Command, Transition
from services.loop import Action, Output, ServiceLoop
from services.reactors import pending_reports
from services.reactors.adder import placement
from services.sitedata import sites

log = logging.getLogger(__name__)

ACTOR = "service:finisher"
EC_TRANSFER = 101


@dataclass(frozen=True)
class TransferringJob:
    pandaid: int
    seq: int
    state_change_time: float
    priority: int
    label: str | None
    spec: dict[str, Any]
    files: tuple[dict[str, Any], ...]        # the job's output/log FileSpec dicts


def moving(job: TransferringJob, endpoint: str) -> list[OutputFile]:
    """The job's outputs still in transferring, as the plugin sees them."""
    out = []
    for f in job.files:
        if f.get("type") in ("output", "log") and f.get("status") == "transferring":
            out.append(OutputFile(lfn=f["lfn"], type=f["type"], dataset=f.get("dataset") or f.get("destinationDBlock"),
                                  block=f.get("destinationDBlock") or f.get("dataset"),
                                  destination=f.get("destinationSE") or endpoint, scope=f.get("scope"),
                                  guid=f.get("GUID"), fsize=f.get("fsize"), checksum=f.get("checksum"),
                                  pandaid=job.pandaid))
    return out


def timeout_for(job: TransferringJob, hi: float, lo: float) -> float:
    return hi if job.priority >= 800 and job.label not in ("user", "panda") else lo


def decide(job: TransferringJob, files: Sequence[OutputFile], arrived: set[str], now: float,
           hi: float, lo: float) -> Command | None:
    """Pure: finish when all moving outputs arrived, fail after the timeout, else wait."""
    if all(f.lfn in arrived for f in files):
        patches = [FileSpec(lfn=f.lfn, type=f.type, status="ready") for f in files]
        return Transition(PandaID=job.pandaid, action="finish", actor=ACTOR, files=patches,
                          reason=f"{len(files)} output(s) arrived at their destination")
    limit = timeout_for(job, hi, lo)
    if now - job.state_change_time > limit:
        missing = sorted(f.lfn for f in files if f.lfn not in arrived)
        return Transition(PandaID=job.pandaid, action="fail", actor=ACTOR, reason="transfer timeout",
                          attrs={"taskBufferErrorCode": EC_TRANSFER,
                                 "taskBufferErrorDiag": f"transfer timeout after {limit / 3600:g} h: "
                                                        f"{', '.join(missing)}"[:300]})
    return None


class FinisherView(Protocol):
    def transferring(self) -> list[TransferringJob]: ...
    def placement(self, spec: dict[str, Any]) -> tuple[DataPlugin, str]: ...
    def plugins(self) -> Iterable[DataPlugin]: ...
    def archive(self) -> int: ...


def judge(now: float, view: FinisherView, hi: float, lo: float) -> list[Command]:
    """One pass over transferring jobs; plugin calls here are queries (``outputs_arrived``) only."""
    out: list[Command] = []
    for job in view.transferring():
        plugin, endpoint = view.placement(job.spec)
        files = moving(job, endpoint)
        arrived = set(plugin.outputs_arrived(files)) if files else set()
        cmd = decide(job, files, arrived, now, hi, lo)
        if cmd is not None:
            out.append(cmd)
    return out


class Finisher:
    """The clock-driven service: no events of interest, only ``tick`` (see the module docstring)."""

    name = "finisher"

    def __init__(self, transfer_timeout_hi: float, transfer_timeout_lo: float):
        self.hi = transfer_timeout_hi
        self.lo = transfer_timeout_lo

    @classmethod
    def from_config(cls, cfg: Config) -> Finisher:
        return cls(float(cfg.finisher.transfer_timeout_hi), float(cfg.finisher.transfer_timeout_lo))

    def wants(self, event: Any) -> bool:
        return False

    def decide(self, event: Any, view: Any) -> Sequence[Command]:
        return []

    def tick(self, now: float, view: FinisherView) -> list[Output]:
        return [Action(label="advance transfers, then judge transferring jobs",
                       steps=tuple(functools.partial(p.pump) for p in view.plugins()),
                       then=lambda _moved: judge(now, view, self.hi, self.lo)),
                Action(label="forget pending reports of jobs that are over", steps=(view.archive,))]


# ------------------------------------------------------------------------------------------------ I/O
class SqlFinisherView:
    def __init__(self, cfg: Config, conn: psycopg.Connection, batch: int = 200):
        self.cfg = cfg
        self.conn = conn
        self.batch = batch

    def transferring(self) -> list[TransferringJob]:
        return [TransferringJob(**row) for row in service_queries.adder_transferring(self.conn, self.batch)]

    def placement(self, spec: dict[str, Any]) -> tuple[DataPlugin, str]:
        return placement(self.cfg, self.conn, spec)

    def plugins(self) -> list[DataPlugin]:
        """Every plugin in use: the default one and those of the configured queues."""
        import plugins

        specs = {self.cfg.plugins.default}
        try:
            specs |= {q.plugin for q in sites.queues(self.conn).values() if q.plugin}
        except psycopg.Error:   # no sites table (yet): the default plugin only
            if not self.conn.autocommit:
                self.conn.rollback()
        return [plugins.load(spec, self.cfg) for spec in sorted(specs)]

    def archive(self) -> int:
        """Forget adder work of jobs that are over (see the module docstring)."""
        pending = pending_reports.pandaids(self.conn)
        over = service_queries.final_jobs(self.conn, pending)
        dropped = pending_reports.forget(self.conn, over)
        if dropped:
            log.info("finisher: dropped %d pending report(s) of jobs already over", dropped)
        return dropped


def run_once(cfg: Config, ctx: Any) -> int:
    """The daemon's ``finisher`` script (datasetManager FinisherThr): returns the number of commands sent."""
    view = SqlFinisherView(cfg, ctx.conn, cfg.finisher.batch)
    cmds = ServiceLoop(cfg, Finisher.from_config(cfg), view, sender=ctx.sender, consume=False).tick(time.time())
    if cmds:
        log.info("finisher: %s", ", ".join(f"{c.PandaID} {c.action}" for c in cmds[:20]))
    return len(cmds)
