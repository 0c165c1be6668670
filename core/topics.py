"""The pandaes topics on whatever broker runs: created when missing, partition counts checked.

Production needs this as much as the developer bootstrap: ``pandaes restore`` re-creates the topics
of a broker that lost them, and a new cluster gets them on first start. Done through the Kafka
port's admin client (``core.bus.admin``), so it works with either client.
"""

from __future__ import annotations

from collections.abc import Callable

from core import bus
from core.config import Config, ConfigError
from core.retention import FOREVER, retention_problem

_warned_unknown: set[str] = set()   # topics whose unknown retention was already logged (once per process)


class TopicError(RuntimeError, ConfigError):
    """The topics cannot be used as they are (a partition count that does not match, a retention that
    would delete events). A ConfigError too: the broker's configuration is wrong, and the command line
    answers it with one line (``configuration error: …``), not a traceback."""


def ensure_topics(cfg: Config, *, log: Callable[[str], object] | None = None) -> None:
    """Create the commands, events and rejected topics with ``cfg.kafka.partitions`` partitions, and the
    replies topic with ``cfg.kafka.reply_partitions``.

    Idempotent and safe against concurrent creators. Existing commands/events topics must have exactly
    ``cfg.kafka.partitions`` partitions, because the ledger writes each event to the partition number
    of its command: anything else is an error, never silently accepted. Run this before any producer
    touches the topics: Tansu auto-creates a topic a producer writes to, with 4 partitions.

    The events topic is created with infinite retention (``core.retention.FOREVER``); an existing one
    whose retention would delete events is refused (``TopicError`` with the kafka-configs command). A
    broker that reports no topic configuration (the embedded Tansu) gets a warning, once.

    The replies topic carries verdicts addressed to a waiting caller (a command's ``reply_to`` partition):
    answers in flight like the rejected topic, so the broker's default retention suits it; its partition
    count is free (the ledger and the gateways read it from the broker), a different one is only noted.
    """
    want = int(cfg.kafka.partitions)
    if want < 1:
        raise TopicError(f"[kafka] partitions = {want}: must be at least 1")
    replies = cfg.kafka.replies_topic
    reply_partitions = int(cfg.kafka.reply_partitions)
    if reply_partitions < 1:
        raise TopicError(f"[kafka] reply_partitions = {reply_partitions}: must be at least 1")
    names = [cfg.kafka.commands_topic, cfg.kafka.events_topic, cfg.kafka.rejected_topic, replies]
    admin = bus.admin(cfg)
    try:
        missing = [name for name in names if name not in admin.partition_counts(names)]
        if missing:
            admin.create_topics({name: reply_partitions if name == replies else want for name in missing},
                                configs={cfg.kafka.events_topic: FOREVER})
            if log:
                log(f"kafka: created topics {', '.join(missing)} ({want} partitions"
                    f"{f', {reply_partitions} for the replies' if replies in missing else ''})")
        _check_partition_counts(admin.partition_counts(names), cfg, log)
        check_retention(admin, cfg, log)
    finally:
        admin.close()


def _check_partition_counts(counts: dict[str, int], cfg: Config, log: Callable[[str], object] | None) -> None:
    want = int(cfg.kafka.partitions)
    for name in (cfg.kafka.commands_topic, cfg.kafka.events_topic):
        if name not in counts:
            raise TopicError(f"Kafka topic {name!r} still missing after creating it")
        if counts[name] != want:
            raise TopicError(
                f"Kafka topic {name!r} has {counts[name]} partitions but [kafka] partitions = {want}: "
                f"the commands and events topics must both have exactly {want} (each event goes to the "
                "partition number of its command). Set PANDAES_PARTITIONS to match, or delete and "
                "recreate the topics.")
    rejected = cfg.kafka.rejected_topic
    if rejected in counts and counts[rejected] != want and log:
        log(f"kafka: note: {rejected!r} has {counts[rejected]} partitions, not {want} (harmless)")
    replies, reply_partitions = cfg.kafka.replies_topic, int(cfg.kafka.reply_partitions)
    if replies in counts and counts[replies] != reply_partitions and log:
        log(f"kafka: note: {replies!r} has {counts[replies]} partitions, not {reply_partitions} (used as it is)")


def check_retention(admin: bus.Admin, cfg: Config, log: Callable[[str], object] | None = None) -> None:
    """Refuse (``TopicError``) an events topic that would lose events; warn once if the broker cannot say."""
    topic = cfg.kafka.events_topic
    configs = admin.topic_configs(topic)
    if configs is None:
        if topic not in _warned_unknown:
            _warned_unknown.add(topic)
            (log or _warn)(f"kafka: warning: the broker reports no configuration for {topic!r}, so its retention "
                           "cannot be checked (the embedded Tansu keeps memory only: `pandaes restore` re-publishes "
                           "the log from the archive). On a real cluster it must have retention.ms=-1.")
        return
    problem = retention_problem(topic, configs, cfg.kafka.bootstrap)
    if problem:
        raise TopicError(problem)


def _warn(message: str) -> None:
    import logging
    logging.getLogger("pandaes.topics").warning(message)
