"""Defines the event ranges of an event-service job when it is submitted (a reactor on panda.job-events).

``decide`` is pure: the submitted job in, one ``Action`` out whose step records the ranges (once: the
store ignores ranges it already has, so a redelivered submission changes nothing; replay skips it).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Protocol

from core import db
from core.config import Config
from schemas.messages import Event, JobSubmitted
from services.loop import Action, Member, run_alone

from . import ranges, store

ACTOR = "service:event-ranges"


class DefinerView(Protocol):
    def define(self, pandaid: int, defs: Sequence[ranges.RangeDef]) -> int:
        """Record the ranges (a write: only ever an Action's step)."""


class RangeDefiner:
    name = "event-ranges"

    def wants(self, event: Event) -> bool:
        return isinstance(event, JobSubmitted) and ranges.is_event_service(event.job)

    def decide(self, event: Event, view: DefinerView) -> list[Action]:
        defs = ranges.define(event.PandaID, event.job)
        if not defs:
            return []
        return [Action(label=f"define {len(defs)} event ranges of {event.PandaID}",
                       steps=(functools.partial(view.define, event.PandaID, defs),))]


class SqlDefinerView:
    def __init__(self, cfg: Config):
        self.db = db.Reconnecting(cfg)

    def define(self, pandaid: int, defs: Sequence[ranges.RangeDef]) -> int:
        return self.db.run(store.define, pandaid, defs, ACTOR)

    def close(self) -> None:
        self.db.close()


def hosted(cfg: Config) -> Member:
    """The event-range definer (event path only)."""
    view = SqlDefinerView(cfg)
    return Member(RangeDefiner(), view, close=view.close)


def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run event-ranges`: alone in its own consumer group."""
    run_alone(cfg, stop, hosted(cfg))
