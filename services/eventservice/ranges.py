"""The event-service rules, pure: a job's ranges at submission, and which range status may follow which.

Definition: a job with ``eventService`` set has ``nEvents`` events to process in its first input file;
they are cut into ranges of one event each (PanDA's usual event-service granularity), identified as PanDA
does, ``<jediTaskID>-<PandaID>-<fileID>-<processID>-<attemptNr>``.

Status table (PanDA's JEDI_Events statuses as the pilot reports them): a range is handed out once
(ready → sent, only by acquisition), the pilot/Harvester then reports running and a final status.
A final status is never left again, so a range is never handed out twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

READY, SENT, RUNNING = "ready", "sent", "running"
REPORTED_FINAL = ("finished", "failed", "fatal", "cancelled", "discarded", "corrupted")
REPORTABLE = (RUNNING, *REPORTED_FINAL)

#   from        to (reported by the pilot / Harvester)
RANGE_TRANSITIONS: dict[str, tuple[str, ...]] = {
    READY:      (),                               # only acquire_event_ranges moves a ready range (to sent)
    SENT:       REPORTABLE,
    RUNNING:    REPORTABLE,
    **{final: () for final in REPORTED_FINAL},
}


@dataclass(frozen=True)
class RangeDef:
    range_id: str
    process_id: int
    lfn: str
    guid: str | None
    scope: str | None
    start_event: int
    last_event: int


def is_event_service(job: Any) -> bool:
    return bool(getattr(job, "eventService", None)) and bool(getattr(job, "nEvents", None))


def define(pandaid: int, job: Any) -> list[RangeDef]:
    """The ranges of a submitted job (empty if it is not an event-service job with input)."""
    if not is_event_service(job):
        return []
    inputs = [f for f in job.Files if f.type == "input"]
    if not inputs:
        return []
    f = inputs[0]
    task = job.jediTaskID or job.taskID or 0
    file_id = f.fileID or 0
    attempt = job.attemptNr or 0
    return [RangeDef(range_id=f"{task}-{pandaid}-{file_id}-{n}-{attempt}", process_id=n, lfn=f.lfn, guid=f.GUID,
                     scope=f.scope, start_event=n - 1, last_event=n - 1)
            for n in range(1, int(job.nEvents) + 1)]


def may_change(current: str, reported: str) -> bool:
    return reported in RANGE_TRANSITIONS.get(current, ())


def fold(changes: list[tuple[str, str | None, str]]) -> dict[str, str]:
    """(range_id, from, to) changes in order → each range's status: the replay of a job's event ranges."""
    state: dict[str, str] = {}
    for range_id, before, after in changes:
        if state.get(range_id) != before:
            raise ValueError(f"{range_id}: change from {before} but the range is {state.get(range_id)}")
        state[range_id] = after
    return state


def pilot_range(row: dict[str, Any]) -> dict[str, Any]:
    """One range as getEventRanges hands it to a pilot."""
    return {"eventRangeID": row["range_id"], "startEvent": row["start_event"], "lastEvent": row["last_event"],
            "LFN": row["lfn"], "GUID": row["guid"], "scope": row["scope"]}
