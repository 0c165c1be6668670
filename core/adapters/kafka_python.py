"""kafka-python behind the port of ``core.bus`` (``[kafka] client = "kafka-python"``; the default is confluent).

Thin: kafka-python already behaves as the port says (dozing, see ``bus.Consumer.poll``, changes the fetch
wait of its fetcher). Records are kafka-python's own
``ConsumerRecord`` tuples, which have the attributes of ``bus.Record``, so polling copies nothing per
record; only partition keys are turned into ``bus.TopicPartition`` (a few per poll). ``crc32c`` is a
dependency so kafka-python's record CRC checks run in C.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import kafka
import kafka.errors
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.structs import OffsetAndMetadata

from core.bus import (
    AdminError,
    AdminSettings,
    ConsumerSettings,
    Delivered,
    Offsets,
    ProducerSettings,
    Record,
    TopicPartition,
)

UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_ALREADY_EXISTS = 36


def _k(tp: TopicPartition) -> kafka.TopicPartition:
    return kafka.TopicPartition(tp.topic, tp.partition)


def _ours(tps: Iterable[kafka.TopicPartition]) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in tps}


def _commit_map(offsets: Offsets) -> dict[kafka.TopicPartition, OffsetAndMetadata]:
    return {_k(tp): OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}


# ----------------------------------------------------------------------------------------- producer
class _Delivery:
    """``bus.Delivery`` over kafka-python's FutureRecordMetadata."""

    __slots__ = ("_f",)

    def __init__(self, f: Any):
        self._f = f

    def result(self, timeout: float | None = None) -> Delivered:
        try:
            meta = self._f.get(timeout)
        except kafka.errors.KafkaTimeoutError:
            if not self._f.is_done:
                raise TimeoutError(f"no acknowledgement within {timeout} s") from None
            raise
        return Delivered(meta.topic, meta.partition, meta.offset)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            self.result(timeout)
        except TimeoutError:
            raise
        except Exception as exc:  # noqa: BLE001 - the send's error is the answer
            return exc
        return None

    def done(self) -> bool:
        return self._f.is_done

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        self._f.add_both(lambda _: fn(self))


class Producer:
    def __init__(self, s: ProducerSettings):
        conf: dict[str, Any] = dict(
            bootstrap_servers=s.bootstrap, client_id=s.client_id, acks="all", enable_idempotence=True,
            linger_ms=s.linger_ms, batch_size=256 * 1024, max_in_flight_requests_per_connection=5)
        if s.transactional_id:
            conf.update(transactional_id=s.transactional_id, transaction_timeout_ms=s.transaction_timeout_ms)
        self._p = kafka.KafkaProducer(**conf)

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None) -> _Delivery:
        return _Delivery(self._p.send(topic, value=value, key=key, partition=partition))

    def flush(self, timeout: float | None = None) -> None:
        self._p.flush(timeout)

    def partitions(self, topic: str) -> list[int]:
        return sorted(self._p.partitions_for(topic))

    def close(self) -> None:
        self._p.close()

    # transactional producers only
    def init_transactions(self) -> None:
        self._p.init_transactions()

    def begin_transaction(self) -> None:
        self._p.begin_transaction()

    def send_offsets_to_transaction(self, offsets: Offsets, group: Any) -> None:
        self._p.send_offsets_to_transaction(_commit_map(offsets), group)

    def commit_transaction(self) -> None:
        self._p.commit_transaction()

    def abort_transaction(self) -> None:
        self._p.abort_transaction()


def producer(settings: ProducerSettings) -> Producer:
    return Producer(settings)


transactional_producer = producer


# ----------------------------------------------------------------------------------------- consumer
class _Listener(kafka.ConsumerRebalanceListener):
    def __init__(self, on_assign: Callable[[set[TopicPartition]], None] | None,
                 on_revoke: Callable[[set[TopicPartition]], None] | None):
        self._on_assign = on_assign
        self._on_revoke = on_revoke

    def on_partitions_assigned(self, assigned):
        if self._on_assign is not None:
            self._on_assign(_ours(assigned))

    def on_partitions_revoked(self, revoked):
        if self._on_revoke is not None:
            self._on_revoke(_ours(revoked))


class Consumer:
    def __init__(self, s: ConsumerSettings):
        self._c = kafka.KafkaConsumer(
            bootstrap_servers=s.bootstrap, client_id=s.client_id, group_id=s.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
            max_poll_records=s.max_poll_records, max_poll_interval_ms=s.max_poll_interval_ms,
            session_timeout_ms=s.session_timeout_ms, heartbeat_interval_ms=s.heartbeat_interval_ms,
            fetch_max_wait_ms=s.fetch_max_wait_ms, max_partition_fetch_bytes=8 * 1024 * 1024)
        # dozing (bus.Consumer.poll): the fetch wait of the next fetch requests is the fetcher's config value
        # (read for every request it builds), so a dozing consumer just asks with the longer wait
        self._fetch_config: dict[str, Any] | None = getattr(getattr(self._c, "_fetcher", None), "config", None)
        self._busy_wait = s.fetch_max_wait_ms
        self._idle_wait = max(s.idle_fetch_max_wait_ms, s.fetch_max_wait_ms)
        self._idle_after = s.idle_after_ms / 1000 if s.idle_after_ms > 0 and self._fetch_config is not None else None
        self._last_records = time.monotonic()
        self._dozing = False

    def subscribe(self, topics: Sequence[str], *,
                  on_assign: Callable[[set[TopicPartition]], None] | None = None,
                  on_revoke: Callable[[set[TopicPartition]], None] | None = None) -> None:
        self._c.subscribe(list(topics), listener=_Listener(on_assign, on_revoke))

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._c.assign([_k(tp) for tp in partitions])
        self._wake()

    def wake(self) -> None:
        """The next fetch requests wait at the busy pace (one already at the broker ends at its own wait)."""
        self._wake()

    def _wake(self) -> None:
        """A new start (assign, seek): read at the busy pace until the quiet spell comes again."""
        self._last_records = time.monotonic()
        if self._dozing:
            self._dozing = False
            self._fetch_config["fetch_max_wait_ms"] = self._busy_wait  # type: ignore[index]

    def assignment(self) -> set[TopicPartition]:
        return _ours(self._c.assignment())

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        polled = self._c.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self._idle_after is not None:
            self._doze(bool(polled))
        return {TopicPartition(tp.topic, tp.partition): recs for tp, recs in polled.items()} if polled else {}

    def _doze(self, got: bool) -> None:
        now = time.monotonic()
        if got:
            self._wake()
        elif not self._dozing and now - self._last_records >= self._idle_after:  # type: ignore[operator]
            self._dozing = True
            self._fetch_config["fetch_max_wait_ms"] = self._idle_wait  # type: ignore[index]

    def rest(self, stop: threading.Event, longest_s: float) -> None:
        """A dozing consumer's fetch already waits longer at the broker; its polls are cheap: nothing to do."""

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._c.seek(_k(partition), offset)
        self._wake()

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        tps = [_k(tp) for tp in partitions] or list(self._c.assignment())
        self._c.seek_to_end(*tps)
        for tp in tps:
            self._c.position(tp)   # kafka-python resolves the seek lazily: resolve it now

    def position(self, partition: TopicPartition) -> int:
        return self._c.position(_k(partition))

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {TopicPartition(*tp): off for tp, off in self._c.beginning_offsets([_k(t) for t in partitions]).items()}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {TopicPartition(*tp): off for tp, off in self._c.end_offsets([_k(t) for t in partitions]).items()}

    def fetched_ends(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        ends = {}
        for tp in partitions:
            try:
                end = self._c.highwater(_k(tp))
            except kafka.errors.IllegalStateError:   # not assigned
                continue
            if end is not None:
                ends[TopicPartition(*tp)] = end
        return ends

    def pause(self, *partitions: TopicPartition) -> None:
        self._c.pause(*[_k(tp) for tp in partitions])

    def resume(self, *partitions: TopicPartition) -> None:
        self._c.resume(*[_k(tp) for tp in partitions])
        self._wake()

    def commit(self, offsets: Offsets, *, asynchronous: bool = False) -> None:
        if asynchronous:
            self._c.commit_async(_commit_map(offsets))
        else:
            self._c.commit(_commit_map(offsets))

    def committed(self, partition: TopicPartition) -> int | None:
        return self._c.committed(_k(partition))

    def group_metadata(self) -> Any:
        return self._c.group_metadata()

    def partitions(self, topic: str) -> list[int]:
        parts = self._c.partitions_for_topic(topic)
        if not parts:
            self._c.topics()  # a fresh consumer knows no topic until a metadata request
            parts = self._c.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(f"topic {topic!r} does not exist on {self._c.config['bootstrap_servers']}")
        return sorted(parts)

    def close(self) -> None:
        self._c.close(autocommit=False)


def consumer(settings: ConsumerSettings) -> Consumer:
    return Consumer(settings)


# -------------------------------------------------------------------------------------------- admin
class Admin:
    def __init__(self, s: AdminSettings):
        self._a = kafka.KafkaAdminClient(bootstrap_servers=s.bootstrap, client_id=s.client_id,
                                         bootstrap_timeout_ms=s.timeout_ms, request_timeout_ms=s.timeout_ms)

    def topics(self) -> set[str]:
        return set(self._a.list_topics())

    def partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        counts = {}
        for topic in self._a.describe_topics(list(topics)):
            code = topic.get("error_code", 0)
            if code == UNKNOWN_TOPIC_OR_PARTITION:
                continue
            if code:
                raise AdminError(f"describing Kafka topic {topic.get('name')!r} failed with error code {code}")
            counts[topic["name"]] = len(topic["partitions"])
        return counts

    def create_topics(self, partitions: Mapping[str, int],
                      configs: Mapping[str, Mapping[str, str]] | None = None) -> None:
        if not partitions:
            return
        brokers = len(self._a.describe_cluster().get("brokers") or []) or 1
        replication = min(3, brokers)
        spec = {name: {"num_partitions": n, "replication_factor": replication,
                       "configs": dict((configs or {}).get(name) or {})} for name, n in partitions.items()}
        result = self._a.create_topics(spec, raise_errors=False, wait_for_metadata=True)
        for topic in result.get("topics", []):
            code = topic.get("error_code", 0)
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise AdminError(f"creating Kafka topic {topic.get('name')!r} ({partitions[topic.get('name')]} "
                                 f"partitions, replication {replication}) failed: error {code} "
                                 f"{topic.get('error_message')}")

    def topic_configs(self, topic: str) -> dict[str, str] | None:
        described = self._a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        entries = described.get("topic", {}).get(topic) or {}
        if not entries:
            return None
        return {name: str(e.get("value") if isinstance(e, dict) else e) for name, e in entries.items()}

    def delete_topics(self, topics: Iterable[str]) -> None:
        names = list(topics)
        if not names:
            return
        result = self._a.delete_topics(names, raise_errors=False)
        failed = [(t.get("name"), t.get("error_code")) for t in result.get("topics", [])
                  if t.get("error_code") not in (0, UNKNOWN_TOPIC_OR_PARTITION)]
        if failed:
            raise AdminError(f"deleting Kafka topics failed: {failed}")

    def committed_offsets(self, group: str) -> dict[TopicPartition, int]:
        offsets = self._a.list_group_offsets(group).get(group, {})
        return {TopicPartition(tp.topic, tp.partition): om.offset for tp, om in offsets.items() if om.offset >= 0}

    def close(self) -> None:
        self._a.close()


def admin(settings: AdminSettings) -> Admin:
    return Admin(settings)
