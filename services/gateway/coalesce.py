"""One statement for the lease writes of many concurrent requests of this gateway process.

Why: every getJob marks its leases ``delivered`` after its answer is written (and, until the eighteenth session,
``sent`` after the ledger's verdict), one small UPDATE each; with hundreds of pilots those statements (and
psycopg's per-call work for them) were a large share of the gateway's and PostgreSQL's CPU per job. A
``Coalescer`` runs one write at a time: requests arriving while one is in flight wait for the next, which carries
all of them (group commit). Nothing waits on a timer, so a lone request costs what it did; under load one
statement serves many. Every caller still awaits the statement carrying its own leases and gets its result (the
command ids the statement marked, each caller picks its own) or its exception: the guarantees of the single
writes hold (``bindings.py`` awaits the delivery mark, the dispatch sweep sees the same states).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Lease = tuple[int, str]   # (pandaid, dispatch command id)
Write = Callable[[list[Lease]], Awaitable[set[str]]]


class Coalescer:
    """Runs ``write`` on the leases of all callers waiting, one write at a time."""

    def __init__(self, write: Write):
        self._write = write
        self._pending: list[Lease] = []
        self._waiters: list[asyncio.Future[set[str]]] = []
        self._runner: asyncio.Task | None = None
        self.writes = 0      # statements run
        self.calls = 0       # requests served

    async def __call__(self, leases: list[Lease]) -> set[str]:
        """The result of the write that carried ``leases`` (for all leases of that write)."""
        if not leases:
            return set()
        fut: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        self._pending += leases
        self._waiters.append(fut)
        self.calls += 1
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        # a cancelled caller does not cancel the write the others (and maybe its own leases) are in
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        try:
            while self._pending:
                batch, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
                self.writes += 1
                try:
                    out = await self._write(batch)
                except BaseException as exc:   # each caller sees it, as it would its own statement's
                    for w in waiters:
                        if not w.done():
                            w.set_exception(exc if isinstance(exc, Exception)
                                            else RuntimeError("lease write cancelled"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for w in waiters:
                    if not w.done():
                        w.set_result(out)
        finally:
            self._runner = None
            if self._pending:   # cancelled (shutdown) with callers waiting: they must not hang
                for w in self._waiters:
                    if not w.done():
                        w.set_exception(RuntimeError("lease write cancelled"))
                self._pending, self._waiters = [], []
