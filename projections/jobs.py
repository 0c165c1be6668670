"""The jobs projection: one row per job with its current state and whole JobSpec.

Events of one batch are folded per job in memory first, so a job that moved five times in a batch
costs one UPDATE. Every value comes from the events (times included), never from the clock, so a
rebuild reproduces the rows exactly. The ``seq < new seq`` guard makes re-applying a no-op.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

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


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _column_value(col: str, value: Any) -> Any:
    if value == "NULL":
        value = None
    if value is None and col in _ZERO_DEFAULT:
        return 0
    return value


class JobsProjection:
    name = "jobs"
    tables = ("jobs",)

    def apply(self, conn: psycopg.Connection, records: Sequence[Record]) -> None:
        inserts: dict[int, dict[str, Any]] = {}
        updates: dict[int, dict[str, Any]] = {}
        for rec in records:
            ev = rec.event
            when = _ts(ev.time)
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
                target = updates.setdefault(ev.PandaID, {"cols": {}, "attrs": {}, "state_change_time": None})
                cols, attrs = target["cols"], target["attrs"]
            else:
                cols, attrs = target, target["spec"]
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
        if inserts:
            cols = list(next(iter(inserts.values())).keys())
            sql = (f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
                   " ON CONFLICT (pandaid) DO NOTHING")
            with conn.cursor() as cur:
                cur.executemany(sql, [[Jsonb(r[c], _dumps) if c == "spec" else r[c] for c in cols]
                                      for r in inserts.values()])
        if updates:
            self._update(conn, updates)

    @staticmethod
    def _update(conn: psycopg.Connection, updates: dict[int, dict[str, Any]]) -> None:
        # group by the set of columns touched so each group is one executemany
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        for pandaid, u in updates.items():
            colnames = tuple(sorted(u["cols"]))
            params = [u["cols"][c] for c in colnames]
            params += [u["seq"], u["status"], u["modification_time"], u["state_change_time"],
                       u["last_command_id"], Jsonb(u["attrs"], _dumps), pandaid, u["seq"]]
            groups.setdefault(colnames, []).append(params)
        with conn.cursor() as cur:
            for colnames, rows in groups.items():
                extra = "".join(f"{c} = %s, " for c in colnames)
                cur.executemany(
                    f"UPDATE jobs SET {extra}seq = %s, status = %s, modification_time = %s,"
                    " state_change_time = COALESCE(%s, state_change_time), last_command_id = %s,"
                    " spec = spec || %s WHERE pandaid = %s AND seq < %s",
                    rows,
                )
