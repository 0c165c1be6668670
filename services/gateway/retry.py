"""``/api/v1/job/retry``: a person asks for another attempt of a failed job (the monitor's retry button).

Why the retrier's way and not a transition: a job's history ends at its final state, so a retry is a NEW
job (``services/reactors/retrier.py::next_job``: ``attemptNr + 1``, ``parentID`` = the failed PandaID)
and the failed one is marked with kill code 7 (taskBufferErrorCode 106). Its PandaID is taken from the
retrier's own store (``retries.aclaim``), keyed by the failed job, so a job is retried once however often
and by whom it is asked — the retrier and a person, or two clicks. Both commands go to the ledger like any
other; who may ask is ``access.refused`` (a user: the jobs they own; production: its VO; admins: any).

``data`` is, per ID, the new PandaID or None; the message says why a job was not retried. A caller who
may act on none of the jobs gets HTTP 403.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from projections import aqueries
from schemas.messages import Event, Kill, Rejected, Submit
from services.reactors import retries
from services.reactors.retrier import RETRIED_CODE, RetryRules, asked_verdict, next_job

from . import access, identity
from .params import as_id_list
from .v1 import _ask_each, _until_projected, _v1, envelope


@_v1
async def retry(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Retry failed jobs as new PandaIDs; data is the new PandaID per ID (None: not retried, see message)."""
    ids = as_id_list(params, "job_ids")
    caller = identity.user(request)
    why: dict[int, str] = await access.refused(request, caller, ids, "retry")
    if why and len(why) == len(ids):
        return envelope(False, "; ".join(why.values()), [None] * len(ids), status=403)
    rules = RetryRules.from_config(request.app["cfg"])
    wanted = [i for i in ids if i not in why]
    new_ids: dict[int, int] = {}
    submits: list[Submit] = []
    async with request.app["backend"].pool.connection() as conn:
        rows = await aqueries.jobs(conn, wanted, ("status", "spec"))
        files = await aqueries.files_of(conn, wanted)
        for pid in wanted:
            row = rows.get(pid)
            if row is None:
                why[pid] = f"no job {pid}"
                continue
            ok, reason = asked_verdict(row["status"], row["spec"], rules)
            if not ok:
                why[pid] = f"job {pid} not retried: {reason}"
                continue
            job, note = next_job(row["spec"], files.get(pid, []), pid, rules)
            new_ids[pid] = await retries.aclaim(conn, pid, job.attemptNr or 0, f"{note}, asked by {caller.actor}")
            submits.append(Submit(PandaID=new_ids[pid], job=job, actor=caller.actor))
    # the new job first: the failed one is marked retried only once its retry is in the log (a Submit not
    # confirmed in time is sent again, under the same PandaID, when the retry is asked again)
    kills: list[Kill] = []
    for old, cmd, verdict in zip(list(new_ids), submits, await _ask_each(request, submits), strict=True):
        if isinstance(verdict, Event) or (isinstance(verdict, Rejected) and verdict.code == "duplicate_job"):
            kills.append(Kill(PandaID=old, code=RETRIED_CODE, actor=caller.actor,
                              reason=f"retried as {cmd.PandaID} by {caller.actor}"))
            continue
        del new_ids[old]
        why[old] = (f"job {old} not retried: {verdict.code}: {verdict.reason}" if verdict is not None
                    else f"job {old}: the retry was sent but not confirmed in time; ask again")
    await _until_projected(request, await _ask_each(request, kills))
    done = [f"job {old} retried as {new}" for old, new in new_ids.items()]
    return envelope(bool(new_ids), "; ".join([*done, *(why[i] for i in ids if i in why)]),
                    [new_ids.get(i) for i in ids])


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/job/retry", retry)
