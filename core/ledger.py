"""The ledger: the only writer of panda.job-events.

It consumes panda.job-commands partition by partition. For each command it asks
``core.machine.decide`` for the verdict and writes either the event (to the *same partition number*
of panda.job-events, so a job's commands and events share a shard) or a rejection. Events,
rejections and the consumed offsets are committed in ONE Kafka transaction.

Recovery, on start and on every partition assignment:
  1. fencing: ``init_transactions`` with a stable transactional id aborts what a crashed
     predecessor with the same id left open;
  2. state: the jobs projection gives a snapshot of the partition's jobs and the event offset it
     reached (read in one database snapshot); the events after that offset are folded on top;
  3. position: commands resume at the group's committed offset — or just after the command of
     the last event in the log, if that is later. Brokers that expose aborted transactional records
     to read_committed readers (Tansu does) thereby cannot make the ledger emit a second event for
     one command: whatever event is visible in the log counts, exactly once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import NamedTuple, Protocol

import msgspec
import psycopg

from core import bus, db, logs, metrics
from core.bus import TopicPartition
from core.config import Config
from core.machine import JobState, apply, decide
from schemas.messages import Rejected, decode_command, decode_event, encode, key_of
from schemas.storable import problem_in_json

log = logging.getLogger(__name__)

# Crash hook for the exactly-once test: exit right after producing the Nth batch, before commit.
CRASH_ENV = "PANDAES_TEST_LEDGER_CRASH_AFTER_BATCH"


class CoreRow(NamedTuple):
    """What the ledger needs of a job to judge its next command (core.machine.JobState's fields)."""

    pandaid: int
    status: str
    seq: int
    attempt_nr: int
    command_to_pilot: str | None
    special_handling: str | None
    prod_source_label: str | None
    pilot_transfer: bool = False   # transferring by the pilot's word (core.states.PILOT_TRANSFERRING)
    dispatch_id: str | None = None  # a sent job's dispatch command (JobState.dispatch_id)
    kill_code: int | None = None    # a sent job's signalled kill code (JobState.kill_code)


class PartitionSnapshot(NamedTuple):
    next_offset: int          # the first event of the partition the rows do not reflect yet
    jobs: list[CoreRow]


class SnapshotReader(Protocol):
    """The jobs of one partition and the event offset they reflect, read in ONE database snapshot.

    The jobs projection owns that read (``projections.queries.partition_snapshot``); the ledger is handed
    it by whoever starts it, so core does not reach up into the projections."""

    def __call__(self, conn: psycopg.Connection, topic: str, partition: int) -> PartitionSnapshot: ...


class Ledger:
    def __init__(self, cfg: Config, instance: str = "0", *, snapshot: SnapshotReader):
        self.cfg = cfg
        self.read_snapshot = snapshot
        self.instance = instance
        self.group_id = f"{cfg.kafka.group_prefix}-ledger"
        self.commands_topic = cfg.kafka.commands_topic
        self.events_topic = cfg.kafka.events_topic
        self.rejected_topic = cfg.kafka.rejected_topic
        self.jobs: dict[int, dict[int, JobState]] = {}     # partition → PandaID → state
        self.resume_at: dict[int, int] = {}                   # partition → first command offset to judge
        self.to_rebuild: set[TopicPartition] = set()          # assigned, state not rebuilt yet
        self.stats = {"commands": 0, "events": 0, "rejections": 0, "batches": 0}
        self.producer = bus.producer(cfg, transactional_id=f"pandaes-ledger-{instance}")
        self.producer.init_transactions()                     # fences a crashed predecessor
        # commands are answered while a caller waits (getJob, updateJob, kill): fetch with a short wait
        self.consumer = bus.consumer(cfg, group_id=self.group_id,
                                     fetch_max_wait_ms=cfg.kafka.urgent_fetch_max_wait_ms)
        # assignment callbacks only note the change: the rebuild runs in the ledger's loop, because a
        # callback may not wait for the broker (kafka-python runs them on its own thread)
        self.consumer.subscribe([self.commands_topic], on_assign=self._note_assigned,
                                on_revoke=self._drop_partitions)
        self._crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        self.lag = metrics.LagTracker(self.consumer, self.group_id)

    # ------------------------------------------------------------------------------------ recovery
    def _note_assigned(self, assigned: set[TopicPartition]) -> None:
        self.to_rebuild.update(assigned)

    def _drop_partitions(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self.drop_partition(tp.partition)

    def drop_partition(self, partition: int) -> None:
        self.to_rebuild = {tp for tp in self.to_rebuild if tp.partition != partition}
        self.jobs.pop(partition, None)
        self.resume_at.pop(partition, None)

    def rebuild_partition(self, tp: TopicPartition) -> None:
        started = time.monotonic()
        p = tp.partition
        jobs, start = self._snapshot(p)
        last_src = -1
        n = 0
        for rec in bus.read_partition(self.cfg, self.events_topic, p, start):
            ev = _decode_for_fold(rec.value, p, rec.offset)
            if ev is None:
                continue
            if jobs.get(ev.PandaID) is None or ev.seq == jobs[ev.PandaID].seq + 1:
                jobs[ev.PandaID] = apply(jobs.get(ev.PandaID), ev) if not isinstance(ev, _Loose) \
                    else ev.fold(jobs.get(ev.PandaID))
            if ev.src:
                last_src = max(last_src, ev.src[1])
            n += 1
        if last_src < 0:
            last_src = self._last_src_from_tail(p)
        self.jobs[p] = jobs
        committed = self.consumer.committed(tp) or 0
        resume = max(committed, last_src + 1)
        self.resume_at[p] = resume
        self.consumer.seek(tp, resume)
        log.info("ledger %s: partition %d rebuilt: %d jobs, %d events replayed, commands from offset %d "
                 "(committed %d) in %.2fs", self.instance, p, len(jobs), n, resume, committed,
                 time.monotonic() - started)

    def _snapshot(self, partition: int) -> tuple[dict[int, JobState], int]:
        """The partition's jobs and the event offset they reflect, from one database snapshot."""
        with db.connect(self.cfg) as conn:
            snap = self.read_snapshot(conn, self.events_topic, partition)
        jobs = {r.pandaid: JobState(PandaID=r.pandaid, state=r.status, seq=r.seq, attempt_nr=r.attempt_nr,
                                    command_to_pilot=r.command_to_pilot, special_handling=r.special_handling,
                                    label=r.prod_source_label, pilot_transfer=bool(r.pilot_transfer),
                                    dispatch_id=r.dispatch_id, kill_code=r.kill_code)
                for r in snap.jobs}
        return jobs, snap.next_offset

    def _last_src_from_tail(self, partition: int) -> int:
        """Source command offset of the partition's last event (when the replay read none).

        The tail of a partition can be transaction markers, which take offsets but are never
        returned as records, so look back in growing windows until an event shows up."""
        end = bus.end_offsets(self.cfg, self.events_topic).get(partition, 0)
        window = 64
        while end > 0:
            start = max(0, end - window)
            last = None
            for rec in bus.read_partition(self.cfg, self.events_topic, partition, start, end):
                last = rec
            if last is not None:
                ev = _decode_for_fold(last.value, partition, last.offset)
                return ev.src[1] if ev is not None and ev.src else -1
            if start == 0:
                break
            window *= 4
        return -1

    # ---------------------------------------------------------------------------------- processing
    def step(self, timeout_ms: int = 200) -> int:
        polled = self.consumer.poll(timeout_ms=timeout_ms)
        if self.to_rebuild:
            rebuilt, self.to_rebuild = self.to_rebuild, set()
            for tp in sorted(rebuilt, key=lambda t: t.partition):
                self.rebuild_partition(tp)
            # records fetched before the rebuild's seek are fetched again from the right offset
            polled = {tp: msgs for tp, msgs in polled.items() if tp not in rebuilt}
        self.lag.observe(polled)
        if not polled:
            return 0
        txn_started = time.monotonic()
        self.producer.begin_transaction()
        offsets: dict[TopicPartition, int] = {}
        n = 0
        for tp, msgs in polled.items():
            p = tp.partition
            jobs = self.jobs.setdefault(p, {})
            floor = self.resume_at.get(p, 0)
            for m in msgs:
                if m.offset < floor:
                    continue
                self._judge(p, m, jobs)
                n += 1
            offsets[tp] = msgs[-1].offset + 1
        # the full group metadata (generation, member id) lets the broker fence a ledger that lost its
        # partitions in a rebalance but still tries to commit (KIP-447)
        self.producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
        self.stats["batches"] += 1
        if self._crash_after and self.stats["batches"] >= self._crash_after:
            self.producer.flush()
            log.warning("ledger %s: crashing on purpose before commit (%s)", self.instance, CRASH_ENV)
            os._exit(17)
        self.producer.commit_transaction()
        metrics.LEDGER_TXN.observe(time.monotonic() - txn_started)
        metrics.LEDGER_BATCH.observe(n)
        return n

    def _judge(self, partition: int, m, jobs: dict[int, JobState]) -> None:
        self.stats["commands"] += 1
        src = [partition, m.offset]
        try:
            cmd = decode_command(m.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            pid = _panda_id_from_key(m.key)
            command_id, command_type = _identity(m.value)
            out = Rejected(PandaID=pid, actor="ledger", command_id=command_id, command_type=command_type,
                           code="bad_command", reason=f"cannot decode command: {exc}", src=src)
            self._send_rejection(out)
            return
        with logs.bind_message(cmd):
            self._verdict(partition, cmd, m.value, src, jobs)

    def _verdict(self, partition: int, cmd, raw: bytes, src: list[int], jobs: dict[int, JobState]) -> None:
        unstorable = problem_in_json(raw, cmd)
        if unstorable is not None:
            # a value no reader could store would stop every consumer of the event: never write it
            self._send_rejection(Rejected(
                PandaID=cmd.PandaID, actor="ledger", correlation_id=cmd.correlation_id, command_id=cmd.id,
                command_type=cmd.__struct_config__.tag, code="unstorable", reason=str(unstorable), src=src))
            return
        out = decide(jobs.get(cmd.PandaID), cmd, src)
        if isinstance(out, Rejected):
            self._send_rejection(out)
            return
        jobs[cmd.PandaID] = apply(jobs.get(cmd.PandaID), out)
        self.producer.send(self.events_topic, key=key_of(cmd.PandaID), value=encode(out), partition=partition)
        self.stats["events"] += 1
        metrics.count_event(out)

    def _send_rejection(self, out: Rejected) -> None:
        self.producer.send(self.rejected_topic, key=key_of(out.PandaID), value=encode(out))
        self.stats["rejections"] += 1
        metrics.count_rejection(out.code)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close()


class _Loose(msgspec.Struct):
    """What the fold needs of an event that no longer decodes as the contract (written before a check
    existed, e.g. a priority beyond 32 bits): its place in the job's sequence and the remembered attributes."""

    PandaID: int
    seq: int
    to_state: str
    attrs: dict = {}
    job: dict = {}
    src: list = []

    def fold(self, job: JobState | None) -> JobState:
        values = {**self.job, **self.attrs}
        base = job or JobState(PandaID=self.PandaID, state=self.to_state, seq=0)

        def text(name: str, default: str | None) -> str | None:
            value = values.get(name, default)
            return value if value is None or isinstance(value, str) else default
        attempt = values.get("attemptNr", base.attempt_nr)
        return JobState(PandaID=self.PandaID, state=self.to_state, seq=self.seq,
                        attempt_nr=attempt if isinstance(attempt, int) else base.attempt_nr,
                        command_to_pilot=text("commandToPilot", base.command_to_pilot),
                        special_handling=text("specialHandling", base.special_handling),
                        label=text("prodSourceLabel", base.label))


def _decode_for_fold(raw: bytes, partition: int, offset: int):
    """An event of the log for the ledger's fold: decoded, loosely decoded, or None (not an event at all)."""
    try:
        return decode_event(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        try:
            loose = msgspec.json.decode(raw, type=_Loose)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("partition %d offset %d of the events topic is not an event (%s): not folded", partition,
                      offset, exc)
            return None
        log.error("event at partition %d offset %d (PandaID %d seq %d) does not decode as the contract (%s): "
                  "folded from its sequence and state only", partition, offset, loose.PandaID, loose.seq, exc)
        return loose


def _identity(raw: bytes) -> tuple[str, str]:
    """(id, type) of a command that does not decode, when its JSON says: the sender waits for that id."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return "", "undecodable"
    if not isinstance(obj, dict):
        return "", "undecodable"
    cid, tag = obj.get("id"), obj.get("type")
    return (cid if isinstance(cid, str) and "\x00" not in cid else "",
            tag if isinstance(tag, str) and tag.isidentifier() else "undecodable")


def _panda_id_from_key(key: bytes | None) -> int:
    try:
        return int(key or b"0")
    except ValueError:
        return 0
