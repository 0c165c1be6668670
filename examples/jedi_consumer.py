#!/usr/bin/env python3
"""A JEDI-side reader of panda.job-events: how many jobs of each task are in each state.

Written only against docs/events.md and docs/job-events.schema.json, to show that the contract is
enough to follow jobs. JEDI can use any Kafka client: this example reads through pandaes' Kafka port
(``core.bus``, and ``core.config`` for the client choice, ``PANDAES_KAFKA_CLIENT``) only so that it runs
with either client pandaes ships an adapter for; it uses nothing of pandaes beyond that, and the calls
it makes (assign, poll, position, end offsets, commit) are in every Kafka client. What the contract
gives a reader:

* the key is the PandaID and every event of a job is in one partition, in ``seq`` order, so a
  per-partition reader sees each job's history in order;
* delivery is at-least-once for a reader like this one (it may see an event again after a restart),
  so it remembers each job's last ``seq`` and ignores anything not newer;
* it reads only fields every schema version has (type, PandaID, seq, to_state, the submitted job's
  jediTaskID, attrs.jediTaskID), so v1 and v2 messages count alike.

    python examples/jedi_consumer.py --bootstrap 127.0.0.1:9092 --until-end   # counts now, as JSON
    python examples/jedi_consumer.py --bootstrap 127.0.0.1:9092 --group jedi   # follow, print every 10 s
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict

from core import bus, config
from core.bus import TopicPartition

NEWEST_UNDERSTOOD = 2  # schema version this reader was written against


class TaskCounts:
    """jediTaskID → {state: number of jobs}, folded from events."""

    def __init__(self) -> None:
        self.jobs: dict[int, tuple[int | None, str, int]] = {}   # PandaID → (task, state, seq)
        self.counts: dict[int | None, Counter] = defaultdict(Counter)
        self.newer_versions = 0

    def feed(self, event: dict) -> None:
        if event.get("v", 1) > NEWEST_UNDERSTOOD:
            self.newer_versions += 1   # still counted: the fields used here are stable across versions
        pid, seq, state = event["PandaID"], event["seq"], event["to_state"]
        known = self.jobs.get(pid)
        if known is not None and seq <= known[2]:
            return                     # seen already (redelivery)
        if event["type"] == "submitted":
            task = event.get("job", {}).get("jediTaskID")
        else:
            task = known[0] if known else None
            task = event.get("attrs", {}).get("jediTaskID", task)
        if known is not None:
            self.counts[known[0]][known[1]] -= 1
            if not self.counts[known[0]][known[1]]:
                del self.counts[known[0]][known[1]]
        self.counts[task][state] += 1
        self.jobs[pid] = (task, state, seq)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {str(task): dict(sorted(c.items())) for task, c in sorted(self.counts.items(), key=lambda kv: str(kv[0]))
                if c}


def _config(bootstrap: str) -> config.Config:
    return config.load().replace(kafka={"bootstrap": bootstrap})


def read_until_end(bootstrap: str, topic: str) -> TaskCounts:
    """Everything in the topic now, read without a consumer group (read_committed, from the beginning)."""
    counts = TaskCounts()
    consumer = bus.consumer(_config(bootstrap), group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions(topic)]
        consumer.assign(tps)
        end = consumer.end_offsets(tps)
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for rec in records:
                    if rec.offset < end[tp]:
                        counts.feed(json.loads(rec.value))
    finally:
        consumer.close()
    return counts


def follow(bootstrap: str, topic: str, group: str, every: float) -> None:
    """Consume forever in a group (offsets committed after each batch is counted) and print counts.

    A real JEDI keeps the counts in its database, written with the offsets; this example keeps
    them in memory, so on a restart it starts from the beginning (``--group`` with a fresh name).
    """
    counts = TaskCounts()
    consumer = bus.consumer(_config(bootstrap), topic, group_id=group)
    last = time.monotonic()
    try:
        while True:
            polled = consumer.poll(timeout_ms=1000)
            for records in polled.values():
                for rec in records:
                    counts.feed(json.loads(rec.value))
            if polled:
                consumer.commit({tp: records[-1].offset + 1 for tp, records in polled.items()})
            if time.monotonic() - last >= every:
                last = time.monotonic()
                print(json.dumps(counts.as_dict()), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Per-task job counts from panda.job-events (example JEDI consumer).")
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    ap.add_argument("--topic", default="panda.job-events")
    ap.add_argument("--until-end", action="store_true", help="read what is there now, print JSON, exit")
    ap.add_argument("--group", default="jedi-task-counts", help="consumer group when following")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between prints when following")
    args = ap.parse_args(argv)
    if args.until_end:
        counts = read_until_end(args.bootstrap, args.topic)
        print(json.dumps(counts.as_dict()))
        if counts.newer_versions:
            print(f"note: {counts.newer_versions} event(s) of a newer schema version", file=sys.stderr)
        return 0
    follow(args.bootstrap, args.topic, args.group, args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
