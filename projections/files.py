"""The files projection: PanDA's filesTable4, one row per (PandaID, type, lfn).

File changes arrive on events as FileSpec patches matched by ``lfn`` (and ``type`` when given). When
a job ends failed/cancelled/closed, its output and log files that were not produced become
``failed``, as PanDA's Watcher and killJob do — derived here from the event, not sent separately.

A batch is applied set-based, with the same result as applying its events one by one: the keys and
statuses of the touched jobs' existing rows are read in one query, the batch's events are played per
job in memory (inserts on submission, patches by lfn/type, a file first named by a patch, the
"ended badly → outputs failed" rule, which depends on the status at that moment), and then the new
rows go in with one ``INSERT … SELECT FROM unnest(…)`` and the changed existing rows get one
``UPDATE … FROM unnest(…)`` per set of touched columns, ``spec || (the patches merged in order)``
(``||`` on objects is a shallow merge, so merging the patches first gives the same object).

The update finds its rows by the ``ctid`` the batch's read returned (``ctid = ANY(…)``: a TID scan, one
page per row), with the key checked too: joined on the key, the planner hashed a sequential scan of the
whole table, every file of every job ever, for each batch. A row that is not at its ``ctid`` any more
(another writer moved it since the read) makes the statement find fewer rows than it was given: the group
is then written again by key alone, so the result is the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg

from core.states import JobStatus
from projections.base import Record
from schemas.jobspec import FileSpec
from schemas.messages import JobSubmitted

_dumps = msgspec.json.encode  # several times cheaper than json.dumps

_COLUMNS = {
    "status": "status",
    "dataset": "dataset",
    "dispatchDBlock": "dispatch_dblock",
    "destinationDBlock": "destination_dblock",
    "GUID": "guid",
    "fsize": "fsize",
    "checksum": "checksum",
    "scope": "scope",
}
_SQL_TYPE = {col: "bigint" if col == "fsize" else "text" for col in _COLUMNS.values()}
_ENDED_BADLY = (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.CLOSED)   # final job states but finished
_KEEP = ("ready", "failed", "nooutput")   # file statuses the "ended badly" rule leaves alone
_FAILED = {"status": "failed"}

_INSERT_SQL = (
    "INSERT INTO files (pandaid, type, lfn, " + ", ".join(_COLUMNS.values()) + ", spec)"
    " SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], "
    + "".join(f"%b::{_SQL_TYPE[c]}[], " for c in _COLUMNS.values())
    + "%b::text[]::jsonb[]) ON CONFLICT DO NOTHING"
)


def _patch(f: FileSpec) -> dict[str, Any]:
    return {k: v for k, v in msgspec.to_builtins(f).items() if v is not None and v != "NULL"}


def _clean(value: Any) -> Any:
    return None if value == "NULL" else value


class _File:
    """One row while a batch is played: a row to insert (``spec`` whole) or an existing one (``spec`` is
    the merged patch for ``spec || …``; ``cols`` only the columns set)."""

    __slots__ = ("type", "lfn", "status", "cols", "spec", "new", "dirty", "ctid")

    def __init__(self, type_: str, lfn: str, status: str | None, cols: dict[str, Any], spec: dict[str, Any],
                 new: bool, ctid: str | None = None):
        self.type, self.lfn, self.status, self.cols, self.spec, self.new = type_, lfn, status, cols, spec, new
        self.dirty = new
        self.ctid = ctid                 # where an existing row was read (its update finds it there)

    def merge(self, patch: dict[str, Any]) -> None:
        self.spec.update(patch)
        for attr, col in _COLUMNS.items():
            if attr in patch:
                self.cols[col] = patch[attr]
        if "status" in patch:
            self.status = patch["status"]
        self.dirty = True


class FilesProjection:
    name = "files"
    tables = ("files",)

    def forget(self, conn: psycopg.Connection, pandaids: Sequence[int]) -> None:
        """Drop the jobs' files before they are folded again from all their events (a dead letter applied late:
        projections.deadletters.reapply)."""
        conn.execute("DELETE FROM files WHERE pandaid = ANY(%s)", (list(pandaids),))

    def apply(self, conn: psycopg.Connection, records: Sequence[Record]) -> None:
        events = [rec.event for rec in records if _touches_files(rec.event)]
        if not events:
            return
        pids = list({ev.PandaID for ev in events})
        jobs: dict[int, list[_File]] = {pid: [] for pid in pids}
        with conn.cursor() as cur:
            for pid, type_, lfn, status, ctid in cur.execute(
                    "SELECT pandaid, type, lfn, status, ctid::text FROM files WHERE pandaid = ANY(%b::bigint[])",
                    (pids,)):
                jobs[pid].append(_File(type_, lfn, status, {}, {}, new=False, ctid=ctid))
            for ev in events:
                _play(jobs[ev.PandaID], ev)
            self._write(cur, jobs)

    @staticmethod
    def _write(cur: psycopg.Cursor, jobs: dict[int, list[_File]]) -> None:
        new: list[tuple[int, _File]] = []
        changed: dict[tuple[str, ...], list[tuple[int, _File]]] = {}
        for pid, files in jobs.items():
            for f in files:
                if f.new:
                    new.append((pid, f))
                elif f.dirty:
                    changed.setdefault(tuple(sorted(f.cols)), []).append((pid, f))
        if new:
            cur.execute(_INSERT_SQL, [
                [pid for pid, _ in new], [f.type for _, f in new], [f.lfn for _, f in new],
                *([f.cols.get(col) for _, f in new] for col in _COLUMNS.values()),
                [_dumps(f.spec).decode() for _, f in new]])
        for colnames, rows in changed.items():
            sets = "".join(f"{c} = v.{c}, " for c in colnames)
            arrays = "".join(f"%b::{_SQL_TYPE[c]}[], " for c in colnames)
            head = (f"UPDATE files AS f SET {sets}spec = f.spec || v.patch::jsonb"
                    f" FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], {arrays}%b::text[])"
                    f" AS v(ctid, pandaid, type, lfn, {''.join(c + ', ' for c in colnames)}patch)"
                    " WHERE f.pandaid = v.pandaid AND f.type = v.type AND f.lfn = v.lfn")
            ctids = [f.ctid for _, f in rows]
            params = [ctids, [pid for pid, _ in rows], [f.type for _, f in rows], [f.lfn for _, f in rows],
                      *([f.cols[c] for _, f in rows] for c in colnames),
                      [_dumps(f.spec).decode() for _, f in rows]]
            cur.execute(head + _AT_CTID, [*params, ctids])
            if cur.rowcount != len(rows):
                cur.execute(head, params)


# the rows of an update: at the ctid each was read at (a TID scan); if one has moved since, the whole group
# again by key alone (setting the same values and merging the same patch twice leaves the same row)
_AT_CTID = " AND f.ctid = v.ctid::tid AND f.ctid = ANY(%b::text[]::tid[])"


def _touches_files(ev: Any) -> bool:
    if isinstance(ev, JobSubmitted):
        return bool(ev.job.Files)
    return bool(ev.files) or (ev.to_state in _ENDED_BADLY and ev.from_state != ev.to_state)


def _play(files: list[_File], ev: Any) -> None:
    """One event on one job's rows, as the row-by-row statements would do it, in order."""
    if isinstance(ev, JobSubmitted):
        for fs in ev.job.Files:
            spec = _patch(fs)
            spec.setdefault("status", "unknown")
            spec["PandaID"] = ev.PandaID
            type_, lfn = spec.get("type") or "unknown", spec.get("lfn") or ""
            if any(f.type == type_ and f.lfn == lfn for f in files):
                continue                                   # ON CONFLICT DO NOTHING
            cols = {col: _clean(spec.get(attr)) for attr, col in _COLUMNS.items()}
            files.append(_File(type_, lfn, cols["status"], cols, spec, new=True))
        return
    for fs in ev.files:
        patch = _patch(fs)
        lfn = patch.get("lfn")
        if not lfn:
            continue
        type_ = patch.get("type")
        hit = False
        for f in files:
            if f.lfn == lfn and (not type_ or f.type == type_):
                f.merge(patch)
                hit = True
        if not hit and type_:
            # a file the job did not declare at submission (e.g. an output registered later)
            spec = dict(patch, PandaID=ev.PandaID)
            cols = {col: spec.get(attr) for attr, col in _COLUMNS.items()}
            files.append(_File(type_, lfn, cols["status"], cols, spec, new=True))
    if ev.to_state in _ENDED_BADLY and ev.from_state != ev.to_state:
        for f in files:
            # SQL: status NOT IN (…) is not true for a NULL status
            if f.type in ("output", "log") and f.status is not None and f.status not in _KEEP:
                f.merge(_FAILED)
