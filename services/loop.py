"""The shape every PanDA service has: a pure decision function inside a thin consumer loop.

A service module defines a class with

    name: str                                   # consumer group "<prefix>-<name>", actor "service:<name>"
    def wants(self, event) -> bool              # cheap filter, no I/O
    def decide(self, event, view) -> list[Command]
and optionally
    def tick(self, now: float, view) -> list[Command]   # clock-driven rules (timeouts), run periodically

``view`` is whatever the service may read (a small object giving access to projections and the
service's own tables). ``decide`` and ``tick`` do no I/O of their own beyond reading the view, so the
logic is tested without Kafka by handing them a view built on plain data.

``ServiceLoop`` is the thin part: it consumes panda.job-events in the service's own consumer group,
calls ``decide`` for each wanted event, sends the commands, flushes, and only then commits the
consumed offsets (at least once). A command that is sent twice after a crash is harmless: the ledger
judges it against the job's state and rejects what no longer applies. With ``replay=True`` (used by
rebuild tooling) decisions are computed but no command is sent and plugins must not act.

Side effects (plugin calls that touch storage, writes to a service's own tables, allocating an id)
are never done inside ``decide``/``tick``: they return an ``Action`` among their commands. The loop
runs each action (unless replaying) and then sends the action's ``then`` commands, or ``on_error(exc)``
if it raised; with no ``on_error`` a transient exception (database or broker away, projection behind)
stops the batch: nothing of it is committed, the loop seeks back to its first events and decides them again
after a back-off (up to 30 s), riding out a database or broker outage in process (so actions must be
idempotent); any other exception — and an event that does not decode — makes the event a
dead letter (``services.dead_letters``: a row and an ERROR line) and the loop goes on with the next.
When a command needs what a side effect produced (the retrier's new PandaID), ``then`` is a callable
given the last step's result. Plain command lists still work.

A service may also define ``decide_batch(events, view)``: the decisions on every wanted event of one
poll at once (one read and one write for the batch instead of one per event). The loop calls it when
a poll holds more than one wanted event; if it raises anything but a transient error, the batch is
decided again event by event, so only the event that fails becomes a dead letter.

Several services can share one consumer: ``services.host.ServiceHost`` decodes each event once and
hands it to every hosted service, each through a ``ServiceLoop(..., consume=False)`` (its own Actions,
dead letters, stats and clock), keeping per-service positions (docs/architecture.md, Components).

Clock rules (``tick``) get ``now`` from whoever runs them, never from a clock of their own. A reactor's
loop ticks every ``tick_every`` seconds; the clock-driven services (watcher, finisher, the closer's
sweep) are run by the daemon's scripts through ``ServiceLoop(..., consume=False).tick(now)``, so their
outputs take the same Action path. Several copies of a service split the work like the events do:
before each ``tick`` a consuming loop sets ``view.partitions`` (if the view has that attribute) to the
partitions of the events topic this copy owns; a tick should only touch jobs whose ``jobs.partition``
is in it. A loop that does not consume leaves ``view.partitions`` alone (the daemon's cluster-wide
lock makes one copy act).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import psycopg.types.json

from core import bus, logs, metrics, watchdog
from core.config import Config
from schemas.messages import Command, Event, decode_event
from services.dead_letters import DeadLetterStore, Sink, describe, is_transient

log = logging.getLogger(__name__)
RETRY_EVERY = 2.0   # seconds between looks for dead letters asked to be decided again (pandaes dead-letters retry)


@dataclass(frozen=True)
class Action:
    """A side effect a decision asks for: ``steps`` run in order, then the ``then`` commands are sent.

    ``steps`` are zero-argument callables (usually ``functools.partial(plugin.method, ...)``), built
    but not called by ``decide``, so tests can inspect them and replay can skip them. ``then`` is either
    the commands themselves or a callable that builds them from the last step's result (``None`` if
    there are no steps): that is how a command can carry what the side effect produced. An exception
    in a step or in that callable goes to ``on_error``.
    """

    label: str
    steps: tuple[Callable[[], Any], ...] = ()
    then: tuple[Command, ...] | Callable[[Any], Sequence[Command]] = ()
    on_error: Callable[[Exception], Sequence[Command]] | None = field(default=None, compare=False)

    def execute(self) -> list[Command]:
        """Run the steps; the commands to send afterwards."""
        try:
            result = None
            for step in self.steps:
                result = step()
            return list(self.then(result)) if callable(self.then) else list(self.then)
        except Exception as exc:
            if self.on_error is None:
                raise
            log.warning("action %s failed: %s", self.label, exc)
            return list(self.on_error(exc))


Output = Command | Action


def perform(outputs: Sequence[Output], *, replay: bool = False) -> list[Command]:
    """The commands a decision's outputs come to: each Action run in order, its commands in its place.

    In replay nothing is run and nothing is to be sent: the decisions are computed, their effects skipped.
    """
    if replay:
        return []
    commands: list[Command] = []
    for item in outputs:
        commands += item.execute() if isinstance(item, Action) else [item]
    return commands


class Service(Protocol):
    name: str

    def wants(self, event: Event) -> bool: ...

    def decide(self, event: Event, view: Any) -> Sequence[Output]: ...


@dataclass
class Member:
    """A service ready to run: the decision, what it reads, how often its clock ticks, and what to close.

    Each service module builds its own (``hosted(cfg)``); ``run_alone`` runs one in its own consumer
    group, ``services.host.ServiceHost`` several over one consumer."""

    service: Any
    view: Any
    tick_every: float | None = None
    close: Callable[[], None] | None = None


def _json_loads(data: bytes) -> Any:
    """A json/jsonb value read from PostgreSQL: msgspec's parser (several times faster than ``json.loads``),
    ``json.loads`` for what msgspec refuses (a number beyond a double, which jsonb's numeric can hold), so
    every value reads as it did."""
    try:
        return _msgspec_loads(data)
    except msgspec.DecodeError:
        return json.loads(data)


_msgspec_loads = msgspec.json.Decoder().decode


def fast_json_reads() -> None:
    """Read json/jsonb columns with ``_json_loads`` in this process (psycopg's loader is process-wide).

    Why: the reactors read every job's spec (a JSON object of ~130 attributes) and file specs; with the
    standard library's parser that decode was a tenth of the reactors' Python time (py-spy)."""
    psycopg.types.json.set_json_loads(_json_loads)


#: One polled record as a loop decides on it: where it was, the record, and the event or why it did not decode.
Item = tuple[bus.TopicPartition, Any, Event | None, Exception | None]


def decode_polled(polled: Mapping[bus.TopicPartition, Sequence[Any]]) -> list[Item]:
    """Every record of a poll decoded once, in poll order (a record that does not decode keeps its error)."""
    items: list[Item] = []
    for tp, msgs in polled.items():
        for m in msgs:
            try:
                items.append((tp, m, decode_event(m.value), None))
            except Exception as exc:       # a dead letter for whoever decides on it
                items.append((tp, m, None, exc))
    return items


class ServiceLoop:
    """Runs one service over the event log; also runs its ``tick`` every ``tick_every`` seconds.

    With ``consume=False`` there is no consumer: the owner calls ``tick(now)`` itself (the daemon's
    scripts). A ``sender`` passed in is the caller's and is not closed by ``close``; without one the
    loop makes its own when it first sends or flushes.
    """

    def __init__(self, cfg: Config, service: Service, view: Any, *, tick_every: float | None = None,
                 replay: bool = False, sender: bus.CommandSender | None = None, consume: bool = True,
                 dead_letters: Sink | None = None):
        self.cfg = cfg
        self.service = service
        self.view = view
        self.replay = replay
        self.tick_every = tick_every
        self._next_tick = 0.0
        self._next_retry = 0.0
        self._own_sender = sender is None
        self._sender = sender
        self.consumer = bus.consumer(cfg, cfg.kafka.events_topic,
                                     group_id=f"{cfg.kafka.group_prefix}-{service.name}") if consume else None
        self.stats = {"events": 0, "commands": 0, "ticks": 0, "actions": 0, "dead_letters": 0}
        self.undone: dict[bus.TopicPartition, int] = {}     # see decide_items
        # where an event that cannot be decided on goes (made on first use when not given)
        self._dead_letters = dead_letters
        self.lag = (metrics.LagTracker(self.consumer, f"{cfg.kafka.group_prefix}-{service.name}")
                    if self.consumer is not None else None)
        # no progress while events wait (a group that never settles, a poll that never returns): exit
        self.watchdog = (watchdog.for_consumer(cfg, self.consumer, f"{cfg.kafka.group_prefix}-{service.name}",
                                               cfg.kafka.events_topic) if self.consumer is not None else None)
        # Poll size: as many events as this loop can decide within a quarter of max_poll_interval_ms if
        # every one of them were a wanted event at the slowest recent cost per wanted event (actions write to
        # the database per event), so a burst of slow events cannot keep it from polling long enough to be
        # dropped from its consumer group (a crash and a restart that decides the same batch again).
        self._max_poll = int(cfg.kafka.max_poll_records)
        self._poll_budget_s = int(cfg.kafka.max_poll_interval_ms) / 4000
        self._cost = 0.0                                  # seconds per wanted event, decaying maximum
        self._max_records = min(self._max_poll, 100)
        self.blocked = False                              # the last step stopped at a transient error
        self.backoff_max = 30.0
        self._backoff = 0.5

    @property
    def sender(self) -> bus.CommandSender:
        """The command producer (made on first use when the loop was not given one)."""
        if self._sender is None:
            self._sender = bus.CommandSender(self.cfg)
        return self._sender

    def _emit(self, outputs: Sequence[Output]) -> list[Command]:
        """Run the actions among ``outputs`` and send the commands; the commands sent."""
        if self.replay or not outputs:
            return []
        n_actions = sum(isinstance(item, Action) for item in outputs)
        self.stats["actions"] += n_actions
        if n_actions:
            metrics.SERVICE_ACTIONS.labels(self.service.name).inc(n_actions)
        commands = perform(outputs)
        if commands:
            self.sender.send_many(commands)
            self.stats["commands"] += len(commands)
            metrics.SERVICE_COMMANDS.labels(self.service.name).inc(len(commands))
        return commands

    def owned_partitions(self) -> set[int]:
        """The partitions of the events topic this copy consumes now."""
        if self.consumer is None:
            return set()
        topic = self.cfg.kafka.events_topic
        return {tp.partition for tp in self.consumer.assignment() if tp.topic == topic}

    def tick(self, now: float) -> list[Command]:
        """Run the service's clock rules once at ``now`` and send (and flush) what they ask; the commands sent."""
        tick: Callable[[float, Any], Sequence[Output]] | None = getattr(self.service, "tick", None)
        if tick is None:
            return []
        if self.consumer is not None and hasattr(self.view, "partitions"):
            self.view.partitions = self.owned_partitions()
        sent = self._emit(tick(now, self.view))
        if sent:
            self.sender.flush()
        self.stats["ticks"] += 1
        return sent

    def step(self, timeout_ms: int = 200) -> int:
        assert self.consumer is not None, "a loop made with consume=False is ticked, not stepped"
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self._max_records)
        t0 = time.monotonic()
        items = decode_polled(polled)
        self.blocked = False
        try:
            wanted = self.decide_items(items)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # the database or the broker away: nothing of the poll is committed, its events come again
            for tp, msgs in polled.items():
                self.consumer.seek(tp, msgs[0].offset)
            self.blocked = True
            log.warning("service %s stopped at a transient error, the events from there are decided again "
                        "after a back-off: %s", self.service.name, describe(exc))
            if self.lag is not None:
                self.lag.observe({})
            if self.watchdog is not None:
                self.watchdog.step(polled)
            return 0
        if self.tick_every is not None and time.monotonic() >= self._next_tick:
            self._next_tick = time.monotonic() + self.tick_every
            try:
                self.tick(time.time())
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("service %s: clock rules failed, tried again at the next tick: %s", self.service.name,
                            describe(exc))
        if not self.replay and time.monotonic() >= self._next_retry:
            self._next_retry = time.monotonic() + RETRY_EVERY
            try:
                self.retry_dead_letters()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("service %s: dead letters asked to be retried wait: %s", self.service.name, exc)
        if polled:
            if self._sender is not None:
                self._sender.flush()      # every command of the batch is out before its offsets are committed
            self.consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in polled.items()})
            self._cost = max((time.monotonic() - t0) / max(wanted, 1), 0.9 * self._cost)
            self._max_records = max(1, min(self._max_poll, int(self._poll_budget_s / max(self._cost, 1e-6))))
        self.stats["events"] += len(items)
        if self.lag is not None:
            self.lag.observe(polled)
        if self.watchdog is not None:
            self.watchdog.step(polled)
        return len(items)

    def decide_items(self, items: Sequence[Item]) -> int:
        """Decide on decoded records (in order) and run/send what the decisions ask; the number wanted.

        A transient error propagates (nothing of the batch may be committed), leaving in ``undone`` the
        offset of the first event of each partition not decided yet (a host resumes this service there).
        An event that does not decode or whose decision fails otherwise becomes a dead letter. With
        ``decide_batch`` the wanted events are decided together, and again one by one if that fails."""
        self.undone = {}
        try:
            return self._decide_items(items)
        except Exception as exc:
            if is_transient(exc) and not self.undone:   # e.g. recording a dead letter failed: all again
                self._undone([(tp, m) for tp, m, *_ in items])
            raise

    def _decide_items(self, items: Sequence[Item]) -> int:
        wanted: list[tuple[bus.TopicPartition, Any, Event]] = []
        for i, (tp, m, event, error) in enumerate(items):
            try:
                if error is not None:
                    raise error
                assert event is not None
                if self.service.wants(event):
                    wanted.append((tp, m, event))
            except Exception as exc:
                if is_transient(exc):
                    self._undone([(t, r) for t, r, *_ in wanted] + [(t, r) for t, r, *_ in items[i:]])
                    raise
                self._dead(tp, m, exc, event)
        batch: Callable[[Sequence[Event], Any], Sequence[Output]] | None = getattr(self.service, "decide_batch",
                                                                                    None)
        if batch is not None and len(wanted) > 1:
            try:
                self._emit(batch([event for _, _, event in wanted], self.view))
                return len(wanted)
            except Exception as exc:
                if is_transient(exc):
                    self._undone([(t, r) for t, r, _ in wanted])
                    raise
                log.warning("service %s: a batch of %d events failed (%s); deciding them one by one",
                            self.service.name, len(wanted), describe(exc))
        for i, (tp, m, event) in enumerate(wanted):
            try:
                with logs.bind_message(event):
                    self._emit(self.service.decide(event, self.view))
            except Exception as exc:
                if is_transient(exc):
                    self._undone([(t, r) for t, r, _ in wanted[i:]])
                    raise        # nothing of the batch is committed: decided again after the restart
                self._dead(tp, m, exc, event)
        return len(wanted)

    def _undone(self, rest: Sequence[tuple[bus.TopicPartition, Any]]) -> None:
        for tp, m in rest:
            self.undone.setdefault(tp, m.offset)

    def _store(self) -> Sink:
        if self._dead_letters is None:
            self._dead_letters = DeadLetterStore(self.cfg)
        return self._dead_letters

    def retry_dead_letters(self) -> tuple[int, int]:
        """Decide again the dead letters ``pandaes dead-letters retry`` asked for (services.dead_letters): the
        event as if it had just arrived, its commands sent and flushed before the row is marked resolved; one
        that fails again keeps the new error. (resolved, failed again)."""
        store = self._store()
        take = getattr(store, "take_requested", None)
        if take is None:
            return 0, 0
        done = failed = 0
        for row in take(self.service.name):
            event = None
            try:
                event = decode_event(bytes(row["raw"]))
                if self.service.wants(event):
                    with logs.bind_message(event):
                        self._emit(self.service.decide(event, self.view))
                if self._sender is not None:
                    self._sender.flush()
            except Exception as exc:
                if is_transient(exc):
                    store.request_again(row["id"])
                    raise
                store.failed_again(row["id"], exc)
                failed += 1
                log.error("service %s: dead letter %s (PandaID %s, seq %s) still cannot be decided on: %s",
                          self.service.name, row["id"], row["pandaid"], row["seq"], describe(exc))
                continue
            store.resolved(row["id"])
            done += 1
            log.warning("service %s: dead letter %s (PandaID %s, seq %s) decided again and resolved",
                        self.service.name, row["id"], row["pandaid"], row["seq"])
        return done, failed

    def _dead(self, tp: bus.TopicPartition, m: Any, exc: Exception, event: Event | None) -> None:
        """Record an event this service cannot decide on and go on (it would fail the same way forever)."""
        self._store().record(self.service.name, tp.topic, tp.partition, m.offset, m.value, exc, event)
        self.stats["dead_letters"] += 1
        log.error("service %s cannot decide on the event at %s[%d]@%d (PandaID %s, seq %s): %s; recorded in "
                  "service_dead_letters and skipped", self.service.name, tp.topic, tp.partition, m.offset,
                  getattr(event, "PandaID", "?"), getattr(event, "seq", "?"), describe(exc),
                  exc_info=not isinstance(exc, msgspec.DecodeError))

    def run(self, stop: threading.Event) -> None:
        if self.watchdog is not None:
            self.watchdog.start()
        try:
            while not stop.is_set():
                n = self.step()
                if self.blocked:             # the database (or broker) away: ride it out, back off
                    stop.wait(self._backoff)
                    self._backoff = min(self.backoff_max, self._backoff * 2)
                else:
                    self._backoff = 0.5
                    if not n:                # at rest: sleep until the next look, tick or retry is due
                        self.consumer.rest(stop, self._due() - time.monotonic())
        finally:                             # a loop that stopped stepping is not a hung one
            if self.watchdog is not None:
                self.watchdog.close()

    def _due(self) -> float:
        """When (monotonic) this loop next has clock work of its own: a tick or a look for dead letters."""
        due = self._next_tick if self.tick_every is not None else float("inf")
        return min(due, self._next_retry) if not self.replay else due

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()
        try:
            if self.consumer is not None:
                self.consumer.close()
        finally:
            if self._own_sender and self._sender is not None:
                self._sender.close()
            if isinstance(self._dead_letters, DeadLetterStore):
                self._dead_letters.close()


def run_alone(cfg: Config, stop: threading.Event, member: Member, *, replay: bool = False) -> None:
    """One service in its own consumer group ``<prefix>-<name>`` (`pandaes run <name>`), until ``stop``."""
    fast_json_reads()
    loop = ServiceLoop(cfg, member.service, member.view, tick_every=member.tick_every, replay=replay)
    try:
        loop.run(stop)
    finally:
        try:
            loop.close()
        finally:
            if member.close is not None:
                member.close()
