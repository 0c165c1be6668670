"""Small helpers shared by the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from core import bus
from core.config import Config
from schemas.messages import decode_event

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def all_events(cfg: Config) -> list:
    """Every event on the events topic (read_committed), in partition/offset order."""
    out = []
    for p in bus.partitions(cfg, cfg.kafka.events_topic):
        out += [(p, rec.offset, decode_event(rec.value))
                for rec in bus.read_partition(cfg, cfg.kafka.events_topic, p, 0)]
    return out


__all__ = ["wait_until", "all_events"]
