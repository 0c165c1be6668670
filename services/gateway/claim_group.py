"""getJob claims of the same request shape, arriving together, leased by one statement (group claim).

Why: a claim statement costs about the same for one candidate as for several (its executor set-up, the walk of
the dispatch index, the round trip to PostgreSQL and the wake-ups on both sides), and pilots of one queue ask
the same way (same site, labels, resources). At 500 getJob/s a claim was a fifth of the gateway's CPU per getJob
and most of PostgreSQL's (nineteenth session). So a request whose shape has a claim in flight waits for it and
goes, with every other request that arrived meanwhile, into the next statement: each request gets the rows of
its own seats (the statement leases row ``i`` to the actor, node and deadline of the seat that holds ``i``).
Nothing waits on a timer: a lone request is claimed at once, alone, as before; under load one statement serves
many (group commit). Shapes are independent: each has at most one statement in flight.

The dispatcher groups its "is there any candidate at all?" read the same way (each seat wanting one answer): the
pilots polling an empty queue share it too.

What a request sees is what its own statement would have given it: its rows in candidate order, a lost race as
a row without a command id, the statement's exception if it failed. A request cancelled while it waits does not
cancel the statement the others are in; leases won for it then wait for the dispatch sweep, as a claim whose
request died after its statement always did.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

Row = TypeVar("Row")


@dataclasses.dataclass
class Seat(Generic[Row]):
    """One request's part of a group statement: ``want`` candidates for ``actor`` on ``node``, to be answered
    within ``deliver`` seconds."""

    want: int
    actor: str
    node: str
    deliver: float
    answer: asyncio.Future[list[Row]]


#: runs one statement for a shape: the seats in order, rows back in seat order (row ``i`` for the seat holding it)
Run = Callable[[Hashable, list[Seat[Row]]], Awaitable[list[Row]]]


class ClaimGroups(Generic[Row]):
    """One statement in flight per shape; the requests that arrive meanwhile share the next."""

    def __init__(self, run: Run[Row], max_rows: int):
        if max_rows < 1:
            raise ValueError(f"ClaimGroups: max_rows must be at least 1, not {max_rows}")
        self._run = run
        self._max_rows = max_rows
        self._waiting: dict[Hashable, list[Seat[Row]]] = {}
        self._running: dict[Hashable, asyncio.Task[None]] = {}
        self.statements = 0   # statements run
        self.requests = 0     # requests served

    async def claim(self, shape: Hashable, want: int, actor: str, node: str, deliver: float) -> list[Row]:
        """The rows of a statement that carried ``want`` seats for this request (fewer when the candidates ran
        out: the seats are filled in arrival order)."""
        if want < 1:
            return []
        loop = asyncio.get_running_loop()
        seat: Seat[Row] = Seat(min(want, self._max_rows), actor, node, deliver, loop.create_future())
        self._waiting.setdefault(shape, []).append(seat)
        self.requests += 1
        if shape not in self._running:
            self._running[shape] = loop.create_task(self._drain(shape))
        # a cancelled caller does not cancel the statement the others are in
        return await asyncio.shield(seat.answer)

    def _next(self, shape: Hashable) -> list[Seat[Row]]:
        """The waiting seats of ``shape`` the next statement carries: in arrival order, up to ``max_rows``
        candidates (at least one request)."""
        waiting = self._waiting.get(shape) or []
        take, rows = 0, 0
        while take < len(waiting) and (take == 0 or rows + waiting[take].want <= self._max_rows):
            rows += waiting[take].want
            take += 1
        batch, rest = waiting[:take], waiting[take:]
        if rest:
            self._waiting[shape] = rest
        else:
            self._waiting.pop(shape, None)
        return batch

    async def _drain(self, shape: Hashable) -> None:
        try:
            while batch := self._next(shape):
                self.statements += 1
                try:
                    rows = await self._run(shape, batch)
                except BaseException as exc:   # each request sees it, as it would its own statement's
                    _fail(batch, exc if isinstance(exc, Exception) else RuntimeError("claim cancelled"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                start = 0
                for seat in batch:
                    if not seat.answer.done():
                        seat.answer.set_result(rows[start:start + seat.want])
                    start += seat.want
        finally:
            self._running.pop(shape, None)
            left = self._waiting.pop(shape, [])
            _fail(left, RuntimeError("claim cancelled"))   # shutdown with requests waiting: they must not hang


def _fail(seats: list[Seat[Any]], exc: BaseException) -> None:
    for seat in seats:
        if not seat.answer.done():
            seat.answer.set_exception(exc)
