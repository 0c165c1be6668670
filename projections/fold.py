"""One job folded from its events in memory: core state, JobSpec attributes and files as they were.

Why here: it is a read model of one job, built only from events (``core.machine.apply`` for the state),
used by ``pandaes state-at`` (folding the log) and by the monitor's time travel (folding the archived
events of ``job_events``), so both show the same job at the same event.
"""

from __future__ import annotations

from typing import Any

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
