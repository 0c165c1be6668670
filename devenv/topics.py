"""The three pandaes topics on whatever broker runs: created when missing, partition counts checked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from core.config import Config
from devenv.common import InfraError, Log

UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_ALREADY_EXISTS = 36

@contextlib.contextmanager
def kafka_admin(bootstrap: str, timeout_ms: int = 10000) -> Iterator[Any]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pandaes-infra",
                             bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)
    try:
        yield admin
    finally:
        admin.close()


def ensure_topics(bootstrap: str, cfg: Config, *, log: Log | None = None) -> None:
    """Create the commands, events and rejected topics with ``cfg.kafka.partitions`` partitions.

    Idempotent and safe against concurrent creators. Existing commands/events topics must have exactly
    ``cfg.kafka.partitions`` partitions, because the ledger writes each event to the partition number
    of its command: anything else is an error, never silently accepted. Run this before any producer
    touches the topics: Tansu auto-creates a topic a producer writes to, with 4 partitions.
    """
    want = int(cfg.kafka.partitions)
    if want < 1:
        raise InfraError(f"[kafka] partitions = {want}: must be at least 1")
    names = [cfg.kafka.commands_topic, cfg.kafka.events_topic, cfg.kafka.rejected_topic]
    with kafka_admin(bootstrap) as admin:
        missing = [name for name in names if name not in _partition_counts(admin, names)]
        if missing:
            _create_topics(admin, missing, want)
            if log:
                log(f"kafka: created topics {', '.join(missing)} ({want} partitions)")
        _check_partition_counts(_partition_counts(admin, names), cfg, log)


def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    """Partition count of each of ``names`` that exists."""
    counts = {}
    for topic in admin.describe_topics(names):
        code = topic.get("error_code", 0)
        if code == UNKNOWN_TOPIC_OR_PARTITION:
            continue
        if code:
            raise InfraError(f"describing Kafka topic {topic.get('name')!r} failed with error code {code}")
        counts[topic["name"]] = len(topic["partitions"])
    return counts


def _create_topics(admin: Any, names: list[str], partitions: int) -> None:
    """Create topics; one created meanwhile by someone else (error 36) is fine, it gets checked after."""
    brokers = len(admin.describe_cluster().get("brokers") or []) or 1
    replication = min(3, brokers)
    spec = {name: {"num_partitions": partitions, "replication_factor": replication} for name in names}
    result = admin.create_topics(spec, raise_errors=False, wait_for_metadata=True)
    for topic in result.get("topics", []):
        code = topic.get("error_code", 0)
        if code not in (0, TOPIC_ALREADY_EXISTS):
            raise InfraError(f"creating Kafka topic {topic.get('name')!r} ({partitions} partitions, "
                             f"replication {replication}) failed: error {code} {topic.get('error_message')}")


def _check_partition_counts(counts: dict[str, int], cfg: Config, log: Log | None) -> None:
    want = int(cfg.kafka.partitions)
    for name in (cfg.kafka.commands_topic, cfg.kafka.events_topic):
        if name not in counts:
            raise InfraError(f"Kafka topic {name!r} still missing after creating it")
        if counts[name] != want:
            raise InfraError(
                f"Kafka topic {name!r} has {counts[name]} partitions but [kafka] partitions = {want}: "
                f"the commands and events topics must both have exactly {want} (each event goes to the "
                "partition number of its command). Set PANDAES_PARTITIONS to match, or delete and "
                "recreate the topics.")
    rejected = cfg.kafka.rejected_topic
    if rejected in counts and counts[rejected] != want and log:
        log(f"kafka: note: {rejected!r} has {counts[rejected]} partitions, not {want} (harmless)")


