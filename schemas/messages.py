"""Messages on the three job topics: commands, events, rejections.

Every message is JSON, keyed by PandaID on Kafka, tagged by ``type`` and versioned by ``v``. A
*command* asks for something; the ledger answers with exactly one *event* (it happened: ``seq`` is
the job's next sequence number) or one *rejection* (it did not, and why). Events are the contract
with JEDI and every other reader: see docs/events.md.

``attrs`` are changes to PanDA JobSpec attributes (PanDA's own names, e.g. ``pilotErrorCode``);
``files`` are FileSpec changes matched by ``lfn``.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from schemas.jobspec import FileSpec, JobSpec

# The version of the message shapes this code writes. Additive changes (a new optional field) keep it;
# a change that breaks readers (a rename, a new meaning) bumps it and registers an upcaster below, so
# every stored message of an older version still decodes. History: docs/events.md#versioning.
SCHEMA_VERSION = 2
# Messages written before ``v`` was always encoded carry no ``v`` at all: they are version 1.
LEGACY_VERSION = 1


# the ids' own generator, not the random module's shared one: whoever seeds that (a test framework does, to make
# its runs repeatable) would make ids repeat. Seeded from the OS, and again in every forked child.
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)
_random_bits = _ids.getrandbits


def new_id() -> str:
    """A random 128-bit id in uuid4's hex form. From a Mersenne Twister of its own (seeded from the OS and
    re-seeded in forked children) rather than os.urandom: an id per event was the ledger's biggest
    single cost, and these ids need uniqueness, not secrecy."""
    return f"{_random_bits(128):032x}"


def _current_version() -> int:
    return SCHEMA_VERSION


class _Message(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    PandaID: int
    id: str = msgspec.field(default_factory=new_id)
    # a factory, not a plain default: omit_defaults would drop a plain default from the wire, and
    # readers need the version of every message they get
    v: int = msgspec.field(default_factory=_current_version)
    time: float = msgspec.field(default_factory=time.time)   # seconds since the epoch, UTC
    actor: str = "unknown"           # who asked: "pilot:<id>", "user:<DN>", "service:watcher", …
    correlation_id: str | None = None  # groups the messages of one request/flow (e.g. a bulk submit)


# ------------------------------------------------------------------------------------------ commands
class _Command(_Message, kw_only=True):
    # Where the sender reads its verdict: a partition of the replies topic ([kafka] replies_topic). The ledger
    # then also writes the event or rejection there, keyed by the command's id, in the same transaction, so a
    # waiting caller reads one small partition instead of every partition of the events and rejected topics.
    # None (other senders, messages written before it existed): the verdict is only on those topics.
    reply_to: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # The waiter of ``reply_to`` listens on the ledger's host and holds that partition alone (core/local_replies.py):
    # the ledger tells it the verdict after the commit and writes the reply record only if that fails.
    reply_local: bool = False


class Submit(_Command, tag="submit"):
    """Store a new job. ``to`` picks PanDA's entry state (direct submission, JEDI pending, co-jumbo)."""

    job: JobSpec
    to: Literal["defined", "pending", "waiting"] = "defined"


class Transition(_Command, tag="transition"):
    """A service or operator moves the job: ``action`` is a trigger of core.states.TRANSITIONS."""

    action: str
    attrs: dict[str, Any] = {}
    files: list[FileSpec] = []
    reason: str | None = None
    undoes: str | None = None        # undispatch: the id of the dispatch command it takes back


class PilotUpdate(_Command, tag="pilot_update"):
    """updateJob from a pilot: a state the pilot reports, checked against PanDA's guard rules."""

    state: str
    attempt_nr: int | None = None
    attrs: dict[str, Any] = {}
    report: str | None = None        # job_output_report: the pilot's JSON file dict (`xml`)
    metadata: str | None = None      # metaData (jobReport.json)
    # too large for a message: stored beside the event (core/payloads.py), named by "sha256:<hex>"
    report_ref: str | None = None
    metadata_ref: str | None = None


class Kill(_Command, tag="kill"):
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
    # set instead of report/metadata when the text is stored beside the event (core/payloads.py):
    # "sha256:<hex>" of its UTF-8 bytes
    report_ref: str | None = msgspec.field(default=None, name="job_output_report_ref")
    metadata_ref: str | None = None
    reply: str | None = None         # what the pilot was told in answer (updateJob `command`)


class JobTransitioned(_Change, tag="transitioned"):
    """The job changed state (from_state != to_state).

    v2: the pilot's final report is ``job_output_report`` on the wire (v1: ``report``, ambiguous next
    to ``metadata``, which is a report too); the Python attribute is still ``report``.
    """

    report: str | None = msgspec.field(default=None, name="job_output_report")


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


class VersionError(msgspec.ValidationError):
    """A message from a newer schema than this code knows: upgrade the reader, never guess."""


# --------------------------------------------------------------------------------------- upcasters
# (type tag, version) → function turning that version's JSON object into the next version's.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _transitioned_v1_to_v2(obj: dict[str, Any]) -> dict[str, Any]:
    """v2 renamed the pilot's final report of ``transitioned`` from ``report`` to ``job_output_report``."""
    if "report" in obj:
        obj["job_output_report"] = obj.pop("report")
    return obj


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("transitioned", 1): _transitioned_v1_to_v2,
}


_VERSION_KEY = re.compile(rb'"v"\s*:')


def _has_version(data: bytes | str) -> bool:
    """Whether the writer put ``v`` on the wire (messages written before it was always encoded lack it).

    A byte search instead of a second parse keeps the hot path (projections, ledger) at one parse:
    ``"v":`` can only be a key (inside a JSON string the quote before the colon is escaped), and no
    nested object of a message has a key ``v`` (attrs and files use PanDA attribute names).
    """
    raw = data.encode() if isinstance(data, str) else data
    return b'"v":' in raw or _VERSION_KEY.search(raw) is not None


def upcast(obj: dict[str, Any]) -> dict[str, Any]:
    """A decoded JSON message of any known version, as the current version (in place)."""
    version = obj.get("v", LEGACY_VERSION)
    if not isinstance(version, int) or version < 1:
        raise msgspec.ValidationError(f"bad schema version {version!r}")
    if version > SCHEMA_VERSION:
        raise VersionError(f"message schema version {version} is newer than this reader's ({SCHEMA_VERSION})")
    tag = obj.get("type")
    while version < SCHEMA_VERSION:
        step = UPCASTERS.get((str(tag), version))
        if step is not None:
            obj = step(obj)
        version += 1
    obj["v"] = SCHEMA_VERSION
    return obj


def _needs_upcast(tag: str, version: int) -> bool:
    return any((tag, v) in UPCASTERS for v in range(version, SCHEMA_VERSION))


def _decode(decoder: msgspec.json.Decoder, data: bytes) -> Any:
    """Decode ``data`` as the current version: one parse for current messages, upcasting older ones."""
    try:
        msg = decoder.decode(data)
    except msgspec.ValidationError:
        # maybe an older shape (e.g. a v1 field name): upcast the plain JSON and try again; a current
        # message that is simply invalid fails again below with the decoder's own error
        return decoder.decode(_encoder.encode(upcast(msgspec.json.decode(data))))
    version = msg.v if _has_version(data) else LEGACY_VERSION
    if version == SCHEMA_VERSION:
        return msg
    if version > SCHEMA_VERSION:
        raise VersionError(f"message schema version {version} is newer than this reader's ({SCHEMA_VERSION})")
    if _needs_upcast(msg.__struct_config__.tag, version):
        obj = msgspec.json.decode(data)
        obj.setdefault("v", version)
        return decoder.decode(_encoder.encode(upcast(obj)))
    msg.v = SCHEMA_VERSION
    return msg


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_command(data: bytes) -> Command:
    return _decode(_command_decoder, data)


def decode_event(data: bytes) -> Event:
    """An event of any stored version, as the current version (see UPCASTERS)."""
    return _decode(_event_decoder, data)


def decode_event_fast(data: bytes) -> Event:
    """``decode_event`` for a reader of the whole log (the rebuild): one decoder call and one byte search
    for an event of the current version, ``decode_event`` itself for anything else (older versions, and
    every error, which it raises as it always does). Same result, same refusals; it only skips
    ``_decode``'s version bookkeeping on the common path.

    A JobSubmitted is still decoded into its JobSpec struct: the struct's decode is what checks the 126
    attributes (types, ranges, unknown names, each FileSpec), and measured it is not the expensive part of
    a submission; turning it into a dict was (``projections.jobs.JobsBulk`` no longer does)."""
    try:
        ev = _fast_event(data)
    except msgspec.ValidationError:
        return decode_event(data)
    if ev.v != SCHEMA_VERSION or b'"v":' not in data:   # written without ``v`` (v1), or an odd spelling
        return decode_event(data)
    return ev


_fast_event = _event_decoder.decode


def decode_rejected(data: bytes) -> Rejected:
    return _decode(_rejected_decoder, data)


def decode_outcome(data: bytes) -> Event | Rejected:
    return _decode(_outcome_decoder, data)


def key_of(panda_id: int) -> bytes:
    """The Kafka key of every message about a job: its PandaID in decimal."""
    return str(panda_id).encode()
