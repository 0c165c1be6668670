"""Closer: close a sub block when all its files are settled, and a destination block when all its subs are.

PanDA's Closer runs after the Adder/Watcher finished a job: for each output/log destinationDBlock,
once no file is still ``unknown`` the sub dataset is closed, and a destination dataset is closed when
all its subs are. Here blocks live in the ``datasets`` / ``dataset_files`` tables (migration 101,
written by the setupper and the adder). A file is *settled* when it is ``ready`` (registered by the
adder) or ``failed`` — or when its job has reached a final state, in which case a file not registered
by then never will be, and is marked ``failed`` (the job's expected count is then "reached").

Two paths, one ``plan`` function:
* event path — jobs reached a final state: their files are failed if unsettled, and each of their sub
  blocks closes once its counters say no other file is still open. It reads the jobs' own file rows and
  their blocks' counters only, so its cost per job does not grow with the files (or the live jobs) a block
  holds;
* sweep (``tick`` / the daemon's ``closer`` script) — every open sub block, all its unsettled files and
  whether their jobs are over: catches what the event path cannot see, e.g. two jobs of one block finishing
  at the same moment in two closer copies, or a file of a job that ended before its files were recorded.
Closing is idempotent (``status <> 'closed'`` guards), so overlapping runs do no harm.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import psycopg

from core.config import Config
from core.states import FINAL_STATES
from projections import service_queries
from schemas.messages import Event, JobTransitioned
from services.loop import Action, Member, ServiceLoop, run_alone
from services.reactors import datasets

log = logging.getLogger(__name__)

SETTLED = ("ready", "failed")
OPEN = ("closed", "failed")   # statuses a block is never closed from


class BlockFile(NamedTuple):
    dataset: str
    pandaid: int
    lfn: str
    status: str


@dataclass(frozen=True)
class Plan:
    fail: tuple[BlockFile, ...] = ()          # files of final jobs that will never be registered
    close_subs: tuple[str, ...] = ()
    close_destinations: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fail or self.close_subs or self.close_destinations)


@dataclass
class Blocks:
    """What ``plan`` reads: sub blocks (name → (parent, status)), their files, and which jobs are over.

    ``files`` need only hold the files not settled yet when ``nfiles`` gives each sub's file count, and
    ``siblings`` only the subs not closed yet (a destination with none left maps to ``{}``): that is what
    the SQL view loads, so the closer's reads do not grow with the files and closed subs a block has.
    ``unsettled`` (the event path) gives a sub's count of files not settled yet from its counters when
    ``files`` holds only some of them (those of the jobs that ended): the sub closes only if they are all
    of them."""

    subs: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    files: list[BlockFile] = field(default_factory=list)
    final_jobs: set[int] = field(default_factory=set)
    siblings: dict[str, dict[str, str]] = field(default_factory=dict)   # destination → {sub: status}
    destinations: dict[str, str] = field(default_factory=dict)          # destination → status
    nfiles: dict[str, int] = field(default_factory=dict)                # sub → files expected (else len of files)
    unsettled: dict[str, int] = field(default_factory=dict)             # sub → files not settled (else all in files)


def plan(b: Blocks) -> Plan:
    """Pure: which files to fail and which blocks to close."""
    by_block: dict[str, list[BlockFile]] = {}
    for f in b.files:
        by_block.setdefault(f.dataset, []).append(f)
    fail = tuple(f for f in b.files if f.status not in SETTLED and f.pandaid in b.final_jobs)
    close_subs = []
    for name, (_parent, status) in sorted(b.subs.items()):
        files = by_block.get(name, [])
        if status in OPEN or not b.nfiles.get(name, len(files)):
            continue
        if name in b.unsettled and b.unsettled[name] != sum(f.status not in SETTLED for f in files):
            continue                                    # a file of another job is still open
        if all(f.status in SETTLED or f.pandaid in b.final_jobs for f in files):
            close_subs.append(name)
    closed = set(close_subs)
    close_dest = []
    for dest, subs in sorted(b.siblings.items()):
        if b.destinations.get(dest, "defined") in OPEN:
            continue
        if all(status == "closed" or sub in closed for sub, status in subs.items()):
            close_dest.append(dest)
    return Plan(fail=fail, close_subs=tuple(close_subs), close_destinations=tuple(close_dest))


class CloserView(Protocol):
    partitions: set[int] | None

    def blocks_of_job(self, pandaid: int) -> Blocks: ...
    def blocks_of_jobs(self, pandaids: Iterable[int]) -> Blocks: ...
    def open_blocks(self) -> Blocks: ...
    def apply(self, p: Plan) -> None: ...


class Closer:
    name = "closer"

    def wants(self, event: Event) -> bool:
        return isinstance(event, JobTransitioned) and event.to_state in FINAL_STATES

    def decide(self, event: Event, view: CloserView) -> list[Action]:
        blocks = view.blocks_of_job(event.PandaID)
        blocks.final_jobs.add(event.PandaID)        # the projection may not have this event yet
        return self._act(plan(blocks), view, f"closer {event.PandaID}")

    def decide_batch(self, events: Sequence[Event], view: CloserView) -> list[Action]:
        """The final jobs of a poll: their blocks read once, one plan, one write."""
        pids = {e.PandaID for e in events}
        blocks = view.blocks_of_jobs(pids)
        blocks.final_jobs |= pids
        return self._act(plan(blocks), view, f"closer {len(pids)} jobs")

    def tick(self, now: float, view: CloserView) -> list[Action]:
        if view.partitions is not None and 0 not in view.partitions:
            return []   # blocks span partitions: one copy (the owner of partition 0) sweeps
        return self._act(plan(view.open_blocks()), view, "closer sweep")

    @staticmethod
    def _act(p: Plan, view: CloserView, label: str) -> list[Action]:
        return [Action(label=label, steps=(functools.partial(view.apply, p),))] if p else []


# ------------------------------------------------------------------------------------------------ I/O
class SqlCloserView:
    closed = 0      # blocks this view has closed (the daemon script reports it)

    def __init__(self, cfg: Config, conn: psycopg.Connection | None = None, batch: int = 2000):
        from core import db

        self.cfg = cfg
        self._given = conn                  # the daemon's connection (it reconnects between scripts)
        self._db = db.Reconnecting(cfg)     # otherwise one of our own
        self.batch = batch
        self.partitions: set[int] | None = None

    @property
    def conn(self) -> psycopg.Connection:
        return self._given if self._given is not None else self._db.conn

    def _load(self, sub_names: Iterable[str]) -> Blocks:
        """The sweep's read: the subs, all their unsettled files and which of those files' jobs are over."""
        b = Blocks()
        c = self.conn
        subs = datasets.subs_named(c, sub_names)
        if not subs:
            return b
        b.subs = {name: (parent, status) for name, (parent, status, _) in subs.items()}
        b.nfiles = {name: n for name, (_, _, n) in subs.items()}
        b.files = [BlockFile(*r) for r in datasets.unsettled_files(c, b.subs)]
        b.final_jobs = service_queries.final_jobs(c, {f.pandaid for f in b.files})
        return self._with_destinations(b)

    def _with_destinations(self, b: Blocks) -> Blocks:
        """The destinations of ``b``'s subs: their subs not closed yet and their statuses."""
        c = self.conn
        parents = sorted({p for p, _ in b.subs.values() if p})
        b.siblings = {p: {} for p in parents}      # each has a sub (one of b.subs); only unclosed ones are read
        for name, parent, status in datasets.unclosed_subs_of_parents(c, parents):
            b.siblings[parent][name] = status
        b.destinations = datasets.statuses(c, parents)
        return b

    def blocks_of_job(self, pandaid: int) -> Blocks:
        return self.blocks_of_jobs([pandaid])

    def blocks_of_jobs(self, pandaids: Iterable[int]) -> Blocks:
        """The event path's read: the jobs' files in sub blocks (the unsettled ones kept) and those blocks'
        counters, in one statement; the jobs are the ones that ended (the caller adds them to
        ``final_jobs``)."""
        b = Blocks()
        for dataset, pid, lfn, status, parent, sub_status, nfiles, unsettled in \
                datasets.sub_files_of_jobs(self.conn, pandaids):
            b.subs[dataset] = (parent, sub_status)
            b.nfiles[dataset] = nfiles
            b.unsettled[dataset] = unsettled
            if status not in SETTLED:
                b.files.append(BlockFile(dataset, pid, lfn, status))
        return self._with_destinations(b) if b.subs else b

    def open_blocks(self) -> Blocks:
        return self._load(datasets.open_subs(self.conn, self.batch))

    def apply(self, p: Plan) -> None:
        """The plan's writes in one transaction."""
        with self.conn.transaction():
            self._apply(p)

    def _apply(self, p: Plan) -> None:
        # the failed files in their sub block and in the destination block's own rows (the setupper records
        # them in both), in one statement whose blocks are locked in name order, as the adder's registrations
        parents = datasets.parents(self.conn, {f.dataset for f in p.fail})
        datasets.set_files_status_many(
            self.conn, [(block, f.pandaid, f.lfn) for f in p.fail
                        for block in filter(None, (f.dataset, parents.get(f.dataset)))], "failed")
        if p.close_subs:
            datasets.set_status(self.conn, list(p.close_subs), "closed")
        if p.close_destinations:
            datasets.set_status(self.conn, list(p.close_destinations), "closed")
        if p.close_subs or p.close_destinations:
            self.closed += len(closed_names(p))
            log.info("closer: closed %s", ", ".join(closed_names(p)))

    def close(self) -> None:
        self._db.close()


def run_once(cfg: Config, ctx: Any) -> int:
    """The daemon's ``closer`` script (datasetManager): one sweep, the ``tick`` on a loop that does not
    consume (it sends no command, so it opens no producer); returns the number of blocks closed."""
    view = SqlCloserView(cfg, ctx.conn)
    loop = ServiceLoop(cfg, Closer(), view, consume=False)
    try:
        loop.tick(time.time())
    finally:
        loop.close()
    return view.closed


def hosted(cfg: Config) -> Member:
    """The closer: the event path, plus a sweep every ``[closer] tick`` seconds."""
    view = SqlCloserView(cfg)
    return Member(Closer(), view, tick_every=float(cfg.closer.tick), close=view.close)


def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run closer`: alone in its own consumer group."""
    run_alone(cfg, stop, hosted(cfg))


def closed_names(p: Plan) -> Sequence[str]:
    return [*p.close_subs, *p.close_destinations]
