"""The thin loop that feeds panda.job-events into projections.

Per poll: decode each record once, let every projection apply the records it has not seen yet (the
whole poll in one call), store the projections' next offsets (one statement) — all in one database
transaction. Kafka group offsets are committed afterwards only to show lag; the database positions are
the truth, and on (re)assignment the consumer seeks to them.

A batch that fails on a value the database refuses (or an event that does not decode) is applied
again event by event, each in a savepoint; the event that still fails becomes a dead letter
(``projections.deadletters``) in the same transaction as the position that moves past it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import psycopg

from core import bus, db, local_events, metrics, watchdog
from core.config import Config
from projections import deadletters
from projections.archive import ArchiveProjection
from projections.base import Projection, Record, load_positions, save_positions
from projections.files import FilesProjection
from projections.jobs import JobsProjection
from projections.jobs_archive import ArchiveSweep
from schemas.messages import decode_event

log = logging.getLogger(__name__)

# Records per poll: bigger batches fold more events of a job into one row and make fewer, larger
# statements. A live projector gets what has arrived (small polls); one catching up gets big ones.
POLL_RECORDS = 10_000

ALL = {p.name: p for p in (JobsProjection(), FilesProjection(), ArchiveProjection())}


RETRY_EVERY = 2.0   # seconds between looks for dead letters asked to be applied again


class ProjectionRunner:
    """Runs a set of projections over the event topic in one consumer group."""

    def __init__(self, cfg: Config, projections: Sequence[Projection] | None = None, *,
                 group_id: str | None = None, search_path: str | None = None,
                 on_batch: Callable[[int], None] | None = None, consume: bool = True):
        self.cfg = cfg
        self.topic = cfg.kafka.events_topic
        self.projections = list(projections or ALL.values())
        self.group_id = group_id or f"{cfg.kafka.group_prefix}-projector"
        self.search_path = search_path
        self.on_batch = on_batch
        self.db = self._connection(search_path)
        self.positions: dict[str, dict[int, int]] = {}
        self.dead_letters = 0      # events set aside since start (also rows of projection_dead_letters)
        # consume=False: no consumer of its own; the owner feeds it polls (``apply_polled``: services.host, which
        # reads the events once for the projections and the reactors) and seeks to ``start_offsets``
        self.consumer: bus.Consumer | None = None
        self.lag: metrics.LagTracker | None = None
        self.watchdog: watchdog.Watchdog | None = None
        if consume:
            # fed the ledger's committed events on this host: no fetch while they come (core/local_events.py)
            self.consumer = local_events.fed(
                bus.consumer(cfg, group_id=self.group_id,
                             max_poll_records=max(POLL_RECORDS, int(cfg.kafka.max_poll_records)),
                             idle_fetch_max_wait_ms=int(cfg.projections.idle_fetch_max_wait_ms)),
                cfg, self.group_id)
            self.consumer.subscribe([self.topic], on_assign=self.seek_to_positions)
            self.lag = metrics.LagTracker(self.consumer, self.group_id)
            self.watchdog = watchdog.for_consumer(cfg, self.consumer, self.group_id, self.topic)
        # the jobs projection's owner moves its old final jobs to the archive partition (jobs_archive.py)
        pc = cfg.projections
        self.archive = (ArchiveSweep(pc.archive_after, pc.archive_every, pc.archive_batch)
                        if any(p.name == "jobs" for p in self.projections) else None)

    def _connection(self, search_path: str | None) -> db.Reconnecting:
        # Asynchronous commit: rows and positions are committed together, so a commit lost in a
        # PostgreSQL crash loses both and the projector re-applies those events from the log (Kafka
        # keeps them). No data the log does not have can be lost; see docs/performance.md#projections.
        options = "-c synchronous_commit=off"
        if search_path:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", search_path):
                raise ValueError(f"search_path must be one schema name, not {search_path!r}")
            options += f" -c search_path={search_path}"
        return db.Reconnecting(self.cfg, autocommit=False, options=options)

    @property
    def conn(self) -> psycopg.Connection:
        """The projector's transaction connection (reopened after the server dropped it)."""
        return self.db.conn

    def seek_to_positions(self, assigned) -> None:
        assert self.consumer is not None
        for tp, start in self.start_offsets(assigned).items():
            self.consumer.seek(tp, start)

    def start_offsets(self, partitions) -> dict[bus.TopicPartition, int]:
        """Each of ``partitions`` (TopicPartitions) → the first offset some projection has not applied, from
        the positions stored with the rows (read again: the database is the truth)."""
        with self.conn.transaction():
            self.positions = {p.name: load_positions(self.conn, p.name, self.topic) for p in self.projections}
        return {tp: min(pos.get(tp.partition, 0) for pos in self.positions.values()) for tp in partitions}

    def position(self, partition: int) -> int:
        """The first offset of ``partition`` some projection has not applied (as last loaded or applied)."""
        return min((pos.get(partition, 0) for pos in self.positions.values()), default=0)

    def step(self, timeout_ms: int = 500) -> int:
        """One poll and one database transaction; returns the number of records applied."""
        assert self.consumer is not None and self.lag is not None and self.watchdog is not None
        polled = self.consumer.poll(timeout_ms=timeout_ms)
        self.lag.observe(polled)
        self.watchdog.step(polled)
        n = self.apply_polled(polled, {tp.partition for tp in self.consumer.assignment()})
        if polled:
            self.consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in polled.items()}, asynchronous=True)
        return n

    def apply_polled(self, polled, owned: set[int], decoded: Mapping[int, list[Record]] | None = None) -> int:
        """Apply one poll (the archive sweep first when due, over the ``owned`` partitions) in one database
        transaction; the number of records applied. ``decoded``: partition → the poll's events of it already
        decoded (every record, in order), so a host that decodes once for all does not decode again."""
        if self.archive is not None and self.archive.due():
            self.archive.run(self.conn, owned)
        if not polled:
            return 0
        started = time.monotonic()
        before = {name: dict(pos) for name, pos in self.positions.items()}
        try:
            n = self._apply(polled, careful=False, decoded=decoded)
        except deadletters.POISON as exc:
            # the whole batch was rolled back: apply it again event by event, so only the event that
            # cannot be stored is set aside (dead letter) and every other one is applied
            self.positions = before
            log.warning("a batch of %d events failed (%s); applying it event by event",
                        sum(len(m) for m in polled.values()), deadletters.describe(exc))
            n = self._apply(polled, careful=True)
        metrics.PROJECTION_BATCH.observe(time.monotonic() - started)
        for name, positions in self.positions.items():     # only the polled partitions' positions moved
            for tp in polled:
                if tp.partition in positions:
                    metrics.PROJECTION_POSITION.labels(name, str(tp.partition)).set(positions[tp.partition])
        if self.on_batch:
            self.on_batch(n)
        return n

    def _apply(self, polled, *, careful: bool, decoded: Mapping[int, list[Record]] | None = None) -> int:
        """Apply a poll in one transaction. Each projection gets the poll's new events of every partition in
        one ``apply`` (each partition's in offset order; a job's events are all in one partition), and every
        position moved is saved by one statement: the statements of a poll do not grow with the partitions
        it touches. ``careful`` applies event by event, each in a savepoint (a dead letter for what fails)."""
        n = 0
        moved: list[tuple[str, int, int]] = []
        with self.conn.transaction():
            decoded_all = []
            for tp, msgs in polled.items():
                if decoded is not None and not careful and tp.partition in decoded:
                    records, bad = decoded[tp.partition], []
                else:
                    records, bad = self._decode(tp.partition, msgs, careful=careful)
                decoded_all.append((tp.partition, msgs[-1].offset + 1, records, bad))
                n += len(records)
            for proj in self.projections:
                done_at = self.positions.setdefault(proj.name, {})
                fresh: list[Record] = []
                for partition, nxt, records, bad in decoded_all:
                    done = done_at.get(partition, 0)
                    if nxt <= done:
                        continue
                    new = [r for r in records if r.offset >= done]
                    if careful:
                        for m, exc in bad:
                            if m.offset >= done:
                                self._dead(proj.name, partition, m.offset, m.value, exc)
                        for rec in new:
                            self._apply_one(proj, rec)
                    else:
                        fresh += new
                    moved.append((proj.name, partition, nxt))
                if fresh:
                    proj.apply(self.conn, fresh)
            save_positions(self.conn, self.topic, moved)
            for name, partition, nxt in moved:
                self.positions[name][partition] = nxt
        return n

    @staticmethod
    def _decode(partition: int, msgs, *, careful: bool) -> tuple[list[Record], list[tuple[object, Exception]]]:
        if not careful:
            return [Record(partition, m.offset, m.value, decode_event(m.value)) for m in msgs], []
        records: list[Record] = []
        bad: list[tuple[object, Exception]] = []
        for m in msgs:
            try:
                records.append(Record(partition, m.offset, m.value, decode_event(m.value)))
            except deadletters.POISON as exc:
                bad.append((m, exc))
        return records, bad

    def _apply_one(self, proj: Projection, rec: Record) -> None:
        try:
            with self.conn.transaction():      # a savepoint: a refused event leaves the others applied
                proj.apply(self.conn, [rec])
        except deadletters.POISON as exc:
            self._dead(proj.name, rec.partition, rec.offset, rec.raw, exc, rec.event)

    def _dead(self, projection: str, partition: int, offset: int, raw: bytes, exc: Exception,
              event=None) -> None:
        deadletters.record(self.conn, projection, self.topic, partition, offset, raw, exc, event)
        self.dead_letters += 1
        log.error("projection %s cannot apply the event at %s[%d]@%d (PandaID %s, seq %s): %s; recorded in %s "
                  "and skipped", projection, self.topic, partition, offset, getattr(event, "PandaID", "?"),
                  getattr(event, "seq", "?"), deadletters.describe(exc), deadletters.TABLE)

    def retry_dead_letters(self, owned: set[int] | None = None) -> tuple[int, int]:
        """Apply again the dead letters ``pandaes dead-letters retry`` asked for, of the partitions this
        runner owns (so no other runner writes those jobs meanwhile; ``owned``: as told by the host feeding a
        runner without a consumer), in one transaction with a savepoint each: (resolved, failed again). See
        projections.deadletters."""
        if owned is None:
            assert self.consumer is not None
            owned = {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}
        partitions = sorted(owned)
        by_name = {p.name: p for p in self.projections}
        done = failed = 0
        if not partitions:
            return done, failed
        with self.conn.transaction():
            for row in deadletters.take_requested(self.conn, list(by_name), partitions):
                try:
                    with self.conn.transaction():
                        seqs = deadletters.reapply(self.conn, by_name[row["projection"]], row)
                except deadletters.POISON as exc:
                    deadletters.failed_again(self.conn, row["id"], exc)
                    failed += 1
                    log.error("dead letter %s (%s, PandaID %s seq %s) still cannot be applied: %s", row["id"],
                              row["projection"], row["pandaid"], row["seq"], deadletters.describe(exc))
                    continue
                deadletters.resolved(self.conn, row["projection"], row["pandaid"], seqs, [row["id"]])
                done += 1
                log.warning("dead letter %s (%s, PandaID %s seq %s) applied and resolved", row["id"],
                            row["projection"], row["pandaid"], row["seq"])
        return done, failed

    def run(self, stop: threading.Event) -> None:
        assert self.consumer is not None and self.watchdog is not None, "a runner without a consumer is fed"
        self.watchdog.start()
        next_retry = 0.0
        try:
            while not stop.is_set():
                try:
                    n = self.step()
                    if self.search_path is None and time.monotonic() >= next_retry:
                        next_retry = time.monotonic() + RETRY_EVERY
                        self.retry_dead_letters()
                    if not n:   # at rest: sleep until the next look or retry (services.loop.ServiceLoop.run)
                        self.consumer.rest(stop, (next_retry if self.search_path is None else float("inf"))
                                           - time.monotonic())
                except psycopg.OperationalError as exc:
                    log.warning("database error; positions are in the database, resuming from them: %s", exc)
                    self._resume(stop)
        finally:   # a loop that stopped stepping is not a hung one
            self.watchdog.close()

    def _resume(self, stop: threading.Event) -> None:
        """Seek back to the positions the database has, waiting (backing off) while it is away."""
        assert self.consumer is not None
        backoff = 0.5
        while not stop.is_set():
            self.db.reset()
            try:
                self.seek_to_positions(self.consumer.assignment())
                return
            except psycopg.OperationalError as exc:
                log.warning("database still away, trying again in %.1fs: %s", backoff, exc)
                stop.wait(backoff)
                backoff = min(30.0, backoff * 2)

    def caught_up(self) -> bool:
        """True when every assigned partition has been applied up to the current end of the log."""
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        if not assignment:
            return False
        ends = self.consumer.end_offsets(list(assignment))
        return all(self.consumer.position(tp) >= end for tp, end in ends.items())

    def close(self) -> None:
        try:
            if self.watchdog is not None:
                self.watchdog.close()
            if self.consumer is not None:
                self.consumer.close()
        finally:
            self.db.close()



def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run projector`: the jobs, files and archive projections in one consumer group."""
    runner = ProjectionRunner(cfg)
    try:
        runner.run(stop)
    finally:
        runner.close()
