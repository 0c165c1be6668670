"""Committed events handed by the ledger to the readers of the events topic on this host.

Why: on the embedded broker every fetch that finds records lists every batch the partition already holds, on its
one worker thread, so a reader that keeps up by fetching (the projector, the services' host: every 100 ms, each
partition) costs the broker more with every transaction ever written, and every request queued behind such a
listing waits for it: getJob's latency grew from 11 to 21 ms at p50 over a 30 s level, and the broker answered a
one-byte request in up to 36 ms (docs/performance.md, fifteenth session). Here the ledger, once a transaction is
committed, also sends its events with their offsets to the reader of each partition on this host, and a reader
that takes them stops fetching that partition. The topic stays the only source of truth:

* a **run** (the events of one partition in one transaction, or a part of them) names ``after``, the offset of
  the partition's record just before it. The ledger names it only where nothing but its own commit marker lies
  between (its previous committed transaction in that partition ended at ``after``, the run starts at ``after +
  2``: one marker per partition and transaction), else -1;
* a reader takes a run only where ``after`` is the last record it took (``continues``), so it reads exactly the
  log, in order, with the same offsets and bytes, never past a gap; anything else (a datagram lost or refused, a
  ledger restarted, a rebalance, a seek) sends it back to the topic from its last record until a run continues;
* a partition fed this way is paused on the reader's consumer (no fetch, no listing); one not fed for
  ``[kafka] gap_fetch_max_wait_ms`` is fetched again (a look), so an event nobody handed over is read in time.

Runs are kept until ``gather_s`` has passed since the first was received, so a reader applies about as many
events per poll (and per database transaction) as its fetch brought before. Transport, directory and sender
check as ``core/local_commands.py``: one socket per reader, a link per partition and group
(``<tag>-<partition>-<group>``) to the socket of the group's member that holds it. Linux only; elsewhere, or with
``[ledger] local_events = false``, nothing is sent or bound.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from core import local_replies
from core.bus import Consumer, Delivery, Record, RecordTuple, TopicPartition
from core.config import Config

log = logging.getLogger(__name__)

MAX_DATAGRAM = 60_000
SEND_WAIT_S = 0.02          # the ledger's sending thread waits this long for room in a reader's socket
BACK_OFF_S = 0.5            # a reader that did not make room in time is sent nothing for this long
READERS_REFRESH_S = 1.0     # how often the ledger looks again for the readers linked to a partition
_HEAD = struct.Struct(">Iq")       # partition, after (-1: not known)
_FRAME = struct.Struct(">qqHI")    # offset, timestamp (ms), key length, value length
NOT_KNOWN = -1
LOOK_SLICE_S = 0.05         # a reader fetching some partition polls the topic at least this often
REST_SLICE_S = 0.1          # an idle reader's rest looks for a told run this often
MAX_RUNS_HELD = 2_000       # runs held per partition waiting for the topic to fill a gap; older ones are dropped


def enabled(cfg: Config) -> bool:
    return local_replies.SUPPORTED and bool(cfg.ledger.local_events)


def _directory(cfg: Config) -> tuple[Path, str]:
    tag = hashlib.sha1(f"{cfg.kafka.bootstrap}\0{cfg.kafka.events_topic}".encode()).hexdigest()[:16]
    return cfg.state_dir / "events", tag


def readers_bound(cfg: Config) -> bool:
    """Whether some reader of the events topic on this host listens for the ledger's runs (its socket is there:
    made when the reader is, before it has partitions; none where the state dir is too long a path)."""
    folder, tag = _directory(cfg)
    try:
        return any(n.startswith(f"{tag}-reader-") and n.endswith(".sock") for n in os.listdir(folder))
    except OSError:
        return False


def readers_linked(cfg: Config) -> dict[str, set[int]]:
    """The events partitions each consumer group on this host reads now, fed the ledger's runs (a reader links a
    partition once assigned; its socket alive)."""
    folder, tag = _directory(cfg)
    out: dict[str, set[int]] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        if not name.startswith(f"{tag}-") or name.endswith(".tmp"):
            continue
        partition, sep, group = name.removeprefix(f"{tag}-").partition("-")   # <partition>-<group> links only
        if sep and partition.isdigit() and (folder / name).exists():
            out.setdefault(group, set()).add(int(partition))
    return out


# ----------------------------------------------------------------------------------------------- wire format
def pack(partition: int, after: int, records: Sequence[tuple[int, bytes | None, bytes]], timestamp_ms: int
         ) -> list[bytes]:
    """One partition's committed run (offset, key, value per record, offsets consecutive) as datagrams of at most
    ``MAX_DATAGRAM`` bytes where they fit; each datagram's ``after`` is the record before its first."""
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = _HEAD.size
    head_after = after
    prev = after
    for offset, key, value in records:
        frame = local_replies.record_frame(_FRAME, (offset, timestamp_ms), key, value)
        if chunk and size + len(frame) > MAX_DATAGRAM:
            out.append(_HEAD.pack(partition, head_after) + b"".join(chunk))
            chunk, size, head_after = [], _HEAD.size, prev
        chunk.append(frame)
        size += len(frame)
        prev = offset
    if chunk:
        out.append(_HEAD.pack(partition, head_after) + b"".join(chunk))
    return out


def unpack(data: bytes, topic: str) -> tuple[int, int, list[RecordTuple]] | None:
    """(partition, after, records) of one datagram; None if malformed or empty."""
    if len(data) < _HEAD.size:
        return None
    partition, after = _HEAD.unpack_from(data, 0)
    frames = local_replies.record_frames(data, _HEAD.size, _FRAME)
    if not frames:
        return None
    out = [RecordTuple(topic, partition, offset, key, value, timestamp)
           for (offset, timestamp), key, value in frames]
    return partition, after, out


# ------------------------------------------------------------------------------------------ the pure decisions
def chained_after(previous_last: int | None, first: int) -> int:
    """The ``after`` the ledger may name for a run starting at ``first``: the previous committed run's last record
    in the partition if only its commit marker lies between, else ``NOT_KNOWN``."""
    return previous_last if previous_last is not None and first == previous_last + 2 else NOT_KNOWN


def continues(last: int | None, after: int, first: int | None = None) -> bool:
    """Whether a run naming ``after`` (its first record at ``first``) continues a reader whose last record taken
    is ``last``: it names ``last``, or its first record is right after it (nothing can lie between, whatever
    ``after`` says: the ledger names none for its first transaction on a partition)."""
    if last is None:
        return False
    return (after != NOT_KNOWN and after == last) or first == last + 1


def starting_at(nxt: int, runs: Sequence[tuple[int, Sequence[Record]]]) -> int | None:
    """A reader sought to ``nxt`` that has read nothing since: the ``after`` of a held run that starts where it
    stands (its first record at ``nxt``, or at ``nxt + 1`` behind the commit marker at ``nxt``), as the last record
    it may be said to have taken; None if no run starts there. A run whose first record is at ``nxt`` starts there
    even when the ledger could not name its ``after`` (the first transaction of a fresh partition, or the first
    after the ledger started): ``nxt - 1`` is then said, which only a run starting at ``nxt`` continues."""
    for after, recs in runs:
        if after != NOT_KNOWN and recs and recs[0].offset == after + 2 and nxt in (after + 1, after + 2):
            return after
    if any(recs and recs[0].offset == nxt for _, recs in runs):
        return nxt - 1
    return None


def in_step(last: int | None, runs: Sequence[tuple[int, Sequence[Record]]]) -> bool:
    """Whether a held run ends at the reader's ``last`` record: the topic brought that run's records first, so the
    runs and the topic agree up to there and the next run (naming ``last``) continues it. A reader that fell back
    to the topic goes back to being fed on this, or it would stay on the topic while its fetch wins every race
    with the runs it is told."""
    return last is not None and any(recs and recs[-1].offset == last for _, recs in runs)


def take_runs(last: int | None, runs: list[tuple[int, list[Record]]]) -> tuple[list[Record], int | None, bool]:
    """From ``runs`` (after, records) held for one partition: the records that continue ``last`` in order
    (``continues``), the new last record, and whether a run is left that does not continue (a gap: the topic must
    fill it). Runs wholly at or below ``last`` are dropped; ``runs`` is left holding only runs past the gap."""
    taken: list[Record] = []
    runs.sort(key=lambda r: r[1][0].offset)
    gap = False
    kept: list[tuple[int, list[Record]]] = []
    for after, recs in runs:
        if last is not None and recs[-1].offset <= last:
            continue                       # read already (from the topic, or twice)
        if not gap and continues(last, after, recs[0].offset):
            taken.extend(recs)
            last = recs[-1].offset
            continue
        gap = True
        kept.append((after, recs))
    runs[:] = kept
    return taken, last, gap


# ------------------------------------------------------------------------------------------- the ledger's side
class EventTeller:
    """The ledger's side: the events of a transaction, told to the readers of their partitions once committed."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.on = enabled(cfg)
        self._pending: list[tuple[int, Delivery, bytes | None, bytes]] = []
        self._last: dict[int, int] = {}          # partition → last record of the previous committed run
        self._readers: dict[int, tuple[float, list[bytes]]] = {}
        self._quiet_until: dict[bytes, float] = {}
        self._outbox = local_replies.Outbox("local-events-out", self._send_all)
        self._sock: socket.socket | None = None
        self.stats = {"runs": 0, "unchained": 0, "datagrams": 0, "dropped": 0}
        if self.on:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(SEND_WAIT_S)

    def add(self, partition: int, delivery: Delivery, key: bytes | None, value: bytes) -> None:
        if self.on:
            self._pending.append((partition, delivery, key, value))

    def discard(self) -> None:
        """Before a transaction, and at its abort: events still pending belong to one that did not commit (its
        records and a marker may lie in the log), so no run continues across them."""
        if self._pending:
            self._pending.clear()
            self._last.clear()

    def forget(self, partition: int) -> None:
        """``partition`` left this ledger (or is rebuilt): another writer may have written it meanwhile."""
        self._last.pop(partition, None)

    def send(self) -> None:
        """After the commit: each partition's run, with the offsets the broker gave, to its readers (by a thread)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        by_partition: dict[int, list[tuple[int, bytes | None, bytes]]] = {}
        try:
            for partition, delivery, key, value in pending:
                by_partition.setdefault(partition, []).append((delivery.result(0).offset, key, value))
        except Exception:   # noqa: BLE001 - a report not there: nothing is told, readers read the topic
            self._last.clear()
            return
        now_ms = int(time.time() * 1000)
        out: list[tuple[int, list[bytes]]] = []
        for partition, records in by_partition.items():
            offsets = [o for o, _, _ in records]
            if offsets != list(range(offsets[0], offsets[0] + len(offsets))):
                self._last.pop(partition, None)   # not one contiguous run: the readers read the topic
                continue
            after = chained_after(self._last.get(partition), offsets[0])
            self._last[partition] = offsets[-1]
            self.stats["runs"] += 1
            if after == NOT_KNOWN:
                self.stats["unchained"] += 1
            out.append((partition, pack(partition, after, records, now_ms)))
        if out:
            self._outbox.put(out)

    def _readers_of(self, partition: int) -> list[bytes]:
        now = time.monotonic()
        seen = self._readers.get(partition)
        if seen is not None and now - seen[0] < READERS_REFRESH_S:
            return seen[1]
        folder, tag = _directory(self.cfg)
        prefix = f"{tag}-{partition}-"
        try:
            names = [n for n in os.listdir(folder) if n.startswith(prefix)]
        except OSError:
            names = []
        paths = [os.fsencode(folder / n) for n in names if local_replies.fits(folder / n)]
        self._readers[partition] = (now, paths)
        return paths

    def _send_all(self, queue: list[tuple[int, list[bytes]]]) -> None:
        for partition, datagrams in queue:
            for path in self._readers_of(partition):
                self._send(path, datagrams)

    def _send(self, path: bytes, datagrams: list[bytes]) -> None:
        sock = self._sock
        quiet = self._quiet_until.get(path)
        if sock is None or (quiet is not None and time.monotonic() < quiet):
            self.stats["dropped"] += len(datagrams)
            return
        for i, datagram in enumerate(datagrams):
            try:
                sock.sendto(datagram, path)
                self.stats["datagrams"] += 1
            except TimeoutError:
                self._quiet_until[path] = time.monotonic() + BACK_OFF_S
                self.stats["dropped"] += len(datagrams) - i
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOBUFS):
                    log.debug("events not told to %s: %s", path, exc)
                self.stats["dropped"] += len(datagrams) - i
                return

    def close(self) -> None:
        self._outbox.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# ------------------------------------------------------------------------------------------- the reader's side
class _Partition:
    __slots__ = ("last", "next", "fed", "fed_at", "runs", "taken", "taken_at")

    def __init__(self) -> None:
        self.last: int | None = None     # the last record handed to the caller (None: not known since a seek)
        self.next: int | None = None     # with ``last`` not known: the offset sought (the next record read)
        self.fed = False                 # paused on the consumer, read from the ledger's runs
        self.fed_at = 0.0                # when a run was last taken
        self.runs: list[tuple[int, list[Record]]] = []   # received, not taken yet
        self.taken: list[Record] = []    # taken, not handed to the caller yet (gathering)
        self.taken_at = 0.0              # when the oldest of ``taken`` was taken


class FedConsumer:
    """A ``bus.Consumer`` of the events topic in a group, fed the ledger's committed runs on this host.

    Every method but ``subscribe``, ``seek``, ``poll``, ``rest``, ``pause``, ``resume`` and ``close`` is the
    wrapped consumer's. ``gather_s``: how long taken runs wait to be handed over together (the reader's fetch
    wait); ``look_s``: how long a fed partition may go without a run before the topic is fetched again."""

    def __init__(self, inner: Consumer, cfg: Config, group: str, *, gather_s: float, look_s: float):
        self._inner = inner
        self.cfg = cfg
        self.topic = cfg.kafka.events_topic
        self.group = group
        self.gather_s = gather_s
        self.look_s = look_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._parts: dict[int, _Partition] = {}
        self._caller_paused: set[TopicPartition] = set()
        self._told_at = 0.0              # when a run was last received
        self._uid = os.getuid()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.stats = {"fed": 0, "fetched": 0, "gaps": 0, "looks": 0, "in_step": 0, "refused": 0}
        folder, tag = _directory(cfg)
        self._folder, self._tag = folder, tag
        path = folder / f"{tag}-reader-{group}-{os.getpid()}.sock"
        if not local_replies.fits(path):
            log.warning("no local events: the socket path %s is too long; reading the topic only", path)
            return
        try:
            self._sock = local_replies.bind_own(path, 8 << 20)
        except OSError as exc:
            log.warning("no local events on %s (%s): reading the topic only", path, exc)
            return
        self.path = path
        self._thread = threading.Thread(target=self._listen, name="local-events", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    @property
    def bound(self) -> bool:
        return self._sock is not None

    # ------------------------------------------------------------------------------------- group membership
    def subscribe(self, topics: Sequence[str], *, on_assign: Callable[[set[TopicPartition]], None] | None = None,
                  on_revoke: Callable[[set[TopicPartition]], None] | None = None) -> None:
        def assigned(tps: set[TopicPartition]) -> None:
            for tp in tps:
                if tp.topic == self.topic:
                    with self._lock:
                        self._parts[tp.partition] = _Partition()
                    self._link(tp.partition)
            if on_assign is not None:
                on_assign(tps)

        def revoked(tps: set[TopicPartition]) -> None:
            for tp in tps:
                if tp.topic == self.topic:
                    self._unlink(tp.partition)
                    with self._lock:
                        self._parts.pop(tp.partition, None)
            if on_revoke is not None:
                on_revoke(tps)

        self._inner.subscribe(topics, on_assign=assigned, on_revoke=revoked)

    def _link_path(self, partition: int) -> Path:
        return self._folder / f"{self._tag}-{partition}-{self.group}"

    def _link(self, partition: int) -> None:
        if self._sock is None:
            return
        target = self._link_path(partition)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(self.path.name, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            log.warning("partition %d's events not taken locally (%s): read from the topic", partition, exc)

    def _unlink(self, partition: int) -> None:
        if self._sock is None:
            return
        target = self._link_path(partition)
        with contextlib.suppress(OSError):
            if os.readlink(target) == self.path.name:
                target.unlink()

    # ------------------------------------------------------------------------------------------- reading
    def seek(self, partition: TopicPartition, offset: int) -> None:
        """As the consumer's; the partition is read from the topic again from ``offset`` until a run continues."""
        with self._lock:
            part = self._parts.get(partition.partition) if partition.topic == self.topic else None
            if part is not None:
                part.last, part.next = None, offset
                part.taken = []
                was_fed, part.fed = part.fed, False
            else:
                was_fed = False
        self._inner.seek(partition, offset)
        if was_fed and partition not in self._caller_paused:
            self._inner.resume(partition)

    def pause(self, *partitions: TopicPartition) -> None:
        self._caller_paused.update(partitions)
        self._inner.pause(*partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._caller_paused.difference_update(partitions)
        with self._lock:
            fed = {tp for tp in partitions if tp.topic == self.topic
                   and (p := self._parts.get(tp.partition)) is not None and p.fed}
        rest = [tp for tp in partitions if tp not in fed]
        if rest:
            self._inner.resume(*rest)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Mapping[TopicPartition, Sequence[Record]]:
        if self._sock is None:
            return self._inner.poll(timeout_ms=timeout_ms, max_records=max_records)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self._wake.clear()
            left = max(0.0, deadline - time.monotonic())
            with self._lock:
                local = any(p.fed or p.runs or p.taken for p in self._parts.values())
                assigned = bool(self._parts)
            # nothing by hand under way: the consumer's own poll waits (kafka-python completes a group join only
            # inside a poll that waits); in slices while runs were told lately, so that the next is taken soon
            lately = time.monotonic() - self._told_at < self.look_s
            wait_inner = 0.0 if local else min(left, LOOK_SLICE_S) if assigned and lately else left
            fetched = self._inner.poll(timeout_ms=int(wait_inner * 1000), max_records=max_records)
            out = self._merge(fetched, max_records)
            if out:
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return {}
            if not local:
                continue
            with self._lock:
                due = min((p.taken_at + self.gather_s for p in self._parts.values() if p.taken), default=None)
                fed_all = all(p.fed for p in self._parts.values())
            wait = left if fed_all else min(left, LOOK_SLICE_S)
            if due is not None:
                wait = min(wait, max(0.0, due - time.monotonic()))
            self._wake.wait(wait)

    def rest(self, stop: threading.Event, longest_s: float) -> None:
        """As the consumer's (an idle loop wakes once per look, not once per poll), and also until a run is told:
        the consumer's rest in slices of ``REST_SLICE_S`` while no run came."""
        if self._sock is None:
            self._inner.rest(stop, longest_s)
            return
        deadline = time.monotonic() + longest_s
        while not stop.is_set() and not self._wake.is_set():
            with self._lock:
                if any(p.fed or p.runs or p.taken for p in self._parts.values()):
                    return            # something by hand under way: the next poll waits on it
            left = deadline - time.monotonic()
            if left <= 0:
                return
            started = time.monotonic()
            self._inner.rest(stop, min(left, REST_SLICE_S))
            if time.monotonic() - started < min(left, REST_SLICE_S) * 0.9:
                return                # not dozing, or its look is due

    def _merge(self, fetched: Mapping[TopicPartition, Sequence[Record]],
               max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        now = time.monotonic()
        out: dict[TopicPartition, list[Record]] = {}
        to_pause: list[TopicPartition] = []
        to_fetch: list[tuple[TopicPartition, int | None]] = []
        waiting = False
        with self._lock:
            for tp, recs in fetched.items():
                part = self._parts.get(tp.partition) if tp.topic == self.topic else None
                if part is None:
                    out[tp] = list(recs)
                    continue
                new = [r for r in recs if part.last is None or r.offset > part.last]
                if new:
                    part.next = None
                    if not part.taken:
                        part.taken_at = now
                    part.taken.extend(new)
                    part.last = new[-1].offset
                    self.stats["fetched"] += len(new)
            gather_done = False
            for p, part in self._parts.items():
                tp = TopicPartition(self.topic, p)
                if part.runs:
                    if part.last is None and part.next is not None:
                        part.last = starting_at(part.next, part.runs)
                    caught_up = in_step(part.last, part.runs)
                    taken, part.last, gap = take_runs(part.last, part.runs)
                    if taken:
                        if not part.taken:
                            part.taken_at = now
                        part.taken.extend(taken)
                        self.stats["fed"] += len(taken)
                    if taken or caught_up:
                        part.fed_at = now
                        if not part.fed and not gap and part.last is not None:
                            part.fed = True
                            self.stats["in_step"] += not taken
                            to_pause.append(tp)
                    if gap and part.fed:
                        part.fed = False
                        self.stats["gaps"] += 1
                        to_fetch.append((tp, part.last))
                elif part.fed and now - part.fed_at > self.look_s:
                    part.fed = False      # nothing told for a while: a look at the topic, in case it was lost
                    self.stats["looks"] += 1
                    to_fetch.append((tp, part.last))
                if part.taken and now - part.taken_at >= self.gather_s:
                    gather_done = True
                if part.runs and not part.fed:
                    waiting = True
            if gather_done:
                room = max_records if max_records else None
                for p, part in self._parts.items():
                    if not part.taken or room == 0:
                        continue
                    n = len(part.taken) if room is None else min(room, len(part.taken))
                    out[TopicPartition(self.topic, p)] = part.taken[:n]
                    part.taken = part.taken[n:]
                    if room is not None:
                        room -= n
        if waiting:   # runs told that the topic must bring first: it holds new records, so no doze may wait on
            self._inner.wake()   # them (a ledger's first transaction after its start names no ``after``)
        for tp in to_pause:   # no seek: the partition is sought to its last record's successor when fetched again
            if tp not in self._caller_paused:
                self._inner.pause(tp)
        for tp, last in to_fetch:
            if last is not None:
                self._inner.seek(tp, last + 1)
            if tp not in self._caller_paused:
                self._inner.resume(tp)
        return out

    def _listen(self) -> None:
        sock = self._sock
        assert sock is not None
        for data in local_replies.received(sock, self._uid, self._stop):
            got = None if data is None else unpack(data, self.topic)
            if got is None:
                self.stats["refused"] += 1
                continue
            partition, after, recs = got
            with self._lock:
                part = self._parts.get(partition)
                if part is None:
                    continue
                part.runs.append((after, recs))
                self._told_at = time.monotonic()
                if len(part.runs) > MAX_RUNS_HELD:
                    del part.runs[0]      # the topic brings it
            self._wake.set()

    def close(self) -> None:
        if self._sock is not None:
            for p in list(self._parts):
                self._unlink(p)
            self._stop.set()
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(b"", os.fsencode(self.path))
            if self._thread is not None:
                self._thread.join(5)
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()
            if any(self.stats.values()):
                log.info("events of %s: %d taken from the ledger on this host, %d from the topic; gaps %d, looks %d,"
                         " back in step %d", self.group, self.stats["fed"], self.stats["fetched"], self.stats["gaps"],
                         self.stats["looks"], self.stats["in_step"])
        self._inner.close()


def fed(inner: Consumer, cfg: Config, group: str, *, gather_ms: int | None = None) -> Consumer:
    """``inner`` (subscribed by the caller afterwards) fed the ledger's runs when ``[ledger] local_events`` is on."""
    if not enabled(cfg):
        return inner
    gather = int(cfg.ledger.local_events_gather_ms if gather_ms is None else gather_ms)
    return FedConsumer(inner, cfg, group, gather_s=gather / 1000,
                       look_s=cfg.kafka.gap_fetch_max_wait_ms / 1000)  # type: ignore[return-value]

