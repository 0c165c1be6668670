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

from collections import OrderedDict


class Bindings:
    """A bounded map of jobs this process delivered → the principal they went to."""

    def __init__(self, size: int):
        self.size = max(0, int(size))
        self._to: OrderedDict[int, str] = OrderedDict()
        self.hits = 0

    def remember(self, panda_id: int, actor: str) -> None:
        """The answer carrying ``panda_id`` was written and its lease marked delivered to ``actor``."""
        if self.size == 0:
            return
        kind, _, principal = actor.partition(":")
        if kind != "pilot" or not principal:
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
