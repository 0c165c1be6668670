"""The one Kafka wrapper: client settings, sending commands, consuming in batches, waiting for outcomes.

Everything that talks to Kafka goes through here, so client tuning (batching, isolation level,
group timeouts) is decided once. kafka-python is the default client (``crc32c`` is installed so its
record CRC checks run in C); ``[kafka] client = "confluent"`` (env ``PANDAES_KAFKA_CLIENT``) swaps in
confluent-kafka behind the same kafka-python API subset (``core/bus_confluent.py``, imported only then).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import msgspec
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

from core.config import Config
from schemas.messages import Command, Event, Rejected, decode_outcome, encode, key_of

log = logging.getLogger(__name__)


def partition_of(panda_id: int, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a job's key (and so the ledger's shard)."""
    return (murmur2(key_of(panda_id)) & 0x7FFFFFFF) % partitions


CLIENTS = ("kafka-python", "confluent")


def client_name(cfg: Config) -> str:
    """The configured Kafka client: "kafka-python" (default) or "confluent"."""
    name = cfg.kafka.get("client", "kafka-python") or "kafka-python"
    if name not in CLIENTS:
        raise ValueError(f"[kafka] client = {name!r}: expected one of {', '.join(CLIENTS)}")
    return name


def producer(cfg: Config, *, transactional_id: str | None = None, **overrides: Any) -> KafkaProducer:
    """An idempotent producer (acks=all); transactional when given an id (the ledger).

    Overrides use kafka-python's setting names whichever client is configured."""
    k = cfg.kafka
    settings: dict[str, Any] = dict(
        bootstrap_servers=k.bootstrap, acks="all", enable_idempotence=True, linger_ms=k.linger_ms,
        batch_size=256 * 1024, max_in_flight_requests_per_connection=5, client_id="pandaes",
    )
    if transactional_id:
        settings.update(transactional_id=transactional_id, transaction_timeout_ms=k.transaction_timeout_ms)
    settings.update(overrides)
    if client_name(cfg) == "confluent":
        from core import bus_confluent
        return bus_confluent.Producer(**settings)  # type: ignore[return-value]
    return KafkaProducer(**settings)


def consumer(cfg: Config, *topics: str, group_id: str | None, **overrides: Any) -> KafkaConsumer:
    """A read_committed consumer with manual commits. ``group_id=None`` for assign()-style readers."""
    k = cfg.kafka
    settings: dict[str, Any] = dict(
        bootstrap_servers=k.bootstrap, group_id=group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed",
        max_poll_records=k.max_poll_records, max_poll_interval_ms=k.max_poll_interval_ms,
        session_timeout_ms=k.session_timeout_ms, heartbeat_interval_ms=k.heartbeat_interval_ms,
        fetch_max_wait_ms=k.fetch_max_wait_ms, max_partition_fetch_bytes=8 * 1024 * 1024, client_id="pandaes",
    )
    settings.update(overrides)
    if client_name(cfg) == "confluent":
        from core import bus_confluent
        c: KafkaConsumer = bus_confluent.Consumer(**settings)  # type: ignore[assignment]
    else:
        c = KafkaConsumer(**settings)
    if topics:
        c.subscribe(list(topics))
    return c


class CommandSender:
    """Sends commands keyed by PandaID; thread-safe (both clients' producers are)."""

    def __init__(self, cfg: Config, prod: KafkaProducer | None = None):
        self.cfg = cfg
        self.topic = cfg.kafka.commands_topic
        self._producer = prod or producer(cfg)

    def send(self, cmd: Command) -> Future:
        return self._producer.send(self.topic, key=key_of(cmd.PandaID), value=encode(cmd))

    def send_many(self, cmds: Iterable[Command]) -> None:
        for cmd in cmds:
            self.send(cmd)

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout)

    def close(self) -> None:
        self._producer.close()


def read_partition(cfg: Config, topic: str, partition: int, start: int,
                   end: int | None = None) -> Iterable[Any]:
    """Every record of one partition from ``start`` up to the end seen when called (or ``end``)."""
    c = consumer(cfg, group_id=None, enable_auto_commit=False)
    tp = TopicPartition(topic, partition)
    try:
        c.assign([tp])
        if end is None:
            end = c.end_offsets([tp])[tp]
        if start >= end:
            return
        c.seek(tp, start)
        while True:
            batch = c.poll(timeout_ms=1000, max_records=5000).get(tp, [])
            for rec in batch:
                if rec.offset >= end:
                    return
                yield rec
            if c.position(tp) >= end:
                return
    finally:
        c.close()


def partitions(c: KafkaConsumer, topic: str) -> list[int]:
    """The topic's partitions, after a metadata fetch (a fresh consumer knows none until then)."""
    parts = c.partitions_for_topic(topic)
    if not parts:
        c.topics()  # forces a metadata request for every topic
        parts = c.partitions_for_topic(topic)
    if not parts:
        raise RuntimeError(f"topic {topic!r} does not exist on {c.config['bootstrap_servers']}")
    return sorted(parts)


def end_offsets(cfg: Config, topic: str) -> dict[int, int]:
    c = consumer(cfg, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in partitions(c, topic)]
        return {tp.partition: off for tp, off in c.end_offsets(tps).items()}
    finally:
        c.close()


class _Ref(msgspec.Struct):
    command_id: str = ""


_ref_decoder = msgspec.json.Decoder(_Ref)


class OutcomeWaiter:
    """Resolves futures with the ledger's answer (event or rejection) to a given command id.

    Reads panda.job-events and the rejected topic from their ends in a background thread, so
    ``expect()`` must be called before the command is sent. Used by the gateway (getJob waits for
    `sent`, updateJob for the verdict), the CLI and the tests.
    """

    def __init__(self, cfg: Config, on_event: Callable[[Event | Rejected], None] | None = None):
        self.cfg = cfg
        self._waiting: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._on_event = on_event
        self._thread = threading.Thread(target=self._run, name="outcome-waiter", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("outcome waiter could not reach Kafka within 30 s")

    def expect(self, command_id: str) -> Future:
        fut: Future = Future()
        with self._lock:
            self._waiting[command_id] = fut
        return fut

    def forget(self, command_id: str) -> None:
        with self._lock:
            self._waiting.pop(command_id, None)

    def _run(self) -> None:
        c = consumer(self.cfg, group_id=None, fetch_max_wait_ms=self.cfg.kafka.urgent_fetch_max_wait_ms)
        try:
            tps = []
            for topic in (self.cfg.kafka.events_topic, self.cfg.kafka.rejected_topic):
                tps += [TopicPartition(topic, p) for p in partitions(c, topic)]
            c.assign(tps)
            c.seek_to_end(*tps)
            for tp in tps:
                c.position(tp)  # resolve the lazy seek now, so nothing sent after ready is missed
            self._ready.set()
            while not self._stop.is_set():
                for records in c.poll(timeout_ms=200).values():
                    for rec in records:
                        self._deliver(rec.value)
        except Exception:  # pragma: no cover - surfaced through the futures timing out
            log.exception("outcome waiter stopped")
        finally:
            c.close()

    def _deliver(self, raw: bytes) -> None:
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
            fut.set_result(msg)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
