"""The Kafka port: what pandaes needs from a log, in its own types, and the helpers built on it.

Everything that talks to Kafka goes through here. The Protocols below say what a producer, a
consumer and an admin client must do for pandaes; ``core/adapters/`` holds one adapter per client
library, and only those modules import one. ``[kafka] client`` (env ``PANDAES_KAFKA_CLIENT``) picks
the adapter: ``"confluent"`` (default: librdkafka, far cheaper per message) or ``"kafka-python"`` (pure Python); an
adapter's client library is imported only when it is chosen.

The policy every adapter implements, so that it is decided once and not per caller:

* producers are idempotent with ``acks=all``; a keyed record sent without a partition goes to
  ``partition_for_key(key, n)`` (Kafka's default partitioner, so ``partition_of`` says where a job's
  records are whichever client wrote them); a transactional producer also fences its predecessor
  with the same transactional id at ``init_transactions``;
* consumers read ``read_committed``, never commit on their own, and start a partition their group
  has no offset for at its beginning.

Settings reach the adapters under pandaes' own names (the ``[kafka]`` keys and the factories'
keyword arguments); each adapter maps them onto its client's settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import importlib.util
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol, overload

import msgspec

from core.config import Config
from core.eventloop import call_on
from schemas.messages import Command, Event, Rejected, decode_outcome, encode, key_of

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- types
class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record(Protocol):
    """A consumed record. Adapters may hand out their client's own record object when it has
    these attributes (no copy per record); ``RecordTuple`` is the plain implementation."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...
    @property
    def timestamp(self) -> int: ...   # milliseconds since the epoch


class RecordTuple(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int


class Delivered(NamedTuple):
    """Where the broker stored a sent record."""

    topic: str
    partition: int
    offset: int


class Delivery(Protocol):
    """The broker's acknowledgement of one sent record, once it comes; a subset of
    ``concurrent.futures.Future``. A failed send raises (``result``) or returns (``exception``) the
    client's own error."""

    def result(self, timeout: float | None = None) -> Delivered: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def done(self) -> bool: ...
    def add_done_callback(self, fn: Callable[[Delivery], object]) -> None: ...


GroupMetadata = Any
"""A consumer's group membership (group, generation, member) as its client represents it: only
passed from ``Consumer.group_metadata`` to ``TransactionalProducer.send_offsets_to_transaction``."""

Offsets = Mapping[TopicPartition, int]
"""Partition → the next offset to read (the last processed offset + 1), as Kafka commits it."""


# ------------------------------------------------------------------------------------- the port
class Producer(Protocol):
    """An idempotent producer; thread-safe."""

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None) -> Delivery:
        """Queue a record (blocking only while the client's buffer is full)."""
        ...

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued record is acknowledged; raise if some are not within ``timeout``."""
        ...

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; fetches its metadata, so the first ``send`` does not wait for it."""
        ...

    def close(self) -> None:
        """Flush (a plain producer) or abandon the open transaction (a transactional one), then close."""
        ...


class TransactionalProducer(Producer, Protocol):
    """A producer whose records, and the consumed offsets sent with them, are committed atomically."""

    def init_transactions(self) -> None:
        """Register the transactional id: aborts what a predecessor with that id left open, fences it."""
        ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(self, offsets: Offsets, group: GroupMetadata) -> None:
        """Commit ``offsets`` for the consumer's group with this transaction. The full group metadata
        (not just the group id) lets the broker refuse a member that lost its partitions (KIP-447)."""
        ...

    def commit_transaction(self) -> None: ...

    def abort_transaction(self) -> None: ...


class Consumer(Protocol):
    """A read_committed consumer with manual commits; used by one thread at a time.

    A consumer either joins its group (``subscribe``) or reads partitions it picks (``assign``).
    """

    def subscribe(self, topics: Sequence[str], *,
                  on_assign: Callable[[set[TopicPartition]], None] | None = None,
                  on_revoke: Callable[[set[TopicPartition]], None] | None = None) -> None:
        """Join the group for ``topics``. The callbacks run while ``poll`` handles a rebalance
        (kafka-python may run them on its own thread): they may ``seek`` (inside ``on_assign`` that
        sets where an assigned partition starts) but not wait for the broker (``committed``,
        ``position``, ``poll``)."""
        ...

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions, from the group's offsets (or the beginning) unless sought."""
        ...

    def assignment(self) -> set[TopicPartition]: ...

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Mapping[TopicPartition, Sequence[Record]]:
        """Records of the assigned partitions, in offset order per partition (no empty lists); returns as
        soon as some are there, at most ``max_records`` (default: ``max_poll_records``), else ``{}``
        after ``timeout_ms`` (or earlier).

        A consumer whose polls found nothing for ``idle_after_ms`` **dozes**: it asks the broker for new
        records only every ``idle_fetch_max_wait_ms`` instead of every ``fetch_max_wait_ms``, until records
        come; then it reads at its own pace again. What it returns does not change, only when: the first
        records after a quiet spell can come up to about ``idle_fetch_max_wait_ms`` later. (On Apache Kafka a
        fetch returns as soon as records arrive; Tansu answers a fetch only after its whole wait, so without
        dozing a waiting consumer would cost the broker one fetch every few milliseconds, forever.)"""
        ...

    def rest(self, stop: threading.Event, longest_s: float) -> None:
        """While this consumer dozes (see ``poll``) and its next look is not due, wait for that look without
        polling: at most ``longest_s``, and no longer than until ``stop`` is set. Returns at once otherwise.

        A loop calls it after a poll that found nothing, so that at rest it wakes once per look instead of
        once per poll timeout (the timeout is short so that the loop sees ``stop`` promptly; ``stop`` wakes
        this wait at once). A rebalance that starts meanwhile is handled at the next poll, at most one look
        later. Clients whose polls are cheap to repeat (kafka-python) return at once."""
        ...

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """The next records of ``partition`` start at ``offset``; ``position`` says so at once."""
        ...

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Move to the end (read_committed) as it is now: what is written after the call is read."""
        ...

    def position(self, partition: TopicPartition) -> int:
        """The offset of the next record ``poll`` can return; moves past transaction markers."""
        ...

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]: ...

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The read_committed ends (last stable offsets)."""
        ...

    def fetched_ends(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The log ends as the last fetch responses reported them, without asking the broker (for lag metrics:
        ``end_offsets`` is a request per partition). The read_committed end where the client keeps it
        (librdkafka), else the high watermark (kafka-python: counts records of an open transaction). A partition
        not fetched yet is absent."""
        ...

    def wake(self) -> None:
        """Records are known to have come (told by another way than the topic): a dozing consumer reads at its
        busy pace from the next poll instead of at its next look, and one reading at its busy pace begins no quiet
        spell now (its idle clock starts again). Nothing changes for one that does not doze."""
        ...

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching these partitions (a reader done with them, or one with nobody to read for)."""
        ...

    def resume(self, *partitions: TopicPartition) -> None:
        """Fetch paused partitions again, from where they stopped (nothing skipped, nothing read twice)."""
        ...

    def commit(self, offsets: Offsets, *, asynchronous: bool = False) -> None:
        """Commit ``offsets`` for the group; works without joining it (sets a group's position)."""
        ...

    def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset of ``partition``, None if it has none."""
        ...

    def group_metadata(self) -> GroupMetadata: ...

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions, sorted; raises if the topic does not exist."""
        ...

    def close(self) -> None: ...


class Admin(Protocol):
    """Topics and consumer groups."""

    def topics(self) -> set[str]:
        """Every topic name: a metadata request, also the way to see that a broker answers."""
        ...

    def create_topics(self, partitions: Mapping[str, int],
                      configs: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Create topics (name → partition count; replication min(3, brokers)), with the topic
        configuration ``configs[name]`` if given (``retention.ms`` …). One that exists already is not
        an error, whatever its partition count or configuration: check ``partition_counts`` and
        ``topic_configs``."""
        ...

    def partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        """The partition count of each of ``topics`` that exists."""
        ...

    def topic_configs(self, topic: str) -> dict[str, str] | None:
        """The topic's configuration, or None when the broker reports none (Tansu): unknown."""
        ...

    def delete_topics(self, topics: Iterable[str]) -> None: ...

    def committed_offsets(self, group: str) -> dict[TopicPartition, int]:
        """The group's committed offsets (partitions it never committed are absent)."""
        ...

    def close(self) -> None: ...


class AdminError(RuntimeError):
    """The broker refused or failed an admin request; the message says which and why."""


# -------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True, slots=True)
class ProducerSettings:
    bootstrap: str
    linger_ms: int
    transactional_id: str | None = None
    transaction_timeout_ms: int = 60_000
    client_id: str = "pandaes"


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerSettings:
    bootstrap: str
    group_id: str | None
    fetch_max_wait_ms: int
    max_poll_records: int
    max_poll_interval_ms: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    client_id: str = "pandaes"
    idle_after_ms: int = 0            # 0: never doze (see Consumer.poll)
    idle_fetch_max_wait_ms: int = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class AdminSettings:
    bootstrap: str
    timeout_ms: int = 10_000
    client_id: str = "pandaes-admin"


class Adapter(Protocol):
    """What an adapter module (``core/adapters/<client>.py``) provides."""

    def producer(self, settings: ProducerSettings) -> Producer: ...
    def transactional_producer(self, settings: ProducerSettings) -> TransactionalProducer: ...
    def consumer(self, settings: ConsumerSettings) -> Consumer: ...
    def admin(self, settings: AdminSettings) -> Admin: ...


# ------------------------------------------------------------------------------------ factories
CLIENTS = {"kafka-python": ("core.adapters.kafka_python", "kafka"),
           "confluent": ("core.adapters.confluent", "confluent_kafka")}
DEFAULT_CLIENT = "confluent"


def client_name(cfg: Config) -> str:
    """The configured Kafka client: "confluent" (default) or "kafka-python"."""
    name = cfg.kafka.get("client", DEFAULT_CLIENT) or DEFAULT_CLIENT
    if name not in CLIENTS:
        raise ValueError(f"[kafka] client = {name!r}: expected one of {', '.join(CLIENTS)}")
    return name


def client_available(name: str) -> bool:
    """Whether the client library of adapter ``name`` is installed (without importing it)."""
    return importlib.util.find_spec(CLIENTS[name][1]) is not None


def adapter(cfg: Config) -> Adapter:
    """The adapter module of the configured client."""
    return importlib.import_module(CLIENTS[client_name(cfg)][0])  # type: ignore[return-value]


@overload
def producer(cfg: Config, *, transactional_id: str, linger_ms: int | None = None) -> TransactionalProducer: ...
@overload
def producer(cfg: Config, *, transactional_id: None = None, linger_ms: int | None = None) -> Producer: ...


_client_id = "pandaes"   # until name_clients() names this process's component


def name_clients(component: str) -> None:
    """Name every Kafka client this process makes after its component (``pandaes-ledger``, ``pandaes-gateway-0``).

    The broker sees the name in every request header: its request logs, quotas and metrics then say which
    component asked. That is how the request census in docs/performance.md counted who costs the broker what.
    Kafka allows letters, digits, ``.``, ``_`` and ``-``; anything else becomes ``_``."""
    global _client_id
    _client_id = "pandaes-" + re.sub(r"[^A-Za-z0-9._-]", "_", component)


def client_id() -> str:
    """The client id this process's Kafka clients send (see ``name_clients``)."""
    return _client_id


def producer(cfg: Config, *, transactional_id: str | None = None,
             linger_ms: int | None = None) -> Producer | TransactionalProducer:
    """An idempotent producer; transactional when given a transactional id (the ledger, restore)."""
    k = cfg.kafka
    settings = ProducerSettings(bootstrap=k.bootstrap, linger_ms=int(k.linger_ms if linger_ms is None else linger_ms),
                                transactional_id=transactional_id,
                                transaction_timeout_ms=int(k.transaction_timeout_ms), client_id=_client_id)
    if transactional_id:
        return adapter(cfg).transactional_producer(settings)
    return adapter(cfg).producer(settings)


def consumer(cfg: Config, *topics: str, group_id: str | None, fetch_max_wait_ms: int | None = None,
             max_poll_records: int | None = None, idle_fetch_max_wait_ms: int | None = None) -> Consumer:
    """A consumer, subscribed to ``topics`` when given. ``group_id=None`` for assign()-style readers.
    ``idle_fetch_max_wait_ms``: this reader's doze instead of ``[kafka]``'s (one no request waits on)."""
    k = cfg.kafka
    settings = ConsumerSettings(
        bootstrap=k.bootstrap, group_id=group_id, client_id=_client_id,
        fetch_max_wait_ms=int(k.fetch_max_wait_ms if fetch_max_wait_ms is None else fetch_max_wait_ms),
        max_poll_records=int(k.max_poll_records if max_poll_records is None else max_poll_records),
        max_poll_interval_ms=int(k.max_poll_interval_ms), session_timeout_ms=int(k.session_timeout_ms),
        heartbeat_interval_ms=int(k.heartbeat_interval_ms),
        idle_after_ms=int(k.idle_after_ms), idle_fetch_max_wait_ms=int(
            k.idle_fetch_max_wait_ms if idle_fetch_max_wait_ms is None else idle_fetch_max_wait_ms))
    c = adapter(cfg).consumer(settings)
    if topics:
        c.subscribe(list(topics))
    return c


def admin(cfg: Config, *, bootstrap: str | None = None, timeout_ms: int = 10_000) -> Admin:
    """An admin client for ``cfg``'s broker (or ``bootstrap``); close it after use."""
    return adapter(cfg).admin(AdminSettings(bootstrap=bootstrap or cfg.kafka.bootstrap, timeout_ms=timeout_ms))


# ----------------------------------------------------------------------------------- partitioner
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """32-bit MurmurHash2 (seed 0x9747b28c) as Kafka's default partitioner computes it, unsigned."""
    n = len(data)
    h = (0x9747B28C ^ n) & _MASK
    body = n & ~3
    for (k,) in struct.iter_unpack("<I", data[:body]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    rest = n & 3
    if rest:
        if rest == 3:
            h ^= data[body + 2] << 16
        if rest >= 2:
            h ^= data[body + 1] << 8
        h = ((h ^ data[body]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partition_of(panda_id: int, partitions: int) -> int:
    """The partition of a job's records (and so the ledger's shard that judges it)."""
    return partition_for_key(key_of(panda_id), partitions)


# -------------------------------------------------------------------------------------- helpers
class CommandSender:
    """Sends commands keyed by PandaID; thread-safe (producers are).

    ``lazy``: the producer is made at the first send, not here. Why: a daemon worker takes a sender for every
    script run and, on an idle system, sends nothing; a producer is librdkafka's threads and a delivery thread,
    each waking several times a second for the holder's whole life."""

    def __init__(self, cfg: Config, prod: Producer | None = None, *, lazy: bool = False,
                 linger_ms: int | None = None):
        self.cfg = cfg
        self.topic = cfg.kafka.commands_topic
        self.linger_ms = linger_ms   # None: [kafka] linger_ms
        self._made: Producer | None = prod if prod is not None or lazy else producer(cfg, linger_ms=linger_ms)
        # each command the broker stores is also handed to the ledger of its partition on this host
        # (core/local_commands.py): it judges it at its turn without waiting for its fetch of the topic
        from core.local_commands import CommandForwarder
        self.forwarder = CommandForwarder(cfg)
        self._partitions = 0   # the topic's, once warm_up read them: ``hand`` needs them to place a command

    @property
    def _producer(self) -> Producer:
        if self._made is None:
            self._made = producer(self.cfg, linger_ms=self.linger_ms)
        return self._made

    def send(self, cmd: Command) -> Delivery:
        return self.send_encoded(cmd, encode(cmd))

    def send_encoded(self, cmd: Command, raw: bytes) -> Delivery:
        """Send ``cmd`` already encoded as ``raw`` (a caller that checked the encoding need not encode twice)."""
        key = key_of(cmd.PandaID)
        delivery = self._producer.send(self.topic, raw, key=key)
        if delivery is not None:   # a stand-in producer of a test may return none
            self.forwarder.follow(delivery, key, raw)
        return delivery

    def hand_many(self, cmds: Sequence[tuple[Command, bytes]]) -> list[bool]:
        """Hand each ``(cmd, raw)`` (``raw``: its encoding) straight to the ledger of its partition on this host, in
        no topic (``core/local_commands.py``: only for a command whose loss its caller repairs), packed per
        partition (``CommandForwarder.hand_many``). Whether each was handed: not when it cannot be (no such ledger
        here, its socket full, or ``warm_up`` not called): the caller sends it instead."""
        if not self._partitions:
            return [False] * len(cmds)
        return self.forwarder.hand_many([(partition_of(cmd.PandaID, self._partitions), key_of(cmd.PandaID), raw)
                                         for cmd, raw in cmds])

    def send_many(self, cmds: Iterable[Command]) -> None:
        for cmd in cmds:
            self.send(cmd)

    def warm_up(self) -> None:
        """Fetch the commands topic's metadata now, so the first send does not wait for it."""
        self._partitions = len(self._producer.partitions(self.topic))

    def flush(self, timeout: float | None = None) -> None:
        if self._made is not None:   # a lazy sender that sent nothing has nothing to flush
            self._made.flush(timeout)

    def close(self) -> None:
        try:
            if self._made is not None:
                self._made.close()   # flushes: the last deliveries are forwarded first
        finally:
            self.forwarder.close()


def read_partition(cfg: Config, topic: str, partition: int, start: int,
                   end: int | None = None) -> Iterator[Record]:
    """Every record of one partition from ``start`` up to the end seen when called (or ``end``)."""
    c = consumer(cfg, group_id=None)
    tp = TopicPartition(topic, partition)
    try:
        c.assign([tp])
        if end is None:
            end = c.end_offsets([tp])[tp]
        if start >= end:
            return
        c.seek(tp, start)
        while True:
            batch = c.poll(timeout_ms=1000, max_records=5000).get(tp, ())
            for rec in batch:
                if rec.offset >= end:
                    return
                yield rec
            if c.position(tp) >= end:
                return
    finally:
        c.close()


def partitions(cfg: Config, topic: str) -> list[int]:
    """The topic's partitions (raises if it does not exist)."""
    c = consumer(cfg, group_id=None)
    try:
        return c.partitions(topic)
    finally:
        c.close()


def end_offsets(cfg: Config, topic: str) -> dict[int, int]:
    """Partition → read_committed end offset of ``topic``."""
    c = consumer(cfg, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions(topic)]
        return {tp.partition: off for tp, off in c.end_offsets(tps).items()}
    finally:
        c.close()


def group_lag(cfg: Config, group: str, topic: str) -> dict[int, int]:
    """Partition → records of ``topic`` the group has not committed yet (markers count, as in Kafka)."""
    a = admin(cfg)
    try:
        committed = {tp.partition: off for tp, off in a.committed_offsets(group).items() if tp.topic == topic}
    finally:
        a.close()
    return {p: max(0, end - committed.get(p, 0)) for p, end in end_offsets(cfg, topic).items()}


class _Ref(msgspec.Struct):
    command_id: str = ""


_ref_decoder = msgspec.json.Decoder(_Ref)


class BrokerUnreachable(RuntimeError):
    """The broker did not answer in time (the command line turns this into one line, cli/outage.py)."""


class OutcomeWaiter:
    """Resolves futures with the ledger's answer (event or rejection) to a given command id.

    Reads panda.job-events and the rejected topic from their ends in a background thread, so
    ``expect()`` must be called before the command is sent. Used by the CLI, the bench and the tests.

    With ``reply_partition`` it reads only that partition of the replies topic instead: the answers to
    commands sent with ``reply_to`` = that partition, which the ledger writes there (keyed by command id) in
    the transaction of the event or rejection. The gateway waits this way (getJob for `sent`, updateJob for
    the verdict): one partition fetched instead of every partition of two topics, and a record for another
    waiter that shares the partition is passed over by its key, without parsing its value. Commands sent
    without ``reply_to`` are never answered there.

    ``expect_on`` is ``expect`` for a caller on an event loop (the gateway): its future is the loop's own, and
    the answers one poll brings for that loop are handed over together, in one ``call_soon_threadsafe`` — one
    wake-up of the loop per poll instead of one per answer, and no ``concurrent.futures.Future`` (a lock and a
    condition each) nor ``asyncio.wrap_future`` (two futures chained by callbacks) per command.

    A waiter nobody has expected anything from for ``idle_after_ms`` (and without ``on_event``) pauses its
    partitions: it asks the broker nothing until the next ``expect()``, then goes on from where it stopped
    (so nothing written meanwhile is missed).

    With a reply partition, a ledger on the same host also tells the waiter its committed verdicts through a
    Unix socket (``core/local_replies.py``, ``[ledger] local_replies``), read on ``listen_on`` when given (the
    gateway's loop: the verdict resolves its future there, no thread hands it over): whichever copy comes first
    answers; the topic's record is the durable fallback, the second copy is ignored. While the socket brings the
    verdicts first, the topic is read with ``[kafka] gap_fetch_max_wait_ms`` (1 s) instead of the urgent wait: on the
    embedded broker every fetch that returns records costs in proportion to the batches its partition holds
    (docs/performance.md, ninth session), on the broker's one worker thread, and these would only bring second
    copies (100 ms before the fifteenth session: with the projector's fetches gone, the replies partition's were
    what the getJob level's requests queued behind). A copy from the
    topic may come first now and then (its fetch can end between the commit and the datagram); when the socket
    has told nothing for ``LOCAL_SILENT_S`` while the topic answered ``KAFKA_FIRST_TO_URGENT`` verdicts first (no
    ledger on this host, or its datagrams dropped), the waiter reads the topic with the urgent wait from then on
    (``reads_urgently``).
    """

    KAFKA_FIRST_TO_URGENT = 20   # verdicts answered by the topic first since the socket last told one …
    LOCAL_SILENT_S = 5.0         # … while the socket has been silent this long

    def __init__(self, cfg: Config, on_event: Callable[[Event | Rejected], None] | None = None, *,
                 reply_partition: int | None = None, listen: bool = True,
                 listen_on: asyncio.AbstractEventLoop | None = None):
        if reply_partition is not None and on_event is not None:
            raise ValueError("OutcomeWaiter: on_event sees every outcome; a reply partition holds only some")
        self.cfg = cfg
        self.reply_partition = reply_partition
        from core.local_replies import ReplyListener, enabled

        listens = reply_partition is not None and enabled(cfg) and listen
        # the topic is only the fallback while a ledger on this host tells the verdicts first (see the docstring)
        self.reads_urgently = not listens
        self._kafka_first = 0                # verdicts the topic answered first since the socket last told one
        self._local_at = time.monotonic()    # when the socket last told a verdict (or the waiter started)
        self._waiting: dict[str, Future | asyncio.Future] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failed: BaseException | None = None   # why the reading thread could not start
        self._on_event = on_event
        self._local: Any = None              # core.local_replies.ReplyListener, with a reply partition
        self._wanted = threading.Event()     # set by expect(): a paused waiter reads again
        self._thread = threading.Thread(target=self._run, name="outcome-waiter", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise BrokerUnreachable("outcome waiter could not reach Kafka within 30 s")
        if self._failed is not None:
            raise self._failed
        # a ledger on this host also tells it the committed verdicts directly (core/local_replies.py), bound
        # once the topic is read from its end: whichever copy of a verdict comes first answers, the other is ignored
        if listens:
            self._local = ReplyListener(cfg, reply_partition, self._deliver_local, loop=listen_on)

    @property
    def listening(self) -> bool:
        """Whether a ledger on this host can tell this waiter its verdicts (its reply partition's socket is bound)."""
        return self._local is not None and self._local.bound

    def expect(self, command_id: str) -> Future:
        fut: Future = Future()
        with self._lock:
            self._waiting[command_id] = fut
        self._wanted.set()
        return fut

    def expect_on(self, command_id: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """``expect`` for a caller on ``loop`` (call it there): a future of that loop, resolved there."""
        fut = loop.create_future()
        with self._lock:
            self._waiting[command_id] = fut
        if not self._wanted.is_set():   # set() takes the event's condition lock: only when it changes anything
            self._wanted.set()
        return fut

    def forget(self, command_id: str) -> None:
        with self._lock:
            self._waiting.pop(command_id, None)

    def _fetch_wait_ms(self) -> int:
        k = self.cfg.kafka
        return int(k.urgent_fetch_max_wait_ms if self.reads_urgently else k.gap_fetch_max_wait_ms)

    def _run(self) -> None:
        c = consumer(self.cfg, group_id=None, fetch_max_wait_ms=self._fetch_wait_ms())
        try:
            tps = []
            if self.reply_partition is not None:
                tps = [TopicPartition(self.cfg.kafka.replies_topic, self.reply_partition)]
                if self.reply_partition not in c.partitions(tps[0].topic):
                    raise ValueError(f"Kafka topic {tps[0].topic!r} has no partition {self.reply_partition}")
            else:
                for topic in (self.cfg.kafka.events_topic, self.cfg.kafka.rejected_topic):
                    tps += [TopicPartition(topic, p) for p in c.partitions(topic)]
            c.assign(tps)
            c.seek_to_end(*tps)   # resolved now: nothing sent after ready is missed
            self._ready.set()
            idle_after = int(self.cfg.kafka.idle_after_ms) / 1000 if self._on_event is None else 0.0
            last_wanted, paused = time.monotonic(), False
            while not self._stop.is_set():
                if idle_after > 0:
                    with self._lock:
                        wanted = bool(self._waiting)
                    now = time.monotonic()
                    if wanted:
                        last_wanted = now
                    elif not paused and now - last_wanted >= idle_after:
                        c.pause(*tps)
                        paused = True
                    if paused:
                        if not wanted:
                            self._wanted.wait(10.0)   # expect() and close() set it: no need to look often
                            self._wanted.clear()
                            continue
                        c.resume(*tps)
                        paused = False
                handoff: list[tuple[asyncio.Future, Event | Rejected]] = []
                for records in c.poll(timeout_ms=200).values():
                    if self.reply_partition is not None:
                        self._deliver_replies(records, handoff)
                        continue
                    for rec in records:
                        self._deliver(rec.value, handoff)
                if handoff:
                    _hand_over(handoff)
                if (not self.reads_urgently and self._kafka_first >= self.KAFKA_FIRST_TO_URGENT
                        and time.monotonic() - self._local_at >= self.LOCAL_SILENT_S):
                    c = self._read_urgently(c, tps)
                    paused = False
        except Exception as exc:  # pragma: no cover - surfaced through the futures timing out
            if not self._ready.is_set():   # could not start: the constructor raises it
                self._failed = exc
                self._ready.set()
                return
            log.exception("outcome waiter stopped")
        finally:
            c.close()

    def _read_urgently(self, c: Consumer, tps: list[TopicPartition]) -> Consumer:
        """The same partitions read on from where ``c`` stands, by a consumer with the urgent fetch wait."""
        positions = {tp: c.position(tp) for tp in tps}
        self.reads_urgently = True
        fresh = consumer(self.cfg, group_id=None, fetch_max_wait_ms=self._fetch_wait_ms())
        fresh.assign(tps)
        for tp, offset in positions.items():
            fresh.seek(tp, offset)
        c.close()
        log.warning("%d verdicts came from %s and none from the ledger on this host for %.0f s (no ledger here, "
                    "or its datagrams dropped): reading the topic with the urgent fetch wait (%d ms) from now on",
                    self._kafka_first, tps[0].topic, time.monotonic() - self._local_at, self._fetch_wait_ms())
        return fresh

    def _deliver_replies(self, records: Sequence[Record], handoff: list) -> None:
        # the key is the command id: a reply for another waiter on the partition is not parsed at all
        for rec in records:
            try:
                command_id = rec.key.decode() if rec.key else ""
            except UnicodeDecodeError:
                continue
            with self._lock:
                fut = self._waiting.pop(command_id, None)
            if fut is None or fut.done():
                continue
            self._kafka_first += 1
            try:
                _settle(fut, decode_outcome(rec.value), handoff)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("undecodable reply to command %s skipped", command_id)

    def _deliver_local(self, pairs: list[tuple[str, bytes]]) -> None:
        """Verdicts told by a ledger on this host (already committed), on the listener's thread or loop."""
        handoff: list[tuple[asyncio.Future, Event | Rejected]] = []
        for command_id, value in pairs:
            with self._lock:
                fut = self._waiting.pop(command_id, None)
            if fut is None or fut.done():
                continue
            self._kafka_first, self._local_at = 0, time.monotonic()
            try:
                _settle(fut, decode_outcome(value), handoff)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("undecodable local reply to command %s skipped", command_id)
        if handoff:
            _hand_over(handoff)

    def _deliver(self, raw: bytes, handoff: list) -> None:
        # Most outcomes are for other callers: read just the command id, decode fully only on a match.
        if self._on_event is None:
            try:
                ref = _ref_decoder.decode(raw)
            except msgspec.DecodeError:
                return
            with self._lock:
                fut = self._waiting.pop(ref.command_id, None)
            if fut is None:
                return
        else:
            fut = None
        try:
            msg = decode_outcome(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("undecodable outcome message skipped")
            return
        if self._on_event is not None:
            self._on_event(msg)
            with self._lock:
                fut = self._waiting.pop(msg.command_id, None)
        if fut is not None and not fut.done():
            _settle(fut, msg, handoff)

    def close(self) -> None:
        self._stop.set()
        self._wanted.set()
        if self._local is not None:
            self._local.close()
        self._thread.join(5)


def _settle(fut: Future | asyncio.Future, outcome: Event | Rejected,
            handoff: list[tuple[asyncio.Future, Event | Rejected]]) -> None:
    """A thread's future is resolved at once; a loop's future joins ``handoff`` (resolved on its loop)."""
    if isinstance(fut, Future):
        fut.set_result(outcome)
    else:
        handoff.append((fut, outcome))


def _hand_over(handoff: list[tuple[asyncio.Future, Event | Rejected]]) -> None:
    """The answers of one poll to their loops' futures: one hand-over per loop (``eventloop.call_on``)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Event | Rejected]]] = {}
    for fut, outcome in handoff:
        by_loop.setdefault(fut.get_loop(), []).append((fut, outcome))
    for loop, answers in by_loop.items():
        # on the loop itself (a reply listener reading on it) at once; a closed loop: nobody is waiting any more
        call_on(loop, functools.partial(_resolve, answers))


def _resolve(answers: list[tuple[asyncio.Future, Event | Rejected]]) -> None:
    """On the futures' loop. A future given up meanwhile (timed out, cancelled) is left as it is."""
    for fut, outcome in answers:
        if not fut.done():
            fut.set_result(outcome)
