"""THE way to wait until the jobs projection has reached an event: ``seq`` N of a job, for one job or many.

Why one: services consume panda.job-events in their own groups and the gateway answers after the ledger,
so each may look at a job before the projector has written the event it is acting on. Reading a stale row
would lose what that event changed (a ``commandToPilot`` set one event earlier, a job a client has just
submitted). Every caller waits the same way: poll the rows still behind (while many are, one of them
first: ``probe_of``), back off from 20 ms to 0.5 s, and give up at a deadline with ``ProjectionLag`` (a
service then leaves its offset uncommitted, so the event comes again; the gateway answers anyway).

The logic is written once, in pure pieces (``Backoff``, ``behind``, ``probe_of``) and one generator that
yields its reads and pauses (``_looks``), driven by a blocking loop (``wait_projected``) and an asyncio one
(``await_projected``); how rows are read is the caller's
``read(pandaids) -> {pandaid: row}``, a row being any mapping with a ``seq``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

from core import db

Row = Mapping[str, Any]
Read = Callable[[list[int]], Mapping[int, Row]]
AsyncRead = Callable[[list[int]], Awaitable[Mapping[int, Row]]]

FIRST_DELAY = 0.02
MAX_DELAY = 0.5
PROBE_FROM = 8    # jobs behind from which one of them is polled alone until it has caught up (probe_of)


class ProjectionLag(db.ReadModelBehind):
    """The jobs projection has not reached the event a caller is acting on."""

    def __init__(self, lagging: Mapping[int, int | None], want: Mapping[int, int]):
        self.lagging = dict(lagging)      # PandaID → seq seen (None: no row)
        self.want = dict(want)
        super().__init__(describe(self.lagging, self.want))


def describe(lagging: Mapping[int, int | None], want: Mapping[int, int]) -> str:
    parts = [f"{'no row' if seq is None else f'seq {seq}'} for PandaID {pid}, need seq ≥ {want[pid]}"
             for pid, seq in sorted(lagging.items())[:5]]
    more = f" (and {len(lagging) - 5} more)" if len(lagging) > 5 else ""
    return "jobs projection has " + "; ".join(parts) + more


class Backoff:
    """Delays between polls (``first``, doubling up to ``most``), until ``timeout`` seconds have passed."""

    def __init__(self, timeout: float, *, first: float = FIRST_DELAY, most: float = MAX_DELAY,
                 clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._deadline = clock() + timeout
        self._delay = min(first, most)
        self._most = most

    def next_delay(self) -> float | None:
        """How long to sleep before the next poll; None once the deadline has passed."""
        now = self._clock()
        if now > self._deadline:
            return None
        delay = self._delay
        self._delay = min(self._delay * 2, self._most)
        return delay


def behind(want: Mapping[int, int], rows: Mapping[int, Row]) -> dict[int, int | None]:
    """The jobs of ``want`` whose row is missing or has a lower ``seq`` (PandaID → seq seen, None: no row)."""
    out: dict[int, int | None] = {}
    for pid, seq in want.items():
        row = rows.get(pid)
        if row is None:
            out[pid] = None
        elif row["seq"] < seq:
            out[pid] = row["seq"]
    return out


def probe_of(lagging: Mapping[int, int | None]) -> int | None:
    """The one job polled alone while at least ``PROBE_FROM`` are behind (None: poll them all).

    Why: a caller waiting on a whole batch (job/submit: 500 jobs) re-read every row still behind at each look,
    every 20 ms, while the projector had not reached any of them: hundreds of index look-ups per look for the
    database and as many rows for the caller, taken from the projector it waits on. One job still behind says
    as much; only once it has caught up are the others read. The last submitted (highest PandaID) is the one
    most likely to come last. Only how often rows are read changes: the answer is still every wanted row at
    its seq, or ``ProjectionLag``."""
    return max(lagging) if len(lagging) >= PROBE_FROM else None


def _caught_up(rows: Mapping[int, Row], probe: int, want: Mapping[int, int]) -> bool:
    return not behind({probe: want[probe]}, rows)


def _looks(want: Mapping[int, int], backoff: Backoff) -> Generator[tuple[str, Any], Any, dict[int, Row]]:
    """The wait itself, its reads and pauses left to a driver (``wait_projected``, ``await_projected``): yields
    ``("read", pandaids)`` and is sent the rows read, or ``("sleep", seconds)`` and is sent None; returns every
    wanted row at its seq, or raises ``ProjectionLag``. Only the jobs still behind are read again (while many
    are, one of them first: ``probe_of``); the first read is at once."""
    want = dict(want)
    got: dict[int, Row] = {}
    lagging = behind(want, got)
    probe: int | None = None
    while True:
        if probe is None or _caught_up((yield ("read", [probe])), probe, want):
            got.update((yield ("read", sorted(lagging))))
            lagging = behind(want, got)
            if not lagging:
                return got
            probe = probe_of(lagging)
        delay = backoff.next_delay()
        if delay is None:
            if probe is not None:   # the probe's look only: say which are behind now
                got.update((yield ("read", sorted(lagging))))
                lagging = behind(want, got)
                if not lagging:
                    return got
            raise ProjectionLag(lagging, want)
        yield ("sleep", delay)


def wait_projected(read: Read, want: Mapping[int, int], timeout: float, *, most: float = MAX_DELAY,
                   sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> dict[int, Row]:
    """Every wanted job's row once its ``seq`` ≥ the wanted one; ``ProjectionLag`` after ``timeout``.

    Only the jobs still behind are read again (while many are, one of them first: ``probe_of``); the first
    poll is immediate. ``most`` caps the pause between polls (a caller answering a person keeps it short)."""
    looks = _looks(want, Backoff(timeout, most=most, clock=clock))
    answer: Any = None
    try:
        while True:
            what, arg = looks.send(answer)
            answer = read(arg) if what == "read" else sleep(arg)
    except StopIteration as done:
        return done.value


async def await_projected(read: AsyncRead, want: Mapping[int, int], timeout: float, *, most: float = MAX_DELAY,
                          sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                          clock: Callable[[], float] = time.monotonic) -> dict[int, Row]:
    """``wait_projected`` for the event loop: ``read`` and the pauses are awaited."""
    looks = _looks(want, Backoff(timeout, most=most, clock=clock))
    answer: Any = None
    try:
        while True:
            what, arg = looks.send(answer)
            answer = await read(arg) if what == "read" else await sleep(arg)
    except StopIteration as done:
        return done.value


def wait_position(read: Callable[[], int], at_least: int, timeout: float, *, most: float = MAX_DELAY,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> int:
    """The jobs projection's position in one partition once it is ≥ ``at_least``; ``ProjectionLag`` after
    ``timeout``. For a reader that needs every event below an offset applied, whichever jobs they touched
    (the ledger judging a job it no longer holds in memory). ``read()`` returns the position."""
    backoff = Backoff(timeout, most=most, clock=clock)
    while True:
        position = read()
        if position >= at_least:
            return position
        delay = backoff.next_delay()
        if delay is None:
            raise PositionLag(position, at_least)
        sleep(delay)


class PositionLag(db.ReadModelBehind):
    """The jobs projection has not applied every event below an offset of a partition."""

    def __init__(self, position: int, at_least: int):
        self.position, self.at_least = position, at_least
        super().__init__(f"jobs projection is at offset {position} of the partition, need ≥ {at_least}")
