"""Rebuilding a projection from offset 0 of panda.job-events, side by side or in place.

Where the broker's log starts after offset 0 (trimmed by retention), the events before it are read
from the PostgreSQL archive (``cli.logread.read_history``).

A rebuild only reads the log (a group-less consumer: no committed offsets, no commands sent), so no
service sees anything: side effects are off by construction. It writes into the projection's tables
in another PostgreSQL schema, created with the live tables' columns, constraints and index names.

* ``--into SCHEMA``: the rebuilt tables and their positions stay there, next to the live ones.
* in place: build into a scratch schema, then in ONE transaction lock the live tables, catch up with
  whatever the live projector applied meanwhile, drop the live tables, move the rebuilt ones in and
  take over the positions. Readers see the old rows or the new ones, never a mix.

A projection with a ``bulk()`` fold (jobs) is loaded through it: each job's events folded in memory,
its row written once with COPY, a commit with the positions every ``BULK_FLUSH_EVENTS`` events; the
log is read with confluent-kafka when it is installed (several times cheaper per record than
kafka-python). Should the database still refuse what the fold wrote, the rebuild starts over through
``apply`` as before.

``apply_log`` and ``clone_tables`` are shared with ``verify`` (which builds what the log implies and
compares) and ``bench/rebuild_rate.py``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence

import psycopg
from psycopg import sql

from cli.logread import ArchiveGap, count_between, log_bounds, read_history, read_log
from cli.progress import Progress
from core import bus, db
from core.config import Config
from projections import deadletters, jobs_archive
from projections.base import POSITIONS_TABLE, Projection, Record, drop_positions, load_positions, save_position
from projections.runner import ALL
from schemas.messages import decode_event, decode_event_fast

Log = Callable[[str], object]
log = logging.getLogger(__name__)


class RebuildError(RuntimeError):
    pass


def projection(name: str) -> Projection:
    try:
        return ALL[name]
    except KeyError:
        raise RebuildError(f"unknown projection {name!r}; known: {', '.join(ALL)}") from None


def current_schema(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_schema()").fetchone()[0]


def _ident(*parts: str) -> sql.Identifier:
    return sql.Identifier(*parts)


def clone_tables(conn: psycopg.Connection, tables: Sequence[str], src: str, dst: str, *,
                 indexes: bool = True) -> list[str]:
    """Create empty copies of ``src.t`` in schema ``dst`` with the same constraint and index names.

    Primary and unique keys are created at once (projections rely on them for ON CONFLICT); the
    other indexes are returned as SQL to run after the bulk load (faster), or skipped with
    ``indexes=False``.
    """
    later: list[str] = []
    for t in tables:
        rel = f"{_quote(src)}.{_quote(t)}"
        partitioned = partition_key(conn, rel)
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
                             " INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE)")
                     .format(_ident(dst, t), _ident(src, t))
                     + (sql.SQL(" PARTITION BY ") + sql.SQL(partitioned) if partitioned else sql.SQL("")))
        for part, bound in partitions(conn, rel):   # the same partitions, by the same names
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} ").format(_ident(dst, part), _ident(dst, t))
                         + sql.SQL(bound))
        for name, definition in conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
                " AND contype IN ('p', 'u', 'x') ORDER BY conname", (rel,)).fetchall():
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(_ident(dst, t), _ident(name))
                         + sql.SQL(definition))
        if not indexes:
            continue
        for (definition,) in conn.execute(
                "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = %s::regclass"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
                " ORDER BY i.indexrelid", (rel,)).fetchall():
            definition = definition.replace(f" ON ONLY {rel} ", f" ON {rel} ", 1)   # a partitioned table's
            later.append(definition.replace(f" ON {rel} ", f" ON {_quote(dst)}.{_quote(t)} ", 1))
    return later


def partition_key(conn: psycopg.Connection, rel: str) -> str | None:
    """``LIST (archived)``: how the table ``rel`` (schema.table) is partitioned, None if it is not."""
    row = conn.execute("SELECT pg_get_partkeydef(%s::regclass)", (rel,)).fetchone()
    return row[0] if row else None


def partitions(conn: psycopg.Connection, rel: str) -> list[tuple[str, str]]:
    """(name, ``FOR VALUES …``) of the partitions of the table ``rel`` (none if it is not partitioned)."""
    return [tuple(r) for r in conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass ORDER BY c.relname", (rel,)).fetchall()]


def _quote(name: str) -> str:
    """How pg_get_indexdef spells an identifier (quoted only when it must be)."""
    if name.isidentifier() and name == name.lower():
        return name
    return '"' + name.replace('"', '""') + '"'


def set_search_path(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL("SET search_path TO {}").format(_ident(schema)))


def apply_log(cfg: Config, conn: psycopg.Connection, projections: Sequence[Projection], *,
              end: dict[int, int], start: dict[int, int] | None = None,
              until: dict[str, dict[int, int]] | None = None, progress: Progress | None = None,
              commit_every: int = 0, on_event: Callable[[int, int, object], None] | None = None,
              begin: dict[int, int] | None = None) -> int:
    """Apply the log's events in ``[start, end)`` to ``projections`` on ``conn`` (its search_path
    decides where), saving each projection's position with its rows. ``until[name][p]`` stops one
    projection earlier in a partition. ``commit_every`` commits after that many events (0: never,
    the caller owns the transaction). ``begin``: the log's start offsets (without ``start``); where
    one is past 0 the events before it are read from the archive. Returns the number of events read."""
    topic = cfg.kafka.events_topic
    n = since_commit = 0
    source = read_history(cfg, end=end, begin=begin) if begin and start is None else read_log(cfg, start=start, end=end)
    for partition, recs in source:
        records = _decoded(partition, recs)
        if on_event is not None:
            for rec in records:
                on_event(partition, rec.offset, rec.event)
        for proj in projections:
            limit = (until or {}).get(proj.name, {}).get(partition)
            mine = records if limit is None else [r for r in records if r.offset < limit]
            read = [r.offset for r in recs if limit is None or r.offset < limit]
            if mine:
                _apply_skipping_poison(conn, proj, mine)
            if read:
                save_position(conn, proj.name, topic, partition, read[-1] + 1)
        n += len(records)
        since_commit += len(records)
        if progress:
            progress.update(len(records))
        if commit_every and since_commit >= commit_every:
            conn.commit()
            since_commit = 0
    return n


def _decoded(partition: int, recs) -> list[Record]:
    """The records that decode as events; the others are logged and left out, as the projector does."""
    out: list[Record] = []
    for r in recs:
        try:
            out.append(Record(partition, r.offset, r.value, decode_event(r.value)))
        except deadletters.POISON as exc:
            log.error("partition %d offset %d is not an event (%s): skipped, as the projector did", partition,
                      r.offset, deadletters.describe(exc))
    return out


def _apply_skipping_poison(conn: psycopg.Connection, proj: Projection, records: list[Record]) -> None:
    """Apply ``records``; if the database refuses one, apply them one by one and leave that one out (the
    live projector has it in projection_dead_letters). Plain SAVEPOINT statements: they open no transaction
    of their own, so the caller's commits (``commit_every``) stay where they were."""
    if _in_savepoint(conn, lambda: proj.apply(conn, records)):
        return
    for rec in records:
        if not _in_savepoint(conn, lambda rec=rec: proj.apply(conn, [rec])):
            log.error("%s cannot apply the event at partition %d offset %d (PandaID %s, seq %s): skipped, as "
                      "the projector did", proj.name, rec.partition, rec.offset, rec.event.PandaID, rec.event.seq)


def _in_savepoint(conn: psycopg.Connection, fn: Callable[[], object]) -> bool:
    """Run ``fn`` inside a savepoint; False (and rolled back to it) if the database refused a value."""
    conn.execute("SAVEPOINT apply_log")
    try:
        fn()
    except deadletters.POISON:
        conn.execute("ROLLBACK TO SAVEPOINT apply_log")
        return False
    conn.execute("RELEASE SAVEPOINT apply_log")
    return True


BULK_FLUSH_EVENTS = 200_000   # events folded in memory between two COPYs (and commits)


def reader_config(cfg: Config) -> Config:
    """``cfg`` reading with confluent-kafka when it is installed: a whole-log read is where the client's
    cost per record shows most, and both adapters keep the same contract."""
    if bus.client_name(cfg) != "confluent" and bus.client_available("confluent"):
        return cfg.replace(kafka={"client": "confluent"})
    return cfg


def fill(cfg: Config, conn: psycopg.Connection, proj: Projection, *, end: dict[int, int], begin: dict[int, int],
         progress: Progress | None = None, pool: concurrent.futures.Executor | None = None,
         archive_before: float | None = None) -> int:
    """Load ``proj``'s empty tables (search_path) with the whole log: its bulk fold when it has one,
    else ``apply_log``. Returns the number of events applied. ``archive_before``: the bulk fold writes a job
    final before that epoch straight into the archive partition (``JobsBulk``)."""
    bulk = getattr(proj, "bulk", None)
    if bulk is None:
        return apply_log(cfg, conn, [proj], end=end, progress=progress, commit_every=20000, begin=begin)
    schema = current_schema(conn)
    try:
        return apply_bulk(cfg, conn, proj, bulk(archive_before=archive_before), end=end, begin=begin,
                          progress=progress, pool=pool, archive_before=archive_before)
    except deadletters.POISON as exc:
        conn.rollback()
        log.warning("%s: the bulk load was refused (%s); rebuilding through apply() instead", proj.name,
                    deadletters.describe(exc))
    set_search_path(conn, schema)   # the rollback may have undone the caller's SET (and this is not the live one)
    for t in proj.tables:
        conn.execute(sql.SQL("TRUNCATE {}").format(_ident(schema, t)))
    conn.execute(sql.SQL("DELETE FROM {} WHERE projection = %s").format(_ident(schema, POSITIONS_TABLE)),
                 (proj.name,))
    conn.commit()
    if progress is not None:
        progress.done = 0
    return apply_log(cfg, conn, [proj], end=end, progress=progress, commit_every=20000, begin=begin)


def apply_bulk(cfg: Config, conn: psycopg.Connection, proj: Projection, bulk: object, *, end: dict[int, int],
               begin: dict[int, int], progress: Progress | None = None, flush_every: int | None = None,
               processes: int | None = None, pool: concurrent.futures.Executor | None = None,
               archive_before: float | None = None) -> int:
    """The whole log (``begin`` as ``apply_log``'s) folded by ``bulk`` (``proj.bulk()``) and written at
    every ``flush_every`` events with the positions reached, one transaction each. The records the fold
    leaves out go through ``proj.apply`` right after each write, dead letters skipped as ``apply_log``
    skips them.

    With ``processes`` > 1 (default: one per core, at most ``BULK_PROCESSES``) the partitions are shared
    out: this process loads one share on ``conn``, each other share is loaded by a process of its own on
    its own connection into the same schema, with its own transactions. A job lives in one partition, so
    the shares' rows are disjoint, and each transaction still holds a partition's rows with its position.
    Logs partly read from the archive are loaded by this process alone. The other processes are spawned,
    so a script that calls this needs the usual ``if __name__ == "__main__":`` guard; ``pool``: processes
    started earlier (``loaders``); ``archive_before``: the other shares' folds' (``fill``)."""
    flush_every = flush_every or BULK_FLUSH_EVENTS
    if processes is None:
        processes = min(BULK_PROCESSES, os.cpu_count() or 1)
    parts = sorted(p for p, off in end.items() if off > 0)
    if processes < 2 or len(parts) < 2 or any(begin.values()):
        return _timed_bulk(cfg, conn, proj, bulk, read_history(reader_config(cfg), end=end, begin=begin),
                           progress, flush_every)
    shares = [parts[i::processes] for i in range(min(processes, len(parts)))]
    schema = current_schema(conn)
    with contextlib.nullcontext(pool) if pool is not None else _pool(len(shares) - 1) as pool:
        others = [pool.submit(_load_share, cfg, schema, proj.name, {p: end[p] for p in share}, flush_every,
                              archive_before)
                  for share in shares[1:]]
        mine = {p: end[p] for p in shares[0]}
        try:
            n = _timed_bulk(cfg, conn, proj, bulk, read_log(reader_config(cfg), end=mine, partitions=list(mine)),
                            progress, flush_every)
        finally:
            concurrent.futures.wait(others)   # none still loading when the caller starts over or gives up
        for done in others:
            got = done.result()
            n += got
            if progress:
                progress.update(got)
    return n


BULK_PROCESSES = 2


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    spawn = multiprocessing.get_context("spawn")   # no fork: the caller may hold threads, sockets, a broker client
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn)


def loaders(proj: Projection) -> contextlib.AbstractContextManager[concurrent.futures.Executor | None]:
    """The processes that will load shares of the partitions (``apply_bulk``), started now so that their
    imports (a third of a second of CPU each) overlap the preparation of the schema; none for a projection
    without a bulk fold, or on one core."""
    workers = min(BULK_PROCESSES, os.cpu_count() or 1) - 1
    if workers < 1 or getattr(proj, "bulk", None) is None:
        return contextlib.nullcontext()
    pool = _pool(workers)
    for _ in range(workers):
        pool.submit(_ready)
    return pool


def _ready() -> None:
    """Nothing: a worker imports this module to run it, which is the point (see ``loaders``)."""


def _load_share(cfg: Config, schema: str, name: str, end: dict[int, int], flush_every: int,
                archive_before: float | None = None) -> int:
    """One share of ``apply_bulk``'s partitions, in a process of its own. Errors come back as text (a
    database error does not always cross processes): a refused value as ValueError, so the caller
    starts over through apply() as it would for its own share."""
    proj = projection(name)
    try:
        with db.connect(cfg) as conn:
            set_search_path(conn, schema)
            return _timed_bulk(cfg, conn, proj, proj.bulk(archive_before=archive_before),  # type: ignore[attr-defined]
                               read_log(reader_config(cfg), end=end, partitions=list(end)), None, flush_every)
    except deadletters.POISON as exc:
        raise ValueError(deadletters.describe(exc)) from None
    except Exception as exc:
        raise RebuildError(f"loading partitions {sorted(end)}: {type(exc).__name__}: {exc}") from None


def _timed_bulk(cfg: Config, conn: psycopg.Connection, proj: Projection, bulk: object,
                source: Iterable[tuple[int, list]], progress: Progress | None, flush_every: int) -> int:
    """Fold ``source`` with the cyclic garbage collector off: the fold's millions of short-lived objects
    form no cycles, and the collections they trigger would scan the whole fold, again and again (half
    the CPU of a load with it on)."""
    was = gc.isenabled()
    gc.disable()
    try:
        return _load(cfg, conn, proj, bulk, source, progress, flush_every)
    finally:
        if was:
            gc.enable()


def _load(cfg: Config, conn: psycopg.Connection, proj: Projection, bulk: object,
          source: Iterable[tuple[int, list]], progress: Progress | None, flush_every: int) -> int:
    topic = cfg.kafka.events_topic
    n = since = 0
    upto: dict[int, int] = {}
    add = bulk.add  # type: ignore[attr-defined]
    for partition, recs in source:
        got = add(partition, recs, decode_event_fast, _not_an_event)
        upto[partition] = recs[-1].offset + 1
        n += got
        since += got
        if progress:
            progress.update(got)
        if since >= flush_every:
            _flush(conn, proj, bulk, topic, upto)
            since = 0
    _flush(conn, proj, bulk, topic, upto)
    return n


def _not_an_event(partition: int, offset: int, exc: Exception) -> None:
    log.error("partition %d offset %d is not an event (%s): skipped, as the projector did", partition, offset,
              deadletters.describe(exc))


def _flush(conn: psycopg.Connection, proj: Projection, bulk: object, topic: str, upto: dict[int, int]) -> None:
    for recs in bulk.flush(conn).values():  # type: ignore[attr-defined]
        _apply_skipping_poison(conn, proj, recs)
    for partition, offset in upto.items():   # a share's partitions only: the other shares save theirs
        save_position(conn, proj.name, topic, partition, offset)
    conn.commit()


def build_indexes(cfg: Config, conn: psycopg.Connection, statements: Sequence[str]) -> None:
    """Run ``statements`` (CREATE INDEX on loaded tables), two at a time where there are two cores: each
    index is one sort on one core of PostgreSQL. The other half runs on a connection of its own, committed
    before this returns; ``conn``'s half is the caller's to commit. The load must be committed first (an
    open write on ``conn`` would make the other connection wait for it, and this one for the other)."""
    if len(statements) < 2 or (os.cpu_count() or 1) < 2:
        for statement in statements:
            conn.execute(statement)
        return

    def other_half() -> None:
        with db.connect(cfg) as own:
            for statement in statements[1::2]:
                own.execute(statement)
            own.commit()

    with concurrent.futures.ThreadPoolExecutor(1) as helper:
        done = helper.submit(other_half)
        for statement in statements[0::2]:
            conn.execute(statement)
        done.result()


@dataclasses.dataclass
class RebuildResult:
    projection: str
    schema: str
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def rebuild(cfg: Config, name: str, *, into: str | None = None, log: Log = print,
            show_progress: bool | None = None) -> RebuildResult:
    """Rebuild projection ``name`` from offset 0: into schema ``into``, or in place (atomic switch)."""
    proj = projection(name)
    topic = cfg.kafka.events_topic
    started = time.monotonic()
    with loaders(proj) as pool, db.connect(cfg) as conn:
        live = current_schema(conn)
        if into == live:
            raise RebuildError(f"--into {into}: that is the live schema; omit --into to rebuild in place")
        scratch = into or f"pandaes_rebuild_{name}"  # fixed: a rerun cleans up a failed run
        _prepare_schema(conn, proj, live, scratch, fresh=into is None)
        later = clone_tables(conn, proj.tables, live, scratch)
        conn.commit()
        begin, end = log_bounds(cfg)
        if any(begin.values()):
            log(f"the log starts after offset 0 ({begin}): the events before are read from the archive")
        set_search_path(conn, scratch)
        # final before this, a job's row is archived: placed so by the load, the rest moved by the sweep below
        old = time.time() - cfg.projections.archive_after if name == "jobs" else None
        with Progress(f"rebuild {name}", total=count_between({}, end), enabled=show_progress) as bar:
            try:
                n = fill(cfg, conn, proj, end=end, begin=begin, progress=bar, pool=pool, archive_before=old)
            except ArchiveGap as exc:
                raise RebuildError(f"{exc}: a rebuild would be incomplete") from None
        if old is not None:   # what the live sweep would have archived by now (projections.jobs_archive): the rows
            # the load placed hot that a later flush made final, or that grew old enough during the load
            jobs_archive.sweep(conn, before=time.time() - cfg.projections.archive_after)
        conn.commit()   # the load: an index built on another connection must see it, and wait for no lock
        indexed = time.monotonic()
        build_indexes(cfg, conn, later)
        conn.commit()
        indexed = time.monotonic() - indexed
        if into is None:
            n += _switch(cfg, conn, proj, live, scratch)
        conn.execute(sql.SQL("SET search_path TO {}").format(_ident(live)))
        conn.commit()
    seconds = time.monotonic() - started
    where = into or live
    log(f"rebuilt {name} into schema {where}: {n} events in {seconds:.2f}s ({n / seconds if seconds else 0:,.0f}"
        f" events/s){'' if into else ', switched atomically'}; positions in {where}.consumer_positions "
        f"(topic {topic}); {len(later)} indexes built in {indexed:.2f}s")
    return RebuildResult(name, where, n, seconds)


def _prepare_schema(conn: psycopg.Connection, proj: Projection, live: str, schema: str, *, fresh: bool) -> None:
    if fresh:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(_ident(schema)))
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_ident(schema)))
    for t in reversed(proj.tables):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(schema, t)))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING ALL)")
                 .format(_ident(schema, POSITIONS_TABLE), _ident(live, POSITIONS_TABLE)))
    conn.execute(sql.SQL("DELETE FROM {} WHERE projection = %s").format(_ident(schema, POSITIONS_TABLE)),
                 (proj.name,))


def _switch(cfg: Config, conn: psycopg.Connection, proj: Projection, live: str, scratch: str) -> int:
    """Swap the rebuilt tables in, in one transaction; returns the events applied to catch up."""
    topic = cfg.kafka.events_topic
    try:
        with conn.transaction():
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(_ident(live, t) for t in proj.tables)))
            set_search_path(conn, live)
            live_pos = load_positions(conn, proj.name, topic)
            set_search_path(conn, scratch)
            built = load_positions(conn, proj.name, topic)
            # the live projector went on while we built: apply what it applied, so nothing goes back
            behind = {p: built.get(p, 0) for p, off in live_pos.items() if off > built.get(p, 0)}
            caught = 0
            if behind:
                caught = apply_log(cfg, conn, [proj], start=behind,
                                   end={p: live_pos[p] for p in behind})
            for t in reversed(proj.tables):
                conn.execute(sql.SQL("DROP TABLE {}").format(_ident(live, t)))   # with its partitions
            for t in proj.tables:
                parts = partitions(conn, f"{_quote(scratch)}.{_quote(t)}")
                conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(_ident(scratch, t), _ident(live)))
                for part, _ in parts:
                    conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(_ident(scratch, part), _ident(live)))
            final = {**live_pos, **load_positions(conn, proj.name, topic)}
            set_search_path(conn, live)
            drop_positions(conn, proj.name, topic)
            for p, off in final.items():
                save_position(conn, proj.name, topic, p, max(off, live_pos.get(p, 0)))
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(_ident(scratch)))
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise RebuildError(f"cannot switch {proj.name} in place: other objects depend on its tables ({exc}). "
                           f"Rebuild with --into SCHEMA and switch by hand.") from None
    return caught
