"""Several services over one consumer: each event is read and decoded once, then decided by every service.

Why: the reactors (setupper, activator, adder, closer, retrier, the Harvester killer, the event-range
definer) all read panda.job-events, and each wants a small part of it. Each in its own process and
consumer group, every one of them fetched and decoded every event, and its process, producer, database
connections and idle polling cost CPU of their own (docs/performance.md). ``ServiceHost`` runs them in
one process over one consumer in the group ``<prefix>-reactors``: one fetch and one decode per event, one
command producer, one offset commit per poll. The decisions stay what they are: each service runs in its
own ``ServiceLoop(..., consume=False)`` (its Actions, replay skip, dead letters under its own name, stats,
metrics and clock), fed the decoded events by the host. A service can still run alone in its own group
(`pandaes run setupper`, ``services.loop.run_alone``), for scaling or debugging.

Positions (at least once, per service):

* each hosted service has its own position per partition, kept in memory: the next offset it has
  decided on, with its Actions run and its commands handed to the producer;
* after a poll the host flushes the producer, then commits, per partition, the *smallest* position of
  its services, so a committed offset never passes an event some service has not acted on;
* a service that hits a transient error (the database away, the jobs projection behind) stops at that
  event (its position in each partition: the first event it has not decided); the others go on with
  the poll. The host seeks the partition back to the smallest position and
  waits a little (a back-off): the next poll delivers the events again, and a service skips those below
  its own position, so the others do not decide them twice;
* a crash of the host redelivers from the committed offsets: a service may decide again an event it had
  acted on (exactly as a service alone does after its crash), which its Actions tolerate (idempotent
  writes, the retrier's recorded PandaID) and the ledger answers (a transition already made is rejected);
* positions of partitions assigned anew (a rebalance) are forgotten: they start from the group's commit.

Moving from one group per service to the host: the first time the ``reactors`` group has no offsets,
it starts each partition at the smallest offset the hosted services' own groups had committed, so
neither history is decided again nor an event skipped.

The projections too (``[reactors] projector = true``, the default): the host then also applies each poll to the
projections (``projections.runner.ProjectionRunner`` without a consumer of its own) *before* its services decide
on it, so the events topic has one reader fewer (on the embedded broker every reader of a partition costs it a
listing of the partition's batches per fetch), each event is decoded once for both, and a service reading the
jobs projection finds the event it acts on already applied instead of waiting for another process. The
projections keep their own positions, stored with their rows in each transaction: a newly assigned partition is
read from the smaller of those and the group's committed offset (the services skip what lies below their own), a
poll the projections could not apply (the database away) is decided by no service and read again after a
back-off, and an offset is committed only once the projections and every service are past it. `pandaes run`
then starts no projector of its own (``cli.components.default_components``); `pandaes run projector` still runs
them alone, with the host told ``projector = false``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from core import bus, local_events, metrics, watchdog
from core.config import Config
from projections.base import Record
from projections.runner import RETRY_EVERY, ProjectionRunner
from services.dead_letters import describe, is_transient
from services.loop import Item, Member, ServiceLoop, decode_polled, fast_json_reads

log = logging.getLogger(__name__)

NAME = "reactors"

#: The services a host can run: name → ``module:function`` building its ``Member`` from the configuration.
HOSTABLE: dict[str, str] = {
    "setupper": "services.reactors.setupper:hosted",
    "activator": "services.reactors.activator:hosted",
    "adder": "services.reactors.adder:hosted",
    "closer": "services.reactors.closer:hosted",
    "retrier": "services.reactors.retrier:hosted",
    "harvester-killer": "services.harvester.killer:hosted",
    "event-ranges": "services.eventservice.definer:hosted",
}


def member(cfg: Config, name: str) -> Member:
    """The hostable service ``name``, built for ``cfg``."""
    try:
        target = HOSTABLE[name]
    except KeyError:
        raise ValueError(f"[reactors] services: {name!r} is not a service a host can run "
                         f"(known: {', '.join(HOSTABLE)})") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(cfg)


class _Hosted:
    """One service inside the host: its loop, its positions and its clock."""

    def __init__(self, member: Member, loop: ServiceLoop):
        self.member = member
        self.loop = loop
        self.name: str = member.service.name
        self.pos: dict[bus.TopicPartition, int] = {}     # next offset this service has to decide on
        self.next_tick = 0.0
        self.cpu = 0.0                                    # seconds of this thread's CPU spent deciding/acting


class ServiceHost:
    """Runs ``members`` over one consumer of the events topic in the group ``<prefix>-<name>``."""

    def __init__(self, cfg: Config, members: Sequence[Member], *, name: str = NAME, replay: bool = False,
                 sender: bus.CommandSender | None = None, backoff_max: float = 30.0,
                 projector: ProjectionRunner | None = None):
        if not members:
            raise ValueError("a service host needs at least one service")
        names = [m.service.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"a service host runs each service once, not {names}")
        self.cfg = cfg
        self.name = name
        self.topic = cfg.kafka.events_topic
        self.group = f"{cfg.kafka.group_prefix}-{name}"
        self._own_sender = sender is None
        self.sender = sender if sender is not None else bus.CommandSender(cfg)
        self.hosted = [_Hosted(m, ServiceLoop(cfg, m.service, m.view, replay=replay, sender=self.sender,
                                              consume=False)) for m in members]
        self.projector = projector     # applies each poll before the services decide (module docstring)
        self._projector_stale = False  # its last transaction failed: its positions are read again first
        self._next_retry = 0.0
        self.cpu_project = 0.0
        # fed the ledger's committed events on this host: no fetch while they come (core/local_events.py)
        self.consumer = local_events.fed(bus.consumer(cfg, group_id=self.group), cfg, self.group)
        self._adopt_service_offsets()
        self._lock = threading.Lock()
        self._reassigned: set[bus.TopicPartition] = set()
        self.consumer.subscribe([self.topic], on_assign=self._moved, on_revoke=self._moved)
        self.lag = metrics.LagTracker(self.consumer, self.group)
        self.watchdog = watchdog.for_consumer(cfg, self.consumer, self.group, self.topic)
        self._committed: dict[bus.TopicPartition, int] = {}
        self.blocked = False                               # the last step left a service behind (transient)
        self.backoff_max = backoff_max
        self._backoff = 0.5
        self.stats = {"events": 0, "polls": 0, "blocked": 0}
        self.cpu_decode = 0.0                              # seconds of CPU decoding events (once for all)
        self._next_report = time.monotonic() + 60
        # poll size: as ServiceLoop, from the slowest recent cost per wanted event of all services together
        self._max_poll = int(cfg.kafka.max_poll_records)
        self._poll_budget_s = int(cfg.kafka.max_poll_interval_ms) / 4000
        self._cost = 0.0
        self._max_records = min(self._max_poll, 100)

    # ------------------------------------------------------------------------------------- positions
    def _adopt_service_offsets(self) -> None:
        """Start a new host group where the hosted services' own groups were (moving to the host)."""
        try:
            admin = bus.admin(self.cfg)
        except Exception as exc:  # noqa: BLE001 - the group then starts as any new group does
            log.warning("%s: could not read the services' group offsets: %s", self.group, describe(exc))
            return
        try:
            if admin.committed_offsets(self.group):
                return
            start: dict[bus.TopicPartition, int] = {}
            for h in self.hosted:
                for tp, offset in admin.committed_offsets(f"{self.cfg.kafka.group_prefix}-{h.name}").items():
                    if tp.topic == self.topic:
                        start[tp] = min(offset, start.get(tp, offset))
            if start:
                self.consumer.commit(start)
                log.info("%s starts where its services' own groups were: %s", self.group,
                         ", ".join(f"{tp.partition}@{off}" for tp, off in sorted(start.items())))
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: could not start from the services' group offsets: %s", self.group, describe(exc))
        finally:
            admin.close()

    def _moved(self, partitions: set[bus.TopicPartition]) -> None:
        """Assignment or revocation (may run on the client's thread): forget those partitions' positions."""
        with self._lock:
            self._reassigned |= set(partitions)

    def _forget_moved(self) -> set[bus.TopicPartition]:
        """Forget the positions of partitions assigned or revoked since the last poll; those moved."""
        with self._lock:
            moved, self._reassigned = self._reassigned, set()
        for tp in moved:
            self._committed.pop(tp, None)
            for h in self.hosted:
                h.pos.pop(tp, None)
        return moved

    def _start_projected(self, partitions: set[bus.TopicPartition], *, assigned: bool) -> None:
        """Seek ``partitions`` to the smaller of the projections' stored positions (read again) and where the
        services are: for partitions just ``assigned`` the group's committed offset, which each service then starts
        from (it skips what it decided before); else (after a failed transaction of the projections) their
        positions in memory. Raises a transient error if the database is away (tried again later)."""
        assert self.projector is not None
        starts = self.projector.start_offsets(partitions)
        for tp in partitions:
            if assigned:
                committed = self.consumer.committed(tp)
                if committed is not None:
                    for h in self.hosted:
                        h.pos[tp] = committed
                    self._committed[tp] = committed
            services = [h.pos[tp] for h in self.hosted if tp in h.pos]
            self.consumer.seek(tp, min([starts[tp], *services]))

    def owned_partitions(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}

    # ------------------------------------------------------------------------------------------ work
    def step(self, timeout_ms: int = 200) -> int:
        """One poll decided by every service, their clocks, one flush and one commit; the records polled."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self._max_records)
        moved = self._forget_moved()
        if self.projector is not None and not self._project_ready(polled, moved):
            return self._held_back(polled)
        t0 = time.monotonic()
        c0 = time.thread_time()
        items = decode_polled(polled)
        self.cpu_decode += time.thread_time() - c0
        ends = {tp: msgs[-1].offset + 1 for tp, msgs in polled.items()}
        if self.projector is not None and not self._project(polled, items):
            return self._held_back(polled)
        sent_before = self._commands_sent()
        wanted = 0
        blocked = False
        for h in self.hosted:
            mine = [it for it in items if it[1].offset >= h.pos.get(it[0], -1)]
            if not mine:
                continue
            c0 = time.thread_time()
            try:
                wanted += h.loop.decide_items(mine)
                for tp, end in ends.items():
                    h.pos[tp] = max(h.pos.get(tp, end), end)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                blocked = True
                for tp, end in ends.items():      # done up to its first undecided event of each partition
                    h.pos[tp] = h.loop.undone.get(tp, max(h.pos.get(tp, end), end))
                log.warning("%s: service %s stopped at a transient error, the events from there are decided "
                            "again after a back-off: %s", self.group, h.name, describe(exc))
            finally:
                h.cpu += time.thread_time() - c0
                h.loop.stats["events"] += len(mine)
        self._tick()
        if polled:
            if self._commands_sent() > sent_before:
                self.sender.flush()       # every command of the poll is out before its offsets are committed
            self._commit(ends)
            self._cost = max((time.monotonic() - t0) / max(wanted, 1), 0.9 * self._cost)
            self._max_records = max(1, min(self._max_poll, int(self._poll_budget_s / max(self._cost, 1e-6))))
        self.blocked = blocked
        self.stats["events"] += len(items)
        self.stats["polls"] += 1
        self.stats["blocked"] += blocked
        self.lag.observe(polled)
        self.watchdog.step(polled)
        if time.monotonic() >= self._next_report:
            self._next_report = time.monotonic() + 60
            log.info("%s: %s", self.group, self.cpu_report())
        return len(items)

    def _held_back(self, polled: dict[bus.TopicPartition, list]) -> int:
        """The projections could not take this poll (the database away): nothing decided, a back-off next."""
        self.blocked = True
        self.stats["blocked"] += 1
        self.watchdog.step(polled)
        return 0

    def _project_ready(self, polled: dict[bus.TopicPartition, list], moved: set[bus.TopicPartition]) -> bool:
        """Before the projections take a poll: partitions newly assigned (or all, after a failed transaction)
        are sought to where the projections and the services start (``_start_projected``), and the poll's records
        of them are dropped (they come again from there). False: the database is away (back off)."""
        assert self.projector is not None
        assigned = self.consumer.assignment()
        fresh = {tp for tp in moved if tp in assigned}
        stale = set(assigned) - fresh if self._projector_stale else set()
        if not fresh and not stale:
            return True
        try:
            if fresh:
                self._start_projected(fresh, assigned=True)
            if stale:
                self._start_projected(stale, assigned=False)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.projector.db.reset()
            self._projector_stale = True
            with self._lock:
                self._reassigned |= fresh      # still to be started from the group's commit at the next try
            for tp, msgs in polled.items():
                self.consumer.seek(tp, msgs[0].offset)
            log.warning("%s: the projections' positions cannot be read, the events from there come again after a "
                        "back-off: %s", self.group, describe(exc))
            return False
        self._projector_stale = False
        for tp in fresh | stale:
            polled.pop(tp, None)
        return True

    def _project(self, polled: dict[bus.TopicPartition, list], items: list[Item]) -> bool:
        """Apply the poll to the projections in one transaction (a poll's records of a partition that all
        decoded are handed over decoded); its dead letters asked to be retried every ``RETRY_EVERY`` seconds.
        False: the database is away, nothing of the poll is decided (its records come again after a back-off)."""
        assert self.projector is not None
        c0 = time.thread_time()
        decoded: dict[int, list[Record]] = {}
        bad: set[int] = set()
        for tp, m, event, error in items:
            if error is not None or event is None:
                bad.add(tp.partition)
            else:
                decoded.setdefault(tp.partition, []).append(Record(tp.partition, m.offset, m.value, event))
        owned = self.owned_partitions()
        try:
            self.projector.apply_polled(polled, owned, {p: r for p, r in decoded.items() if p not in bad})
            if time.monotonic() >= self._next_retry:
                self._next_retry = time.monotonic() + RETRY_EVERY
                self.projector.retry_dead_letters(owned)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.projector.db.reset()
            self._projector_stale = True     # its positions in memory may be ahead of what was committed
            for tp, msgs in polled.items():
                self.consumer.seek(tp, msgs[0].offset)
            log.warning("%s: the projections could not apply a poll, it comes again after a back-off: %s",
                        self.group, describe(exc))
            return False
        finally:
            self.cpu_project += time.thread_time() - c0
        return True

    def _commands_sent(self) -> int:
        return sum(h.loop.stats["commands"] for h in self.hosted)

    def _commit(self, ends: dict[bus.TopicPartition, int]) -> None:
        """Commit each polled partition at the smallest position of the services; seek back to it if a
        service is behind the poll (its events come again; the others skip what they did)."""
        offsets: dict[bus.TopicPartition, int] = {}
        for tp, end in ends.items():
            low = min(h.pos.get(tp, end) for h in self.hosted)
            if self.projector is not None:
                low = min(low, self.projector.position(tp.partition))
            if low < end:
                self.consumer.seek(tp, low)
            if low > self._committed.get(tp, -1):
                offsets[tp] = low
        if offsets:
            self.consumer.commit(offsets)
            self._committed.update(offsets)

    def _tick(self) -> None:
        """Each service's clock rules when due, told the partitions this host owns."""
        due = [h for h in self.hosted if h.member.tick_every is not None and time.monotonic() >= h.next_tick]
        if not due:
            return
        owned = self.owned_partitions()
        for h in due:
            if hasattr(h.member.view, "partitions"):
                h.member.view.partitions = set(owned)
            c0 = time.thread_time()
            try:
                h.loop.tick(time.time())
            except Exception as exc:   # one service's clock must not stop the others: its next tick tries again
                if is_transient(exc):
                    log.warning("%s: clock rules of %s failed, tried again at the next tick: %s", self.group,
                                h.name, describe(exc))
                else:
                    log.exception("%s: clock rules of %s failed", self.group, h.name)
            finally:
                h.cpu += time.thread_time() - c0
                h.next_tick = time.monotonic() + float(h.member.tick_every or 0)

    def cpu_report(self) -> str:
        """This thread's CPU by service since start (the rest of the process is polling and the clients)."""
        parts = [f"decode {self.cpu_decode:.2f}s"] + [f"{h.name} {h.cpu:.2f}s" for h in self.hosted]
        if self.projector is not None:
            parts.insert(1, f"projections {self.cpu_project:.2f}s")
        return "CPU " + ", ".join(parts) + f", {self.stats['events']} events"

    def run(self, stop: threading.Event) -> None:
        self.watchdog.start()
        try:
            while not stop.is_set():
                n = self.step()
                if self.blocked:
                    stop.wait(self._backoff)
                    self._backoff = min(self.backoff_max, self._backoff * 2)
                else:
                    self._backoff = 0.5
                    if not n:   # at rest: sleep until the next look, a service's next tick (ServiceLoop.run) or
                        # the projections' next look for dead letters asked to be applied again
                        due = min((h.next_tick for h in self.hosted if h.member.tick_every is not None),
                                  default=float("inf"))
                        if self.projector is not None:
                            due = min(due, self._next_retry)
                        self.consumer.rest(stop, due - time.monotonic())
        finally:   # a loop that stopped stepping is not a hung one
            self.watchdog.close()

    def close(self) -> None:
        log.info("%s stopping: %s", self.group, self.cpu_report())
        self.watchdog.close()
        try:
            self.consumer.close()
        finally:
            for h in self.hosted:
                try:
                    h.loop.close()
                finally:
                    if h.member.close is not None:
                        h.member.close()
            if self._own_sender:
                self.sender.close()
            if self.projector is not None:
                self.projector.close()


def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run reactors`: the services of ``[reactors] services`` over one consumer."""
    fast_json_reads()
    members: list[Any] = []
    host = None
    projector = None
    try:
        for name in cfg.reactors.services:
            members.append(member(cfg, name))
        if cfg.reactors.projector:
            projector = ProjectionRunner(cfg, consume=False)
        host = ServiceHost(cfg, members, projector=projector)
        log.info("%s hosts %s%s", host.group, ", ".join(h.name for h in host.hosted),
                 " and the projections " + ", ".join(p.name for p in projector.projections) if projector else "")
        host.run(stop)
    finally:
        if host is not None:
            host.close()
        else:
            for m in members:
                if m.close is not None:
                    m.close()
            if projector is not None:
                projector.close()
