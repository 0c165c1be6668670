"""The jobs projection: one row per job with its current state and whole JobSpec.

Events of one batch are folded per job in memory first, so a job that moved five times in a batch
costs one row. Every value comes from the events (times included), never from the clock, so a
rebuild reproduces the rows exactly. The ``seq < new seq`` guard makes re-applying a no-op.

The rows of a batch go to PostgreSQL set-based: all new jobs in one ``INSERT … SELECT FROM unnest(…)``
and the changed jobs in one ``UPDATE … FROM unnest(…)`` per set of touched columns, each JSON value
encoded once with msgspec. A batch whose attribute values do not have the column's Python type (an
``attrs`` value is free-form) is written row by row as before, so PostgreSQL's own conversions and
errors stay exactly those of the row-by-row statements.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from core.states import FINAL_STATES
from projections.base import Record
from schemas.messages import JobSubmitted

_dumps = msgspec.json.encode  # several times cheaper than json.dumps, which Jsonb uses by default

# JobSpec attribute → jobs column, for the attributes queries filter or sort on.
COLUMNS = {
    "attemptNr": "attempt_nr",
    "computingSite": "computing_site",
    "prodSourceLabel": "prod_source_label",
    "currentPriority": "current_priority",
    "gshare": "gshare",
    "resource_type": "resource_type",
    "coreCount": "core_count",
    "minRamCount": "min_ram_count",
    "maxDiskCount": "max_disk_count",
    "maxWalltime": "max_walltime",
    "jediTaskID": "jedi_task_id",
    "commandToPilot": "command_to_pilot",
    "specialHandling": "special_handling",
}
_ZERO_DEFAULT = {"attempt_nr", "current_priority", "min_ram_count", "max_disk_count"}
_to_builtins = msgspec.to_builtins

# SQL type of every column written (001_core.sql), and the Python type a value must have to go into
# an array of it
_SQL_TYPE = {
    "pandaid": "bigint", "partition": "int", "seq": "int", "status": "text", "attempt_nr": "int",
    "computing_site": "text", "prod_source_label": "text", "current_priority": "int", "gshare": "text",
    "resource_type": "text", "core_count": "int", "min_ram_count": "int", "max_disk_count": "int",
    "max_walltime": "int", "jedi_task_id": "bigint", "command_to_pilot": "text", "special_handling": "text",
    "creation_time": "timestamptz", "modification_time": "timestamptz", "state_change_time": "timestamptz",
    "last_command_id": "text", "spec": "jsonb",
}
_PY_TYPE = {"int": int, "bigint": int, "text": str}
_INSERT_COLS = ("pandaid", "partition", "seq", "status", *COLUMNS.values(), "creation_time", "modification_time",
                "state_change_time", "last_command_id", "spec")
# The jobs table is partitioned by ``archived`` (060_jobs_archive.sql), so its key is (pandaid, archived):
# a job already there, hot or archived, is found by PandaID, not by the conflict.
# _BY_KEY: the INSERT's and the UPDATE's join with the batch (unnest) also say ``j.pandaid = ANY(the batch's
# PandaIDs)``, which changes no result but gives the planner an index condition on jobs itself. Why: the
# planner does not know PandaID is unique (the key is (pandaid, archived)) until jobs has statistics, and a
# table that fills faster than autovacuum analyses it got a hash join over a sequential scan of every job for
# each batch of about ten rows (the lifecycle bench: ≈ 81 buffers per row updated). With the condition the
# UPDATE of a batch reads the hot partition by its primary key whatever the statistics say
# (tests/integration/test_jobs_plans.py).
_INSERT_SQL = (
    f"INSERT INTO jobs ({', '.join(_INSERT_COLS)}) SELECT * FROM unnest("
    + ", ".join(f"%b::{'text' if c == 'spec' else _SQL_TYPE[c]}[]" for c in _INSERT_COLS[:-1])
    + f", %b::text[]::jsonb[]) AS v({', '.join(_INSERT_COLS)})"
    " WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.pandaid = v.pandaid AND j.pandaid = ANY(%b::bigint[]))"
    " ON CONFLICT DO NOTHING"
)


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _column_value(col: str, value: Any) -> Any:
    if value == "NULL":
        value = None
    if value is None and col in _ZERO_DEFAULT:
        return 0
    return value


def _typed(col: str, values: list[Any]) -> bool:
    """Whether every value fits an array of the column's type without a conversion of its own."""
    want = _PY_TYPE[_SQL_TYPE[col]]
    return all(v is None or type(v) is want for v in values)


class JobsProjection:
    name = "jobs"
    tables = ("jobs",)

    def forget(self, conn: psycopg.Connection, pandaids: Sequence[int]) -> None:
        """Drop the jobs' rows before they are folded again from all their events (a dead letter applied late:
        projections.deadletters.reapply)."""
        conn.execute("DELETE FROM jobs WHERE pandaid = ANY(%s)", (list(pandaids),))

    def bulk(self, *, archive_before: float | None = None) -> JobsBulk:
        """A fold of the whole log for a rebuild into empty tables (see JobsBulk); ``archive_before``: the
        epoch before which a final job's row goes straight to the archive partition (None: none does)."""
        return JobsBulk(archive_before)

    def apply(self, conn: psycopg.Connection, records: Sequence[Record]) -> None:
        inserts: dict[int, dict[str, Any]] = {}
        updates: dict[int, dict[str, Any]] = {}
        for rec in records:
            ev = rec.event
            when = ev.time  # epoch seconds; made a datetime once per row, when the row is written
            if isinstance(ev, JobSubmitted):
                spec = _to_builtins(ev.job)
                spec.pop("Files", None)
                row = {col: _column_value(col, spec.get(attr)) for attr, col in COLUMNS.items()}
                row.update(pandaid=ev.PandaID, partition=rec.partition, seq=ev.seq, status=ev.to_state,
                           creation_time=when, modification_time=when, state_change_time=when,
                           last_command_id=ev.command_id, spec=spec)
                inserts[ev.PandaID] = row
                updates.pop(ev.PandaID, None)
                continue
            target = inserts.get(ev.PandaID)
            if target is None:
                target = updates.get(ev.PandaID)
                if target is None:
                    target = updates[ev.PandaID] = {"cols": {}, "attrs": {}, "state_change_time": None}
                cols, attrs = target["cols"], target["attrs"]
            else:
                cols, attrs = target, target["spec"]
            if ev.attrs:
                for attr, value in ev.attrs.items():
                    attrs[attr] = value
                    col = COLUMNS.get(attr)
                    if col:
                        cols[col] = _column_value(col, value)
            attrs["jobStatus"] = ev.to_state
            target["seq"] = ev.seq
            target["status"] = ev.to_state
            target["modification_time"] = when
            target["last_command_id"] = ev.command_id
            if ev.from_state != ev.to_state:
                target["state_change_time"] = when
        for row in inserts.values():
            row["creation_time"] = _ts(row["creation_time"])
            row["modification_time"] = _ts(row["modification_time"])
            row["state_change_time"] = _ts(row["state_change_time"])
        for u in updates.values():
            u["modification_time"] = _ts(u["modification_time"])
            if u["state_change_time"] is not None:
                u["state_change_time"] = _ts(u["state_change_time"])
        with conn.cursor() as cur:
            if inserts:
                self._insert(cur, list(inserts.values()))
            if updates:
                self._update(cur, updates)

    @staticmethod
    def _insert(cur: psycopg.Cursor, rows: list[dict[str, Any]]) -> None:
        arrays = [[r[c] for r in rows] for c in _INSERT_COLS[:-1]]
        if all(_typed(c, arrays[i]) for i, c in enumerate(_INSERT_COLS) if _SQL_TYPE[c] in _PY_TYPE):
            arrays.append([_dumps(r["spec"]).decode() for r in rows])
            arrays.append(arrays[0])    # the PandaIDs again, for the look-up by primary key (_BY_KEY)
            cur.execute(_INSERT_SQL, arrays)
            return
        known = {r[0] for r in cur.execute("SELECT pandaid FROM jobs WHERE pandaid = ANY(%s)",
                                             ([r["pandaid"] for r in rows],)).fetchall()}
        sql = (f"INSERT INTO jobs ({', '.join(_INSERT_COLS)}) VALUES ({', '.join(['%s'] * len(_INSERT_COLS))})"
               " ON CONFLICT DO NOTHING")
        cur.executemany(sql, [[Jsonb(r[c], _dumps) if c == "spec" else r[c] for c in _INSERT_COLS]
                              for r in rows if r["pandaid"] not in known])

    @staticmethod
    def _update(cur: psycopg.Cursor, updates: dict[int, dict[str, Any]]) -> None:
        # group by the set of columns touched: each group is one UPDATE … FROM unnest(…)
        groups: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]] = {}
        for pandaid, u in updates.items():
            cols = u["cols"]
            key = tuple(sorted(cols)) if cols else ()
            groups.setdefault(key, []).append((pandaid, u))
        for colnames, members in groups.items():
            extra = [[u["cols"][c] for _, u in members] for c in colnames]
            if not all(_typed(c, extra[i]) for i, c in enumerate(colnames)):
                _update_rows(cur, colnames, members)
                continue
            pids = [pid for pid, _ in members]
            sets = "".join(f"{c} = v.{c}, " for c in colnames)
            unnest = "".join(f"%b::{_SQL_TYPE[c]}[], " for c in colnames)
            cur.execute(
                f"UPDATE jobs AS j SET {sets}seq = v.seq, status = v.status, modification_time = v.mtime,"
                " state_change_time = COALESCE(v.sctime, j.state_change_time), last_command_id = v.cmd,"
                " spec = j.spec || v.attrs::jsonb"
                f" FROM unnest({unnest}%b::bigint[], %b::int[], %b::text[], %b::timestamptz[],"
                " %b::timestamptz[], %b::text[], %b::text[])"
                f" AS v({''.join(c + ', ' for c in colnames)}pandaid, seq, status, mtime, sctime, cmd, attrs)"
                " WHERE j.pandaid = v.pandaid AND j.seq < v.seq AND j.pandaid = ANY(%b::bigint[])",
                [*extra,
                 pids,
                 [u["seq"] for _, u in members],
                 [u["status"] for _, u in members],
                 [u["modification_time"] for _, u in members],
                 [u["state_change_time"] for _, u in members],
                 [u["last_command_id"] for _, u in members],
                 [_dumps(u["attrs"]).decode() for _, u in members],
                 pids],     # again, for the look-up by primary key (_BY_KEY)
            )


def _update_rows(cur: psycopg.Cursor, colnames: tuple[str, ...], members: list[tuple[int, dict[str, Any]]]) -> None:
    """Row by row, with each value adapted on its own (values of a type the column does not have)."""
    extra = "".join(f"{c} = %s, " for c in colnames)
    cur.executemany(
        f"UPDATE jobs SET {extra}seq = %s, status = %s, modification_time = %s,"
        " state_change_time = COALESCE(%s, state_change_time), last_command_id = %s,"
        " spec = spec || %s WHERE pandaid = %s AND seq < %s",
        [[*(u["cols"][c] for c in colnames), u["seq"], u["status"], u["modification_time"],
          u["state_change_time"], u["last_command_id"], Jsonb(u["attrs"], _dumps), pandaid, u["seq"]]
         for pandaid, u in members],
    )


# ------------------------------------------------------------------------------------------- bulk
# Why a second write path: a rebuild replays the whole log into empty tables, and about eight events make
# one final row. Folding every job in memory and writing its row once with COPY costs a fraction of
# apply()'s per-batch INSERT/UPDATE; the fold is apply()'s, event by event, so the rows are the same.
_INT4, _INT8 = 2**31, 2**63
_RANGE = {"int": _INT4, "bigint": _INT8}
_EPOCH_RANGE = (-62_135_596_800.0, 253_402_300_800.0)   # what datetime can hold (years 1 to 9999)
# COPY's binary format: half the client's CPU per row of the text format, and less of the server's. A binary
# field carries no type: the server reads it with the column's own receive function, and jsonb's binary form
# is a version byte (1) followed by the JSON text, so the spec is written as those bytes (dumped as bytea).
# The rows go in with their partition (``archived``) already decided: a rebuild of a long history finds most jobs
# final long ago, and placing each row once costs a boolean, where moving it after the load (the sweep) deletes
# and inserts it again, with the load's every byte of it.
_COPY_SQL = f"COPY jobs ({', '.join(_INSERT_COLS)}, archived) FROM STDIN (FORMAT BINARY)"
_BINARY = {"int": "int4", "bigint": "int8", "text": "text", "timestamptz": "timestamptz", "jsonb": "bytea"}
_COPY_TYPES = [*(_BINARY[_SQL_TYPE[c]] for c in _INSERT_COLS), "bool"]
_FINAL = frozenset(FINAL_STATES)


def _fits(col: str, value: Any) -> bool:
    """Whether ``value`` goes into ``col`` as it is: the column's own Python type and range, or None."""
    if value is None:
        return True
    kind = _SQL_TYPE[col]
    if kind == "text":
        return type(value) is str
    return type(value) is int and -_RANGE[kind] <= value < _RANGE[kind]


class JobsBulk:
    """The jobs projection of a whole log, for a rebuild into empty tables (``cli.rebuild``).

    ``add`` decodes and folds each job's events in memory (as ``JobsProjection.apply`` folds a batch);
    ``flush`` writes the jobs first seen since the last flush with one COPY and the later changes of jobs
    already written with apply()'s set-based UPDATE, then hands back the records it did not fold, for
    ``apply()`` itself. A job leaves the fold, for good, at its first event whose effect only the
    database can judge: a value of another type or range than its column, any ``\\u`` escape in the
    raw event (a NUL or a lone surrogate, which PostgreSQL refuses), a repeated JobSubmitted, a seq
    that does not grow or leaves int, a time datetime cannot hold. From there on its events take apply()'s path,
    dead letters and all, so the rows stay those of the live projection.

    Why a new row is a list and its spec stays a struct: a rebuild folds about eight events per row, so
    each event's fold is a handful of list stores, and the JobSpec is never turned into a dict (that cost
    more than decoding it). The row's spec is written as the struct's JSON followed by the attributes the
    later events merged (``_spec_json``).
    """

    def __init__(self, archive_before: float | None = None) -> None:
        # a row whose job is final and last changed before this epoch is written into the archive partition,
        # where ``jobs_archive.sweep`` would move it (None: every row goes to the hot partition)
        self.archive_before = float("-inf") if archive_before is None else archive_before
        self.rows: dict[int, list[Any]] = {}           # jobs first seen since the last flush (_R_* below)
        self.changes: dict[int, dict[str, Any]] = {}   # jobs already written: apply()'s update entries
        self.written: dict[int, int] = {}              # PandaID → seq of its row in the database
        self.odd: set[int] = set()                     # jobs whose events go to apply()
        self.leftover: list[Record] = []

    def __len__(self) -> int:
        return len(self.rows) + len(self.changes) + len(self.leftover)

    def add(self, partition: int, records: Sequence[Any], decode: Callable[[bytes], Any],
            refused: Callable[[int, int, Exception], object]) -> int:
        """Decode (``decode``: ``schemas.messages.decode_event_fast``) and fold one partition's records (bus
        records, in offset order). A record that is no event goes to ``refused(partition, offset, error)``
        and is left out, as the projector leaves it out. Returns the number of events."""
        rows, changes, written, odd = self.rows, self.changes, self.written, self.odd
        columns, fits, value_of = COLUMNS, _fits, _column_value
        lo, hi = _EPOCH_RANGE
        submitted = JobSubmitted
        n = 0
        for r in records:
            raw = r.value
            try:
                ev = decode(raw)
            except _POISON as exc:
                refused(partition, r.offset, exc)
                continue
            n += 1
            pid = ev.PandaID
            when, seq = ev.time, ev.seq
            if pid in odd or b"\\u" in raw or not (lo < when < hi and 0 < seq < _INT4):
                self._leave(pid, Record(partition, r.offset, raw, ev))
                continue
            if type(ev) is submitted:
                if pid in rows or pid in written or not -_INT8 <= pid < _INT8:
                    self._leave(pid, Record(partition, r.offset, raw, ev))
                    continue
                job = ev.job
                values = _columns_of(job)
                if values is None:
                    self._leave(pid, Record(partition, r.offset, raw, ev))
                    continue
                rows[pid] = [partition, seq, ev.to_state, when, when, when, ev.command_id, job, values, None]
                continue
            attrs = ev.attrs
            if attrs and not all(fits(col, value_of(col, v)) for a, v in attrs.items() if (col := columns.get(a))):
                if pid in rows or pid in written:
                    self._leave(pid, Record(partition, r.offset, raw, ev))
                continue        # (no row: apply() updates nothing either)
            row = rows.get(pid)
            if row is not None:
                if seq <= row[1]:
                    self._leave(pid, Record(partition, r.offset, raw, ev))
                    continue
                merged = row[9]
                if merged is None:
                    merged = row[9] = {}
                if attrs:
                    merged.update(attrs)
                to_state = ev.to_state
                row[1] = seq
                row[2] = to_state
                row[4] = when
                row[6] = ev.command_id
                if ev.from_state != to_state:
                    row[5] = when
                continue
            if pid not in written:
                continue            # no row (its JobSubmitted never came or was refused): apply() updates nothing
            target = changes.get(pid)
            if seq <= (written[pid] if target is None else target["seq"]):
                self._leave(pid, Record(partition, r.offset, raw, ev))
                continue
            if target is None:
                target = changes[pid] = {"cols": {}, "attrs": {}, "state_change_time": None}
            cols, spec = target["cols"], target["attrs"]
            if attrs:
                for attr, value in attrs.items():
                    spec[attr] = value
                    col = columns.get(attr)
                    if col:
                        cols[col] = value_of(col, value)
            to_state = ev.to_state
            spec["jobStatus"] = to_state
            target["seq"] = seq
            target["status"] = to_state
            target["modification_time"] = when
            target["last_command_id"] = ev.command_id
            if ev.from_state != to_state:
                target["state_change_time"] = when
        return n

    def _leave(self, pid: int, rec: Record) -> None:
        self.odd.add(pid)
        self.leftover.append(rec)

    def flush(self, conn: psycopg.Connection) -> dict[int, list[Record]]:
        """Write what was folded; returns the records left for ``apply()``, per partition in offset order,
        to be applied next, before anything else is added."""
        rows, changes, leftover = self.rows, self.changes, self.leftover
        self.rows, self.changes, self.leftover = {}, {}, []
        with conn.cursor() as cur:
            if rows:
                ts, spec_json, final, before = _ts, _spec_json, _FINAL, self.archive_before
                with cur.copy(_COPY_SQL) as copy:
                    copy.set_types(_COPY_TYPES)
                    write = copy.write_row
                    for pid, (part, seq, status, ctime, mtime, sctime, cmd, job, values, merged) in rows.items():
                        if merged is not None:
                            merged["jobStatus"] = status     # each later event set it (apply(): attrs, then this)
                            values = _merge_columns(values, merged)
                        write((pid, part, seq, status, *values, ts(ctime), ts(mtime), ts(sctime), cmd,
                               spec_json(job, merged), mtime < before and status in final))
            if changes:
                for u in changes.values():
                    u["modification_time"] = _ts(u["modification_time"])
                    if u["state_change_time"] is not None:
                        u["state_change_time"] = _ts(u["state_change_time"])
                JobsProjection._update(cur, changes)
        written = self.written
        for pid, r in rows.items():
            written[pid] = r[1]
        for pid, u in changes.items():
            written[pid] = u["seq"]
        out: dict[int, list[Record]] = {}
        for rec in leftover:
            out.setdefault(rec.partition, []).append(rec)
        return out


_POISON = (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError)   # what decoding a record raises
_COLUMN_ATTRS = tuple(COLUMNS)
_COLUMN_NAMES = tuple(COLUMNS.values())
_column_attrs = operator.attrgetter(*_COLUMN_ATTRS)
_COLUMN_INDEX = {attr: i for i, attr in enumerate(_COLUMN_ATTRS)}
_replace = msgspec.structs.replace


def _columns_of(job: Any) -> list[Any] | None:
    """The column values a JobSubmitted's spec gives its row (apply(): ``_column_value`` of each), or None if
    one of them does not go into its column as it is (then apply() decides)."""
    values = [_column_value(col, v) for col, v in zip(_COLUMN_NAMES, _column_attrs(job), strict=True)]
    return values if all(map(_fits, _COLUMN_NAMES, values)) else None


def _merge_columns(values: list[Any], merged: dict[str, Any]) -> list[Any]:
    """``values`` with the columns the later events' attributes set (their last value wins, as in apply())."""
    for attr, value in merged.items():
        i = _COLUMN_INDEX.get(attr)
        if i is not None:
            values[i] = _column_value(_COLUMN_NAMES[i], value)
    return values


def _spec_json(job: Any, merged: dict[str, Any] | None) -> bytes:
    """jsonb's binary form of a row's spec: the JobSpec's attributes without its Files, then the attributes
    the later events merged in (``merged``). Both are JSON objects; the second is appended to the first
    with its keys repeated, and jsonb keeps the last value of a repeated key, which makes the stored value
    that of apply()'s ``dict.update`` (and saves turning the struct into a dict to update it)."""
    head = _dumps(_replace(job, Files=[]) if job.Files else job)
    if not merged:
        return b"\x01" + head
    tail = _dumps(merged)
    if len(head) == 2:   # {}
        return b"\x01" + tail
    return b"\x01" + head[:-1] + b"," + tail[1:]
