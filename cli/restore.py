"""`pandaes restore`: put the archive (job_events) back on an empty panda.job-events.

When a broker loses its log (the embedded Tansu keeps memory only, so every restart does) the
projections still hold everything: job_events has every event's body, partition and offset. Restore
re-publishes them with a transactional producer (one transaction per few thousand events, a stable
transactional id that fences a crashed earlier restore), partition by partition in the original
offset order, so partitions and per-job order are what they were. Transactional, not merely
idempotent: the system reads read_committed everywhere, and Tansu's last stable offset does not move
past plain (non-transactional) batches, so read_committed readers would not see them all. Offsets
are not what they were (markers take offsets, and the old log had others), so afterwards:

* ``consumer_positions`` of every projection on the events topic is re-derived from the restored
  topic: a position "next = old offset X" becomes the new offset of the first event at or after X;
* job_events.kafka_offset is set to the new offsets (the archive stays a projection of the log);
* ``src`` (the command's [partition, offset] on panda.job-commands) is removed from the re-published
  events and the archive: the commands topic is gone too, and the ledger, which resumes "after the
  last event's src", must not skip the first commands of the new, empty commands topic;
* the consumer groups of the services (``<prefix>-<component>``) get the restored end committed, so
  they do not react to history again (a failed job must not be retried twice).

``check_at_start`` is what `pandaes run` does before starting components: an empty or replaced log
under non-empty projections is restored (embedded broker) or reported with what to do (external).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

from cli.logread import log_bounds, read_log
from cli.progress import Progress
from core import bus, db
from core.bus import Delivery, TopicPartition
from core.config import Config
from core.topics import ensure_topics
from projections import archive, queries
from schemas.messages import key_of

Log = Callable[[str], object]
# components that keep their events-topic position elsewhere (or read no events): no group commit
NO_GROUP_COMMIT = ("ledger", "projector")
TXN_EVENTS = 5000   # events per restore transaction: well inside kafka.transaction_timeout_ms


class RestoreError(RuntimeError):
    pass


def counts_written_with(pairs: list[tuple[int, int]], most: int = 256) -> list[int]:
    """The partition counts (1..``most``) under which every archived ``(PandaID, partition)`` pair maps where it
    was: what ``[kafka] partitions`` must be for a restore into new topics (its default changed from 8 to 4)."""
    return [n for n in range(1, most + 1) if all(p < n and bus.partition_of(pid, n) == p for pid, p in pairs)]


def _count_mismatch(pairs: list[tuple[int, int]], nparts: int) -> str:
    fits = counts_written_with(pairs)
    hint = (f"; the archive fits {' or '.join(map(str, fits[:3]))} partitions: start with PANDAES_PARTITIONS={fits[0]} "
            "([kafka] partitions, 4 by default since 8 cost the embedded broker more)" if fits else "")
    return (f"with {nparts} partitions the archived events' keys map elsewhere: the topics must have the partition "
            f"count the archive was written with{hint}")


@dataclasses.dataclass
class RestoreResult:
    published: int = 0
    skipped: int = 0
    seconds: float = 0.0
    positions: dict[tuple[str, int], tuple[int, int]] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)


def _present(cfg: Config, end: dict[int, int]) -> tuple[set[tuple[int, int]], dict[int, int]]:
    """(PandaID, seq) of every event in the topic, and each job's highest seq there."""
    present: set[tuple[int, int]] = set()
    top: dict[int, int] = {}
    for _, recs in read_log(cfg, end=end):
        for r in recs:
            body = json.loads(r.value)
            pid, seq = body["PandaID"], body["seq"]
            present.add((pid, seq))
            top[pid] = max(top.get(pid, 0), seq)
    return present, top


def restore(cfg: Config, *, force: bool = False, log: Log = print, show_progress: bool | None = None) -> RestoreResult:
    """Re-publish job_events into panda.job-events and realign the database with the new offsets."""
    started = time.monotonic()
    topic = cfg.kafka.events_topic
    ensure_topics(cfg)   # before any producer: Tansu would auto-create 4 partitions
    _, end = log_bounds(cfg)
    nparts = len(end)
    result = RestoreResult()
    present: set[tuple[int, int]] = set()
    top: dict[int, int] = {}
    if sum(end.values()):
        if not force:
            raise RestoreError(f"{topic} is not empty ({sum(end.values())} offsets used): refusing to restore "
                               "into it. `pandaes restore --force` adds only the events it lacks.")
        present, top = _present(cfg, end)
    with db.connect(cfg) as conn:
        sample = queries.partition_sample(conn)
        if any(p >= nparts or bus.partition_of(pid, nparts) != p for pid, p in sample):
            raise RestoreError(_count_mismatch(sample, nparts))
        total = queries.archived_count(conn)
        producer = bus.producer(cfg, linger_ms=20, transactional_id=f"pandaes-restore-{topic}")
        producer.init_transactions()
        failures: list[BaseException] = []

        def failed(delivery: Delivery) -> None:
            exc = delivery.exception()
            if exc is not None:
                failures.append(exc)

        in_txn = 0
        try:
            with Progress("restore", total=total, enabled=show_progress) as bar:
                for partition, pid, seq, body in queries.archive_in_log_order(conn):
                    bar.update()
                    if partition >= nparts or bus.partition_of(pid, nparts) != partition:
                        raise RestoreError(f"archived event PandaID {pid} seq {seq} was in partition {partition}: "
                                           + _count_mismatch([*sample, (pid, partition)], nparts))
                    if (pid, seq) in present:
                        result.skipped += 1
                        continue
                    if seq < top.get(pid, 0):
                        raise RestoreError(f"PandaID {pid}: the topic already has seq {top[pid]} but not {seq}; "
                                           "adding it now would break the job's order")
                    value = json.loads(body)
                    value.pop("src", None)
                    if not in_txn:
                        producer.begin_transaction()
                    fut = producer.send(topic, key=key_of(pid), partition=partition,
                                        value=json.dumps(value, separators=(",", ":")).encode())
                    fut.add_done_callback(failed)
                    result.published += 1
                    in_txn += 1
                    if in_txn >= TXN_EVENTS:
                        producer.commit_transaction()
                        in_txn = 0
            if in_txn:
                producer.commit_transaction()
        finally:
            producer.close()
        if failures:
            raise RestoreError(f"{len(failures)} event(s) could not be published, first: {failures[0]!r}; "
                               "fix the broker and run `pandaes restore --force` (it skips what is there)")
        _realign(cfg, conn, result, log)
    result.seconds = time.monotonic() - started
    _commit_service_groups(cfg, log)
    log(f"restore: {result.published} events re-published to {topic}, {result.skipped} already there, "
        f"in {result.seconds:.1f}s; {len(result.positions)} projection position(s) re-derived")
    for w in result.warnings:
        log(f"restore: WARNING {w}")
    return result


def _realign(cfg: Config, conn, result: RestoreResult, log: Log) -> None:
    """Map archive offsets and projection positions onto the restored topic, in one transaction."""
    topic = cfg.kafka.events_topic
    _, end = log_bounds(cfg)
    new: dict[tuple[int, int], int] = {}
    for _, recs in read_log(cfg, end=end):
        for r in recs:
            body = json.loads(r.value)
            new[(body["PandaID"], body["seq"])] = r.offset
    try:
        realigned = archive.realign(conn, topic, new, end)
    except archive.NotInLog as exc:
        raise RestoreError(str(exc)) from None
    result.positions.update(realigned.positions)
    result.warnings += realigned.warnings


def _commit_service_groups(cfg: Config, log: Log) -> None:
    """Commit the restored end for the services' groups: history is not news to them."""
    from cli.components import COMPONENTS

    topic = cfg.kafka.events_topic
    _, end = log_bounds(cfg)
    for name in COMPONENTS:
        if name in NO_GROUP_COMMIT:
            continue
        group = f"{cfg.kafka.group_prefix}-{name}"
        c = bus.consumer(cfg, group_id=group)
        try:
            c.commit({TopicPartition(topic, p): off for p, off in end.items()})
        except Exception as exc:  # noqa: BLE001 - reported; the service then re-reads history
            log(f"restore: could not set the position of consumer group {group}: {exc}")
        finally:
            c.close()


# --------------------------------------------------------------------------------------- at start
def divergence(cfg: Config) -> tuple[int, list[str]]:
    """(archived events, why the log cannot be what the projections were built from)."""
    _, end = log_bounds(cfg)
    with db.connect(cfg) as conn:
        archived = queries.archived_count(conn)
        positions = queries.positions(conn, cfg.kafka.events_topic)
    why = [f"{proj} has read partition {p} up to offset {off}, the log ends at {end.get(p, 0)}"
           for proj, p, off in positions if off > end.get(p, 0)]
    if archived and not sum(end.values()):
        why.insert(0, f"{cfg.kafka.events_topic} is empty but the archive holds {archived} events")
    return archived, why


def check_at_start(cfg: Config, *, embedded: bool, log: Log = print) -> None:
    """Before components start: restore a lost log (embedded broker) or stop with what to do."""
    archived, why = divergence(cfg)
    if not why:
        return
    _, end = log_bounds(cfg)
    if embedded and not sum(end.values()):
        log(f"kafka: the embedded broker starts empty (it keeps memory only) and the projections hold "
            f"{archived} events: restoring them from the archive before starting components")
        restore(cfg, log=log)
        return
    raise SystemExit(
        "pandaes: the Kafka log does not match the projections — refusing to start, so they cannot diverge:\n  "
        + "\n  ".join(why[:10])
        + "\nIf the broker lost its log (new or wiped broker, retention gap), re-publish it from the archive with "
          "`pandaes restore` (into an empty topic) or `pandaes restore --force` (adds only missing events), "
          "then start again. If PANDAES_KAFKA points at the wrong cluster, fix it.")
