"""The load of `pandaes chaos`: jobs submitted in batches while simulated pilots run them.

Both sides keep going through the faults the run injects, the way their real counterparts do: the
submitter sends its batch again (same commands, same ids) when the broker or the database refused it, and a
pilot resends an update until it gets a JSON answer (pilot3 resends for about 20 minutes). Both can be
held at a gate (``pause``/``resume``) so that the broker is killed only when nothing is in flight
(cli/chaos_faults.py says why).

What each pilot received is recorded (``received``: PandaID → the pilots that got it): a job handed to two
pilots is the double dispatch the run checks for, seen from the pilots' side.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from typing import Any

import aiohttp
import msgspec

from cli.simulated_pilot import SimOptions, SimStats, _Pilot
from core import db
from core.bus import CommandSender, OutcomeWaiter
from core.config import Config
from projections import queries
from schemas.jobspec import JobSpec, job_from_dict
from schemas.messages import Command, Submit

SITE = "LOCAL"


def chaos_job(i: int) -> JobSpec:
    """One small production job: an output and a log, no input (nothing to stage), retried twice."""
    name = f"chaos.{i:06d}"
    files = [{"lfn": f"{name}.out", "type": "output", "dataset": "chaos.out", "scope": "chaos"},
             {"lfn": f"{name}.log", "type": "log", "dataset": "chaos.log", "scope": "chaos"}]
    return job_from_dict({"jobName": name, "transformation": "run.sh", "jobParameters": "chaos",
                          "prodSourceLabel": "managed", "computingSite": SITE, "attemptNr": 1, "maxAttempt": 3,
                          "Files": files})


class Gate:
    """Open or closed; counts the calls inside, so a closer knows when nothing is in flight."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self.inside = 0

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def enter(self) -> bool:
        """Count one call in, if the gate is open (else False: wait and ask again)."""
        with self._lock:
            if not self._open.is_set():
                return False
            self.inside += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.inside -= 1


class Submitter(threading.Thread):
    """Submits ``n`` jobs in batches of ``batch`` every ``every`` seconds, as `pandaes submit` does (PandaIDs
    from the database, Submit commands to the ledger). ``sent``: the PandaIDs whose Submit the broker took."""

    def __init__(self, cfg: Config, n: int, batch: int, every: float, gate: Gate, stop: threading.Event, log):
        super().__init__(name="chaos-submitter", daemon=True)
        self.cfg, self.n, self.batch, self.every = cfg, n, batch, every
        self.gate, self.stop, self.log = gate, stop, log
        self.sent: list[int] = []
        self.confirmed = 0
        self.retries = 0
        self.generation = 0          # bumped by the broker fault: reconnect before the next batch
        self.done = threading.Event()

    def _ids(self, k: int) -> list[int]:
        while not self.stop.is_set():
            try:
                with db.connect(self.cfg) as conn:
                    return queries.next_pandaids(conn, k)
            except Exception:  # noqa: BLE001 - the database is down (a fault of the run): try again
                self.retries += 1
                self.stop.wait(1.0)
        return []

    def run(self) -> None:
        sender: CommandSender | None = None
        waiter: OutcomeWaiter | None = None
        generation = -1
        i = 0
        try:
            while i < self.n and not self.stop.is_set():
                if not self.gate.enter():
                    self.stop.wait(0.2)
                    continue
                try:
                    if generation != self.generation or sender is None:
                        for client in (sender, waiter):
                            if client is not None:
                                client.close()
                        sender, waiter, generation = CommandSender(self.cfg), OutcomeWaiter(self.cfg), self.generation
                    k = min(self.batch, self.n - i)
                    ids = self._ids(k)
                    if not ids:
                        break
                    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
                    cmds: list[Command] = [
                        Submit(PandaID=pid, actor="user:chaos",
                               job=msgspec.structs.replace(chaos_job(i + j), PandaID=pid, creationTime=now))
                        for j, pid in enumerate(ids)]
                    futures = [waiter.expect(c.id) for c in cmds]
                    if not self._send(sender, cmds):
                        break
                    self.sent += ids
                    i += k
                    deadline = time.monotonic() + 30
                    for fut in futures:
                        try:
                            fut.result(max(0.0, deadline - time.monotonic()))
                            self.confirmed += 1
                        except Exception:  # noqa: BLE001 - judged later (the ledger is restarting)
                            pass
                finally:
                    self.gate.leave()
                self.stop.wait(self.every)
        finally:
            for client in (sender, waiter):
                if client is not None:
                    client.close()
            self.done.set()

    def _send(self, sender: CommandSender, cmds: list[Command]) -> bool:
        """Send until the broker took every command (the same ids each time: the ledger judges each once);
        False if the run stopped first."""
        while True:
            try:
                sender.send_many(cmds)
                sender.flush()
                return True
            except Exception as exc:  # noqa: BLE001 - a broker outage: send again
                self.retries += 1
                self.log(f"submitter: sending again after {type(exc).__name__}: {str(exc)[:120]}")
                if self.stop.wait(1.0):
                    return False


class _GatedPilot(_Pilot):
    def __init__(self, *args: Any, gate: Gate, **kw: Any):
        super().__init__(*args, **kw)
        self.gate = gate

    async def _post(self, fn: str, data: dict[str, Any]) -> Any:
        while not self.gate.enter():
            await asyncio.sleep(0.2)
        try:
            return await super()._post(fn, data)
        finally:
            self.gate.leave()


class Pilots(threading.Thread):
    """``n`` simulated pilots (cli/simulated_pilot.py) asking for jobs until ``stop``."""

    def __init__(self, url: str, n: int, headers: dict[str, str], gate: Gate, stop: threading.Event,
                 payload: float = 0.5):
        super().__init__(name="chaos-pilots", daemon=True)
        # an update is resent until a JSON answer comes (a gateway restart, a database outage); one heartbeat
        self.opts = SimOptions(url=url, site=SITE, pilots=n, payload_seconds=payload, heartbeat=payload / 2,
                               nojob_retries=0, nojob_sleep=0.5, update_retries=100_000, update_sleep=0.5,
                               headers=headers)
        self.gate, self.stop = gate, stop
        self.stats = SimStats()
        self.received: dict[int, list[int]] = {}   # PandaID → indices of the pilots that got it

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=self.opts.headers,
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            await asyncio.gather(*(self._pilot(session, i) for i in range(self.opts.pilots)))

    async def _pilot(self, session: aiohttp.ClientSession, index: int) -> None:
        pilot = _GatedPilot(session, self.opts, index, self.stats, gate=self.gate)
        while not self.stop.is_set():
            job = await pilot.get_job()
            if job is None:
                await asyncio.sleep(self.opts.nojob_sleep)
                continue
            pid = int(job["PandaID"])
            self.received.setdefault(pid, []).append(index)
            self.stats.received.append(pid)
            await pilot.run_job(job)
