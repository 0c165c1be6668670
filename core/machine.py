"""The decision core: command + current job state → one event or one rejection.

``decide`` is pure (no I/O, no clock): the ledger calls it for every command, the tests call it with
random command sequences, and replay tools call ``apply`` to fold events back into state. Legality
of a state change is checked by a ``transitions`` Machine built from ``core.states.TRANSITIONS``;
PanDA's updateJob guard rules and kill codes come from the same module.
"""

from __future__ import annotations

import datetime as dt
import typing
from datetime import datetime

import msgspec
from transitions import Machine, MachineError

from core import states as S
from core.states import JobStatus, PilotState
from schemas.jobspec import JOB_ATTRIBUTES, NULL, JobSpec
from schemas.messages import (
    Command,
    Event,
    JobSubmitted,
    JobTransitioned,
    JobUpdated,
    Kill,
    PilotUpdate,
    Rejected,
    Submit,
    Transition,
)

_JOB_ATTRS = frozenset(JOB_ATTRIBUTES)
# attributes only the ledger itself may set: the state and identity are not patchable
_PROTECTED = frozenset({"PandaID", "jobStatus"})
_COMMAND_TRIGGERS = frozenset({"kill", "kill_close", "kill_signal", "mark_retried", "heartbeat"}) | {
    t for t, _, _ in S.TRANSITIONS if t.startswith(("submit", "pilot_"))
}


class JobState(msgspec.Struct, kw_only=True):
    """What the ledger must remember about a job to judge the next command."""

    PandaID: int
    state: str                      # a JobStatus value, or NEW before the submission
    seq: int
    attempt_nr: int = 0
    command_to_pilot: str | None = None
    special_handling: str | None = None
    label: str | None = None          # prodSourceLabel
    pilot_transfer: bool = False      # in transferring because its pilot said so (core.states.PILOT_TRANSFERRING)
    # the id of the dispatch command that made the job ``sent`` (while it is); an undispatch must name it.
    # A ledger rebuilt from the jobs table reads it from the archive (projections.queries.CORE_SQL)
    dispatch_id: str | None = None
    # the code of the kill signalled to the job's pilot (commandToPilot=tobekilled): if the dispatch is undone,
    # no pilot ever held the job, and the undo becomes that kill (``_undo_signalled_kill``)
    kill_code: int | None = None

    @property
    def debug(self) -> bool:
        tags = (self.special_handling or "").split(",")
        return "dm" in tags or "debug" in tags

    def pilot_reply(self) -> str:
        """The `command` field of an updateJob reply: PanDA joins debug and commandToPilot."""
        parts = []
        if self.debug:
            parts.append("debug")
        if self.command_to_pilot and self.command_to_pilot != "NULL":
            parts.append(self.command_to_pilot)
        return ",".join(parts) or "NULL"


class _Cursor:
    """The one model object of the Machine; its ``state`` is set before each check."""

    state: str = S.NEW


class StateMachine:
    """A ``transitions`` Machine over the table, and the lookup compiled from it.

    The Machine is the definition: it is built from ``core.states.TRANSITIONS`` (refusing unknown
    states), and ``(state, trigger) → destination`` is read off its event objects. ``target`` answers
    from that compiled lookup, because running the Machine per command cost more than half of the
    ledger's decision time; ``target_via_machine`` runs the Machine itself, and a test checks the two
    agree on every (state, trigger) pair.
    """

    def __init__(self) -> None:
        self._cursor = _Cursor()
        self.machine = Machine(
            model=self._cursor,
            states=[S.NEW, *S.STATES],
            transitions=[
                {"trigger": trig, "source": list(src), "dest": dest} for trig, src, dest in S.TRANSITIONS
            ],
            initial=S.NEW,
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )
        self._triggers = {trig for trig, _, _ in S.TRANSITIONS}
        self._lookup: dict[tuple[str, str], str] = {}
        for trigger, event in self.machine.events.items():
            for source, transitions in event.transitions.items():
                for t in transitions:
                    self._lookup[(source, trigger)] = t.dest if t.dest is not None else source

    def target(self, state: JobStatus | str, trigger: str) -> str:
        """The state ``trigger`` leads to from ``state``; IllegalTransition if the table forbids it."""
        try:
            return self._lookup[(state, trigger)]
        except KeyError:
            if trigger not in self._triggers:
                raise IllegalTransition(f"unknown action {trigger!r}") from None
            raise IllegalTransition(f"{trigger} is not allowed from {state}") from None

    def target_via_machine(self, state: JobStatus | str, trigger: str) -> str:
        """The same answer, by running ``trigger`` on the Machine from ``state``."""
        if trigger not in self._triggers:
            raise IllegalTransition(f"unknown action {trigger!r}")
        cursor = self._cursor
        cursor.state = state
        try:
            cursor.trigger(trigger)  # type: ignore[attr-defined]
        except MachineError:
            raise IllegalTransition(f"{trigger} is not allowed from {state}") from None
        return cursor.state

    def allowed(self, state: JobStatus | str) -> list[str]:
        return sorted(self.machine.get_triggers(state))


class IllegalTransition(Exception):
    pass


MACHINE = StateMachine()


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pilot_outcome(job: JobState, reported: PilotState | str) -> str | None:
    current = (S.PILOT_TRANSFERRING, job.state) if job.pilot_transfer else (job.state,)
    for sources, reported_states, outcome in S.PILOT_RULES:
        if reported in reported_states and any(c in sources for c in current):
            return outcome
    return None


def _attr_kinds() -> dict[str, tuple[type, int | None, int | None]]:
    """JobSpec attribute → (base type, lowest, highest) from the contract's annotations."""
    out: dict[str, tuple[type, int | None, int | None]] = {}
    for f in msgspec.structs.fields(JobSpec):
        if f.name == "Files":
            continue
        (base,) = (t for t in typing.get_args(f.type) if t is not type(None))
        meta = next((m for m in getattr(base, "__metadata__", ()) if isinstance(m, msgspec.Meta)), None)
        out[f.name] = (getattr(base, "__origin__", base), meta.ge if meta else None, meta.le if meta else None)
    return out


_ATTR_KINDS = _attr_kinds()


def _fits(name: str, value: object) -> bool:
    """The fast common case: the value already has the attribute's type (and range)."""
    base, low, high = _ATTR_KINDS[name]
    kind = type(value)
    if kind is base:
        return low is None or low <= value <= high  # type: ignore[operator]
    if base is datetime and kind is str:   # pilots' times arrive as ISO text
        try:
            datetime.fromisoformat(value)  # type: ignore[arg-type]
        except ValueError:
            return False
        return True
    return base is float and kind is int


def _check_attrs(attrs: dict) -> str | None:
    bad = [k for k in attrs if k not in _JOB_ATTRS or k in _PROTECTED]
    if bad:
        return f"unknown or protected JobSpec attributes: {', '.join(sorted(bad))}"
    # every value must be what the JobSpec declares (type and range, as numeric text PanDA would convert):
    # the projections store attrs in typed columns, and a value that does not fit would stop them there
    values = {k: v for k, v in attrs.items() if v is not None and v != NULL and not _fits(k, v)}
    if values:
        try:
            msgspec.convert(values, JobSpec, strict=False)
        except msgspec.ValidationError as exc:
            return f"attribute value does not fit the JobSpec: {str(exc).replace('$.', 'attrs.')}"
    return None


def _reject(cmd: Command, code: str, reason: str, job: JobState | None, src: list[int],
            reply: str | None = None) -> Rejected:
    return Rejected(
        PandaID=cmd.PandaID, actor="ledger", correlation_id=cmd.correlation_id, command_id=cmd.id,
        command_type=cmd.__struct_config__.tag, code=code, reason=reason,
        state=job.state if job else None, reply=reply, src=src,
    )


def _event(cmd: Command, job: JobState, trigger: str, new_state: JobStatus | str, src: list[int], **fields) -> Event:
    cls = JobTransitioned if new_state != job.state else JobUpdated
    return cls(
        PandaID=cmd.PandaID, time=cmd.time, actor=cmd.actor, correlation_id=cmd.correlation_id,
        seq=job.seq + 1, from_state=job.state, to_state=new_state, command_id=cmd.id, src=src,
        action=trigger, **fields,
    )


def decide(job: JobState | None, cmd: Command, src: list[int] | None = None) -> Event | Rejected:
    """The ledger's whole judgement. ``job`` is None for a PandaID never seen before."""
    src = src or []
    if isinstance(cmd, Submit):
        return _decide_submit(job, cmd, src)
    if job is None:
        reply = "tobekilled" if isinstance(cmd, PilotUpdate) else None
        return _reject(cmd, "unknown_job", f"no job with PandaID {cmd.PandaID}", job, src, reply)
    if isinstance(cmd, PilotUpdate):
        return _decide_pilot(job, cmd, src)
    if isinstance(cmd, Kill):
        return _decide_kill(job, cmd, src)
    return _decide_transition(job, cmd, src)


def _decide_submit(job: JobState | None, cmd: Submit, src: list[int]) -> Event | Rejected:
    if job is not None:
        return _reject(cmd, "duplicate_job", f"PandaID {cmd.PandaID} already exists ({job.state})", job, src)
    if cmd.job.PandaID not in (None, cmd.PandaID):
        return _reject(cmd, "bad_command", f"job.PandaID {cmd.job.PandaID} != key {cmd.PandaID}", job, src)
    trigger = S.SUBMIT_TRIGGERS[cmd.to]
    new_state = MACHINE.target(S.NEW, trigger)
    spec = msgspec.structs.replace(cmd.job, PandaID=cmd.PandaID, jobStatus=new_state)
    return JobSubmitted(
        PandaID=cmd.PandaID, time=cmd.time, actor=cmd.actor, correlation_id=cmd.correlation_id,
        seq=1, from_state=S.NEW, to_state=new_state, command_id=cmd.id, src=src, job=spec,
    )


def _decide_transition(job: JobState, cmd: Transition, src: list[int]) -> Event | Rejected:
    if cmd.action in _COMMAND_TRIGGERS:
        return _reject(cmd, "bad_command", f"action {cmd.action!r} has its own command type", job, src)
    problem = _check_attrs(cmd.attrs)
    if problem:
        return _reject(cmd, "bad_attributes", problem, job, src)
    if cmd.action == "undispatch" and job.state == JobStatus.SENT and (
            cmd.undoes is None or cmd.undoes != job.dispatch_id):
        # only the dispatch it names, and only while that dispatch still holds the job: an undo that
        # arrives after the job was undone and dispatched again (or for a dispatch never applied) is void
        return _reject(cmd, "not_this_dispatch", f"the job's dispatch is not {cmd.undoes}", job, src)
    if cmd.action == "undispatch" and job.state == JobStatus.SENT and job.command_to_pilot == "tobekilled":
        return _undo_signalled_kill(job, cmd, src)
    try:
        new_state = MACHINE.target(job.state, cmd.action)
    except IllegalTransition as exc:
        return _reject(cmd, "illegal_transition", str(exc), job, src)
    return _event(cmd, job, cmd.action, new_state, src, attrs=cmd.attrs, files=cmd.files, reason=cmd.reason)


def _undo_signalled_kill(job: JobState, cmd: Transition, src: list[int]) -> Event:
    """The undo of a dispatch whose job was told to be killed meanwhile: no pilot ever held the job, so the
    kill is the one it would have been for a job nobody holds (its code's destination, as ``_decide_kill``),
    instead of putting a job back in the queue whose next pilot would only be told to kill it."""
    trigger, error_code, sub_status = S.KILL_CODES.get(job.kill_code, S.KILL_CODES[None])
    attrs: dict[str, typing.Any] = {"taskBufferErrorCode": error_code}
    if sub_status:
        attrs["jobSubStatus"] = sub_status
    reason = f"dispatch {cmd.undoes} never reached a pilot and the job was to be killed"
    return _event(cmd, job, trigger, MACHINE.target(job.state, trigger), src, attrs=attrs, reason=reason,
                  kill_code=job.kill_code)


def _decide_pilot(job: JobState, cmd: PilotUpdate, src: list[int]) -> Event | Rejected:
    if cmd.state not in S.PILOT_STATES:
        return _reject(cmd, "invalid_state", f"pilot state {cmd.state!r} is not one of "
                       f"{', '.join(S.PILOT_STATES)}", job, src)
    if cmd.attempt_nr is not None and cmd.attempt_nr != job.attempt_nr:
        return _reject(cmd, "stale_attempt", f"attemptNr {cmd.attempt_nr} but the job is at attempt "
                       f"{job.attempt_nr}", job, src, reply="tobekilled")
    problem = _check_attrs(cmd.attrs)
    if problem:
        return _reject(cmd, "bad_attributes", problem, job, src)
    outcome = _pilot_outcome(job, cmd.state)
    if outcome is None:
        return _reject(cmd, "illegal_transition", f"a pilot cannot report {cmd.state} for a job in "
                       f"{job.state}", job, src, reply=job.pilot_reply())
    if outcome in ("alreadydone", "tobekilled"):
        return _reject(cmd, outcome, f"job is {job.state}; pilot reported {cmd.state}", job, src, reply=outcome)
    if outcome == "ignore":
        return _reject(cmd, "ignored", f"pilot {cmd.state} ignored while {job.state}", job, src,
                       reply=job.pilot_reply())
    new_state = MACHINE.target(job.state, outcome)
    final = outcome == "pilot_holding"
    attrs = cmd.attrs
    if outcome == "pilot_transferring":   # PanDA's mark: the final report is then taken, not alreadydone
        attrs = {**attrs, "jobDispatcherErrorDiag": f"{S.PILOT_TRANSFER_DIAG} at {_utc(cmd.time)}"}
    elif final and job.pilot_transfer:     # nulled on the final update
        attrs = {**attrs, "jobDispatcherErrorDiag": None}
    return _event(
        cmd, job, outcome, new_state, src, attrs=attrs, pilot_state=cmd.state,
        report=cmd.report if final else None, metadata=cmd.metadata if final else None,
        report_ref=cmd.report_ref if final else None, metadata_ref=cmd.metadata_ref if final else None,
        reply=job.pilot_reply(),
    )


def _decide_kill(job: JobState, cmd: Kill, src: list[int]) -> Event | Rejected:
    who = cmd.actor
    if job.state in S.FINAL_STATES:
        if cmd.code == S.RETRIED_CODE and job.state == JobStatus.FAILED:
            new_state = MACHINE.target(job.state, "mark_retried")
            return _event(cmd, job, "mark_retried", new_state, src,
                          attrs={"taskBufferErrorCode": S.EC_RETRIED}, reason=cmd.reason)
        return _reject(cmd, "already_final", f"job is already {job.state}", job, src)
    if job.state in S.PILOT_OWNED and cmd.code not in S.FORCE_KILL_CODES:
        if job.command_to_pilot == "tobekilled":
            return _reject(cmd, "already_requested", "the pilot has already been told to kill the job",
                           job, src, reply="tobekilled")
        new_state = MACHINE.target(job.state, "kill_signal")
        attrs = {"commandToPilot": "tobekilled", "taskBufferErrorDiag": f"killed by {who}"}
        return _event(cmd, job, "kill_signal", new_state, src, attrs=attrs, reason=cmd.reason,
                      kill_code=cmd.code)
    trigger, error_code, sub_status = S.KILL_CODES.get(cmd.code, S.KILL_CODES[None])
    new_state = MACHINE.target(job.state, trigger)
    attrs = {"taskBufferErrorCode": error_code, "taskBufferErrorDiag": f"killed by {who}"}
    if cmd.job_sub_status or sub_status:
        attrs["jobSubStatus"] = cmd.job_sub_status or sub_status
    return _event(cmd, job, trigger, new_state, src, attrs=attrs, reason=cmd.reason, kill_code=cmd.code)


def apply(job: JobState | None, event: Event) -> JobState:
    """Fold one event into the state; the inverse view of ``decide`` used by rebuild and replay."""
    if isinstance(event, JobSubmitted):
        spec = event.job
        return JobState(
            PandaID=event.PandaID, state=event.to_state, seq=event.seq,
            attempt_nr=spec.attemptNr or 0, command_to_pilot=spec.commandToPilot,
            special_handling=spec.specialHandling, label=spec.prodSourceLabel,
        )
    if job is None:
        raise ValueError(f"event seq {event.seq} of PandaID {event.PandaID} has no submission before it")
    attrs = event.attrs
    return JobState(
        PandaID=job.PandaID, state=event.to_state, seq=event.seq,
        attempt_nr=attrs.get("attemptNr", job.attempt_nr),
        command_to_pilot=attrs.get("commandToPilot", job.command_to_pilot),
        special_handling=attrs.get("specialHandling", job.special_handling),
        label=attrs.get("prodSourceLabel", job.label),
        pilot_transfer=event.to_state == JobStatus.TRANSFERRING and (
            event.action == "pilot_transferring" or (job.pilot_transfer and event.from_state == event.to_state)),
        dispatch_id=None if event.to_state != JobStatus.SENT else
        event.command_id if event.action == "dispatch" else job.dispatch_id,
        kill_code=event.kill_code if event.action == "kill_signal" else
        job.kill_code if event.to_state in S.PILOT_OWNED else None,
    )
