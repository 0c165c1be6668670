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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.config import Config
from core.states import FINAL_STATES
from plugins.base import DataPlugin, OutputFile
from schemas.jobspec import FileSpec
from schemas.messages import Command, Transition

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


def tick(now: float, view: FinisherView, hi: float, lo: float) -> list[Command]:
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


# ------------------------------------------------------------------------------------------------ I/O
class SqlFinisherView:
    def __init__(self, cfg: Config, conn, batch: int = 200):
        from services.reactors.adder import SqlAdderView

        self.cfg = cfg
        self.conn = conn
        self.batch = batch
        self._placement = SqlAdderView(cfg)
        self._placement._conn = conn

    def transferring(self) -> list[TransferringJob]:
        rows = self.conn.execute(
            "SELECT j.pandaid, j.seq, extract(epoch FROM j.state_change_time), j.current_priority,"
            "       j.prod_source_label, j.spec,"
            "       (SELECT coalesce(jsonb_agg(f.spec), '[]') FROM files f"
            "         WHERE f.pandaid = j.pandaid AND f.type IN ('output', 'log'))"
            "  FROM jobs j WHERE j.status = 'transferring'"
            "   AND NOT EXISTS (SELECT 1 FROM job_events e WHERE e.pandaid = j.pandaid AND e.seq ="
            "       (SELECT max(seq) FROM job_events x WHERE x.pandaid = j.pandaid AND x.to_state = 'transferring'"
            "          AND x.from_state <> 'transferring') AND e.action = 'pilot_transferring')"
            " ORDER BY j.current_priority, j.pandaid LIMIT %s", (self.batch,)).fetchall()
        return [TransferringJob(pandaid=r[0], seq=r[1], state_change_time=float(r[2]), priority=r[3] or 0,
                                label=r[4], spec=r[5], files=tuple(r[6])) for r in rows]

    def placement(self, spec: dict[str, Any]) -> tuple[DataPlugin, str]:
        return self._placement.placement(spec)

    def pump(self) -> int:
        """Advance due transfers of every plugin in use (the local plugin copies in ``pump``)."""
        import plugins

        moved = 0
        specs = {self.cfg.plugins.default}
        try:
            specs |= {r[0] for r in self.conn.execute("SELECT DISTINCT plugin FROM sites WHERE plugin IS NOT NULL")}
        except Exception:   # no sites table (yet): the default plugin only
            self.conn.rollback()
        for spec in specs:
            moved += plugins.load(spec, self.cfg).pump()
        return moved

    def archive(self) -> int:
        """Forget adder work of jobs that are over (see the module docstring)."""
        cur = self.conn.execute("DELETE FROM adder_pending p USING jobs j WHERE j.pandaid = p.pandaid"
                                " AND j.status = ANY(%s)", (list(FINAL_STATES),))
        return cur.rowcount


def run_once(cfg: Config, ctx: Any) -> int:
    """The daemon's ``finisher`` script (datasetManager FinisherThr): returns the number of commands sent."""
    f = cfg.finisher
    view = SqlFinisherView(cfg, ctx.conn, f.batch)
    view.pump()
    cmds = tick(time.time(), view, float(f.transfer_timeout_hi), float(f.transfer_timeout_lo))
    if cmds:
        ctx.sender.send_many(cmds)
        ctx.sender.flush()
        log.info("finisher: %s", ", ".join(f"{c.PandaID} {c.action}" for c in cmds[:20]))
    archived = view.archive()
    if archived:
        log.info("finisher: dropped %d pending report(s) of jobs already over", archived)
    return len(cmds)
