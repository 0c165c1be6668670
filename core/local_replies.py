"""Verdicts told straight to a waiting process on this host, once their transaction is committed.

The reply path (``OutcomeWaiter`` with a reply partition) reads a verdict from the replies topic, so a caller
waits for two broker hops: its command to the ledger, the verdict back. The embedded broker answers a fetch only
after its whole wait, so the second hop alone costs 10-20 ms. Here the ledger, right after
``commit_transaction`` returns (every event of the batch is in the log), also sends each batch's replies as a
datagram to a Unix socket that the waiter of that reply partition binds on this host. The Kafka record stays the
durable path: the waiter reads it as before, and whichever copy comes second finds no future and is ignored.

Nothing here can make a verdict up or move one earlier than its commit:

* only committed verdicts are sent (the ledger calls ``ReplyNotifier.send`` after the commit; an aborted batch's
  are discarded);
* the socket lives in a directory of the state dir that only its owner can enter (mode 0700), and the listener
  checks every datagram's sender credentials (``SO_PASSCRED``): a datagram from another user is dropped;
* a datagram that cannot be sent (no listener, a full buffer, a verdict too large for one datagram) is dropped
  without waiting: its caller gets the Kafka record, as without this module.

**Told instead of written** (eighteenth session): a command whose waiter listens here and holds its reply
partition alone (the gateway, ``Backend``) says so (``reply_local``), and the ledger then writes its verdict to
the replies topic only if telling it fails (``ReplyNotifier.take_untold``: no listener, its socket full, too
large), in its next transaction. On the embedded broker every partition a transaction touches costs a Produce, a
commit marker and its bookkeeping; the replies partition was a third of the partitions of a getJob's
transaction (broker CPU per getJob 463 -> 318 us measured without it). A waiter sharing a partition, or on
another host, does not ask for it: its verdicts are written as before.

Linux only (``SO_PASSCRED``); elsewhere, or with ``[ledger] local_replies = false``, nothing is sent or bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from core.config import Config
from core.eventloop import call_on

log = logging.getLogger(__name__)

MAX_DATAGRAM = 60_000          # bytes per datagram (well under a Unix socket's default buffer of ~200 KB)
SEND_WAIT_S = 0.2              # the ledger's sending thread waits this long for room in a waiter's socket …
BACK_OFF_S = 1.0               # … and one that stayed full that long is told nothing for this long (the topic answers)
_FRAME = struct.Struct(">HI")  # command id length, value length
_CRED = struct.Struct("iII")   # struct ucred: pid, uid, gid
_SUN_PATH_MAX = 107            # sockaddr_un's path, less its terminating NUL
SUPPORTED = hasattr(socket, "SO_PASSCRED") and hasattr(socket, "AF_UNIX")


def fits(path: Path) -> bool:
    """Whether ``path`` can be a Unix socket's address."""
    return len(os.fsencode(path)) <= _SUN_PATH_MAX


def bind_own(path: Path, rcvbuf: int) -> socket.socket:
    """A datagram socket bound at ``path`` that reports its senders' credentials, in a directory only its owner can
    enter (made if missing); a socket file left there before (a crashed or earlier holder) is replaced. Raises
    OSError."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(os.fsencode(path))
        os.chmod(path, 0o600)
    except OSError:
        sock.close()
        raise
    return sock


def receive_own(sock: socket.socket, uid: int) -> bytes | None:
    """The next datagram on ``sock`` (blocking), or None if it was not sent by user ``uid``. Raises OSError."""
    data, ancillary, _flags, _addr = sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(_CRED.size))
    return data if sent_by(ancillary, uid) else None


def sent_by(ancillary: list[tuple[int, int, bytes]], uid: int) -> bool:
    """Whether a datagram's ancillary data name user ``uid`` as its sender (no credentials: not believed)."""
    for level, kind, cred in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(cred) >= _CRED.size:
            return _CRED.unpack_from(cred)[1] == uid
    return False


def received(sock: socket.socket, uid: int, stop: threading.Event) -> Iterator[bytes | None]:
    """Every datagram on ``sock`` until ``stop`` is set (None for one not sent by ``uid``): a listener thread's
    loop; an error while not stopping is passed over (the next datagram is waited for)."""
    while not stop.is_set():
        try:
            data = receive_own(sock, uid)
        except OSError:
            continue
        if stop.is_set():
            return
        yield data


class Outbox:
    """Batches of items handed to ``send`` on a thread of its own, started at the first ``put``: the sender
    (the ledger's loop, a producer's delivery callback) never waits for a socket's room."""

    def __init__(self, name: str, send: Callable[[list[Any]], None]):
        self._name = name
        self._send = send
        self._queue: list[Any] = []
        self._cond = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        self._closing = False

    def put(self, items: Iterable[Any]) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            was_empty = not self._queue
            self._queue.extend(items)
            if was_empty:
                self._cond.notify_all()

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until what was put has been handed to ``send`` and it returned (tests; closing)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                queue, self._queue, self._busy = self._queue, [], True
            try:
                self._send(queue)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def close(self) -> None:
        """What was put is sent first (within 5 s)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)


def enabled(cfg: Config) -> bool:
    return SUPPORTED and bool(cfg.ledger.local_replies)


def socket_path(cfg: Config, partition: int) -> Path | None:
    """Where the waiter of ``partition`` of the replies topic listens; None if the path is too long for a Unix
    socket. Named by the broker and the topic as well, so systems sharing a state dir do not meet."""
    tag = hashlib.sha1(f"{cfg.kafka.bootstrap}\0{cfg.kafka.replies_topic}".encode()).hexdigest()[:16]
    path = cfg.state_dir / "replies" / f"{tag}-{partition}.sock"
    return path if fits(path) else None


# --------------------------------------------------------------- records handed over (local_commands, local_events)
NO_KEY = 0xFFFF   # a record frame's key length for a record without a key


def record_frame(frame: struct.Struct, fields: tuple[int, ...], key: bytes | None, value: bytes) -> bytes:
    """One Kafka record as ``frame`` (``fields`` first, then key length and value length), its key and value."""
    k = b"" if key is None else key
    return frame.pack(*fields, NO_KEY if key is None else len(k), len(value)) + k + value


def record_frames(data: bytes, start: int, frame: struct.Struct
                  ) -> list[tuple[tuple[int, ...], bytes | None, bytes]] | None:
    """The ``record_frame``s of ``data`` from ``start`` on: (fields, key, value) each; None if any is malformed."""
    out: list[tuple[tuple[int, ...], bytes | None, bytes]] = []
    i = start
    while i < len(data):
        if len(data) - i < frame.size:
            return None
        *fields, n_key, n_value = frame.unpack_from(data, i)
        key_len = 0 if n_key == NO_KEY else n_key
        begin = i + frame.size
        i = begin + key_len + n_value
        if i > len(data):
            return None
        out.append((tuple(fields), None if n_key == NO_KEY else data[begin:begin + key_len],
                    data[begin + key_len:i]))
    return out


def pack(replies: list[tuple[str, bytes]]) -> list[bytes]:
    """``(command id, verdict)`` pairs as datagrams of at most ``MAX_DATAGRAM`` bytes; a pair too large for one
    datagram is left out (its caller reads the Kafka record)."""
    return [datagram for datagram, _ in _grouped([(cid, value, False) for cid, value in replies])[0]]


def _grouped(replies: list[tuple[str, bytes, bool]]
             ) -> tuple[list[tuple[bytes, list[tuple[str, bytes, bool]]]], list[tuple[str, bytes, bool]]]:
    """``pack``, each datagram with the replies it carries; and the replies too large for any datagram."""
    out: list[tuple[bytes, list[tuple[str, bytes, bool]]]] = []
    too_large: list[tuple[str, bytes, bool]] = []
    chunk: list[bytes] = []
    group: list[tuple[str, bytes, bool]] = []
    size = 0
    for reply in replies:
        command_id, value, _ = reply
        cid = command_id.encode()
        n = _FRAME.size + len(cid) + len(value)
        if n > MAX_DATAGRAM or len(cid) > 0xFFFF:
            too_large.append(reply)
            continue
        if size + n > MAX_DATAGRAM:
            out.append((b"".join(chunk), group))
            chunk, group, size = [], [], 0
        chunk += [_FRAME.pack(len(cid), len(value)), cid, value]
        group.append(reply)
        size += n
    if chunk:
        out.append((b"".join(chunk), group))
    return out, too_large


def unpack(data: bytes) -> list[tuple[str, bytes]]:
    """The pairs of one datagram; a malformed tail is dropped."""
    out = []
    i = 0
    while i + _FRAME.size <= len(data):
        n_id, n_value = _FRAME.unpack_from(data, i)
        i += _FRAME.size
        if i + n_id + n_value > len(data):
            break
        try:
            command_id = data[i:i + n_id].decode()
        except UnicodeDecodeError:
            break
        out.append((command_id, data[i + n_id:i + n_id + n_value]))
        i += n_id + n_value
    return out


class ReplyNotifier:
    """The ledger's side: collects a batch's replies per reply partition, sends them once it is committed.

    The datagrams go out on a thread of their own, each waiting up to ``SEND_WAIT_S`` for room in the listener's
    socket: a Unix datagram socket queues only ``net.unix.max_dgram_qlen`` datagrams (10 on many hosts), and sent
    without waiting from the ledger's loop about a fifth of them found it full in the bulk workload (their
    callers then waited for the topic's copy). What the thread finds queued is sent per partition together (a
    waiter that fell behind gets one datagram for several batches, not one each).

    Why 200 ms: a verdict not told goes by the replies topic, whose waiter reads it with the gap wait (1 s), so a
    drop costs its callers about a second. On a machine short of CPU a gateway can miss its socket for more than
    the 20 ms waited before the nineteenth session: two datagrams dropped in the dispatch bench's level sent 264
    verdicts by the topic, a stall of 1.1 s for every getJob of that moment (its p99). A waiter whose socket stays
    full for the whole wait (hung, or gone without closing it) is told nothing for ``BACK_OFF_S``: the thread
    does not wait on it again meanwhile, so other waiters' verdicts are held up at most once per back-off."""

    def __init__(self, cfg: Config, on_untold: Callable[[], None] | None = None):
        self.cfg = cfg
        self.on = enabled(cfg)
        self._pending: dict[int, list[tuple[str, bytes, bool]]] = {}
        self._paths: dict[int, Path | None] = {}
        self._sock: socket.socket | None = None
        self._outbox = Outbox("local-replies-out", self._send_all)
        # replies kept from the topic whose telling failed: the ledger writes them (take_untold); on_untold wakes it
        self._untold: list[tuple[int, str, bytes]] = []
        self._untold_lock = threading.Lock()
        self._on_untold = on_untold
        self.stats = {"told": 0, "dropped": 0, "untold": 0}
        self._quiet_until: dict[int, float] = {}   # reply partition → told nothing before this (monotonic)
        if self.on:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(SEND_WAIT_S)

    def add(self, reply_to: int, command_id: str, value: bytes, kept: bool = False) -> None:
        """A verdict of the batch for the waiter of ``reply_to``. ``kept``: it was not written to the replies topic
        (its waiter listens here and asked for that): if telling it fails, ``take_untold`` hands it back."""
        if self.on:
            self._pending.setdefault(reply_to, []).append((command_id, value, kept))

    def take_untold(self) -> list[tuple[int, str, bytes]]:
        """(reply partition, command id, verdict) of kept replies that could not be told: for the topic."""
        with self._untold_lock:
            out, self._untold = self._untold, []
            return out

    def give_back_untold(self, untold: list[tuple[int, str, bytes]]) -> None:
        """Untold replies taken but not written (the ledger's batch was aborted): taken again next."""
        if untold:
            with self._untold_lock:
                self._untold[:0] = untold

    def _not_told(self, partition: int, replies: Iterable[tuple[str, bytes, bool]]) -> None:
        kept = [(partition, cid, value) for cid, value, keep in replies if keep]
        if kept:
            with self._untold_lock:
                self._untold += kept
            self.stats["untold"] += len(kept)
            if self._on_untold is not None:
                self._on_untold()

    def discard(self) -> None:
        """The batch was aborted: none of its verdicts is told."""
        self._pending.clear()

    def send(self) -> None:
        """After the batch's commit: its replies to each partition's listener, by the sending thread."""
        if not self._pending or self._sock is None:
            return
        pending, self._pending = self._pending, {}
        self._outbox.put(pending.items())

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until what ``send`` queued has been sent or dropped (tests)."""
        self._outbox.drain(timeout)

    def _send_all(self, queue: list[tuple[int, list[tuple[str, bytes, bool]]]]) -> None:
        by_partition: dict[int, list[tuple[str, bytes, bool]]] = {}
        for partition, replies in queue:
            by_partition.setdefault(partition, []).extend(replies)
        for partition, replies in by_partition.items():
            self._send(partition, replies)

    def _send(self, partition: int, replies: list[tuple[str, bytes, bool]]) -> None:
        sock = self._sock
        if partition not in self._paths:
            self._paths[partition] = socket_path(self.cfg, partition)
        path = self._paths[partition]
        if path is None or sock is None:
            self._not_told(partition, replies)
            return
        if time.monotonic() < self._quiet_until.get(partition, 0.0):
            self.stats["dropped"] += 1
            self._not_told(partition, replies)
            return
        groups, too_large = _grouped(replies)
        self._not_told(partition, too_large)
        for i, (datagram, group) in enumerate(groups):
            try:
                sock.sendto(datagram, os.fsencode(path))
                self.stats["told"] += 1
            except OSError as exc:
                # no listener (ENOENT, ECONNREFUSED), its buffer full for SEND_WAIT_S: the Kafka record answers
                self.stats["dropped"] += 1
                if not isinstance(exc, TimeoutError) and exc.errno not in (
                        errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                    log.debug("local reply to partition %d not sent: %s", partition, exc)
                if isinstance(exc, TimeoutError):
                    self._quiet_until[partition] = time.monotonic() + BACK_OFF_S
                    log.warning("local replies: the waiter of reply partition %d did not read its socket for %.1f s;"
                                " its verdicts go by the replies topic for %.0f s", partition, SEND_WAIT_S, BACK_OFF_S)
                if isinstance(exc, TimeoutError) or exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                    self._not_told(partition, [r for _, g in groups[i:] for r in g])
                    break
                self._not_told(partition, group)

    def close(self) -> None:
        self._outbox.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class ReplyListener:
    """The waiter's side: binds the reply partition's socket and hands each datagram's pairs to ``deliver``. On
    ``loop``, when given (the gateway's), the socket is one more reader of that loop and ``deliver`` runs there;
    else on a thread of its own. ``bound`` is False when the socket could not be bound (the Kafka records still
    answer).

    Why on the loop: a listening thread took each datagram, then handed its verdicts to the loop
    (``call_soon_threadsafe``: a write to the loop's wake-up pipe), and the two threads took turns at the GIL, a
    futex each way: at 500 getJob/s the gateway made thousands of futex calls a second, most of them these
    (nineteenth session). Read by the loop, a verdict resolves its request's future where it waits."""

    #: datagrams read per wake-up of the loop at most (then the loop serves its other readers before more)
    LOOP_BATCH = 64

    def __init__(self, cfg: Config, partition: int, deliver: Callable[[list[tuple[str, bytes]]], None],
                 loop: asyncio.AbstractEventLoop | None = None):
        self.deliver = deliver
        self.path = socket_path(cfg, partition) if enabled(cfg) else None
        self.bound = False
        self._stop = threading.Event()
        self._uid = os.getuid()
        self.stats = {"datagrams": 0, "refused": 0}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop = loop
        self._inode = -1
        if self.path is None:
            return
        try:
            # a socket file there was left by a process that held the partition before (the partition is claimed)
            sock = bind_own(self.path, 1 << 20)
            self._inode = os.stat(self.path).st_ino
        except OSError as exc:
            log.warning("no local replies on %s (%s): verdicts come from the replies topic only", self.path, exc)
            return
        self._sock = sock
        self.bound = True
        if loop is not None:
            sock.setblocking(False)
            call_on(loop, lambda: loop.add_reader(sock.fileno(), self._readable))
            return
        self._thread = threading.Thread(target=self._run, name="local-replies", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        for data in received(self._sock, self._uid, self._stop):
            self._got(data)

    def _readable(self) -> None:
        """On the loop: the datagrams waiting on the socket (up to ``LOOP_BATCH``), without blocking."""
        sock = self._sock
        if sock is None:
            return
        for _ in range(self.LOOP_BATCH):
            try:
                data = receive_own(sock, self._uid)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # not expected on a bound datagram socket; the next datagram wakes us again
                log.debug("local replies: receive failed: %s", exc)
                return
            self._got(data)

    def _got(self, data: bytes | None) -> None:
        if data is None:
            self.stats["refused"] += 1
            return
        self.stats["datagrams"] += 1
        pairs = unpack(data)
        if pairs:
            try:
                self.deliver(pairs)
            except Exception:  # noqa: BLE001 - one bad hand-over must not end the listener
                log.exception("local replies: delivery failed")

    def close(self) -> None:
        if self._sock is None:
            return
        self._stop.set()
        if self._loop is not None:
            loop, fd = self._loop, self._sock.fileno()
            call_on(loop, lambda: loop.remove_reader(fd), wait=True)
        else:
            # wake the blocked receive: it returns at once on a socket shut down (a datagram sent to the path could
            # reach another waiter that bound it since, leaving this thread blocked)
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
        self._sock.close()
        self._sock = None
        with contextlib.suppress(OSError):
            # unless another waiter of the partition has bound the path since (it is then that one's)
            if self.path is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
