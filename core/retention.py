"""Whether a topic's configuration keeps every record forever: the pure decision behind the start check.

panda.job-events is the source of truth; on Apache Kafka's defaults (``retention.ms`` = 7 days) the
broker would silently delete it. ``core.topics.ensure_topics`` creates the events topic with
``FOREVER`` and refuses to start on an existing one that ``retention_problem`` finds lossy. The
commands and rejected topics are requests and answers in flight (the ledger turns each command into an
event within seconds; a rejection is read by its waiting caller): the broker's default retention suits
them, and nothing is lost with them that the events topic does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping

FOREVER: dict[str, str] = {"retention.ms": "-1", "retention.bytes": "-1"}


def _forever(value: str | None) -> bool:
    """A retention setting that never deletes: -1 (or any negative), or absent (the broker default
    is then reported by a real broker with ``config_filter=all``; absent means the broker said nothing)."""
    if value is None:
        return True
    try:
        return int(value) < 0
    except ValueError:
        return False


def retention_problem(topic: str, configs: Mapping[str, str] | None, bootstrap: str = "<broker:9092>") -> str | None:
    """Why ``topic`` with ``configs`` would lose events, with the command that fixes it; None if it keeps
    them forever. ``configs`` None means the broker reports none (the embedded Tansu): not a problem
    here, the caller warns."""
    if configs is None:
        return None
    policy = {p.strip() for p in (configs.get("cleanup.policy") or "delete").split(",")}
    lossy = []
    if "compact" in policy:
        lossy.append(f"cleanup.policy={configs.get('cleanup.policy')} (compaction keeps only the last event of a key)")
    if "delete" in policy:
        lossy += [f"{key}={configs.get(key)}" for key in FOREVER if not _forever(configs.get(key))]
    if not lossy:
        return None
    return (f"Kafka topic {topic!r} would lose events: {', '.join(lossy)}. panda.job-events is the source of "
            "truth and must be kept forever. Fix it with:\n"
            f"  kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics --entity-name {topic} "
            "--add-config retention.ms=-1,retention.bytes=-1,cleanup.policy=delete\n"
            "then start again. If events were already deleted, `pandaes verify` and `pandaes rebuild` read them "
            "from the PostgreSQL archive (job_events).")
