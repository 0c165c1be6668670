"""The ledger: the only writer of panda.job-events.

It consumes panda.job-commands partition by partition. For each command it asks
``core.machine.decide`` for the verdict and writes either the event (to the *same partition number*
of panda.job-events, so a job's commands and events share a shard) or a rejection. Events,
rejections and the consumed offsets are committed in ONE Kafka transaction. A command that names a
``reply_to`` partition also gets its verdict (the same bytes, keyed by the command's id) on that partition of
the replies topic, in the same transaction: its waiting caller reads one partition, and only committed answers.
Once the transaction is committed, those replies are also told to a waiter of that partition on this host through a
Unix socket (``core/local_replies.py``): one broker hop less for the caller; the topic stays the durable copy.

Commands written by senders on this host are also handed over through a Unix socket once the broker has stored
them (``core/local_commands.py``); the ledger judges each only at its turn in the partition's log order, so
which copy comes first changes nothing in what is judged, in what order, or in what is committed. getJob's
dispatches may come that way *directly*, in no topic (``local_commands.DIRECT``): judged in the next
transaction beside the topic's commands, their events naming no source offset, and the consumed offset of
their partition committed again in it, so a ledger that lost the partition is fenced as for any batch.

Recovery, on start and on every partition assignment:
  1. fencing: ``init_transactions`` with a stable transactional id aborts what a crashed
     predecessor with the same id left open;
  2. state: the jobs projection gives a snapshot of the partition's *live* jobs and the event offset
     it reached (read in one database snapshot); the events after that offset are folded on top;
  3. position: commands resume at the group's committed offset — or just after the command of
     the last event in the log, if that is later. Brokers that expose aborted transactional records
     to read_committed readers (Tansu does) thereby cannot make the ledger emit a second event for
     one command: whatever event is visible in the log counts, exactly once.

Memory stays bounded by the live jobs: a job that reaches a final state moves to a small per-partition
list of recently final jobs (``[ledger] final_jobs_kept``, oldest out first, and only once the jobs
projection has applied its last event). A command for a job the ledger does not hold — final long ago,
archived, or never seen — is judged on the jobs projection's row (hot or archived), read once the
projection has applied every event below ``floor``: the position below which everything the ledger let go
of lies. Final states are never left, so such a row is the job's whole state. The commands of a batch
that miss are looked up in one query before the batch's transaction begins.

A database outage is ridden out, never judged through: a partition whose snapshot cannot be read stays
unrebuilt (none of its commands judged) and is rebuilt again after a back-off; a batch whose look-ups fail
is fetched again after a back-off; a look-up that fails inside a batch's transaction aborts it, and the
batch's partitions are rebuilt (state and position from the projection and the log, as after a crash), so
no event of the aborted transaction is counted twice. The back-off doubles from ``BACKOFF_MIN`` to
``BACKOFF_MAX`` seconds. The watchdog (``core.watchdog``) ends a ledger that gets no commands while some
wait, or whose step never returns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import NamedTuple, Protocol

import msgspec
import psycopg

from core import bus, db, logs, metrics, watchdog
from core.bus import TopicPartition
from core.config import Config
from core.holes import HoleGuard
from core.local_commands import GAP_S, CommandIntake, feed_changes
from core.local_events import EventTeller
from core.local_replies import ReplyNotifier
from core.machine import JobState, apply, decide
from core.states import FINAL_STATES
from schemas.messages import Rejected, decode_command, decode_event, encode, key_of
from schemas.storable import problem_in_json

log = logging.getLogger(__name__)

# Crash hook for the exactly-once test: exit right after producing the Nth batch, before commit.
CRASH_ENV = "PANDAES_TEST_LEDGER_CRASH_AFTER_BATCH"
# how long a command for a job not in memory waits for the jobs projection to reach the ledger's floor
# (normally it already has: jobs are let go of only once projected)
ROW_WAIT_SECONDS = 30.0
IDLE_LET_GO_SECONDS = 1.0
LOOK_S = 0.01   # with commands handed over on this host: how long a poll waits for them before it looks again at
#                 what the topic's reader fetched meanwhile; after QUIET_S with nothing from either, the poll's
#                 whole timeout (an idle ledger on a client whose poll does not doze, kafka-python, wakes 5 times
#                 a second instead of 100; a handed-over command still wakes it at once)
QUIET_S = 1.0
REPLY_TOPIC_REFRESH = 10.0   # seconds between reads of the replies topic's partitions when one is missing
_FINAL = frozenset(FINAL_STATES)
ALIVE_EVERY = 10_000   # events folded in a rebuild between two signs of life to the watchdog
# the waits of a ledger whose database is away (doubling from the first to the last, reset by a good step)
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
# what a database away raises here: psycopg's errors, and the projection not reaching a position in time
# (projections.wait.PositionLag); any other error is a bug and ends the ledger
_DB_AWAY: tuple[type[BaseException], ...] = (psycopg.Error, db.ReadModelBehind)


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
    """What the ledger reads of the jobs projection. The projection owns these reads
    (``projections.queries.partition_snapshot``); the ledger is handed them by whoever starts it, so core
    does not reach up into the projections."""

    def __call__(self, conn: psycopg.Connection, topic: str, partition: int) -> PartitionSnapshot:
        """The live (non-final) jobs of one partition and the event offset they reflect, in ONE snapshot."""
        ...

    def position(self, conn: psycopg.Connection, topic: str, partition: int) -> int:
        """The jobs projection's next offset in the partition."""
        ...

    def rows(self, conn: psycopg.Connection, topic: str, pandaids: Iterable[int], *,
             at_least: Mapping[int, int], timeout: float) -> dict[int, CoreRow]:
        """The rows of ``pandaids`` (final, archived or live; unknown ones absent), once the projection's
        position in each partition of ``at_least`` is ≥ its offset; raises if not within ``timeout`` seconds."""
        ...


class _Recent:
    """A recently final job: its state, and the offset of its last event (a pending delivery until the
    batch that wrote it is committed; -1 when read from the projection, which has it already)."""

    __slots__ = ("state", "offset")

    def __init__(self, state: JobState, offset: int | bus.Delivery):
        self.state, self.offset = state, offset

    def event_offset(self) -> int:
        if not isinstance(self.offset, int):
            self.offset = self.offset.result().offset
        return self.offset


class Ledger:
    def __init__(self, cfg: Config, instance: str = "0", *, snapshot: SnapshotReader):
        self.cfg = cfg
        self.read_snapshot = snapshot
        self.instance = instance
        self.group_id = f"{cfg.kafka.group_prefix}-ledger"
        self.commands_topic = cfg.kafka.commands_topic
        self.events_topic = cfg.kafka.events_topic
        self.rejected_topic = cfg.kafka.rejected_topic
        self.replies_topic = cfg.kafka.replies_topic
        self._reply_partitions = 0        # of the replies topic, read from the broker when a reply needs it
        self._reply_partitions_read_at = -REPLY_TOPIC_REFRESH
        self.jobs: dict[int, dict[int, JobState]] = {}     # partition → PandaID → state of its live jobs
        self.recent: dict[int, OrderedDict[int, _Recent]] = {}   # partition → recently final jobs, oldest first
        self.floor: dict[int, int] = {}   # partition → every job not held has all its events below this offset
        self.keep = max(0, int(cfg.ledger.final_jobs_kept))
        self.db = db.Reconnecting(cfg)    # rows of jobs not held, the projection's position
        self._absent: set[int] = set()   # PandaIDs of this batch the projection has no row of
        self._idle_let_go_at = 0.0
        self._let_go_at: dict[int, float] = {}   # partition → not before (the projection was behind)
        self._projected: dict[int, int] = {}   # partition → a position the jobs projection is known to have reached
        self.resume_at: dict[int, int] = {}                   # partition → first command offset to judge
        self.taken_to: dict[int, int] = {}   # partition → the next offset to take into a batch (≥ resume_at)
        self.to_rebuild: set[TopicPartition] = set()          # assigned, state not rebuilt yet
        self.stats = {"commands": 0, "events": 0, "rejections": 0, "batches": 0, "aborted": 0, "gathered": 0,
                      "commands fetched again": 0, "direct": 0, "replies kept from the topic": 0,
                      "replies untold": 0}
        self._direct: list = []   # commands handed over directly (in no topic), taken for the next batch
        self._partitions = max(1, int(cfg.kafka.partitions))   # the commands topic's (read from it at start)
        # busy: a poll of at least gather_from commands waits up to gather_ms for more before its transaction
        # (the broker's CPU follows the transactions and their requests, not the records they carry); a quiet
        # ledger commits what one poll brought at once
        self.gather_s = max(0, int(cfg.ledger.gather_ms)) / 1000
        self.gather_from = max(1, int(cfg.ledger.gather_from))
        self.max_batch = max(1, int(cfg.kafka.max_poll_records))
        self._rebalances = 0     # assignment callbacks seen: a gather stops at one
        self.blocked = False     # the last step could not reach the database: back off before the next
        self._backoff = BACKOFF_MIN
        self.producer = bus.producer(cfg, transactional_id=f"pandaes-ledger-{instance}")
        self.producer.init_transactions()                     # fences a crashed predecessor
        try:   # a direct command's partition is checked against its key with the topic's own count
            self._partitions = len(self.producer.partitions(self.commands_topic)) or self._partitions
        except Exception as exc:  # noqa: BLE001 - whatever the client raises: the configured count stands
            log.warning("ledger %s: cannot read the partitions of %s (%s); taking the configured %d",
                        instance, self.commands_topic, exc, self._partitions)
        self._wake = threading.Event()   # set for every command handed over, a reply not told, and a stop (run)
        # committed verdicts told to waiters on this host, besides the topic (instead of it, for a command whose
        # waiter asked: reply_local; those not told come back through take_untold and wake the ledger)
        self.notifier = ReplyNotifier(cfg, on_untold=self._wake.set)
        self.teller = EventTeller(cfg)       # committed events told to the events' readers on this host, too
        # commands stored by senders on this host, handed over at once (core/local_commands.py)
        self.intake = CommandIntake(cfg, instance, self._wake)
        # commands partitions not fetched while their commands come by hand (local_commands.feed_changes)
        self._paused: set[int] = set()
        self._handed_at: dict[int, float] = {}
        self._gap_since: dict[int, float] = {}
        self._look_s = cfg.kafka.gap_fetch_max_wait_ms / 1000
        self._busy_at = 0.0   # when a poll last brought a command, fetched or handed over
        # commands are answered while a caller waits (getJob, updateJob, kill), but each fetch of every
        # commands partition costs the broker CPU: [kafka] ledger_fetch_max_wait_ms weighs the two; with the
        # commands of this host handed over, the topic's fetch only fills gaps (other hosts' commands, a lost
        # datagram) and runs at [kafka] gap_fetch_max_wait_ms (1 s: broker CPU per getJob -15 %, docs/performance.md)
        # HoleGuard: several producers write the commands topic, and the embedded broker can show a later
        # batch before an earlier one is stored; the guard does not read past such a hole (core/holes.py)
        wait = cfg.kafka.gap_fetch_max_wait_ms if self.intake.bound else cfg.kafka.ledger_fetch_max_wait_ms
        self.consumer = HoleGuard(bus.consumer(cfg, group_id=self.group_id, fetch_max_wait_ms=wait))
        # assignment callbacks only note the change: the rebuild runs in the ledger's loop, because a
        # callback may not wait for the broker (kafka-python runs them on its own thread)
        self.consumer.subscribe([self.commands_topic], on_assign=self._note_assigned,
                                on_revoke=self._drop_partitions)
        self._crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        self.lag = metrics.LagTracker(self.consumer, self.group_id)
        self.watchdog = watchdog.for_consumer(cfg, self.consumer, self.group_id, self.commands_topic)

    # ------------------------------------------------------------------------------------ recovery
    def _note_assigned(self, assigned: set[TopicPartition]) -> None:
        self._rebalances += 1
        self.to_rebuild.update(assigned)

    def _drop_partitions(self, revoked: set[TopicPartition]) -> None:
        self._rebalances += 1
        for tp in revoked:
            self.drop_partition(tp.partition)

    def drop_partition(self, partition: int) -> None:
        self.intake.unlink(partition)
        self.teller.forget(partition)
        self._handed_at.pop(partition, None)
        self._gap_since.pop(partition, None)
        self.to_rebuild = {tp for tp in self.to_rebuild if tp.partition != partition}
        self.jobs.pop(partition, None)
        self.recent.pop(partition, None)
        self.floor.pop(partition, None)
        self._projected.pop(partition, None)
        self._let_go_at.pop(partition, None)
        self.resume_at.pop(partition, None)
        self.taken_to.pop(partition, None)

    def rebuild_partition(self, tp: TopicPartition) -> None:
        started = time.monotonic()
        p = tp.partition
        jobs, start = self._snapshot(p)
        self.teller.forget(p)
        self.jobs[p], self.recent[p], self.floor[p], self._projected[p] = jobs, OrderedDict(), start, start
        last_src = -1
        n = 0
        for rec in bus.read_partition(self.cfg, self.events_topic, p, start):
            ev = _decode_for_fold(rec.value, p, rec.offset)
            if ev is None:
                continue
            job = self._held(p, ev.PandaID)
            if job is None and ev.seq > 1:
                job = self._before(p, ev)   # final when the snapshot was taken: its row is the state
            if (job is None and ev.seq == 1) or (job is not None and ev.seq == job.seq + 1):
                self._hold(p, apply(job, ev) if not isinstance(ev, _Loose) else ev.fold(job), rec.offset)
            if ev.src:
                last_src = max(last_src, ev.src[1])
            n += 1
            if n % ALIVE_EVERY == 0:
                self.watchdog.alive()     # a long fold is moving: the hung-step check must not end it
        if last_src < 0:
            last_src = self._last_src_from_tail(p)
        self._let_go(p)
        committed = self.consumer.committed(tp) or 0
        resume = max(committed, last_src + 1)
        self.resume_at[p] = self.taken_to[p] = resume
        self.consumer.seek(tp, resume)
        if p in self._paused:   # paused while fed by hand before (an aborted batch's rebuild): fetched again
            self._paused.discard(p)
            self.consumer.resume(tp)
        self._handed_at.pop(p, None)
        self._gap_since.pop(p, None)
        self.intake.link(p)
        log.info("ledger %s: partition %d rebuilt: %d live and %d recently final jobs, %d events replayed, "
                 "commands from offset %d (committed %d) in %.2fs", self.instance, p, len(jobs), len(self.recent[p]),
                 n, resume, committed, time.monotonic() - started)

    def _snapshot(self, partition: int) -> tuple[dict[int, JobState], int]:
        """The partition's live jobs and the event offset they reflect, from one database snapshot."""
        snap = self.db.run(self.read_snapshot, self.events_topic, partition)
        return {r.pandaid: _state_of(r) for r in snap.jobs}, snap.next_offset

    # -------------------------------------------------------------------------- what is held in memory
    def _held(self, partition: int, pandaid: int) -> JobState | None:
        live = self.jobs.get(partition)
        job = live.get(pandaid) if live is not None else None
        if job is not None:
            return job
        recent = self.recent.get(partition)
        entry = recent.get(pandaid) if recent is not None else None
        return entry.state if entry is not None else None

    def _hold(self, partition: int, job: JobState, offset: int | bus.Delivery) -> None:
        """Keep ``job``'s new state: with the live jobs, or (final) as the newest recently final one."""
        live, recent = self.jobs.get(partition), self.recent.get(partition)
        if live is None:
            live = self.jobs[partition] = {}
        if recent is None:
            recent = self.recent[partition] = OrderedDict()
        if job.state in _FINAL:
            live.pop(job.PandaID, None)
            recent[job.PandaID] = _Recent(job, offset)
            recent.move_to_end(job.PandaID)
        else:
            recent.pop(job.PandaID, None)
            live[job.PandaID] = job

    def _let_go(self, partition: int) -> None:
        """Forget the oldest recently final jobs beyond ``keep`` whose last event the projection has applied,
        down to nine tenths of ``keep`` (so the projection's position is read once per keep/10 final jobs, not
        per batch); after a stop at a job not projected yet, not again for a second."""
        recent = self.recent.get(partition)
        if not recent or len(recent) <= self.keep or time.monotonic() < self._let_go_at.get(partition, 0.0):
            return
        try:
            position = self.db.run(self.read_snapshot.position, self.events_topic, partition)
        except psycopg.Error as exc:
            log.warning("ledger %s: cannot read the jobs projection's position (%s); final jobs kept for now",
                        self.instance, exc)
            self._let_go_at[partition] = time.monotonic() + BACKOFF_MAX   # the database away: not every second
            return
        self._projected[partition] = max(self._projected.get(partition, 0), position)
        low = self.keep - self.keep // 10
        while len(recent) > low:
            pandaid, oldest = next(iter(recent.items()))
            offset = oldest.event_offset()
            if offset >= position:   # not projected yet
                self._let_go_at[partition] = time.monotonic() + IDLE_LET_GO_SECONDS
                break
            del recent[pandaid]
            self.floor[partition] = max(self.floor.get(partition, 0), offset + 1)

    def _let_go_idle(self) -> None:
        """With no commands to judge, let go in every partition still over ``keep`` (at most once a second):
        the projection may have applied since the partition's last batch."""
        now = time.monotonic()
        if now < self._idle_let_go_at:
            return
        self._idle_let_go_at = now + IDLE_LET_GO_SECONDS
        for partition, recent in list(self.recent.items()):
            if len(recent) > self.keep:
                self._let_go(partition)

    def _before(self, partition: int, ev) -> JobState | None:
        """The state just before ``ev`` of a job the rebuild's snapshot left out (final then): its row, which
        the projection may have taken past ``ev``, set back to ``ev``'s predecessor (a final job's other fields
        do not change)."""
        row = self.db.run(self.read_snapshot.rows, self.events_topic, [ev.PandaID],
                          at_least={}, timeout=ROW_WAIT_SECONDS).get(ev.PandaID)
        if row is None:
            log.error("ledger %s: event seq %d of PandaID %d in partition %d, but neither the snapshot nor the jobs "
                      "projection has the job: not folded", self.instance, ev.seq, ev.PandaID, partition)
            return None
        before = row.status if isinstance(ev, _Loose) else ev.from_state   # a loose event sets its state itself
        return msgspec.structs.replace(_state_of(row), state=before, seq=ev.seq - 1)

    def _look_up(self, wanted: Mapping[int, Iterable[int]]) -> None:
        """Bring the rows of the jobs of ``wanted`` (partition → PandaIDs) not held into memory, in one query
        (after the projection has reached each partition's floor, which it normally has); note the absent ones."""
        missing = {pid: p for p, pids in wanted.items() for pid in pids
                   if pid not in self._absent and self._held(p, pid) is None}
        if not missing:
            return
        at_least = {p: self.floor.get(p, 0) for p in set(missing.values())
                    if self.floor.get(p, 0) > self._projected.get(p, 0)}
        rows = self.db.run(self.read_snapshot.rows, self.events_topic, sorted(missing), at_least=at_least,
                           timeout=ROW_WAIT_SECONDS)
        for p, offset in at_least.items():
            self._projected[p] = max(self._projected.get(p, 0), offset)
        for pid, p in missing.items():
            row = rows.get(pid)
            if row is None:
                self._absent.add(pid)
            else:
                self._hold(p, _state_of(row), -1)
        metrics.LEDGER_ROW_READS.inc(len(missing))

    def _last_src_from_tail(self, partition: int) -> int:
        """Source command offset of the partition's last event (when the replay read none).

        The tail of a partition can be transaction markers, which take offsets but are never
        returned as records, so look back in growing windows until an event shows up."""
        end = bus.end_offsets(self.cfg, self.events_topic).get(partition, 0)
        window = 64
        while end > 0:
            start = max(0, end - window)
            last = -1
            for rec in bus.read_partition(self.cfg, self.events_topic, partition, start, end):
                ev = _decode_for_fold(rec.value, partition, rec.offset)
                if ev is not None and ev.src:   # events of direct commands name none: look further back
                    last = max(last, ev.src[1])
            if last >= 0:
                return last
            if start == 0:
                break
            end = start
            window *= 4
        return -1

    # ---------------------------------------------------------------------------------- processing
    def step(self, timeout_ms: int = 200) -> int:
        if self.intake.bound and self.resume_at:
            polled = self._poll_both(timeout_ms)
        else:
            polled = self.consumer.poll(timeout_ms=timeout_ms)
        if (self.gather_s and not self.to_rebuild
                and sum(map(len, polled.values())) + len(self._direct) >= self.gather_from):
            polled = self._gather(polled)
        self.blocked = False
        n = self._handle(polled)
        # commands judged are progress however they came: direct ones are in no poll of the topic, and a loop
        # seen making no progress is looked at every 30 s (a lag request queued behind the fetch the embedded
        # broker holds for its 1 s wait, the loop and every verdict standing still meanwhile: the 1 s stalls of
        # the getJob level, whose commands are all direct, nineteenth session)
        self.watchdog.step(polled or n > 0)
        return n

    def _poll_both(self, timeout_ms: int) -> dict[TopicPartition, list]:
        """What the topic's reader has fetched and the commands handed over on this host, in the log's order
        per partition from its next offset to judge (``local_commands.in_log_order``). Waits up to
        ``timeout_ms`` for either: on the handed-over commands' wake-up, and for the topic's records in slices
        of ``LOOK_S`` (the client fetches in the background; its poll here does not wait). Only while some
        partition is held: a group join is completed inside a poll that waits (kafka-python's would start over
        at every poll that does not)."""
        self._wake.clear()
        fetched = self.consumer.poll(timeout_ms=0)
        if not fetched and not self.to_rebuild and not self.intake.ready(self.taken_to):
            quiet = time.monotonic() - self._busy_at > QUIET_S
            self._wake.wait(timeout_ms / 1000 if quiet else min(timeout_ms / 1000, LOOK_S))
            self._wake.clear()
            fetched = self.consumer.poll(timeout_ms=0)
        out = self._in_order(fetched)
        if not self.to_rebuild:
            taken = self.intake.take_direct()
            if taken:
                self._direct.extend(taken)
                # working: its reader of the topic does not doze meanwhile (a dozing reader's look blocked this
                # loop for a second behind a fetch the embedded broker held; the topic is still read at its pace)
                self.consumer.wake()
        if fetched or out or self._direct:
            self._busy_at = time.monotonic()
        return out

    def _in_order(self, fetched: dict[TopicPartition, list]) -> dict[TopicPartition, list]:
        if self.to_rebuild:
            return fetched   # rebuilt first (_handle): their fetched records come again from the right offset
        now = time.monotonic()
        out: dict[TopicPartition, list] = {}
        by_partition = {tp.partition: (tp, msgs) for tp, msgs in fetched.items()}
        for p in set(by_partition) | set(self.intake.partitions_held()):
            tp, msgs = by_partition.get(p, (TopicPartition(self.commands_topic, p), ()))
            if p not in self.resume_at:   # not rebuilt here: only what the topic brought
                if msgs:
                    out[tp] = list(msgs)
                continue
            taken = self.intake.take(p, self.taken_to[p], msgs)
            if taken:
                out[tp] = taken
                self.taken_to[p] = taken[-1].offset + 1
                fetched_offsets = {m.offset for m in msgs}
                if any(r.offset not in fetched_offsets for r in taken):
                    self._handed_at[p] = now
            if self.intake.waiting(p):
                self._gap_since.setdefault(p, now)
            else:
                self._gap_since.pop(p, None)
        self._feed(now)
        return out

    def _feed(self, now: float) -> None:
        """Pause the commands partitions whose commands come by hand; fetch again at a gap or after a quiet spell
        (``local_commands.feed_changes``). A partition fetched again starts at its next offset to judge."""
        to_pause, to_fetch = feed_changes(self.resume_at, self._paused, self._handed_at, self._gap_since, now,
                                          look_s=self._look_s, gap_s=GAP_S)
        for p in to_pause:
            self.consumer.pause(TopicPartition(self.commands_topic, p))
            self._paused.add(p)
        for p in to_fetch:
            tp = TopicPartition(self.commands_topic, p)
            self.consumer.seek(tp, self.taken_to[p])
            self.consumer.resume(tp)
            self._paused.discard(p)
            self.stats["commands fetched again"] += 1

    def _gather(self, polled: dict[TopicPartition, list]) -> dict[TopicPartition, list]:
        """Busy (the poll brought at least ``gather_from`` commands): poll on for up to ``gather_ms``, or until
        ``max_poll_records``, and judge it all in one transaction. Each transaction costs the broker its
        Produce requests (one per partition written), AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and
        EndTxn whatever it carries, so under load fewer, larger transactions cut its CPU per command. The gather
        ends ``gather_ms`` after the oldest command of the first poll was written (by its record's timestamp), not
        after the poll: a burst that piled up while a slow commit ran has waited already and is judged at once,
        so the gather does not lengthen the tail it follows. A rebalance inside ends the gather and keeps only
        the records of partitions still assigned (those being rebuilt are dropped by ``_handle``)."""
        out = {tp: list(msgs) for tp, msgs in polled.items()}
        n = sum(map(len, out.values())) + len(self._direct)
        rebalances = self._rebalances
        written = min([msgs[0].timestamp for msgs in out.values() if msgs]
                      + [rec.timestamp for rec in self._direct[:1]], default=0) / 1000
        waited = min(self.gather_s, max(0.0, time.time() - written))   # a clock ahead of ours: no wait counted
        deadline = time.monotonic() + self.gather_s - waited
        while n < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait_ms = max(1, int(left * 1000))
            more = (self._poll_both(wait_ms) if self.intake.bound and self.resume_at
                    else self.consumer.poll(timeout_ms=wait_ms, max_records=self.max_batch - n))
            n_direct = len(self._direct)
            for tp, msgs in more.items():
                got = out.get(tp)
                if got is None:
                    out[tp] = list(msgs)
                else:
                    got.extend(msgs)
                n += len(msgs)
            n += len(self._direct) - n_direct
            if self._rebalances != rebalances:
                assigned = self.consumer.assignment()
                return {tp: msgs for tp, msgs in out.items() if tp in assigned}
        self.stats["gathered"] += 1
        return out

    def _handle(self, polled) -> int:
        if self.to_rebuild:
            rebuilt, self.to_rebuild = self.to_rebuild, set()
            self._rebuild(rebuilt)
            # records fetched before the rebuild's seek are fetched again from the right offset; those of a
            # partition not rebuilt (the database away) are not judged
            polled = {tp: msgs for tp, msgs in polled.items() if tp not in rebuilt}
        self.lag.observe(polled)
        # direct commands of a partition still held and rebuilt (one it lost meanwhile is not judged here)
        direct, self._direct = [r for r in self._direct if r.partition in self.resume_at], []
        # verdicts of committed batches that were to be told and could not be: the topic's copy now
        untold = self.notifier.take_untold()
        if not polled and not direct and not untold:
            self._let_go_idle()
            return 0
        self._absent = set()
        wanted: dict[int, list[int]] = {tp.partition: [_panda_id_from_key(m.key) for m in msgs
                                                       if m.offset >= self.resume_at.get(tp.partition, 0)]
                                        for tp, msgs in polled.items()}
        for rec in direct:
            wanted.setdefault(rec.partition, []).append(_panda_id_from_key(rec.key))
        try:
            self._look_up(wanted)
        except _DB_AWAY as exc:
            # the database is down or the projection far behind: judge nothing now, fetch the batch again
            log.warning("ledger %s: cannot read the jobs it does not hold (%s); the batch waits", self.instance, exc)
            for tp, msgs in polled.items():
                again = max(msgs[0].offset, self.resume_at.get(tp.partition, 0))
                self.consumer.seek(tp, again)
                if tp.partition in self.taken_to:
                    self.taken_to[tp.partition] = again   # what was handed over comes again from the topic
            self.intake.give_back(direct)
            self.notifier.give_back_untold(untold)
            self.blocked = True
            return 0
        txn_started = time.monotonic()
        self.notifier.discard()   # what a failed commit before left
        self.teller.discard()
        self.producer.begin_transaction()
        offsets: dict[TopicPartition, int] = {}
        n = 0
        for partition, command_id, value in untold:
            self.producer.send(self.replies_topic, key=command_id.encode(), value=value, partition=partition)
        self.stats["replies untold"] += len(untold)
        try:
            for tp, msgs in polled.items():
                p = tp.partition
                floor = self.resume_at.get(p, 0)
                for m in msgs:
                    if m.offset < floor:
                        continue
                    self._judge(p, m)
                    n += 1
                offsets[tp] = msgs[-1].offset + 1
            for rec in direct:
                self._judge(rec.partition, rec, direct=True)
                n += 1
                tp = TopicPartition(self.commands_topic, rec.partition)
                # its partition's position committed again: the group fences a ledger that lost the partition
                offsets.setdefault(tp, self.resume_at[rec.partition])
        except _DB_AWAY as exc:
            self.notifier.give_back_untold(untold)
            if direct:
                log.warning("ledger %s: %d direct command(s) lost with the aborted batch: their callers' waits run "
                            "out", self.instance, len(direct))
            self._abort(polled, exc)
            return 0
        # the full group metadata (generation, member id) lets the broker fence a ledger that lost its
        # partitions in a rebalance but still tries to commit (KIP-447)
        if offsets:   # none: a transaction of untold replies alone
            self.producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
        self.stats["batches"] += 1
        if self._crash_after and self.stats["batches"] >= self._crash_after:
            self.producer.flush()
            log.warning("ledger %s: crashing on purpose before commit (%s)", self.instance, CRASH_ENV)
            os._exit(17)
        self.producer.commit_transaction()
        self.notifier.send()   # only now: every event of the batch is in the log
        self.teller.send()
        for tp, offset in offsets.items():
            if offset > self.resume_at.get(tp.partition, 0):
                self.resume_at[tp.partition] = offset   # the topic's copies of what was judged are skipped
        metrics.LEDGER_TXN.observe(time.monotonic() - txn_started)
        metrics.LEDGER_BATCH.observe(n)
        for tp in polled:
            self._let_go(tp.partition)
        return n

    def _rebuild(self, partitions: set[TopicPartition]) -> None:
        """Rebuild ``partitions``; with the database away, those not rebuilt wait for the next step (after a
        back-off), holding nothing meanwhile."""
        pending = sorted(partitions, key=lambda t: t.partition)
        try:
            while pending:
                self.rebuild_partition(pending[0])
                pending.pop(0)
                self.watchdog.alive()
        except _DB_AWAY as exc:
            for tp in pending:
                self.drop_partition(tp.partition)
            self.to_rebuild.update(pending)
            self.blocked = True
            log.warning("ledger %s: cannot rebuild partition(s) %s from the jobs projection (%s); none of their "
                        "commands is judged, tried again after a back-off", self.instance,
                        ", ".join(str(tp.partition) for tp in pending), exc)

    def _abort(self, polled, exc: BaseException) -> None:
        """A look-up failed inside the batch's transaction: abort it and rebuild the batch's partitions (the
        state held was moved on by the aborted events; the rebuild seeks back to the committed position, or
        past the last event in the log, exactly as after a crash)."""
        self.producer.abort_transaction()
        self.notifier.discard()
        self.teller.discard()
        self.stats["aborted"] += 1
        for tp in polled:
            self.drop_partition(tp.partition)
        self.to_rebuild.update(polled)
        self.blocked = True
        log.warning("ledger %s: a look-up failed inside a batch (%s); its transaction is aborted and partition(s) "
                    "%s are rebuilt after a back-off", self.instance, exc,
                    ", ".join(str(tp.partition) for tp in polled))

    def _judge(self, partition: int, m, direct: bool = False) -> None:
        self.stats["commands"] += 1
        src = [] if direct else [partition, m.offset]   # a direct command is in no topic
        try:
            cmd = decode_command(m.value)
            if direct:
                self.stats["direct"] += 1
                _check_direct(cmd, m, partition, self._partitions)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            pid = _panda_id_from_key(m.key)
            command_id, command_type, reply_to, local = _identity(m.value)
            out = Rejected(PandaID=pid, actor="ledger", command_id=command_id, command_type=command_type,
                           code="bad_command", reason=f"cannot decode command: {exc}", src=src)
            self._send_rejection(out, reply_to, local)
            return
        with logs.bind_message(cmd):
            self._verdict(partition, cmd, m.value, src)

    def _verdict(self, partition: int, cmd, raw: bytes, src: list[int]) -> None:
        unstorable = problem_in_json(raw, cmd)
        if unstorable is not None:
            # a value no reader could store would stop every consumer of the event: never write it
            self._send_rejection(Rejected(
                PandaID=cmd.PandaID, actor="ledger", correlation_id=cmd.correlation_id, command_id=cmd.id,
                command_type=cmd.__struct_config__.tag, code="unstorable", reason=str(unstorable), src=src),
                cmd.reply_to, cmd.reply_local)
            return
        job = self._held(partition, cmd.PandaID)
        if job is None and cmd.PandaID not in self._absent:   # looked up already unless its key is not its PandaID
            self._look_up({partition: [cmd.PandaID]})
            job = self._held(partition, cmd.PandaID)
        out = decide(job, cmd, src)
        if isinstance(out, Rejected):
            self._send_rejection(out, cmd.reply_to, cmd.reply_local)
            return
        value = encode(out)
        key = key_of(cmd.PandaID)
        delivery = self.producer.send(self.events_topic, key=key, value=value, partition=partition)
        self.teller.add(partition, delivery, key, value)
        self._reply(cmd.reply_to, cmd.id, value, cmd.reply_local)
        self._hold(partition, apply(job, out), delivery)
        self.stats["events"] += 1
        metrics.count_event(out)

    def _send_rejection(self, out: Rejected, reply_to: int | None = None, local: bool = False) -> None:
        value = encode(out)
        self.producer.send(self.rejected_topic, key=key_of(out.PandaID), value=value)
        self._reply(reply_to, out.command_id, value, local)
        self.stats["rejections"] += 1
        metrics.count_rejection(out.code)

    def _reply(self, reply_to: int | None, command_id: str, value: bytes, local: bool = False) -> None:
        """The verdict once more, for the caller waiting on partition ``reply_to`` of the replies topic: in the
        batch's transaction, so it is read (read_committed) only once the event or rejection is committed. A
        partition the topic does not have is skipped (its caller times out, as without a reply path) rather
        than sent: the send would fail the whole transaction, every time the batch is judged again.
        ``local`` (the command's ``reply_local``: its waiter listens on this host and holds the partition alone):
        only told after the commit, written to the topic in a later transaction if that fails."""
        if reply_to is None or not command_id:
            return
        if not self._has_reply_partition(reply_to):
            log.warning("ledger %s: command %s asks for its verdict on partition %d of %s, which does not exist: "
                        "not answered there", self.instance, command_id, reply_to, self.replies_topic)
            return
        if local and self.notifier.on:
            self.notifier.add(reply_to, command_id, value, kept=True)
            self.stats["replies kept from the topic"] += 1
            return
        self.producer.send(self.replies_topic, key=command_id.encode(), value=value, partition=reply_to)
        self.notifier.add(reply_to, command_id, value)

    def _has_reply_partition(self, reply_to: int) -> bool:
        if 0 <= reply_to < self._reply_partitions:
            return True
        now = time.monotonic()
        if now - self._reply_partitions_read_at >= REPLY_TOPIC_REFRESH:   # new topic, or partitions added
            self._reply_partitions_read_at = now
            try:
                self._reply_partitions = len(self.producer.partitions(self.replies_topic))
            except Exception as exc:   # noqa: BLE001 - whatever the client raises: the topic is not usable
                log.warning("ledger %s: cannot read the partitions of %s (%s)", self.instance, self.replies_topic, exc)
                self._reply_partitions = 0
        return 0 <= reply_to < self._reply_partitions

    def run(self, stop: threading.Event) -> None:
        self.watchdog.start()
        # at rest the ledger sleeps until its next look at the topic, a stop, or a command handed over
        threading.Thread(target=lambda: (stop.wait(), self._wake.set()), name="ledger-stop", daemon=True).start()
        try:
            while not stop.is_set():
                n = self.step()
                if self.blocked:             # the database away: ride it out, backing off
                    stop.wait(self._backoff)
                    self._backoff = min(BACKOFF_MAX, self._backoff * 2)
                else:
                    self._backoff = BACKOFF_MIN
                    if not n:                # at rest: sleep until the next look (services.loop.ServiceLoop.run)
                        self.consumer.rest(self._wake, float("inf"))   # letting go waits: it only frees memory
        finally:
            self.watchdog.close()   # a loop that ended (a caller that never closes the ledger) is not hung

    def close(self) -> None:
        self.watchdog.close()
        # with the guard's counts: how often a fetch stopped at a hole (and a gather polled on past one)
        counts = {**self.stats, **{f"holes {k}": v for k, v in self.consumer.stats.items()}}
        log.info("ledger %s stopping: %s; local replies %s; local commands %s; local events %s", self.instance,
                 ", ".join(f"{k} {v}" for k, v in counts.items()),
                 ", ".join(f"{k} {v}" for k, v in self.notifier.stats.items()),
                 ", ".join(f"{k} {v}" for k, v in self.intake.stats.items()),
                 ", ".join(f"{k} {v}" for k, v in self.teller.stats.items()))
        try:
            self.consumer.close()
        finally:
            try:
                self.producer.close()
            finally:
                self.notifier.close()
                self.teller.close()
                self.intake.close()
                self.db.close()


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


def _state_of(r: CoreRow) -> JobState:
    return JobState(PandaID=r.pandaid, state=r.status, seq=r.seq, attempt_nr=r.attempt_nr,
                    command_to_pilot=r.command_to_pilot, special_handling=r.special_handling,
                    label=r.prod_source_label, pilot_transfer=bool(r.pilot_transfer), dispatch_id=r.dispatch_id,
                    kill_code=r.kill_code)


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


def _identity(raw: bytes) -> tuple[str, str, int | None, bool]:
    """(id, type, reply_to, reply_local) of a command that does not decode, when its JSON says: the sender waits
    for that id, perhaps on that reply partition, perhaps told only (anything unreadable: written)."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return "", "undecodable", None, False
    if not isinstance(obj, dict):
        return "", "undecodable", None, False
    cid, tag, reply_to = obj.get("id"), obj.get("type"), obj.get("reply_to")
    return (cid if isinstance(cid, str) and "\x00" not in cid else "",
            tag if isinstance(tag, str) and tag.isidentifier() else "undecodable",
            reply_to if type(reply_to) is int and reply_to >= 0 else None,
            obj.get("reply_local") is True)


class WrongPartition(msgspec.ValidationError):
    """A direct command handed to the ledger of another partition than its job's (or keyed by another job)."""


def _check_direct(cmd, rec, partition: int, partitions: int) -> None:
    """Raise ``WrongPartition`` unless a direct command's key is its job's and names ``partition``: the ledger
    holds only its partitions' jobs, and a command in no topic was placed by its sender, not by the broker."""
    if rec.key != key_of(cmd.PandaID) or bus.partition_of(cmd.PandaID, partitions) != partition:
        raise WrongPartition(f"command for PandaID {cmd.PandaID} handed directly to partition {partition}, "
                             f"which does not hold it")


def _panda_id_from_key(key: bytes | None) -> int:
    try:
        return int(key or b"0")
    except ValueError:
        return 0
