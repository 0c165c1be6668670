"""confluent-kafka (librdkafka) behind the kafka-python API subset that ``core.bus`` callers use.

Selected by ``[kafka] client = "confluent"`` (env ``PANDAES_KAFKA_CLIENT``); imported only then.
Callers keep kafka-python's types: ``kafka.TopicPartition`` keys, ``OffsetAndMetadata`` offsets,
``ConsumerRebalanceListener`` listeners, records with ``.topic .partition .offset .key .value``.

Semantics kept from kafka-python, and how:

* ``poll(timeout_ms, max_records)`` returns as soon as something is there: one blocking
  ``Consumer.poll`` (which also runs rebalance callbacks), then ``consume(n - 1, 0.001)`` drains what
  is fetched (librdkafka enqueues a fetch response partition by partition; the 1 ms lets the rest of
  it arrive). librdkafka's ``consume(n, timeout)`` alone would wait the whole timeout for ``n``.
* Rebalance listeners run inside ``poll`` (librdkafka calls them on the polling thread, so blocking
  consumer calls are allowed there, unlike kafka-python). ``seek`` called from
  ``on_partitions_assigned`` becomes the start offset of the ``assign`` that follows the callback.
* ``position`` is the next offset the application will see. librdkafka forgets it on ``seek`` (it
  reports -1001 until the next fetch), so positions set by seek/assign are tracked here; once a
  record was consumed librdkafka's own position is used (it moves past transaction markers).
* ``seek_to_end`` / ``seek_to_beginning`` resolve the offset now (a query of the watermarks, with
  the consumer's isolation level), so a reader that is "ready" cannot miss what is written next.
* ``send`` returns a ``concurrent.futures.Future`` that also has kafka-python's ``get``,
  ``add_callback`` and ``add_errback``; delivery reports are served by a daemon thread per producer.
* Keys are partitioned with ``murmur2_random`` (Java's and kafka-python's default partitioner), so
  ``core.bus.partition_of`` holds for both clients.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import confluent_kafka as ck
from kafka import TopicPartition

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("librdkafka")   # librdkafka's own log lines, instead of raw stderr

# kafka-python setting → librdkafka setting. Anything else (or a dotted librdkafka name) is an error /
# passed through as is, so a caller's override is never silently dropped.
_COMMON = {
    "bootstrap_servers": "bootstrap.servers", "client_id": "client.id",
}
_PRODUCER = {
    **_COMMON, "acks": "acks", "enable_idempotence": "enable.idempotence", "linger_ms": "linger.ms",
    "batch_size": "batch.size", "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
    "transactional_id": "transactional.id", "transaction_timeout_ms": "transaction.timeout.ms",
    "retries": "retries", "request_timeout_ms": "request.timeout.ms",
    "compression_type": "compression.type",
}
_CONSUMER = {
    **_COMMON, "group_id": "group.id", "enable_auto_commit": "enable.auto.commit",
    "auto_offset_reset": "auto.offset.reset", "isolation_level": "isolation.level",
    "max_poll_interval_ms": "max.poll.interval.ms", "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms", "fetch_max_wait_ms": "fetch.wait.max.ms",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes", "fetch_min_bytes": "fetch.min.bytes",
    "auto_commit_interval_ms": "auto.commit.interval.ms",
}
_ADAPTER_ONLY = {"max_poll_records"}   # handled here, not by librdkafka
_DRAIN_WAIT_S = 0.001


def _translate(settings: dict[str, Any], table: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _ADAPTER_ONLY:
            continue
        if "." in key:
            name = key
        elif key in table:
            name = table[key]
        else:
            raise TypeError(f"kafka setting {key!r} has no confluent-kafka equivalent in core.bus_confluent")
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        out[name] = value
    return out


def _ctp(tp: TopicPartition, offset: int | None = None) -> ck.TopicPartition:
    if offset is None:
        return ck.TopicPartition(tp.topic, tp.partition)
    return ck.TopicPartition(tp.topic, tp.partition, offset)


def _ktp(tp: ck.TopicPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def _check(tps: Iterable[ck.TopicPartition]) -> None:
    for tp in tps:
        if tp.error is not None:
            raise ck.KafkaException(tp.error)


# ------------------------------------------------------------------------------------------ records
class Record:
    """A consumed record with kafka-python's ConsumerRecord attribute names."""

    __slots__ = ("topic", "partition", "offset", "key", "value", "timestamp", "headers")

    def __init__(self, msg: ck.Message):
        self.topic = msg.topic()
        self.partition = msg.partition()
        self.offset = msg.offset()
        self.key = msg.key()
        self.value = msg.value()
        self.timestamp = msg.timestamp()[1]
        self.headers = msg.headers() or []

    def __repr__(self) -> str:
        return f"Record({self.topic}, {self.partition}, {self.offset}, key={self.key!r})"


class RecordMetadata:
    __slots__ = ("topic", "partition", "offset")

    def __init__(self, msg: ck.Message):
        self.topic, self.partition, self.offset = msg.topic(), msg.partition(), msg.offset()


class SendFuture(Future):
    """A concurrent Future with kafka-python's FutureRecordMetadata conveniences."""

    def get(self, timeout: float | None = None) -> RecordMetadata:
        return self.result(timeout)

    def add_callback(self, fn, *args, **kwargs) -> SendFuture:
        self.add_done_callback(lambda f: f.exception() is None and fn(*args, f.result(), **kwargs))
        return self

    def add_errback(self, fn, *args, **kwargs) -> SendFuture:
        self.add_done_callback(lambda f: f.exception() is not None and fn(*args, f.exception(), **kwargs))
        return self

    def succeeded(self) -> bool:
        return self.done() and self.exception() is None

    def failed(self) -> bool:
        return self.done() and self.exception() is not None


# ----------------------------------------------------------------------------------------- producer
class Producer:
    """kafka-python ``KafkaProducer`` subset over ``confluent_kafka.Producer``."""

    def __init__(self, **settings: Any):
        self.config = dict(settings)
        conf = _translate(settings, _PRODUCER)
        conf.setdefault("partitioner", "murmur2_random")
        conf.setdefault("logger", _rdkafka_log)
        self._p = ck.Producer(conf)
        self._transactional = "transactional.id" in conf
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve, name="confluent-delivery", daemon=True)
        self._poller.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            self._p.poll(0.05)

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             partition: int | None = None, headers: list | None = None, timestamp_ms: int | None = None) -> SendFuture:
        fut = SendFuture()

        def delivered(err, msg) -> None:
            if err is not None:
                fut.set_exception(ck.KafkaException(err))
            else:
                fut.set_result(RecordMetadata(msg))

        kwargs: dict[str, Any] = {"value": value, "key": key, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._p.produce(topic, **kwargs)
                return fut
            except BufferError:       # local queue full: let deliveries drain, like kafka-python blocking
                self._p.poll(0.05)

    def flush(self, timeout: float | None = None) -> None:
        left = self._p.flush(-1 if timeout is None else timeout)
        if left:
            raise ck.KafkaException(ck.KafkaError(ck.KafkaError._TIMED_OUT,
                                                  f"{left} message(s) still undelivered after flush"))

    def partitions_for(self, topic: str) -> set[int]:
        md = self._p.list_topics(topic, timeout=10).topics.get(topic)
        return set(md.partitions) if md is not None and md.error is None else set()

    def init_transactions(self, timeout: float = 60) -> None:
        self._p.init_transactions(timeout)

    def begin_transaction(self) -> None:
        self._p.begin_transaction()

    def send_offsets_to_transaction(self, offsets: dict, consumer_group_metadata: Any, timeout: float = 60) -> None:
        tps = [_ctp(tp, om.offset) for tp, om in offsets.items()]
        self._p.send_offsets_to_transaction(tps, consumer_group_metadata, timeout)

    def commit_transaction(self, timeout: float = 60) -> None:
        self._p.commit_transaction(timeout)

    def abort_transaction(self, timeout: float = 60) -> None:
        self._p.abort_transaction(timeout)

    def close(self, timeout: float | None = None) -> None:
        if self._closed.is_set():
            return
        try:
            if self._transactional:
                # what is not committed is abandoned (as kafka-python does); Producer.close() would try
                # to abort the transaction and hang on a fenced producer
                self._p.purge(True, True, False)
            else:
                self._p.flush(-1 if timeout is None else timeout)
        finally:
            self._closed.set()
            self._poller.join(5)
            if not self._transactional:
                close = getattr(self._p, "close", None)
                if close is not None:
                    close()


# ----------------------------------------------------------------------------------------- consumer
class Consumer:
    """kafka-python ``KafkaConsumer`` subset over ``confluent_kafka.Consumer``."""

    def __init__(self, **settings: Any):
        self.config = dict(settings)
        self._max_records = int(settings.get("max_poll_records") or 500)
        conf = _translate(settings, _CONSUMER)
        if not conf.get("group.id"):
            # librdkafka insists on a group id; assign()-style readers never join or commit with it
            conf["group.id"] = f"pandaes-assign-{uuid.uuid4().hex[:12]}"
        self._grouped = settings.get("group_id") is not None
        self._reset = str(conf.get("auto.offset.reset", "latest"))
        conf.setdefault("logger", _rdkafka_log)
        # librdkafka refuses max.poll.interval.ms < session.timeout.ms (kafka-python accepts it; the
        # test suite uses 3 s / 6 s): the poll interval is raised to the session timeout then
        if "max.poll.interval.ms" in conf and "session.timeout.ms" in conf:
            conf["max.poll.interval.ms"] = max(int(conf["max.poll.interval.ms"]), int(conf["session.timeout.ms"]))
        self._c = ck.Consumer(conf)
        self._listener = None
        self._assigned: set[TopicPartition] = set()
        self._in_assign = False
        self._pending: dict[TopicPartition, int] = {}   # seeks made inside on_partitions_assigned
        self._pos: dict[TopicPartition, int] = {}       # positions set by seek/assign, not yet fetched past
        # assign() is applied lazily (at the next poll), with the offsets of the seeks made meanwhile:
        # librdkafka refuses a seek on a partition whose assignment it has not started (_STATE/_OUTDATED)
        self._lazy: dict[TopicPartition, int] | None = None
        # seeks on fetching partitions are applied together at the next poll, so the partitions
        # restart fetching together (one poll then sees them all, as with kafka-python's fetcher)
        self._deferred: dict[TopicPartition, int] = {}

    # ----------------------------------------------------------------------------- subscription
    def subscribe(self, topics: Iterable[str] = (), pattern: str | None = None, listener: Any = None) -> None:
        self._listener = listener
        names = list(topics) if topics else [f"^{pattern}"]
        self._c.subscribe(names, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _on_assign(self, _c, parts: list[ck.TopicPartition]) -> None:
        tps = {_ktp(p) for p in parts}
        self._pending = {}
        if self._listener is not None:
            self._in_assign = True
            try:
                self._listener.on_partitions_assigned(tps)
            finally:
                self._in_assign = False
        self._c.assign([_ctp(tp, self._pending.get(tp, ck.OFFSET_INVALID)) for tp in sorted(tps)])
        self._assigned = set(tps)
        for tp in tps:
            self._pos.pop(tp, None)
            self._deferred.pop(tp, None)
        self._pos.update(self._pending)
        self._pending = {}

    def _on_revoke(self, _c, parts: list[ck.TopicPartition]) -> None:
        tps = {_ktp(p) for p in parts}
        try:
            if self._listener is not None:
                self._listener.on_partitions_revoked(tps)
        finally:
            self._c.unassign()
            self._assigned -= tps
            for tp in tps:
                self._pos.pop(tp, None)
                self._deferred.pop(tp, None)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        tps = list(partitions)
        self._assigned = set(tps)
        self._pos = {}
        self._deferred = {}
        self._lazy = {tp: ck.OFFSET_INVALID for tp in tps}

    def _apply_assign(self) -> None:
        if self._lazy is not None:
            lazy, self._lazy = self._lazy, None
            self._c.assign([_ctp(tp, off) for tp, off in lazy.items()])

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def unsubscribe(self) -> None:
        self._c.unsubscribe()
        self._assigned = set()

    # ------------------------------------------------------------------------------------- polls
    def poll(self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True) -> dict:
        self._apply_assign()
        self._apply_seeks()
        first = self._c.poll(max(0, timeout_ms) / 1000)
        if first is None:
            return {}
        want = max_records or self._max_records
        msgs = [first]
        if want > 1:
            # librdkafka queues one fetch response partition by partition: wait 1 ms at most for the
            # rest of it, so a poll returns what one kafka-python poll would (a whole fetch)
            msgs += self._c.consume(want - 1, _DRAIN_WAIT_S)
        out: dict[TopicPartition, list[Record]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == ck.KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise ck.KafkaException(err)
                log.warning("consumer: %s", err)
                continue
            tp = TopicPartition(m.topic(), m.partition())
            recs = out.get(tp)
            if recs is None:
                out[tp] = recs = []
                self._pos.pop(tp, None)
            recs.append(Record(m))
        return out

    # --------------------------------------------------------------------------------- positions
    def seek(self, partition: TopicPartition, offset: int) -> None:
        if self._in_assign:
            self._pending[partition] = offset
            return
        if self._lazy is not None and partition in self._lazy:
            self._lazy[partition] = offset
        else:
            self._deferred[partition] = offset
        self._pos[partition] = offset

    def _apply_seeks(self) -> None:
        if not self._deferred:
            return
        seeks, self._deferred = self._deferred, {}
        for tp, offset in seeks.items():
            if tp not in self._assigned:
                continue
            try:
                self._c.seek(_ctp(tp, offset))
            except ck.KafkaException as exc:
                # not fetching yet (assign() is asynchronous in librdkafka): assign again, at that offset
                if exc.args[0].code() not in (ck.KafkaError._STATE, ck.KafkaError._OUTDATED):
                    raise
                self._reassign({tp: offset})

    def _reassign(self, offsets: dict[TopicPartition, int]) -> None:
        current = {tp: self._pos.get(tp) for tp in self._assigned}
        for tp in self._assigned - set(offsets):
            lib = self._c.position([_ctp(tp)])[0].offset
            if lib >= 0:
                current[tp] = lib
        current.update(offsets)
        self._c.assign([_ctp(tp, ck.OFFSET_INVALID if off is None else off) for tp, off in current.items()])

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._assigned):
            self.seek(tp, self._watermarks(tp)[1])

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._assigned):
            self.seek(tp, self._watermarks(tp)[0])

    def position(self, partition: TopicPartition) -> int:
        if partition in self._deferred:
            return self._deferred[partition]
        if partition in self._pos and self._lazy is not None:
            return self._pos[partition]
        lib = -1 if self._lazy is not None else self._c.position([_ctp(partition)])[0].offset
        if lib >= 0:            # librdkafka knows it only after a fetch since the last seek/assign
            self._pos.pop(partition, None)
            return lib
        if partition in self._pos:
            return self._pos[partition]
        # nothing fetched yet: where the fetch will start (committed offset, else the reset policy)
        committed = self.committed(partition) if self._grouped else None
        if committed is not None:
            off = committed
        else:
            low, high = self._watermarks(partition)
            off = low if self._reset in ("earliest", "smallest", "beginning") else high
        self._pos[partition] = off
        if self._lazy is not None and partition in self._lazy:
            self._lazy[partition] = off
        return off

    def committed(self, partition: TopicPartition, metadata: bool = False) -> int | None:
        res = self._c.committed([_ctp(partition)], timeout=30)[0]
        if res.error is not None:
            raise ck.KafkaException(res.error)
        return res.offset if res.offset >= 0 else None

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        return self._c.get_watermark_offsets(_ctp(tp), timeout=30, cached=False)

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[1] for tp in partitions}

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[0] for tp in partitions}

    # ----------------------------------------------------------------------------------- commits
    def commit(self, offsets: dict | None = None) -> None:
        self._commit(offsets, asynchronous=False)

    def commit_async(self, offsets: dict | None = None, callback: Any = None) -> None:
        self._commit(offsets, asynchronous=True)

    def _commit(self, offsets: dict | None, asynchronous: bool) -> None:
        try:
            if offsets is None:
                res = self._c.commit(asynchronous=asynchronous)
            else:
                tps = [_ctp(tp, om.offset if hasattr(om, "offset") else int(om)) for tp, om in offsets.items()]
                res = self._c.commit(offsets=tps, asynchronous=asynchronous)
        except ck.KafkaException as exc:
            if exc.args[0].code() == ck.KafkaError._NO_OFFSET:
                return
            raise
        if res:
            _check(res)

    def group_metadata(self) -> Any:
        return self._c.consumer_group_metadata()

    # ---------------------------------------------------------------------------------- metadata
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        md = self._c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            return None
        return set(md.partitions)

    def topics(self) -> set[str]:
        return set(self._c.list_topics(timeout=10).topics)

    def pause(self, *partitions: TopicPartition) -> None:
        self._apply_assign()
        self._c.pause([_ctp(tp) for tp in partitions])

    def resume(self, *partitions: TopicPartition) -> None:
        self._apply_assign()
        self._c.resume([_ctp(tp) for tp in partitions])

    def close(self, autocommit: bool = False) -> None:
        try:
            self._c.close()
        except RuntimeError:   # already closed
            pass

