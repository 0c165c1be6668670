"""Retries: a failed job with attempts left comes back as a NEW PandaID (PanDA's retryModule + retryJob).

Why a new PandaID: events are immutable and a job's history ends at its final state, so a retry is a
new job (``attemptNr + 1``, ``parentID`` = the failed PandaID, same ``jobsetID``) and the failed one is
marked with core Kill code 7 (stays failed, taskBufferErrorCode 106 EC_Retried).

JEDI retries its own jobs: a job with a ``jediTaskID`` is never retried here. JEDI reads the failure from
``panda.job-events`` (docs/events.md, "What JEDI reads") and generates the next attempt itself, as in PanDA,
where the server's retry module leaves JEDI's jobs to JEDI. Jobs submitted without JEDI keep this retrier.

Rules (``[retry]``): no retry when ``attemptNr >= maxAttempt`` (the job's, else ``default_max_attempt``;
capped by ``max_attempts``), or when an error code of the job is in ``no_retry``; more memory
(``minRamCount`` × ``memory_factor``) when one is in ``memory_errors``. Codes are ``"<field>:<code>"``
with fields pilot, exe, ddm, jd (jobDispatcher), tb (taskBuffer), sup.

Idempotence: the new PandaID is taken from ``pandaid_seq`` and written to ``retries`` (primary key =
old PandaID; the store is ``services.reactors.retries``) *before* anything is sent. That allocation is
the side effect of the Action ``decide`` returns (so replay never allocates), and the commands are
built from its result: a redelivered ``failed`` event finds the row and only re-sends what may be
missing: the Submit if the new job is not in the projection yet (a duplicate Submit is rejected by the
ledger as ``duplicate_job``), the Kill 7 if the old job is not marked yet.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from core.config import Config
from core.states import JobStatus
from projections.jobview import JobReader
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Command, Event, JobTransitioned, Kill, Submit
from services.loop import Action, Member, run_alone
from services.reactors import retries

ACTOR = "service:retrier"
RETRIED_CODE = 7
EC_RETRIED = 106

FIELDS = {"pilot": "pilotErrorCode", "exe": "exeErrorCode", "ddm": "ddmErrorCode", "jd": "jobDispatcherErrorCode",
          "tb": "taskBufferErrorCode", "sup": "supErrorCode"}

# attributes of one execution attempt: a retry starts without them
RUNTIME = frozenset({
    "PandaID", "jobStatus", "pilotID", "schedulerID", "creationTime", "creationHost", "modificationTime",
    "modificationHost", "startTime", "endTime", "stateChangeTime", "prodDBUpdateTime", "cpuConsumptionTime",
    "commandToPilot", "transExitCode", "pilotErrorCode", "pilotErrorDiag", "exeErrorCode", "exeErrorDiag",
    "supErrorCode", "supErrorDiag", "ddmErrorCode", "ddmErrorDiag", "brokerageErrorCode", "brokerageErrorDiag",
    "jobDispatcherErrorCode", "jobDispatcherErrorDiag", "taskBufferErrorCode", "taskBufferErrorDiag",
    "computingElement", "batchID", "lockedby", "jobExecutionID", "pilotTiming", "jobMetrics", "jobSubStatus",
    "actualCoreCount", "maxRSS", "maxVMEM", "maxSWAP", "maxPSS", "avgRSS", "avgVMEM", "avgSWAP", "avgPSS",
    "hs06sec", "totRCHAR", "totWCHAR", "totRBYTES", "totWBYTES", "rateRCHAR", "rateWCHAR", "rateRBYTES",
    "rateWBYTES", "memory_leak", "memory_leak_x2", "gco2_regional", "gco2_global", "nEvents", "metadata",
})
_FILE_RUNTIME = ("row_ID", "PandaID", "status", "GUID", "fsize", "md5sum", "checksum")


@dataclass(frozen=True)
class RetryRules:
    enabled: bool = True
    default_max_attempt: int = 0
    max_attempts: int = 10
    no_retry: frozenset[tuple[str, int]] = frozenset()
    memory_errors: frozenset[tuple[str, int]] = frozenset()
    memory_factor: float = 1.5
    memory_increment: int = 1000
    max_ram: int = 64000

    @classmethod
    def from_config(cls, cfg: Config) -> RetryRules:
        r = cfg.retry
        return cls(enabled=r.enabled, default_max_attempt=r.default_max_attempt, max_attempts=r.max_attempts,
                   no_retry=parse_codes(r.no_retry, "[retry] no_retry"),
                   memory_errors=parse_codes(r.memory_errors, "[retry] memory_errors"),
                   memory_factor=r.memory_factor, memory_increment=r.memory_increment, max_ram=r.max_ram)


def parse_codes(items: Sequence[str], where: str) -> frozenset[tuple[str, int]]:
    out = set()
    for item in items:
        field, _, code = item.partition(":")
        if field not in FIELDS or not code.strip().lstrip("-").isdigit():
            raise ValueError(f"{where}: {item!r} is not '<field>:<code>' with field one of {', '.join(FIELDS)}")
        out.add((FIELDS[field], abs(int(code))))
    return frozenset(out)


def _errors(spec: dict[str, Any]) -> set[tuple[str, int]]:
    out = set()
    for attr in FIELDS.values():
        value = spec.get(attr)
        if value not in (None, "NULL", 0, "0"):
            try:
                out.add((attr, abs(int(value))))
            except (TypeError, ValueError):
                pass
    return out


def from_jedi(spec: dict[str, Any]) -> bool:
    """Whether the job belongs to a JEDI task (a jediTaskID other than PanDA's empty values)."""
    return spec.get("jediTaskID") not in (None, "NULL", "", 0, "0")


def verdict(spec: dict[str, Any], rules: RetryRules) -> tuple[bool, str]:
    """(retry?, why) for a failed job's JobSpec dict."""
    if not rules.enabled:
        return False, "retries disabled"
    if from_jedi(spec):
        return False, f"JEDI retries the jobs of task {spec['jediTaskID']}"
    attempt = int(spec.get("attemptNr") or 0)
    max_attempt = min(int(spec.get("maxAttempt") or rules.default_max_attempt), rules.max_attempts)
    if attempt >= max_attempt:
        return False, f"attemptNr {attempt} >= maxAttempt {max_attempt}"
    blocked = sorted(_errors(spec) & rules.no_retry)
    if blocked:
        return False, "no retry for " + ", ".join(f"{a}={c}" for a, c in blocked)
    return True, f"attempt {attempt + 1} of {max_attempt}"


def asked_verdict(status: str | None, spec: dict[str, Any], rules: RetryRules) -> tuple[bool, str]:
    """(retry?, why) for a retry a person asks for (``/api/v1/job/retry``, the monitor's retry button). Pure.

    Asking overrides the job's ``maxAttempt`` and the ``no_retry`` codes (someone looked at the failure),
    not the cap ``[retry] max_attempts``; only a failed job that was not retried yet, and not a JEDI job
    (JEDI makes the next attempt of its jobs)."""
    if status != JobStatus.FAILED:
        return False, f"the job is {status or 'unknown'}; only a failed job can be retried"
    if spec.get("taskBufferErrorCode") in (EC_RETRIED, str(EC_RETRIED)):
        return False, "the job was already retried"
    if from_jedi(spec):
        return False, f"JEDI retries the jobs of task {spec['jediTaskID']}: retry the task"
    attempt = int(spec.get("attemptNr") or 0)
    if attempt >= rules.max_attempts:
        return False, f"attemptNr {attempt} reached [retry] max_attempts {rules.max_attempts}"
    return True, f"attempt {attempt + 1}, asked for"


def _renamed(lfn: str, old_attempt: int, new_attempt: int) -> str:
    base = lfn[: -len(f".{old_attempt}")] if old_attempt and lfn.endswith(f".{old_attempt}") else lfn
    return f"{base}.{new_attempt}"


def next_job(spec: dict[str, Any], files: Sequence[dict[str, Any]], old_pandaid: int,
             rules: RetryRules) -> tuple[JobSpec, str]:
    """The retry's JobSpec (without PandaID) and a note of what changed. Pure."""
    attempt = int(spec.get("attemptNr") or 0)
    new = {k: v for k, v in spec.items() if k not in RUNTIME and k != "Files" and v not in (None, "NULL")}
    new.update(attemptNr=attempt + 1, parentID=old_pandaid, failedAttempt=int(spec.get("failedAttempt") or 0) + 1)
    note = f"retry of {old_pandaid} as attempt {attempt + 1}"
    if _errors(spec) & rules.memory_errors:
        old_ram = int(spec.get("minRamCount") or 0)
        ram = int(old_ram * rules.memory_factor) if old_ram else rules.memory_increment
        new["minRamCount"] = min(max(ram, old_ram), rules.max_ram)
        note += f", minRamCount {old_ram} -> {new['minRamCount']}"
    params = new.get("jobParameters") or ""
    new_files = []
    for f in files:
        f = {k: v for k, v in f.items() if k not in _FILE_RUNTIME and v not in (None, "NULL")}
        if f.get("type") in ("output", "log") and f.get("lfn"):
            renamed = _renamed(f["lfn"], attempt, attempt + 1)
            # the payload writes the names it is given: keep the parameters in step (PanDA's retryJob does too)
            params = re.sub(rf"(?<![\w.-]){re.escape(f['lfn'])}(?![\w.-])", renamed, params)
            f["lfn"] = renamed
        new_files.append(msgspec.convert(f, FileSpec))
    if params:
        new["jobParameters"] = params
    return _to_spec(new, new_files), note


def _to_spec(attrs: dict[str, Any], files: list[FileSpec]) -> JobSpec:
    """A JobSpec from a projection's dict; attributes of the wrong type (attrs are checked by name only)
    are dropped one by one rather than losing the whole retry."""
    try:
        return msgspec.convert({**attrs, "Files": files}, JobSpec, strict=False)
    except msgspec.ValidationError:
        good = {}
        for k, v in attrs.items():
            try:
                msgspec.convert({k: v}, JobSpec, strict=False)
                good[k] = v
            except msgspec.ValidationError:
                pass
        return msgspec.convert({**good, "Files": files}, JobSpec, strict=False)


class RetrierView(Protocol):
    def job(self, pandaid: int, at_least: int) -> dict[str, Any]: ...
    def files(self, pandaid: int) -> list[dict[str, Any]]: ...
    def exists(self, pandaid: int) -> bool: ...

    def claim(self, old_pandaid: int, attempt_nr: int, reason: str) -> int:
        """The retry's PandaID, allocated and recorded once (a write: only ever an Action's step)."""


class Retrier:
    """Event-driven: every ``failed`` transition is judged once by the rules."""

    name = "retrier"

    def __init__(self, rules: RetryRules):
        self.rules = rules

    def wants(self, event: Event) -> bool:
        return isinstance(event, JobTransitioned) and event.to_state == JobStatus.FAILED

    def decide(self, event: Event, view: RetrierView) -> list[Action]:
        row = view.job(event.PandaID, event.seq - 1)
        spec = {**row["spec"], **event.attrs} if row["seq"] < event.seq else dict(row["spec"])
        ok, why = verdict(spec, self.rules)
        if not ok:
            return []
        job, note = next_job(spec, view.files(event.PandaID), event.PandaID, self.rules)
        return [Action(label=f"retry {event.PandaID}",
                       steps=(functools.partial(view.claim, event.PandaID, job.attemptNr or 0, note),),
                       then=functools.partial(self._commands, event, spec, job, view))]

    @staticmethod
    def _commands(event: Event, spec: dict[str, Any], job: JobSpec, view: RetrierView, new_id: int) -> list[Command]:
        """What to send once the retry's PandaID ``new_id`` is recorded."""
        out: list[Command] = []
        if not view.exists(new_id):
            out.append(Submit(PandaID=new_id, job=job, actor=ACTOR, correlation_id=event.correlation_id))
        if spec.get("taskBufferErrorCode") != EC_RETRIED:
            out.append(Kill(PandaID=event.PandaID, code=RETRIED_CODE, actor=ACTOR, reason=f"retried as {new_id}"))
        return out


class SqlRetrierView(JobReader):
    """The projections (through ``JobReader``) plus the retrier's store (the ``retries`` table)."""

    def claim(self, old_pandaid: int, attempt_nr: int, reason: str) -> int:
        return retries.claim(self.conn, old_pandaid, attempt_nr, reason)


def hosted(cfg: Config) -> Member:
    """The retrier (event path only)."""
    view = SqlRetrierView(cfg, wait=cfg.adder.projection_wait)
    return Member(Retrier(RetryRules.from_config(cfg)), view, close=view.close)


def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run retrier`: alone in its own consumer group."""
    run_alone(cfg, stop, hosted(cfg))
