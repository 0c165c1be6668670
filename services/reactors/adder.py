"""Adder: the pilot's final report → registered outputs → finished / failed / transferring / merging / cancelled.

PanDA's AdderGen, event-sourced. It reacts to ``pilot_holding`` transitions whose ``pilot_state`` is
finished or failed: the report (``{lfn: {guid, fsize, adler32|md5sum|checksum, surl}}``) is on the
event itself, so it can never be lost — a temporary plugin failure only leaves a row in
``adder_pending`` (PandaID, seq of that event, next try; the store is ``pending_reports``) and the
adder's ``tick`` decides the same event again later, re-read from the archive projection (``job_events``).

``judge`` is the whole PanDA logic as a pure function of (event, job spec, declared files):

* pilot failed and ``commandToPilot == tobekilled`` → ``adder_cancel`` (a kill the pilot obeyed);
* pilot failed → ``fail``, registering the log file if the report has a valid one;
* pilot finished: every declared output/log must be in the report with GUID, size and checksum (else
  ``fail`` with ddmErrorCode 200 "Could not get GUID/LFN/MD5/FSIZE/SURL from pilot JSON"); an LFN the
  job did not declare fails it too ("pilot produced … inconsistently with jobdef"); then all outputs and
  logs are registered into their sub and destination blocks and the job goes to
  ``merge`` (specialHandling has ``[adder] merge_tag``), ``transfer`` (some output must still move to a
  ``destinationSE`` that is not where the job wrote) or ``finish``.

File patches (status, GUID, fsize, checksum) ride on the Transition so the files projection has them.
Registration is a ``services.loop.Action``: run by the loop (skipped in replay), its ``then`` command is
sent only after the plugin succeeded; a temporary ``PluginError`` defers, a final one fails the job.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import psycopg

from core import payloads
from core.config import Config
from core.states import JobStatus, PilotState
from plugins.base import DataPlugin, OutputFile, PluginError
from projections import service_queries
from projections.jobview import JobReader
from schemas.jobspec import FileSpec
from schemas.messages import Command, Event, JobTransitioned, Transition, decode_event
from services.loop import Action, Member, run_alone
from services.reactors import datasets, pending_reports
from services.sitedata import sites

log = logging.getLogger(__name__)

ACTOR = "service:adder"
EC_ADDER = 200
DIAG_BAD_JSON = "Could not get GUID/LFN/MD5/FSIZE/SURL from pilot JSON"
OUTPUT_TYPES = ("output", "log")


@dataclass(frozen=True)
class Outcome:
    """What the adder will do for one report: register ``register`` (then ``transfer``), then ``action``."""

    action: str                                     # finish | fail | transfer | merge | adder_cancel
    attrs: dict[str, Any] = field(default_factory=dict)
    files: tuple[FileSpec, ...] = ()                # patches sent with the transition
    register: tuple[OutputFile, ...] = ()
    transfer: tuple[OutputFile, ...] = ()
    reason: str = ""


def _checksum(entry: dict[str, Any]) -> tuple[str | None, str | None]:
    """(checksum as PanDA stores it, md5sum) from a report entry."""
    if entry.get("adler32"):
        return f"ad:{entry['adler32']}", None
    if entry.get("md5sum"):
        return f"md5:{entry['md5sum']}", entry["md5sum"]
    if entry.get("checksum"):
        value = str(entry["checksum"])
        return value, value.removeprefix("md5:") if value.startswith("md5:") else None
    return None, None


def parse_report(report: str | None) -> dict[str, dict[str, Any]]:
    """The pilot's JSON file report as {lfn: entry}; ValueError if it is not one."""
    if report in (None, "", "NULL"):
        return {}
    data = json.loads(report)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError("the report is not an object of {lfn: {...}}")
    return data


def _output_file(f: dict[str, Any], entry: dict[str, Any], pandaid: int, endpoint: str) -> OutputFile:
    checksum, _ = _checksum(entry)
    return OutputFile(lfn=f["lfn"], type=f.get("type") or "output", dataset=f.get("dataset") or f["destinationDBlock"],
                      block=f.get("destinationDBlock") or f.get("dataset"), scope=f.get("scope"),
                      destination=f.get("destinationSE") or endpoint, guid=str(entry.get("guid")),
                      fsize=int(entry["fsize"]), checksum=checksum, pandaid=pandaid, surl=entry.get("surl"))


def _patch(f: OutputFile, status: str, md5: str | None) -> FileSpec:
    return FileSpec(lfn=f.lfn, type=f.type, status=status, GUID=f.guid, fsize=f.fsize, checksum=f.checksum,
                    md5sum=md5)


def _missing(entry: dict[str, Any] | None) -> bool:
    """A report entry without GUID, size or checksum ("NULL" is PanDA's spelling of unset)."""
    return entry is None or entry.get("guid") in (None, "", "NULL") or entry.get("fsize") in (None, "", "NULL") \
        or _checksum(entry)[0] is None


def _with_declared_guids(report: dict[str, dict[str, Any]], declared: dict[str, dict[str, Any]]):
    """The generic pilot reports outputs with an empty guid: the GUID is the one the job declared
    (assigned at setup), as in PanDA where output GUIDs belong to the job definition."""
    out = {}
    for lfn, entry in report.items():
        known = (declared.get(lfn) or {}).get("GUID")
        if entry.get("guid") in (None, "", "NULL") and known not in (None, "", "NULL"):
            entry = {**entry, "guid": known}
        out[lfn] = entry
    return out


def _fail(reason: str, diag: str, **extra: Any) -> Outcome:
    return Outcome("fail", attrs={"ddmErrorCode": EC_ADDER, "ddmErrorDiag": diag[:500]}, reason=reason, **extra)


def judge(event: JobTransitioned, spec: dict[str, Any], files: Sequence[dict[str, Any]], endpoint: str,
          merge_tag: str = "merge") -> Outcome:
    """PanDA's AdderGen decision for one final report. Pure: no plugin is called here."""
    pid = event.PandaID
    if event.pilot_state == PilotState.FAILED and spec.get("commandToPilot") == "tobekilled":
        return Outcome("adder_cancel", reason="killed: the pilot obeyed tobekilled")
    declared = {f["lfn"]: f for f in files if f.get("type") in OUTPUT_TYPES and f.get("lfn")}
    inputs = {f["lfn"] for f in files if f.get("type") not in OUTPUT_TYPES}
    try:
        report = parse_report(event.report)
    except ValueError as exc:
        return _fail("unparsable report", f"{DIAG_BAD_JSON}: {exc}")
    report = _with_declared_guids(report, declared)

    if event.pilot_state == PilotState.FAILED:
        logs = [lfn for lfn, f in declared.items() if f.get("type") == "log" and not _missing(report.get(lfn))]
        try:
            reg = tuple(_output_file(declared[lfn], report[lfn], pid, endpoint) for lfn in logs)
        except (KeyError, TypeError, ValueError):
            reg = ()    # a failed job with an unusable log entry still fails, just without its log
        patches = tuple(_patch(f, "ready", _checksum(report[f.lfn])[1]) for f in reg)
        return Outcome("fail", files=patches, register=reg, reason="the pilot reported failed")

    unknown = sorted(lfn for lfn in report if lfn not in declared and lfn not in inputs)
    if unknown:
        return _fail("unknown output", f"pilot produced {', '.join(unknown)} inconsistently with jobdef")
    bad = sorted(lfn for lfn in declared if _missing(report.get(lfn)))
    if bad:
        return _fail("incomplete report", f"{DIAG_BAD_JSON} ({', '.join(bad)})")
    try:
        reg = tuple(_output_file(f, report[lfn], pid, endpoint) for lfn, f in declared.items())
    except (KeyError, TypeError, ValueError) as exc:
        return _fail("bad report entry", f"{DIAG_BAD_JSON}: {exc!r}")
    tags = (spec.get("specialHandling") or "").split(",")
    if merge_tag and merge_tag in tags:
        action, status = "merge", "merging"
    elif any(f.destination != endpoint for f in reg if f.type == "output"):
        action, status = "transfer", "transferring"
    else:
        action, status = "finish", "ready"
    moving = tuple(f for f in reg if f.destination != endpoint) if action == "transfer" else ()
    patches = tuple(_patch(f, status if f in moving or action == "merge" else "ready", _checksum(report[f.lfn])[1])
                    for f in reg)
    return Outcome(action, files=patches, register=reg, transfer=moving, reason=f"{len(reg)} file(s) registered")


@dataclass(frozen=True)
class Registration:
    """One report of a batch as decided: the outcome and its command (None: already decided, only forget the
    pending row), with the plugin and endpoint the Action's step registers with."""

    event: JobTransitioned
    outcome: Outcome | None
    command: Transition | None
    endpoint: str
    plugin: DataPlugin | None


# ---------------------------------------------------------------------------------------------- service
class AdderView(Protocol):
    partitions: set[int] | None

    def job(self, pandaid: int, at_least: int) -> dict[str, Any]: ...
    def jobs(self, at_least: dict[int, int]) -> dict[int, dict[str, Any]]: ...
    def files(self, pandaid: int) -> list[dict[str, Any]]: ...
    def files_of(self, pandaids: list[int]) -> dict[int, list[dict[str, Any]]]: ...
    def settle(self, registered: Sequence[tuple[int, OutputFile]], done: Sequence[int]) -> None: ...
    def placement(self, spec: dict[str, Any]) -> tuple[DataPlugin, str]: ...
    def registered(self, pandaid: int, files: Sequence[OutputFile]) -> None: ...
    def done(self, pandaid: int) -> None: ...
    def defer(self, pandaid: int, seq: int, error: str) -> None: ...
    def due(self, now: float) -> list[Event]: ...
    def payload(self, ref: str) -> str: ...


class Adder:
    name = "adder"

    def __init__(self, merge_tag: str = "merge"):
        self.merge_tag = merge_tag

    def wants(self, event: Event) -> bool:
        return (isinstance(event, JobTransitioned) and event.action == "pilot_holding"
                and event.pilot_state in (PilotState.FINISHED, PilotState.FAILED))

    def decide(self, event: Event, view: AdderView) -> list[Command | Action]:
        assert isinstance(event, JobTransitioned)
        return self._decide(event, view.job(event.PandaID, event.seq - 1), view.files, view)

    def decide_batch(self, events: Sequence[Event], view: AdderView) -> list[Command | Action]:
        """The reports of a poll: the jobs and their files read together, the plugin calls job by job, then
        the registrations and the pending rows of all of them in one transaction (``_settle_all``)."""
        pids = [e.PandaID for e in events]
        if len(set(pids)) != len(pids):      # one job twice in a poll (a redelivery): one by one, in order
            return [out for e in events for out in self.decide(e, view)]
        rows = view.jobs({e.PandaID: e.seq - 1 for e in events})
        files = view.files_of(pids)
        places: dict[tuple[Any, Any], tuple[DataPlugin, str]] = {}

        def placement(spec: dict[str, Any]) -> tuple[DataPlugin, str]:
            key = (spec.get("computingSite"), spec.get("VO"))
            if key not in places:
                places[key] = view.placement(spec)
            return places[key]

        work: list[Registration] = []
        for e in events:
            assert isinstance(e, JobTransitioned)
            decided = self._decide(e, rows[e.PandaID], lambda pid: files.get(pid, []), view, placement)
            work.append(decided if isinstance(decided, Registration) else Registration(e, None, None, "", None))
        return [Action(label=f"adder: {len(work)} reports", steps=(functools.partial(self._settle_all, work, view),),
                       then=list)]

    def _settle_all(self, work: Sequence[Registration], view: AdderView) -> list[Command]:
        """Each report's plugin calls (a refusal defers or fails that job only), then every registration and
        every forgotten pending report in one transaction; the commands of the jobs that got through."""
        commands: list[Command] = []
        registered: list[tuple[int, OutputFile]] = []
        done: list[int] = []
        for w in work:
            if w.command is None:            # already decided: only forget the pending row
                done.append(w.event.PandaID)
                continue
            try:
                if w.outcome.register:
                    w.plugin.register_outputs(list(w.outcome.register), w.endpoint)
                if w.outcome.transfer:
                    w.plugin.transfer_outputs(list(w.outcome.transfer))
            except Exception as exc:
                commands += self._on_error(w.event, view, exc)
                continue
            registered += [(w.event.PandaID, f) for f in w.outcome.register]
            done.append(w.event.PandaID)
            commands.append(w.command)
        view.settle(registered, done)
        return commands

    def _decide(self, event: JobTransitioned, row: dict[str, Any], files_of: Callable[[int], list[dict[str, Any]]],
                view: AdderView, placement: Callable[[dict[str, Any]], tuple[DataPlugin, str]] | None = None,
                ) -> list[Command | Action]:
        """One report: its Action (``decide``), or with ``placement`` given (``decide_batch``) what to do as a
        ``Registration`` (or ``[]``/the "already done" Action for the batch to forget the pending row)."""
        if row["seq"] >= event.seq and row["status"] != JobStatus.HOLDING:
            # already decided (a redelivered event, or a pending report another adder finished): only
            # forget the pending row, if any
            return [Action(label=f"adder {event.PandaID} already done",
                           steps=(functools.partial(view.done, event.PandaID),))]
        spec = {**row["spec"], **event.attrs}
        original = event
        if event.report is None and event.report_ref is not None:   # stored beside the event (core/payloads.py)
            event = msgspec.structs.replace(event, report=view.payload(event.report_ref))
        plugin, endpoint = (placement or view.placement)(spec)
        out = judge(event, spec, files_of(event.PandaID), endpoint, self.merge_tag)
        command = Transition(PandaID=event.PandaID, action=out.action, actor=ACTOR, attrs=out.attrs,
                             files=list(out.files), reason=out.reason, correlation_id=event.correlation_id)
        if placement is not None:
            return Registration(original, out, command, endpoint, plugin)   # type: ignore[return-value]
        steps: list[Any] = []
        if out.register:
            steps.append(functools.partial(plugin.register_outputs, list(out.register), endpoint))
            steps.append(functools.partial(view.registered, event.PandaID, list(out.register)))
        if out.transfer:
            steps.append(functools.partial(plugin.transfer_outputs, list(out.transfer)))
        steps.append(functools.partial(view.done, event.PandaID))
        return [Action(label=f"adder {event.PandaID} {out.action}", steps=tuple(steps), then=(command,),
                       on_error=functools.partial(self._on_error, event, view))]

    def _on_error(self, event: JobTransitioned, view: AdderView, exc: Exception) -> list[Command]:
        if isinstance(exc, PluginError) and not exc.temporary:
            view.done(event.PandaID)
            return [Transition(PandaID=event.PandaID, action="fail", actor=ACTOR, reason="registration failed",
                               attrs={"ddmErrorCode": EC_ADDER, "ddmErrorDiag": f"registration failed: {exc}"[:500]},
                               correlation_id=event.correlation_id)]
        if isinstance(exc, PluginError | OSError | psycopg.OperationalError):
            view.defer(event.PandaID, event.seq, f"{type(exc).__name__}: {exc}")   # the report stays in the log
            return []
        raise exc

    def tick(self, now: float, view: AdderView) -> list[Command | Action]:
        """Reports whose plugin call failed temporarily and are due again (only this copy's partitions)."""
        out: list[Command | Action] = []
        for event in view.due(now):
            out += self.decide(event, view)
        return out


def placement(cfg: Config, conn: psycopg.Connection, spec: dict[str, Any]) -> tuple[DataPlugin, str]:
    """The data plugin and the storage endpoint of the job's queue (from the sites table, if it knows
    the queue; else the default plugin and ``<queue>_DATADISK``). Shared with the finisher."""
    import plugins

    site = spec.get("computingSite")
    queue = None
    if site:
        try:
            queue = sites.queue(conn, site)
        except psycopg.errors.UndefinedTable:
            queue = None
    plugin = plugins.for_queue(cfg, queue.plugin if queue else None, spec.get("VO"))
    endpoint = queue.endpoints[0] if queue is not None and queue.endpoints else None
    return plugin, endpoint or f"{site or 'LOCAL'}_DATADISK"


class SqlAdderView(JobReader):
    """Projections (jobs, files, job_events), the sites and datasets tables, and the adder's own store
    (``pending_reports``: the ``adder_pending`` table)."""

    def __init__(self, cfg: Config):
        super().__init__(cfg, wait=cfg.adder.projection_wait)
        self.partitions: set[int] | None = None
        self.retry_delay = float(cfg.adder.retry_delay)
        self.max_delay = float(cfg.adder.max_delay)
        self.lease = float(cfg.adder.lease)
        self.me = f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"

    def placement(self, spec: dict[str, Any]) -> tuple[DataPlugin, str]:
        return placement(self.cfg, self.conn, spec)

    def payload(self, ref: str) -> str:
        """A report stored beside its event (core/payloads.py), checked against its digest."""
        return payloads.get(self.conn, ref)

    def registered(self, pandaid: int, files: Sequence[OutputFile]) -> None:
        blocks: dict[str, list[str]] = {}
        for f in files:
            for name in {f.block, f.dataset}:
                blocks.setdefault(name, []).append(f.lfn)
        for name, lfns in blocks.items():
            datasets.set_files_status(self.conn, name, "ready", pandaids=[pandaid], lfns=lfns)

    def done(self, pandaid: int) -> None:
        pending_reports.done(self.conn, pandaid)

    def settle(self, registered: Sequence[tuple[int, OutputFile]], done: Sequence[int]) -> None:
        """A poll's registrations (files ready in their sub and destination blocks) and its reports dealt
        with, in one transaction."""
        rows = [(name, pid, f.lfn) for pid, f in registered for name in {f.block, f.dataset}]
        with self.conn.transaction():
            datasets.set_files_status_many(self.conn, rows, "ready")
            pending_reports.done_many(self.conn, done)

    def defer(self, pandaid: int, seq: int, error: str) -> None:
        """An action's error path (never a decision): the schedule starts from this host's clock now."""
        attempts, delay = pending_reports.defer(self.conn, pandaid, seq, error, now=time.time(),
                                                retry_delay=self.retry_delay, max_delay=self.max_delay)
        log.warning("adder: PandaID %d deferred (attempt %d, next in %.0fs): %s", pandaid, attempts, delay, error)

    def due(self, now: float) -> list[Event]:
        """Claim due pending reports of this copy's jobs (a lease, like lockJobOutputReport) and re-read
        their events: candidates from the store, jobs and events from the projections, then the lease."""
        candidates = pending_reports.due(self.conn, now)
        if not candidates:
            return []
        mine = service_queries.jobs_among(self.conn, (pid for pid, _ in candidates), self.partitions)
        bodies = service_queries.event_bodies(self.conn, [(pid, seq) for pid, seq in candidates if pid in mine])
        leased = pending_reports.lease(self.conn, list(bodies), now, self.lease, self.me)
        return [decode_event(bodies[key]) for key in leased]

    def pending(self) -> list[dict[str, Any]]:
        return pending_reports.rows(self.conn)


def hosted(cfg: Config) -> Member:
    """The adder: the event path plus a tick for deferred reports."""
    view = SqlAdderView(cfg)
    return Member(Adder(cfg.adder.merge_tag), view, tick_every=float(cfg.adder.tick), close=view.close)


def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run adder`: alone in its own consumer group."""
    run_alone(cfg, stop, hosted(cfg))
