"""What this gateway process remembers of the pilots it delivered jobs to: PandaID → principal.

Why it may: a job's pilot binding (the actor of its ``dispatch``, which ``access.refused`` reads from the
projection or the lease) is fixed once the answer carrying the job was written and its lease marked
``delivered``. The only way back from ``sent`` is ``undispatch``, and nothing sends one for a delivered
dispatch: the dispatch sweep marks only undelivered leases undone (``leases.mark_undone`` and
``leases.mark_delivered`` exclude each other), and the dispatcher undoes only a dispatch whose verdict came
too late, which it never hands out. ``reset`` does not apply to a sent job, and a retry is a new PandaID.
So a remembered binding never goes stale, and a pilot's update of a job remembered for that very pilot
needs no query.

It is only ever a shortcut to "allowed": a job not remembered, or remembered for someone else, goes to the
query as before, so a refusal is always decided on the database. Memory is bounded (least recently
delivered or used first out); another gateway process (``[gateway] processes``) or a restarted one simply
does not know, and asks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable

#: how long a pilot's update waits for the delivery mark of its job's answer before it asks the database
PENDING_WAIT = 5.0


def _pilot_principal(actor: str) -> str | None:
    kind, _, principal = actor.partition(":")
    return principal if kind == "pilot" and principal else None


class Bindings:
    """A bounded map of jobs this process delivered → the principal they went to.

    A pilot often sends its first update while the answer that carried the job is still being marked
    delivered (the answer is written first, then the lease is marked). Such an update waits for that mark
    (``pending``) instead of asking the database: the binding counts only once the mark succeeded, as for
    every other remembered job."""

    def __init__(self, size: int):
        self.size = max(0, int(size))
        self._to: OrderedDict[int, str] = OrderedDict()
        self._pending: dict[int, tuple[str, asyncio.Future[set[int]]]] = {}
        self.hits = 0

    def delivering(self, jobs: Iterable[tuple[int, str]]) -> asyncio.Future[set[int]]:
        """(PandaID, actor) of an answer about to be written; ``settle`` the returned future afterwards."""
        fut: asyncio.Future[set[int]] = asyncio.get_running_loop().create_future()
        if self.size:
            for pid, actor in jobs:
                principal = _pilot_principal(actor)
                if principal is not None:
                    self._pending[pid] = (principal, fut)
        return fut

    def settle(self, fut: asyncio.Future[set[int]], marked: Iterable[tuple[int, str]]) -> None:
        """The delivery marks are done: ``marked`` (PandaID, actor) are bound for good, the rest are not."""
        done = set()
        for pid, actor in marked:
            self.remember(pid, actor)
            done.add(pid)
        for pid in [pid for pid, (_, f) in self._pending.items() if f is fut]:
            del self._pending[pid]
        if not fut.done():
            fut.set_result(done)

    async def confirmed_for(self, ids: list[int], principal: str, wait: float = PENDING_WAIT) -> set[int]:
        """``known_for``, and the jobs whose answer to ``principal`` is being marked delivered right now
        once that mark succeeded (no longer than ``wait`` seconds: then the caller asks the database)."""
        found = self.known_for(ids, principal)
        waiting = {pid: entry[1] for pid in ids if pid not in found
                   and (entry := self._pending.get(pid)) is not None and entry[0] == principal}
        for pid, fut in waiting.items():
            try:
                marked = await asyncio.wait_for(asyncio.shield(fut), wait)
            except TimeoutError:
                continue
            if pid in marked:
                found.add(pid)
                self.hits += 1
        return found

    def remember(self, panda_id: int, actor: str) -> None:
        """The answer carrying ``panda_id`` was written and its lease marked delivered to ``actor``."""
        if self.size == 0:
            return
        principal = _pilot_principal(actor)
        if principal is None:
            return
        self._to[panda_id] = principal
        self._to.move_to_end(panda_id)
        while len(self._to) > self.size:
            self._to.popitem(last=False)

    def known_for(self, ids: list[int], principal: str) -> set[int]:
        """The jobs of ``ids`` remembered as delivered to ``principal`` (all others need the query)."""
        to = self._to
        found = {pid for pid in ids if to.get(pid) == principal}
        for pid in found:
            to.move_to_end(pid)
        self.hits += len(found)
        return found

    def __len__(self) -> int:
        return len(self._to)
