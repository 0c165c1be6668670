"""Folding events back into jobs, checking every step against the state table.

``LogChecker`` is the judge of a log: it folds each job's events through ``core.machine.apply`` and
checks that each one is a legal step of ``core.states.TRANSITIONS`` from the state before it, that
the first event is the submission, that ``seq`` has no gap or repeat, and that the event sits in the
job's partition. ``JobView`` is the richer fold used by ``state-at``: core state plus the JobSpec
attributes and files as they were.
"""

from __future__ import annotations

from core import states as S
from core.bus import partition_of
from core.machine import MACHINE, IllegalTransition, JobState, apply
from projections.fold import JobView  # noqa: F401  (re-exported: the fold lives with the read models)
from schemas.messages import Event, JobSubmitted, JobTransitioned, JobUpdated


class LogChecker:
    """Feeds events in log order; collects problems (strings) instead of stopping at the first."""

    def __init__(self, partitions: int, max_problems: int = 1000):
        self.partitions = partitions
        self.jobs: dict[int, JobState] = {}
        self.problems: list[str] = []
        self.n_problems = 0
        self.max_problems = max_problems
        self.events = 0

    def _problem(self, text: str) -> None:
        self.n_problems += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(text)

    def feed(self, partition: int, offset: int, ev: Event) -> JobState | None:
        """Check and fold one event; returns the job's state after it (None if it could not fold)."""
        self.events += 1
        pid = ev.PandaID
        where = f"PandaID {pid} seq {ev.seq} (partition {partition} offset {offset})"
        home = partition_of(pid, self.partitions)
        if home != partition:
            self._problem(f"{where}: in partition {partition}, but the job's key maps to {home}")
        prev = self.jobs.get(pid)
        if prev is None:
            self._check_first(where, ev)
        else:
            self._check_next(where, prev, ev)
        try:
            state = apply(prev, ev)
        except ValueError as exc:
            self._problem(f"{where}: cannot fold: {exc}")
            return None
        self.jobs[pid] = state
        return state

    def _check_first(self, where: str, ev: Event) -> None:
        if not isinstance(ev, JobSubmitted):
            self._problem(f"{where}: first event of the job is {ev.__struct_config__.tag!r}, not 'submitted'")
            return
        if ev.seq != 1:
            self._problem(f"{where}: a submission must have seq 1")
        if ev.from_state != S.NEW or ev.to_state not in S.SUBMIT_TRIGGERS:
            self._problem(f"{where}: submission {ev.from_state} -> {ev.to_state} is not an entry transition")

    def _check_next(self, where: str, prev: JobState, ev: Event) -> None:
        if isinstance(ev, JobSubmitted):
            self._problem(f"{where}: submitted again (the job is already {prev.state} at seq {prev.seq})")
            return
        if ev.seq != prev.seq + 1:
            kind = "repeats" if ev.seq <= prev.seq else "skips"
            self._problem(f"{where}: seq {kind} (previous event had seq {prev.seq})")
        if ev.from_state != prev.state:
            self._problem(f"{where}: from_state {ev.from_state} but the job was {prev.state}")
        try:
            target = MACHINE.target(prev.state, ev.action)
        except IllegalTransition as exc:
            self._problem(f"{where}: illegal: {exc}")
            return
        if target != ev.to_state:
            self._problem(f"{where}: {ev.action} from {prev.state} leads to {target}, event says {ev.to_state}")
        if isinstance(ev, JobTransitioned) and ev.from_state == ev.to_state:
            self._problem(f"{where}: 'transitioned' without a state change")
        if isinstance(ev, JobUpdated) and ev.from_state != ev.to_state:
            self._problem(f"{where}: 'updated' with a state change {ev.from_state} -> {ev.to_state}")
