"""Small helpers shared by the tests: the one way to wait for a condition, and the one way to wait for a
consumer group (instead of sleeping "long enough"), plus reading the whole event log."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from core import bus
from core.bus import TopicPartition
from core.config import Config
from schemas.messages import decode_event

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1, what: str = "") -> T:
    """Poll ``predicate`` every ``interval`` s until it returns something true (returned), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def gateway_answers(url: str, run: subprocess.Popen | None = None) -> bool:
    """Whether pandaes's gateway answers at ``url`` (its v1 is_alive envelope; another program that took the
    port answers otherwise). ``run``: the `pandaes run` being waited for; its exit fails the wait at once."""
    if run is not None and run.poll() is not None:
        raise AssertionError(f"`pandaes run` exited with {run.returncode} before its gateway answered")
    try:
        with urllib.request.urlopen(f"{url}/api/v1/system/is_alive", timeout=2) as reply:
            return json.loads(reply.read()).get("message") == "alive"
    except (OSError, ValueError, AttributeError):
        return False


def all_events(cfg: Config) -> list:
    """Every event on the events topic (read_committed), in partition/offset order."""
    out = []
    for p in bus.partitions(cfg, cfg.kafka.events_topic):
        out += [(p, rec.offset, decode_event(rec.value))
                for rec in bus.read_partition(cfg, cfg.kafka.events_topic, p, 0)]
    return out


def wait_for_no_lag(cfg: Config, group: str, topic: str, timeout: float = 60) -> None:
    """Wait until consumer group ``group`` has consumed every record of ``topic`` (and committed it), or fail
    naming the group and the lag of each partition.

    The lag of a partition is the number of records a read_committed reader finds from the group's committed
    offset on (nothing committed: from 0). End offsets alone cannot say it: a transaction's commit marker
    takes an offset but is never delivered (a group that read everything commits just before it), and Tansu
    reports the base offset of the last batch + 1 as the end (too small when that batch holds several
    records). So each partition is read from the committed offset until the reader stands at or past both
    and nothing more arrives for a moment. Every Kafka call of the tests' waiting is in this function (the
    core.bus port changes under it).
    """
    reader = bus.consumer(cfg, group_id=None)
    member = bus.consumer(cfg, group_id=group)   # never subscribes, so never joins: asks for offsets only
    try:
        tps = [TopicPartition(topic, p) for p in reader.partitions(topic)]
        reader.assign(tps)
        deadline = time.monotonic() + timeout
        pause = 0.05
        while True:
            ends = reader.end_offsets(tps)
            committed = {tp: member.committed(tp) or 0 for tp in tps}
            for tp in tps:
                reader.seek(tp, committed[tp])
            unread = dict.fromkeys(tps, 0)
            quiet_since = None
            look_until = time.monotonic() + 5
            while time.monotonic() < look_until:
                got = reader.poll(timeout_ms=100)
                for tp, recs in got.items():
                    unread[tp] += sum(r.offset >= committed[tp] for r in recs)
                if got or any(reader.position(tp) < max(ends[tp], committed[tp]) for tp in tps):
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= 0.3:
                    break
            else:   # never settled: a partition the reader did not get through counts as behind
                for tp in tps:
                    if reader.position(tp) < max(ends[tp], committed[tp]):
                        unread[tp] = max(unread[tp], ends[tp] - committed[tp], 1)
            behind = {tp: n for tp, n in unread.items() if n}
            if not behind:
                return
            if time.monotonic() > deadline:
                lag = ", ".join(f"partition {tp.partition}: {n} (committed {committed[tp]}, end {ends[tp]})"
                                for tp, n in sorted(behind.items()))
                raise AssertionError(f"consumer group {group!r} still behind on {topic} after {timeout}s: {lag}")
            time.sleep(pause)
            pause = min(2 * pause, 0.5)
    finally:
        reader.close()
        member.close()


__all__ = ["wait_until", "wait_for_no_lag", "all_events"]
