"""Every stand-in the tests use, in one place: data plugins and the views services decide with.

The views are in-memory and belong to pure unit tests only (a decision on plain data). ``FlakyPlugin``
stands in for a storage system in integration tests (loaded by name, ``fakes:FlakyPlugin``); what those
tests exercise through Kafka and PostgreSQL is always the real thing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from plugins import PluginError
from plugins.base import DataPlugin, InputFile, OutputBlock, OutputFile
from services.reactors.activator import SentActivations
from services.sitedata.sites import Queue


# ---------------------------------------------------------------------------------------------- plugins
class FakePlugin(DataPlugin):
    """Inputs live where ``replicas`` says; ``fail`` makes every action raise PluginError, ``refuse`` only
    the preparation of these output blocks."""

    name = "fake"

    def __init__(self, replicas: dict[str, set[str]] | None = None, ready: set[str] | None = None,
                 fail: str | None = None, refuse: set[str] | None = None):
        self.replicas = replicas or {}
        self.ready = ready or set()
        self.fail = fail
        self.refuse = refuse or set()
        self.calls: list[tuple[str, Any]] = []

    def locate(self, files):
        return {f.lfn: set(self.replicas.get(f.lfn, ())) for f in files}

    def dispatch_ready(self, block):
        return block in self.ready

    def outputs_arrived(self, files):
        return []

    def _act(self, op, arg):
        if self.fail:
            raise PluginError(self.fail)
        self.calls.append((op, arg))

    def prepare_dispatch(self, block, endpoint, files):
        self._act("prepare_dispatch", (block, endpoint, [f.lfn for f in files]))

    def prepare_outputs(self, blocks):
        refused = sorted(self.refuse & {b.name for b in blocks})
        if refused:
            raise PluginError(f"cannot create {', '.join(refused)}")
        self._act("prepare_outputs", [b.name for b in blocks])

    def register_outputs(self, files, endpoint):
        self._act("register_outputs", files)

    def transfer_outputs(self, files):
        self._act("transfer_outputs", files)

    def pump(self):
        self.calls.append(("pump", None))
        return 0


class FlakyPlugin(DataPlugin):
    """Succeeds like ``dummy`` except where a test asks otherwise (the service tests' storage):

    * outputs whose lfn starts with ``flaky`` fail registration once, temporarily (the adder must defer);
    * outputs whose lfn contains ``stuck`` never arrive at their destination (the finisher must time out).
    """

    name = "flaky"
    failed_once: set[str] = set()
    registered: list[tuple[int | None, str, str]] = []
    _lock = threading.Lock()

    def locate(self, files: Sequence[InputFile]) -> dict[str, set[str]]:
        return {f.lfn: {"*"} for f in files}

    def dispatch_ready(self, block: str) -> bool:
        return True

    def outputs_arrived(self, files: Sequence[OutputFile]) -> list[str]:
        return [f.lfn for f in files if "stuck" not in f.lfn]

    def prepare_dispatch(self, block: str, endpoint: str, files: Sequence[InputFile]) -> None:
        pass

    def prepare_outputs(self, blocks: Sequence[OutputBlock]) -> None:
        pass

    def register_outputs(self, files: Sequence[OutputFile], endpoint: str) -> None:
        with self._lock:
            for f in files:
                if f.lfn.startswith("flaky") and f.lfn not in self.failed_once:
                    self.failed_once.add(f.lfn)
                    raise PluginError(f"{f.lfn}: storage busy", temporary=True)
            self.registered += [(f.pandaid, f.lfn, f.block) for f in files]

    def transfer_outputs(self, files: Sequence[OutputFile]) -> None:
        pass


# ------------------------------------------------------------------------------- setupper and activator
class FakeStore:
    """The datasets table as lists: what was recorded and which dispatch blocks were completed."""

    def __init__(self):
        self.records: list = []
        self.completed: list = []

    def record(self, blocks, files, actor):
        self.records.append((blocks, files, actor))

    def complete_dispatch(self, names):
        self.completed.append(list(names))


class FakeView:
    """The setupper's and activator's view on plain data."""

    def __init__(self, queues: list[Queue], plugin: FakePlugin, jobs: dict[int, tuple[dict, list[dict]]] | None = None,
                 assigned: list | None = None):
        self._queues = {q.name: q for q in queues}
        self._plugin = plugin
        self._jobs = jobs or {}
        self._assigned = assigned or []
        self.datasets = FakeStore()
        self.partitions = None
        self.sent = SentActivations()

    def queues(self):
        return self._queues

    def plugin(self, queue, vo):
        return self._plugin

    def plugin_spec(self, queue, vo):
        return "fake"

    def job(self, pid, seq):
        return self._jobs.get(pid)

    # activator side
    def in_flight(self, since):
        return self.sent.since(since)

    def mark_sent(self, pandaids, at=None):
        self.sent.mark(pandaids, at)

    def assigned(self, partitions, limit):
        return self._assigned[:limit]

    def dispatch_ready(self, block):
        return self._plugin.dispatch_ready(block)

    def plugins(self):
        return [self._plugin]


def queue(name: str, **kw) -> Queue:
    """A queue of the fake views, with one endpoint ``<name>_DISK`` unless given."""
    kw.setdefault("endpoints", (f"{name}_DISK",))
    return Queue(name=name, site=kw.pop("site", name), version=kw.pop("version", 1), **kw)


# -------------------------------------------------------------------------------------- adder, retrier
class FakeAdderView:
    """The adder's view (job row, files, placement) and its plugin in one, recording every call."""

    def __init__(self, status="holding", seq=5, spec=None, *, files: list[dict], at_least: int = 5):
        self.row = {"seq": seq, "status": status, "spec": spec or {"computingSite": "LOCAL"}}
        self._files = files
        self._at_least = at_least
        self.calls: list = []
        self.partitions = None

    def job(self, pid, at_least):
        assert at_least == self._at_least
        return self.row

    def files(self, pid):
        return self._files

    def jobs(self, at_least):
        assert set(at_least.values()) == {self._at_least}
        return {pid: self.row for pid in at_least}

    def files_of(self, pids):
        return {pid: [{**f, "PandaID": pid} for f in self._files] for pid in pids}

    def placement(self, spec):
        return self, "EP"

    # plugin + bookkeeping, recorded
    def register_outputs(self, files, endpoint):
        self.calls.append(("register", endpoint, sorted(f.lfn for f in files)))
        if getattr(self, "error", None):
            raise self.error
        errors = getattr(self, "errors", {})          # PandaID → what its registration raises
        for f in files:
            if f.pandaid in errors:
                raise errors[f.pandaid]

    def settle(self, registered, done):
        self.calls.append(("settle", sorted({pid for pid, _ in registered}), sorted(done)))

    def transfer_outputs(self, files):
        self.calls.append(("transfer",))

    def registered(self, pid, files):
        self.calls.append(("registered", pid))

    def done(self, pid):
        self.calls.append(("done", pid))

    def defer(self, pid, seq, error):
        self.calls.append(("defer", pid, seq))


class FakeRetrierView:
    """A failed job that may be retried once; ``claim`` hands out new PandaIDs from 5000, once per old job."""

    def __init__(self, files: list[dict]):
        self._files = files
        self.claims: dict = {}
        self.existing: set = set()

    def job(self, pid, at_least):
        return {"seq": 4, "status": "failed", "spec": {"attemptNr": 1, "maxAttempt": 2}}

    def files(self, pid):
        return self._files

    def exists(self, pid):
        return pid in self.existing

    def claim(self, old, attempt, reason):
        return self.claims.setdefault(old, 5000 + len(self.claims))


# ---------------------------------------------------------------------------------------------- watcher
class FakeWatcherView:
    """The watcher's candidates: ``rows`` as they are now (a test replaces them as the projection moves)."""

    def __init__(self, rows: list, shortest: float = 1):
        self.rows = rows
        self._shortest = shortest
        self.memory: dict = {}

    def candidates(self, now, shortest):
        assert shortest == self._shortest
        return self.rows

    def acted(self):
        return dict(self.memory)

    def remember(self, acted):
        self.memory = acted


# ------------------------------------------------------------------------------ services for a host
class RecordingService:
    """A service that wants every event and remembers (PandaID, seq) of each decision, in order; sends nothing.

    ``fail_once`` (PandaIDs): the first decision on such an event raises ``error`` (a transient OSError
    unless told otherwise), later ones succeed. ``crash_when``: the decision on the first event it holds for raises
    ``HostCrash``, which nothing catches: the host dies there, in the middle of its batch."""

    def __init__(self, name: str, *, fail_once: Sequence[int] = (), error: type[Exception] = OSError,
                 crash_when: Any = None):
        self.name = name
        self.decided: list[tuple[int, int]] = []
        self.fail_once = set(fail_once)
        self.error = error
        self.crash_when = crash_when
        self._lock = threading.Lock()

    def wants(self, event) -> bool:
        return True

    def decide(self, event, view) -> list:
        with self._lock:
            if event.PandaID in self.fail_once:
                self.fail_once.discard(event.PandaID)
                raise self.error(f"{self.name}: {event.PandaID} not yet")
            if self.crash_when is not None and self.crash_when(event):
                self.crash_when = None
                raise HostCrash(f"{self.name} crashes at {event.PandaID}/{event.seq}")
            self.decided.append((event.PandaID, event.seq))
        return []


class HostCrash(BaseException):
    """A process dying in the middle of a batch (not an error any loop handles)."""


# ---------------------------------------------------------------------------------------- dispatch sweep
class FakeSweepView:
    """The dispatch sweep's leases and job states as plain data; what it marks and forgets is recorded."""

    def __init__(self, leases: list, jobs: dict, delivered: frozenset = frozenset()):
        self.leases = leases
        self.job_rows = jobs
        self.delivered = delivered     # (pandaid, command_id) its gateway marks delivered before the sweep marks it
        self.undone: list = []
        self.forgotten: list = []

    def undelivered(self):
        return list(self.leases)

    def jobs(self, pandaids):
        return {p: self.job_rows[p] for p in pandaids if p in self.job_rows}

    def mark_undone(self, pairs):
        marked = [p for p in pairs if p not in self.delivered]
        self.undone += marked
        return set(marked)

    def forget(self, pairs):
        self.forgotten += pairs


# ----------------------------------------------------------------------------------------------- ledger
class FlakyLedgerReads:
    """The ledger's real reads of the jobs projection, except that some fail first with the error a lost
    database connection gives (integration tests: the database itself is shared and stays up): the row
    look-ups ``failures`` times, the partition snapshots ``snapshot_failures`` times, and the look-ups that
    include one of ``fail_for`` (PandaID → times) that many times."""

    def __init__(self, real, failures: int = 0, *, snapshot_failures: int = 0, fail_for: dict | None = None):
        self.real, self.failures, self.calls = real, failures, 0
        self.snapshot_failures, self.snapshot_calls = snapshot_failures, 0
        self.fail_for = dict(fail_for or {})

    @staticmethod
    def _lost():
        import psycopg

        return psycopg.OperationalError("connection lost (FlakyLedgerReads)")

    def __call__(self, conn, topic, partition):
        self.snapshot_calls += 1
        if self.snapshot_failures > 0:
            self.snapshot_failures -= 1
            raise self._lost()
        return self.real(conn, topic, partition)

    def position(self, conn, topic, partition):
        return self.real.position(conn, topic, partition)

    def rows(self, conn, topic, pandaids, *, at_least, timeout):
        self.calls += 1
        pandaids = list(pandaids)
        if self.failures > 0:
            self.failures -= 1
            raise self._lost()
        for pid in pandaids:
            if self.fail_for.get(pid, 0) > 0:
                self.fail_for[pid] -= 1
                raise self._lost()
        return self.real.rows(conn, topic, pandaids, at_least=at_least, timeout=timeout)


class HangingLedgerReads:
    """The ledger's real reads, except that the partition snapshot hangs (a database call that never returns)
    until ``release`` is set: what the watchdog's hung-thread check is for."""

    def __init__(self, real):
        import threading

        self.real, self.release, self.entered = real, threading.Event(), threading.Event()

    def __call__(self, conn, topic, partition):
        self.entered.set()
        self.release.wait()
        return self.real(conn, topic, partition)

    def position(self, conn, topic, partition):
        return self.real.position(conn, topic, partition)

    def rows(self, conn, topic, pandaids, *, at_least, timeout):
        return self.real.rows(conn, topic, pandaids, at_least=at_least, timeout=timeout)
