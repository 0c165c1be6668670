"""The files projection: PanDA's filesTable4, one row per (PandaID, type, lfn).

File changes arrive on events as FileSpec patches matched by ``lfn`` (and ``type`` when given). When
a job ends failed/cancelled/closed, its output and log files that were not produced become
``failed``, as PanDA's Watcher and killJob do — derived here from the event, not sent separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from projections.base import Record
from schemas.jobspec import FileSpec
from schemas.messages import JobSubmitted

_dumps = msgspec.json.encode  # several times cheaper than json.dumps, which Jsonb uses by default

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
_ENDED_BADLY = ("failed", "cancelled", "closed")


def _patch(f: FileSpec) -> dict[str, Any]:
    return {k: v for k, v in msgspec.to_builtins(f).items() if v is not None and v != "NULL"}


def _clean(value: Any) -> Any:
    return None if value == "NULL" else value


class FilesProjection:
    name = "files"
    tables = ("files",)

    def apply(self, conn: psycopg.Connection, records: Sequence[Record]) -> None:
        with conn.cursor() as cur:
            for rec in records:
                ev = rec.event
                if isinstance(ev, JobSubmitted):
                    rows = []
                    for f in ev.job.Files:
                        spec = _patch(f)
                        spec.setdefault("status", "unknown")
                        spec["PandaID"] = ev.PandaID
                        rows.append([ev.PandaID, spec.get("type") or "unknown", spec.get("lfn") or "",
                                     *[_clean(spec.get(attr)) for attr in _COLUMNS], Jsonb(spec, _dumps)])
                    if rows:
                        cur.executemany(
                            "INSERT INTO files (pandaid, type, lfn, " + ", ".join(_COLUMNS.values())
                            + ", spec) VALUES (" + ", ".join(["%s"] * (4 + len(_COLUMNS))) + ")"
                            " ON CONFLICT DO NOTHING",
                            rows,
                        )
                    continue
                for f in ev.files:
                    self._patch_file(cur, ev.PandaID, _patch(f))
                if ev.to_state in _ENDED_BADLY and ev.from_state != ev.to_state:
                    cur.execute(
                        "UPDATE files SET status = 'failed', spec = spec || '{\"status\": \"failed\"}'"
                        " WHERE pandaid = %s AND type IN ('output', 'log')"
                        " AND status NOT IN ('ready', 'failed', 'nooutput')",
                        (ev.PandaID,),
                    )

    @staticmethod
    def _patch_file(cur: psycopg.Cursor, pandaid: int, patch: dict[str, Any]) -> None:
        lfn = patch.get("lfn")
        if not lfn:
            return
        sets = [f"{col} = %s" for attr, col in _COLUMNS.items() if attr in patch]
        params = [patch[attr] for attr in _COLUMNS if attr in patch]
        where = "pandaid = %s AND lfn = %s"
        keys = [pandaid, lfn]
        if patch.get("type"):
            where += " AND type = %s"
            keys.append(patch["type"])
        cur.execute(
            f"UPDATE files SET {''.join(s + ', ' for s in sets)}spec = spec || %s WHERE {where}",
            [*params, Jsonb(patch, _dumps), *keys],
        )
        if cur.rowcount == 0 and patch.get("type"):
            # a file the job did not declare at submission (e.g. an output registered later)
            patch["PandaID"] = pandaid
            cur.execute(
                "INSERT INTO files (pandaid, type, lfn, " + ", ".join(_COLUMNS.values()) + ", spec)"
                " VALUES (" + ", ".join(["%s"] * (4 + len(_COLUMNS))) + ") ON CONFLICT DO NOTHING",
                [pandaid, patch["type"], lfn, *[patch.get(a) for a in _COLUMNS], Jsonb(patch, _dumps)],
            )
