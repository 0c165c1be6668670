"""A consuming loop that makes no progress while it has work is stuck: it says so and exits.

Why: chaos runs (docs/reliability.md) left components alive, without an error, with every job waiting on
them: a consumer whose group never settled on the broker (a member that left in the middle of a join, on
the embedded Tansu broker, leaves the group without an assignment for good) or a ``poll`` that never
returned (kafka-python waiting on an event without a timeout). Nothing inside such a process notices; the
supervisor (``pandaes run``, systemd, Kubernetes) restarts a process that exits. So every consuming loop
tells its ``Watchdog`` after each step what it did, and

* stuck on the broker: records wait for it (lag > 0: its assigned partitions, or with no assignment the
  group's committed offsets behind the ends of the topic) and it has neither received records nor had
  nothing to do for ``bound`` seconds → ``Stuck`` is raised in the loop's thread (an ERROR line, the
  ``pandaes_watchdog_stuck_total`` metric, exit code 1);
* stuck inside a call: the loop's thread has not finished a step for ``bound`` seconds (a guard thread
  looks) → the ERROR line and the metric, and the process ends at once (``os._exit``): that thread
  cannot be made to raise.

The decision is ``stuck`` (pure: progress time, lag, now, bound); the rest gathers its inputs. A spare
copy (more copies than partitions) has no assignment and counts its group's lag: it is restarted only if
the whole group is stuck that long, which a restart does not hurt.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from core import metrics
from core.bus import TopicPartition

log = logging.getLogger(__name__)

EXIT_CODE = 70   # os._exit of a loop stuck inside a call (EX_SOFTWARE): the supervisor restarts it

# Only a component's own process (cli.components.run_in_process) may be ended by a guard: a loop used as a
# library (tests, the bench, a tool) shares its process with other work, which an exit would take down too.
_exit_allowed = False


def allow_exit() -> None:
    """This process is one component: a loop stuck inside a call may end it (the supervisor restarts it)."""
    global _exit_allowed
    _exit_allowed = True


def _exit_if_component(code: int) -> None:
    if _exit_allowed:
        os._exit(code)
    log.error("watchdog: not a component's own process; not exiting (the loop stays stuck)")


class Stuck(RuntimeError):
    """The loop made no progress for longer than its bound while work waited for it."""


def stuck(*, progress_at: float, lag: int | None, now: float, bound: float) -> bool:
    """Whether a loop is stuck: ``lag`` records wait for it (``None``: not known, so not stuck) and its last
    progress (records received, or a look that found nothing to do) is more than ``bound`` seconds old."""
    return bound > 0 and lag is not None and lag > 0 and now - progress_at > bound


def worth_a_look(*, progress_at: float, now: float, every: float) -> bool:
    """Whether an empty step should ask the broker for the lag: only after ``every`` seconds without progress.

    Why: a busy loop also has empty steps between its polls, and the lag is one request on the consumer's own
    connection, answered behind the fetch in flight there; on the embedded broker, which holds every fetch for
    its whole wait, the ledger's look waited up to its 1 s gap fetch, with every command behind it (a 0.45 s
    stall of getJob once per look, docs/performance.md). A loop that made progress within ``every`` cannot be
    stuck, so it need not look; an idle one looks as often as before."""
    return now - progress_at >= every


def hung(*, beat_at: float, now: float, bound: float) -> bool:
    """Whether a loop is hung inside a call: no step finished for more than ``bound`` seconds."""
    return bound > 0 and now - beat_at > bound


class Watchdog:
    """One consuming loop's watchdog. ``step(polled)`` after each step (in the loop's thread); ``start()``
    starts the guard thread for a step that never ends; ``close()`` stops it.

    ``lag`` returns the records waiting for the loop (``consumer_lag`` is the usual one)."""

    def __init__(self, name: str, bound: float, lag: Callable[[], int | None], *, check_every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, exit: Callable[[int], None] = _exit_if_component):
        self.name = name
        self.bound = float(bound)
        self._lag = lag
        self._clock = clock
        self._exit = exit
        self.check_every = check_every
        self.progress_at = self.beat_at = clock()
        self._next_check = self.progress_at + check_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, progress: object) -> None:
        """After a step: ``progress`` (the records polled, or anything true when the step did work that came
        another way) is progress; else, now and then, is there work it is not getting?"""
        now = self.beat_at = self._clock()
        if progress:
            self.progress_at = now
            return
        if self.bound <= 0 or now < self._next_check:
            return
        self._next_check = now + self.check_every
        if not worth_a_look(progress_at=self.progress_at, now=now, every=self.check_every):
            return
        try:
            lag = self._lag()
        except Exception as exc:  # noqa: BLE001 - the broker away: not known, so not stuck
            log.debug("watchdog %s: lag not known: %s", self.name, exc)
            lag = None
        if lag == 0:
            self.progress_at = now        # nothing to do is not being stuck
        elif stuck(progress_at=self.progress_at, lag=lag, now=now, bound=self.bound):
            self._report(f"{lag} record(s) wait and none came for {now - self.progress_at:.0f}s")
            raise Stuck(f"{self.name}: no progress for {now - self.progress_at:.0f}s with {lag} record(s) "
                        "waiting; exiting so that it is restarted")

    def alive(self) -> None:
        """A long step (the ledger's partition rebuild) is still moving: not hung. Progress it is not."""
        self.beat_at = self._clock()

    def _report(self, why: str) -> None:
        metrics.WATCHDOG_STUCK.labels(self.name).inc()
        log.error("watchdog: %s is stuck (%s); exiting so that it is restarted", self.name, why)

    def start(self) -> None:
        """Start the guard thread (again, after ``close``: a loop's ``run`` may be called more than once)."""
        if self.bound <= 0 or (self._thread is not None and self._thread.is_alive()):
            return
        if self._thread is not None:      # started again: the rest in between was no hung step
            self.beat_at = self._clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guard, name=f"watchdog-{self.name}", daemon=True)
        self._thread.start()

    def _guard(self) -> None:
        while not self._stop.wait(min(self.check_every, self.bound)):
            now = self._clock()
            if hung(beat_at=self.beat_at, now=now, bound=self.bound):
                self._report(f"no step finished for {now - self.beat_at:.0f}s")
                for handler in logging.getLogger().handlers:
                    handler.flush()
                self._exit(EXIT_CODE)
                return

    def close(self) -> None:
        self._stop.set()


def consumer_lag(consumer, topic: str, committed: Callable[[], Mapping[TopicPartition, int]]) -> int | None:
    """Records of ``topic`` waiting for ``consumer``: past its positions on its assigned partitions; with no
    assignment (its group has not settled), past its group's ``committed`` offsets (read by an admin client:
    the consumer's own coordinator requests wait behind a join that does not end) on every partition."""
    assigned = [tp for tp in consumer.assignment() if tp.topic == topic]
    if assigned:
        ends = consumer.end_offsets(assigned)
        return sum(max(0, end - consumer.position(tp)) for tp, end in ends.items())
    tps = [TopicPartition(topic, p) for p in consumer.partitions(topic)]
    if not tps:
        return None
    ends = consumer.end_offsets(tps)
    starts = consumer.beginning_offsets(tps)
    done = committed()
    return sum(max(0, ends.get(tp, 0) - done.get(tp, starts.get(tp, 0))) for tp in tps)


def for_consumer(cfg, consumer, group: str, topic: str) -> Watchdog:
    """The watchdog of a loop consuming ``topic`` in ``group`` (bound: ``[kafka] stuck_after_s``)."""
    from core import bus

    def committed() -> Mapping[TopicPartition, int]:
        admin = bus.admin(cfg)
        try:
            return admin.committed_offsets(group)
        finally:
            admin.close()

    bound = float(cfg.kafka.stuck_after_s)
    # an idle consumer asks the broker for the log ends only this often (they were much of an idle broker's work)
    return Watchdog(group, bound, lambda: consumer_lag(consumer, topic, committed),
                    check_every=min(30.0, max(1.0, bound / 4)))
