"""One job folded from its events in memory: core state, JobSpec attributes and files as they were.

Why here: it is a read model of one job, built only from events (``core.machine.apply`` for the state),
used by ``pandaes state-at`` (folding the log) and by the monitor's time travel (folding the archived
events of ``job_events``), so both show the same job at the same event. ``placements`` folds many jobs
at once for the monitor's "as of" views: each job's state, queue and task at a past moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgspec

from core.machine import JobState, apply
from schemas.messages import Event, JobSubmitted


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class JobView:
    """One job folded from its events: core state, JobSpec attributes, files, and where it got to."""

    def __init__(self) -> None:
        self.state: JobState | None = None
        self.spec: dict[str, Any] = {}
        self.files: list[dict[str, Any]] = []
        self.last: Event | None = None
        self.partition = -1
        self.offset = -1

    def feed(self, partition: int, offset: int, ev: Event) -> None:
        self.state = apply(self.state, ev)
        self.last, self.partition, self.offset = ev, partition, offset
        if isinstance(ev, JobSubmitted):
            spec = msgspec.to_builtins(ev.job)
            self.files = [_clean(f) for f in spec.pop("Files", [])]
            self.spec = spec
        else:
            self.spec.update(ev.attrs)
            for f in ev.files:
                self._patch_file(_clean(msgspec.to_builtins(f)))
        self.spec["jobStatus"] = ev.to_state

    def _patch_file(self, patch: dict[str, Any]) -> None:
        for f in self.files:
            if f.get("lfn") == patch.get("lfn") and patch.get("type") in (None, f.get("type")):
                f.update(patch)
                return
        self.files.append(patch)

    def as_dict(self) -> dict[str, Any]:
        ev = self.last
        assert ev is not None and self.state is not None
        return {
            "PandaID": ev.PandaID, "seq": ev.seq, "partition": self.partition, "offset": self.offset,
            "time": ev.time, "last_event": {"type": ev.__struct_config__.tag, "action": getattr(ev, "action", None),
                                            "actor": ev.actor, "from": ev.from_state, "to": ev.to_state},
            "core": msgspec.to_builtins(self.state), "job": self.spec, "files": self.files,
        }


# ------------------------------------------------------------------------------------------- as of
class Placement(NamedTuple):
    """Where a job stood at a past moment: its state, and the queue and task its events had named by then."""

    state: str
    queue: str | None
    task: int | None


def _task(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "", "NULL") else None
    except (TypeError, ValueError):
        return None


def placements(rows: Iterable[Sequence[Any]]) -> dict[int, Placement]:
    """PandaID → its Placement after the events of ``rows``, each ``(PandaID, seq, to_state, computingSite,
    jediTaskID)`` with the site and task the event itself named (the submitted JobSpec's, or its attrs';
    None when it named none), a job's rows in seq order.

    Why a fold and not the job's row: a job moves (brokerage, a reassignment to another site), so the queue
    of a past moment is the last one its events had named by then, not the one the jobs table shows now.
    """
    out: dict[int, Placement] = {}
    for pandaid, _seq, state, site, task in rows:
        before = out.get(pandaid)
        out[pandaid] = Placement(state, site if site is not None else (before.queue if before else None),
                                 _task(task) if _task(task) is not None else (before.task if before else None))
    return out


def counts_by(places: Iterable[Placement], key: str) -> dict[Any, dict[str, int]]:
    """``key`` ("queue" or "task") → state → jobs; jobs without a task are left out of the task view."""
    out: dict[Any, dict[str, int]] = {}
    for p in places:
        k = getattr(p, key)
        if key == "task" and k is None:
            continue
        row = out.setdefault(k if k is not None else "", {})
        row[p.state] = row.get(p.state, 0) + 1
    return out
