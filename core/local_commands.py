"""Commands handed to the ledger on this host as soon as the broker has stored them.

The ledger reads its commands from the commands topic. On the embedded broker every fetch that finds records
costs CPU in proportion to the batches the partition already holds, and a fetch is answered only when its wait
ends, so the ledger's urgent fetch (every 10 ms, every commands partition) was the broker's largest cost and up
to 10 ms of every command's latency (docs/performance.md). Here every ``CommandSender`` on the ledger's host,
once the broker has acknowledged a command (its partition and offset known), also sends ``(partition, offset,
key, value)`` as a datagram to the socket of the ledger that holds that partition. The topic stays the only
source of truth, and nothing about what the ledger judges changes:

* the ledger judges a datagram's command only when its offset is the partition's next offset to judge
  (``in_log_order``): commands are judged in the log's order, exactly as read from the topic; their events
  name the same source offset, the transaction commits the same consumed offsets, recovery is unchanged;
* a datagram lost, late or refused (no listener, a full buffer, a command too large for one datagram) only
  means the topic's copy is judged: the ledger goes on fetching the topic, at ``[kafka] gap_fetch_max_wait_ms``;
* only acknowledged commands are sent (from the broker's delivery report), into a directory of the state dir
  only its owner can enter (mode 0700); the listener checks every datagram's sender (``SO_PASSCRED``).

The ledger binds one socket per instance and links each partition it holds (``<tag>-<partition>``) to it once
the partition is rebuilt, unlinking it when the partition goes (a rebalance, a stop). A sender sends to the
partition's link; a link left by a ledger that died refuses (``ECONNREFUSED``) until the partition's next
owner links it again. Linux only; elsewhere, or with ``[ledger] local_commands = false``, nothing is sent
or bound.

**Handed over directly** (``CommandForwarder.hand``, offset ``DIRECT``): a command that is in no topic, handed to
the ledger of its partition before any broker round trip. Only for a command whose loss its caller sees and
repairs: getJob's ``dispatch`` (services/gateway/dispatcher.py), whose pilot waits for the verdict and whose
dispatch is undone when the verdict does not come. Its event is in the log before anyone acts on it, as every
event; what it lacks is a command record, so its event names no source offset (``src`` empty) and the ledger
judges it beside the topic's commands in the same transaction, with that partition's consumed offset committed
again (the group's fencing covers a transaction of direct commands alone). A direct command the ledger cannot
take (its partition left it, its transaction aborted, it crashed) is lost: the caller's wait runs out and it
undoes the dispatch through the topic, as for any late verdict. The partition is the sender's to compute
(``core.bus.partition_of``); the ledger refuses a command handed to the wrong one.
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
from collections.abc import Iterable, Sequence
from pathlib import Path

from core import local_replies
from core.bus import Delivery, Record, RecordTuple
from core.config import Config

log = logging.getLogger(__name__)

MAX_DATAGRAM = 60_000           # bytes per datagram, as local replies
MAX_HELD = 50_000               # commands held per partition waiting for their turn; more are left to the topic
# the sender's thread waits this long for room in the ledger's socket (its listener drains it in microseconds); a
# ledger that does not read for that long is sent nothing for BACK_OFF_S (it reads the topic's copies)
SEND_WAIT_S = 0.05
BACK_OFF_S = 0.2
GAP_S = 0.02                    # a gap in the handed-over commands lasting this long is fetched from the topic
_FRAME = struct.Struct(">IQqHI")  # partition, offset, timestamp (ms), key length, value length
DIRECT = (1 << 64) - 1          # the offset of a command handed over directly: it is in no topic (``hand``)
MAX_DIRECT = 10_000             # direct commands held per partition until the ledger takes them; more are refused
SUPPORTED = local_replies.SUPPORTED


def enabled(cfg: Config) -> bool:
    return SUPPORTED and bool(cfg.ledger.local_commands)


def _directory(cfg: Config) -> tuple[Path, str]:
    tag = hashlib.sha1(f"{cfg.kafka.bootstrap}\0{cfg.kafka.commands_topic}".encode()).hexdigest()[:16]
    return cfg.state_dir / "commands", tag


def link_path(cfg: Config, partition: int) -> Path | None:
    """Where a sender finds the ledger of ``partition``; None if too long for a Unix socket's address. Named by
    the broker and the topic as well, so systems sharing a state dir do not meet."""
    folder, tag = _directory(cfg)
    path = folder / f"{tag}-{partition}"
    return path if local_replies.fits(path) else None


def ledgers_linked(cfg: Config, partitions: Iterable[int]) -> set[int]:
    """Which of ``partitions`` a ledger on this host holds now (its link leads to its socket): a ledger links a
    partition once it is assigned and rebuilt, so this is also when it starts judging that partition's commands."""
    out = set()
    for p in partitions:
        path = link_path(cfg, p)
        if path is not None and path.exists():   # exists() follows the link: a dead ledger's link is not counted
            out.add(p)
    return out


def pack(partition: int, offset: int, key: bytes | None, value: bytes, timestamp_ms: int) -> bytes:
    """One acknowledged command as a datagram (may exceed ``MAX_DATAGRAM``: the sender then leaves it)."""
    return local_replies.record_frame(_FRAME, (partition, offset, timestamp_ms), key, value)


def unpack(data: bytes, topic: str) -> list[RecordTuple] | None:
    """The commands of one datagram as the records the topic holds; None if any frame is malformed."""
    frames = local_replies.record_frames(data, 0, _FRAME)
    if not frames:
        return None
    return [RecordTuple(topic, partition, offset, key, value, timestamp)
            for (partition, offset, timestamp), key, value in frames]


def in_log_order(start: int, fetched: Sequence[Record], held: dict[int, Record]) -> list[Record]:
    """The records to judge next in one partition, in the log's order, from ``start`` (the next offset to judge):
    every fetched record at or after ``start`` (the topic's reader hands records in order, so nothing lies
    unread before one), and a held datagram's record only where it is the very next offset — never past a gap,
    which the topic fills. The held records taken, and those below what is taken, leave ``held``."""
    out: list[Record] = []
    nxt = start
    i = 0
    while True:
        rec = held.pop(nxt, None)
        if rec is not None:
            out.append(rec)
            nxt += 1
            continue
        while i < len(fetched) and fetched[i].offset < nxt:
            i += 1
        if i == len(fetched):
            break
        rec = fetched[i]
        out.append(rec)
        nxt = rec.offset + 1
        i += 1
    for offset in [o for o in held if o < nxt]:
        del held[offset]
    return out


def feed_changes(linked: Iterable[int], paused: set[int], handed_at: dict[int, float], gap_since: dict[int, float],
                 now: float, *, look_s: float, gap_s: float) -> tuple[set[int], set[int]]:
    """Which commands partitions the ledger stops fetching, and which it fetches again (pure).

    Paused: a partition whose commands came by hand within ``look_s`` and none waits behind a gap — the topic's
    copies would only be fetched to be skipped, and on the embedded broker each such fetch lists the partition's
    whole history on the broker's one worker thread (a stall every getJob queued behind, docs/performance.md).
    Fetched again: one where a gap has lasted ``gap_s`` (a command from another host, a datagram lost: only the
    topic has it), or with nothing handed over for ``look_s`` (a look, so that such a command at the end is read)."""
    to_pause: set[int] = set()
    to_fetch: set[int] = set()
    for p in linked:
        recent = now - handed_at.get(p, float("-inf")) < look_s
        gap = p in gap_since and now - gap_since[p] >= gap_s
        if p in paused:
            if gap or not recent:
                to_fetch.add(p)
        elif recent and p not in gap_since:
            to_pause.add(p)
    return to_pause, to_fetch


class CommandForwarder:
    """A sender's side: once the broker acknowledges a command, its copy to the ledger of its partition.

    The acknowledgements are queued and sent by a thread of their own, packed per partition into as few datagrams
    as they fill: a Unix datagram socket queues only ``net.unix.max_dgram_qlen`` datagrams (10 on many hosts)
    whatever its buffer, so a burst of acknowledgements (a bulk submit) sent one by one would find it full."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.on = enabled(cfg)
        self._paths: dict[int, bytes | None] = {}
        self._sock: socket.socket | None = None
        self._quiet_until: dict[bytes, float] = {}   # link → not before (its ledger did not read in time)
        self._outbox = local_replies.Outbox("local-commands-out", self._send_all)
        self.stats = {"handed": 0, "left": 0, "direct": 0, "direct refused": 0}
        self._direct: socket.socket | None = None   # ``hand``'s: never waits (called on an event loop)
        if self.on:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(SEND_WAIT_S)
            self._direct = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._direct.setblocking(False)

    def hand(self, partition: int, key: bytes, value: bytes) -> bool:
        """Hand a command that will be in no topic straight to the ledger holding ``partition`` (module docstring:
        only for a command whose loss its caller repairs). False when it cannot be (no ledger of that partition on
        this host, its socket full, too large, local commands off): the caller sends it to the topic instead.
        Never waits: one non-blocking ``sendto``."""
        return self.hand_many([(partition, key, value)])[0]

    def hand_many(self, commands: Sequence[tuple[int, bytes, bytes]]) -> list[bool]:
        """``hand`` for several (partition, key, value) at once, packed per partition into as few datagrams as they
        fill: the ledger's socket queues only ``net.unix.max_dgram_qlen`` datagrams (often 10), so a burst of
        getJobs (a Harvester batch) handed one datagram each found it full. Whether each was handed, in order."""
        out = [False] * len(commands)
        sock = self._direct
        if sock is None:
            return out
        now_ms = int(time.time() * 1000)
        by_partition: dict[int, list[tuple[int, bytes]]] = {}
        for i, (partition, key, value) in enumerate(commands):
            if len(value) + _FRAME.size + len(key) <= MAX_DATAGRAM:
                by_partition.setdefault(partition, []).append((i, pack(partition, DIRECT, key, value, now_ms)))
        for partition, framed in by_partition.items():
            path = self._path(partition)
            if path is None:
                continue
            sent = 0
            for datagram, n in _datagrams([frame for _, frame in framed]):
                try:
                    sock.sendto(datagram, path)
                except OSError:   # ENOENT / ECONNREFUSED: no ledger holds it here; EAGAIN: its socket is full
                    break
                for i, _ in framed[sent:sent + n]:
                    out[i] = True
                sent += n
        handed = sum(out)
        self.stats["direct"] += handed
        self.stats["direct refused"] += len(commands) - handed
        return out

    def _path(self, partition: int) -> bytes | None:
        path = self._paths.get(partition, b"")
        if path == b"":
            found = link_path(self.cfg, partition)
            path = self._paths[partition] = None if found is None else os.fsencode(found)
        return path

    def follow(self, delivery: Delivery, key: bytes | None, value: bytes) -> None:
        """Forward the command of ``delivery`` when (and only if) the broker stores it."""
        if self._sock is None or len(value) + _FRAME.size + len(key or b"") > MAX_DATAGRAM:
            return
        delivery.add_done_callback(lambda d: self._acknowledged(d, key, value))

    def _acknowledged(self, delivery: Delivery, key: bytes | None, value: bytes) -> None:
        if delivery.exception() is not None:
            return
        where = delivery.result()
        self._outbox.put(((where.partition, where.offset, key, value),))

    def _send_all(self, queue: list[tuple[int, int, bytes | None, bytes]]) -> None:
        now_ms = int(time.time() * 1000)
        by_partition: dict[int, list[bytes]] = {}
        for partition, offset, key, value in queue:
            by_partition.setdefault(partition, []).append(pack(partition, offset, key, value, now_ms))
        for partition, frames in by_partition.items():
            self._send(partition, frames)

    def _send(self, partition: int, frames: list[bytes]) -> None:
        sock = self._sock
        path = self._path(partition)
        if sock is None or path is None:
            return
        quiet = self._quiet_until.get(path)
        if quiet is not None and time.monotonic() < quiet:
            self.stats["left"] += len(frames)
            return
        left = len(frames)
        for datagram, n in _datagrams(frames):
            try:
                sock.sendto(datagram, path)
            except TimeoutError:
                # the ledger did not make room in time: it reads the topic's copies for a while
                self._quiet_until[path] = time.monotonic() + BACK_OFF_S
                break
            except OSError as exc:
                # no ledger here (ENOENT, ECONNREFUSED): it reads the topic's copies
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOBUFS):
                    log.debug("commands for partition %d not handed to the ledger: %s", partition, exc)
                break
            self.stats["handed"] += n
            left -= n
        self.stats["left"] += left

    def close(self) -> None:
        """After the producer's flush: what was acknowledged is sent first."""
        self._outbox.close()
        sock, self._sock = self._sock, None
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()
        if sock is not None:
            sock.close()
            if any(self.stats.values()):
                log.info("commands handed to the ledger on this host: %d, left to the topic: %d; handed directly "
                         "(in no topic): %d, refused %d", self.stats["handed"], self.stats["left"],
                         self.stats["direct"], self.stats["direct refused"])


def _datagrams(frames: list[bytes]):
    """``frames`` joined into datagrams of at most ``MAX_DATAGRAM`` bytes, each with its frame count."""
    chunk: list[bytes] = []
    size = 0
    for frame in frames:
        if chunk and size + len(frame) > MAX_DATAGRAM:
            yield b"".join(chunk), len(chunk)
            chunk, size = [], 0
        chunk.append(frame)
        size += len(frame)
    if chunk:
        yield b"".join(chunk), len(chunk)


class CommandIntake:
    """The ledger's side: one socket for this ledger instance, a link per partition it holds, and the commands
    received, held per partition by offset until the ledger takes them (``take``). ``wake`` is set for every
    datagram kept. ``bound`` is False when the socket could not be bound (the topic still brings everything)."""

    def __init__(self, cfg: Config, instance: str, wake: threading.Event):
        self.cfg = cfg
        self.topic = cfg.kafka.commands_topic
        self.wake = wake
        self.bound = False
        self.stats = {"datagrams": 0, "commands": 0, "direct": 0, "refused": 0, "not held": 0, "overflow": 0}
        self._lock = threading.Lock()
        self._held: dict[int, dict[int, Record]] = {}   # partition → offset → command, for linked partitions
        self._direct: dict[int, list[Record]] = {}       # partition → commands handed directly (in no topic)
        self._stop = threading.Event()
        self._uid = os.getuid()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._inode = -1
        if not enabled(cfg):
            return
        folder, tag = _directory(cfg)
        path = folder / f"{tag}-ledger-{instance}.sock"
        if not local_replies.fits(path):
            log.warning("no local commands: the socket path %s is too long; the ledger reads the topic only", path)
            return
        try:
            sock = local_replies.bind_own(path, 4 << 20)   # a socket file there was left by this instance's crash
            self._inode = os.stat(path).st_ino
        except OSError as exc:
            log.warning("no local commands on %s (%s): the ledger reads the topic only", path, exc)
            return
        self.path = path
        self._sock = sock
        self.bound = True
        self._thread = threading.Thread(target=self._run, name="local-commands", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------- partitions (ledger's thread)
    def link(self, partition: int) -> None:
        """Senders may hand this instance ``partition``'s commands from now on (it is rebuilt and held)."""
        if not self.bound:
            return
        with self._lock:
            self._held[partition] = {}
            self._direct[partition] = []
        target = link_path(self.cfg, partition)
        if target is None:
            return
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(self.path.name, tmp)
            os.replace(tmp, target)   # atomically over the link of a previous owner
        except OSError as exc:
            log.warning("partition %d's commands not taken locally (%s): read from the topic", partition, exc)

    def unlink(self, partition: int) -> None:
        """``partition`` is no longer this instance's: its link goes (unless another owner's replaced it) and
        what was held for it is forgotten (the topic holds it all)."""
        with self._lock:
            self._held.pop(partition, None)
            lost = self._direct.pop(partition, None)
        if lost:
            log.warning("%d direct command(s) of partition %d dropped with the partition: their callers' waits "
                        "run out", len(lost), partition)
        target = link_path(self.cfg, partition)
        if not self.bound or target is None:
            return
        with contextlib.suppress(OSError):
            if os.readlink(target) == self.path.name:
                target.unlink()

    def take(self, partition: int, start: int, fetched: Sequence[Record]) -> list[Record]:
        """``partition``'s next records to judge from offset ``start``: ``in_log_order`` of the fetched ones and
        those held for it."""
        with self._lock:
            held = self._held.get(partition)
            if not held:
                return [r for r in fetched if r.offset >= start]
            return in_log_order(start, fetched, held)

    def take_direct(self) -> list[Record]:
        """Every command handed over directly and not taken yet, of every partition held (in arrival order per
        partition)."""
        with self._lock:
            out = [rec for recs in self._direct.values() for rec in recs]
            if out:
                for recs in self._direct.values():
                    recs.clear()
            return out

    def give_back(self, records: Iterable[Record]) -> None:
        """Direct commands taken but not judged (the database away before the batch began): taken again next,
        before those that came since; those of a partition no longer held are dropped."""
        with self._lock:
            by_partition: dict[int, list[Record]] = {}
            for rec in records:
                by_partition.setdefault(rec.partition, []).append(rec)
            for p, recs in by_partition.items():
                direct = self._direct.get(p)
                if direct is not None:
                    direct[:0] = recs

    def ready(self, starts: dict[int, int]) -> bool:
        """Whether some partition holds the command at its next offset to judge (``starts``), or a direct one."""
        with self._lock:
            return (any(starts.get(p, -1) in held for p, held in self._held.items() if held)
                    or any(self._direct.values()))

    def waiting(self, partition: int) -> bool:
        """Whether commands of ``partition`` are held (received past its next offset to judge: a gap before them)."""
        with self._lock:
            return bool(self._held.get(partition))

    def partitions_held(self) -> Iterable[int]:
        with self._lock:
            return [p for p, held in self._held.items() if held]

    # ------------------------------------------------------------------------------ the listener's thread
    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        for data in local_replies.received(sock, self._uid, self._stop):
            if data is None:
                self.stats["refused"] += 1
                continue
            recs = unpack(data, self.topic)
            if recs is None:
                self.stats["refused"] += 1
                continue
            self.stats["datagrams"] += 1
            kept = 0
            with self._lock:
                for rec in recs:
                    held = self._held.get(rec.partition)
                    if held is None:
                        self.stats["not held"] += 1
                    elif rec.offset == DIRECT:
                        direct = self._direct[rec.partition]
                        if len(direct) >= MAX_DIRECT:
                            self.stats["overflow"] += 1
                        else:
                            direct.append(rec)
                            self.stats["direct"] += 1
                            kept += 1
                    elif len(held) >= MAX_HELD:
                        self.stats["overflow"] += 1
                    else:
                        held[rec.offset] = rec
                        kept += 1
            self.stats["commands"] += kept
            if kept:
                self.wake.set()

    def close(self) -> None:
        if self._sock is None:
            return
        for partition in list(self._held):
            self.unlink(partition)
        self._stop.set()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"", os.fsencode(self.path))   # wakes the blocked receive
        if self._thread is not None:
            self._thread.join(5)
        self._sock.close()
        self._sock = None
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
