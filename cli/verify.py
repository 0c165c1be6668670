"""`pandaes verify`: the log judged on its own, and every projection compared with what it implies.

1. The whole of panda.job-events is folded through the state machine (``cli.fold.LogChecker``); where
   the broker's log starts after offset 0, the events before are read from the archive.
2. In one REPEATABLE READ database snapshot, the projections' positions and rows are read, and the
   same projections are built from the log into a scratch schema of that transaction — each only up
   to its own stored position, so a projector that is merely behind is not a difference. Then
   ``EXCEPT ALL`` both ways, per table; the transaction is rolled back, leaving nothing behind.
3. Independently of the projection code, each job's status/seq/attempt in ``jobs`` is compared with
   the state machine's fold (so a bug the projection would repeat on a rebuild is caught too).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from cli.fold import LogChecker
from cli.logread import ArchiveGap, count_between, log_bounds, topic_partitions
from cli.progress import Progress
from cli.rebuild import apply_log, clone_tables, current_schema, projection, set_search_path
from core import db
from core.config import Config
from core.machine import JobState
from projections import queries
from projections.base import POSITIONS_TABLE, load_positions
from projections.jobs_archive import PLACEMENT_COLUMNS

CORE_PROJECTIONS = ("jobs", "files", "archive")
SHOW = 20  # differences shown per table


@dataclasses.dataclass
class Report:
    events: int = 0
    jobs: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)     # the log itself
    differences: list[str] = dataclasses.field(default_factory=list)  # projections vs the log
    notes: list[str] = dataclasses.field(default_factory=list)        # lag: not a failure
    counted: int = 0   # problems + differences, including those not listed

    @property
    def ok(self) -> bool:
        return self.counted == 0

    def lines(self) -> list[str]:
        out = [f"log: {self.events} events of {self.jobs} jobs"]
        out += [f"  LOG  {p}" for p in self.problems]
        out += [f"  DIFF {d}" for d in self.differences]
        out += [f"  note {n}" for n in self.notes]
        out.append("verify: OK" if self.ok else f"verify: {self.counted} problem(s)")
        return out


def verify(cfg: Config, projections: Sequence[str] = CORE_PROJECTIONS, *,
           show_progress: bool | None = None) -> Report:
    report = Report()
    projs = [projection(name) for name in projections]
    topic = cfg.kafka.events_topic
    nparts = len(topic_partitions(cfg, topic))
    checker = LogChecker(nparts)
    scratch = f"pandaes_verify_{os.getpid()}"
    with db.connect(cfg) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        live = current_schema(conn)
        # fixes the snapshot; a partition without a stored position was never applied (position 0), not "all of it"
        positions = {p.name: {part: 0 for part in range(nparts)} | load_positions(conn, p.name, topic) for p in projs}
        begin, end = log_bounds(cfg)  # read after the snapshot: the log holds all the projections saw
        if any(begin.values()):
            report.notes.append(f"the log starts after offset 0 ({begin}): the events before are read from the "
                                "archive (job_events), so the archive is not checked against the log there")
        for name, pos in positions.items():
            for p, off in sorted(pos.items()):
                if off > end.get(p, 0):
                    report.differences.append(
                        f"{name}: position {off} in partition {p} is beyond the end of the log ({end.get(p, 0)})"
                        " — the broker lost or replaced its log; `pandaes restore` re-publishes it")
                elif off < end.get(p, 0):
                    report.notes.append(f"{name} is behind in partition {p}: at {off} of {end[p]} "
                                        "(compared up to its position)")
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
        tables = [t for p in projs for t in p.tables]
        clone_tables(conn, tables, live, scratch, indexes=False)
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            sql.Identifier(scratch, POSITIONS_TABLE), sql.Identifier(live, POSITIONS_TABLE)))
        jobs_at: dict[int, JobState] = {}
        jobs_pos = positions.get("jobs", {})

        def check(partition: int, offset: int, ev: Any) -> None:
            state = checker.feed(partition, offset, ev)
            if state is not None and offset < jobs_pos.get(partition, 0):
                jobs_at[ev.PandaID] = state

        set_search_path(conn, scratch)
        with Progress("verify", total=count_between({}, end), enabled=show_progress) as bar:
            try:
                apply_log(cfg, conn, projs, end=end, until=positions, progress=bar, on_event=check, begin=begin)
            except ArchiveGap as exc:
                report.problems.append(str(exc))
                report.counted += 1
                conn.rollback()
                return report
        set_search_path(conn, live)
        report.events, report.jobs = checker.events, len(checker.jobs)
        report.problems += checker.problems
        report.counted += checker.n_problems
        for t in tables:
            report.differences += _compare(conn, live, scratch, t)
        if "jobs" in positions:
            report.differences += _compare_fold(conn, jobs_at)
        conn.rollback()
    report.counted += len(report.differences)
    return report


def _key_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary"
        " ORDER BY array_position(i.indkey, a.attnum)", (f'"{schema}"."{table}"',)).fetchall()
    return [r[0] for r in rows]


def _compare(conn: psycopg.Connection, live: str, built: str, table: str) -> list[str]:
    """Rows of ``live.table`` and ``built.table`` that differ, described by primary key and column.

    Columns that say where a row is stored rather than what the log says (``jobs.archived``: the sweep
    moved it, ``projections.jobs_archive``) are left out: a job is the same job hot or archived."""
    a, b = sql.Identifier(live, table), sql.Identifier(built, table)
    columns = [d.name for d in conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(a)).description
               if d.name not in PLACEMENT_COLUMNS]
    listed = sql.SQL(", ").join(sql.Identifier(c) for c in columns)

    def diff(x: sql.Identifier, y: sql.Identifier) -> sql.Composed:
        return sql.SQL("(SELECT {c} FROM {x} EXCEPT ALL SELECT {c} FROM {y})").format(c=listed, x=x, y=y)
    counts = conn.execute(sql.SQL("SELECT (SELECT count(*) FROM {} x), (SELECT count(*) FROM {} y)").format(
        diff(a, b), diff(b, a))).fetchone()
    if counts == (0, 0):
        return []
    cur = conn.execute(sql.SQL("SELECT * FROM {} x LIMIT 200").format(diff(a, b)))
    names = [d.name for d in cur.description]
    extra = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    missing = [dict(zip(names, r, strict=True)) for r in conn.execute(
        sql.SQL("SELECT * FROM {} x LIMIT 200").format(diff(b, a))).fetchall()]
    keys = [k for k in _key_columns(conn, live, table) if k in names] or names

    def key(row: dict) -> tuple:
        return tuple(row[k] for k in keys)

    implied = {key(r): r for r in missing}
    out = [f"{table}: {counts[0]} row(s) in the projection differ from or are not implied by the log, "
           f"{counts[1]} implied row(s) missing or different"]
    for row in extra[:SHOW]:
        other = implied.pop(key(row), None)
        label = ", ".join(f"{k}={row[k]}" for k in keys)
        if other is None:
            out.append(f"{table} [{label}]: in the projection, not implied by the log")
        else:
            cols = [c for c in names if row[c] != other[c]]
            out.append(f"{table} [{label}]: " + "; ".join(
                f"{c}: projection {_short(row[c])} ≠ log {_short(other[c])}" for c in cols))
    for k in list(implied)[:SHOW]:
        out.append(f"{table} [{', '.join(f'{c}={v}' for c, v in zip(keys, k, strict=True))}]: "
                   "implied by the log, missing from the projection")
    return out


def _compare_fold(conn: psycopg.Connection, expected: dict[int, JobState]) -> list[str]:
    """The live jobs rows (the search_path's) against the state machine's fold of the log."""
    out = []
    seen = set()
    for pid, status, seq, attempt, *_ in queries.core_rows(conn):
        seen.add(pid)
        st = expected.get(pid)
        if st is None:
            out.append(f"jobs [pandaid={pid}]: the state machine knows no such job in the log")
        elif (status, seq, attempt) != (st.state, st.seq, st.attempt_nr):
            out.append(f"jobs [pandaid={pid}]: status/seq/attempt {status}/{seq}/{attempt}, the state machine "
                       f"folds the log to {st.state}/{st.seq}/{st.attempt_nr}")
    for pid in sorted(set(expected) - seen)[:SHOW]:
        out.append(f"jobs [pandaid={pid}]: the state machine folds it to {expected[pid].state}; no row")
    return out[: 2 * SHOW]


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
