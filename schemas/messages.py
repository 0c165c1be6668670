"""Messages on the three job topics: commands, events, rejections.

Every message is JSON, keyed by PandaID on Kafka, tagged by ``type`` and versioned by ``v``. A
*command* asks for something; the ledger answers with exactly one *event* (it happened: ``seq`` is
the job's next sequence number) or one *rejection* (it did not, and why). Events are the contract
with JEDI and every other reader: see docs/events.md.

``attrs`` are changes to PanDA JobSpec attributes (PanDA's own names, e.g. ``pilotErrorCode``);
``files`` are FileSpec changes matched by ``lfn``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

import msgspec

from schemas.jobspec import FileSpec, JobSpec

SCHEMA_VERSION = 1


def new_id() -> str:
    return uuid.uuid4().hex


class _Message(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    PandaID: int
    id: str = msgspec.field(default_factory=new_id)
    v: int = SCHEMA_VERSION
    time: float = msgspec.field(default_factory=time.time)   # seconds since the epoch, UTC
    actor: str = "unknown"           # who asked: "pilot:<id>", "user:<DN>", "service:watcher", …
    correlation_id: str | None = None  # groups the messages of one request/flow (e.g. a bulk submit)


# ------------------------------------------------------------------------------------------ commands
class Submit(_Message, tag="submit"):
    """Store a new job. ``to`` picks PanDA's entry state (direct submission, JEDI pending, co-jumbo)."""

    job: JobSpec
    to: Literal["defined", "pending", "waiting"] = "defined"


class Transition(_Message, tag="transition"):
    """A service or operator moves the job: ``action`` is a trigger of core.states.TRANSITIONS."""

    action: str
    attrs: dict[str, Any] = {}
    files: list[FileSpec] = []
    reason: str | None = None


class PilotUpdate(_Message, tag="pilot_update"):
    """updateJob from a pilot: a state the pilot reports, checked against PanDA's guard rules."""

    state: str
    attempt_nr: int | None = None
    attrs: dict[str, Any] = {}
    report: str | None = None        # job_output_report: the pilot's JSON file dict (`xml`)
    metadata: str | None = None      # metaData (jobReport.json)


class Kill(_Message, tag="kill"):
    """Kill a job with a PanDA kill code (None = plain user kill)."""

    code: int | None = None
    reason: str | None = None
    job_sub_status: str | None = None


Command = Submit | Transition | PilotUpdate | Kill

# -------------------------------------------------------------------------------------------- events


class _Event(_Message, kw_only=True):
    seq: int                         # 1 for the first event of a job, then +1, gap-free
    from_state: str                  # "new" for the first event
    to_state: str
    command_id: str                  # the command this event answers (causation)
    src: list[int] = []              # [partition, offset] of that command on panda.job-commands


class JobSubmitted(_Event, tag="submitted"):
    job: JobSpec


class _Change(_Event, kw_only=True):
    action: str                      # the trigger of core.states.TRANSITIONS that was applied
    attrs: dict[str, Any] = {}
    files: list[FileSpec] = []
    reason: str | None = None
    kill_code: int | None = None     # set on kills
    pilot_state: str | None = None   # set on pilot updates: the state the pilot reported
    report: str | None = None        # the pilot's final job_output_report (file dict JSON)
    metadata: str | None = None      # the pilot's final metaData
    reply: str | None = None         # what the pilot was told in answer (updateJob `command`)


class JobTransitioned(_Change, tag="transitioned"):
    """The job changed state (from_state != to_state)."""


class JobUpdated(_Change, tag="updated"):
    """Attributes changed, state did not (heartbeat, command for the pilot, debug mode, retry mark)."""


Event = JobSubmitted | JobTransitioned | JobUpdated

# ---------------------------------------------------------------------------------------- rejections


class Rejected(_Message, tag="rejected"):
    """The ledger refused a command; nothing happened to the job."""

    command_id: str
    command_type: str
    code: str                        # machine-readable: illegal_transition, unknown_job, stale_attempt, …
    reason: str                      # for people
    state: str | None = None         # the job's state when the command arrived
    reply: str | None = None         # what a pilot should be told: alreadydone, tobekilled, or a command
    src: list[int] = []


# -------------------------------------------------------------------------------------------- codecs
_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(Command)
_event_decoder = msgspec.json.Decoder(Event)
_rejected_decoder = msgspec.json.Decoder(Rejected)
_outcome_decoder = msgspec.json.Decoder(Event | Rejected)


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_command(data: bytes) -> Command:
    return _command_decoder.decode(data)


def decode_event(data: bytes) -> Event:
    return _event_decoder.decode(data)


def decode_rejected(data: bytes) -> Rejected:
    return _rejected_decoder.decode(data)


def decode_outcome(data: bytes) -> Event | Rejected:
    return _outcome_decoder.decode(data)


def key_of(panda_id: int) -> bytes:
    """The Kafka key of every message about a job: its PandaID in decimal."""
    return str(panda_id).encode()
