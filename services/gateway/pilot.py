"""What the pilot endpoints do, shared by the legacy (/server/panda) and v1 (/api/v1/pilot) forms.

Each function takes already-parsed parameters (legacy names) and returns plain data; the API modules
only adapt names and wrap the result in their envelope. StatusCodes are PanDA's (jobdispatcher/Protocol).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec
import psycopg
from aiohttp import web

from core import payloads
from projections import aqueries
from schemas.messages import Event, PilotUpdate, Rejected
from services.gateway.dispatcher import DispatchRequest

from . import access, identity, queues
from .access import BINDINGS
from .backend import Unavailable, VerdictTimeout
from .jobdict import pilot_job
from .params import BadRequest, as_float, as_int, as_str
from .updates import Update, translate

log = logging.getLogger(__name__)

SC_SUCCESS, SC_TIMEOUT, SC_NOJOBS, SC_FAILED, SC_INVALID, SC_ROLE = 0, 10, 20, 30, 50, 60
# request key: the jobs a getJob dispatched (``deliver`` marks them); a typed key, as aiohttp asks
DISPATCHED: web.RequestKey[list] = web.RequestKey("pandaes.dispatched", list)


class RetryLater(Exception):
    """The update did not reach the log: answer so that the pilot sends it again (non-JSON 503)."""


def dispatch_request(params: Mapping[str, Any], queue: Mapping[str, Any] | None) -> DispatchRequest:
    """getJob / acquire_jobs parameters (legacy names) → DispatchRequest."""
    site = as_str(params, "siteName", max_len=128)
    n_jobs = as_int(params, "nJobs", default=1)
    if n_jobs < 1:
        raise BadRequest(f"must be at least 1, got {n_jobs}", field="nJobs")
    return DispatchRequest(
        site=site,
        node=as_str(params, "node", default="", max_len=128),
        prod_source_label=as_str(params, "prodSourceLabel", default=None, max_len=64),
        computing_element=as_str(params, "computingElement", default=None, max_len=128),
        memory=int(as_float(params, "mem", default=0)),
        disk=int(as_float(params, "diskSpace", default=0)),
        remaining_time=int(as_float(params, "remaining_time", default=0)),
        resource_type=as_str(params, "resourceType", default=None, max_len=64),
        core_count=as_int(params, "coreCount", default=None),
        task_id=as_int(params, "taskID", default=None),
        job_type=as_str(params, "jobType", default=None, max_len=64),
        scheduler_id=as_str(params, "schedulerID", default=None, max_len=128),
        n_jobs=n_jobs,
        timeout=as_float(params, "timeout", default=60.0),
        queue_status=(queue or {}).get("status"),
    )


async def get_jobs(request: web.Request, params: Mapping[str, Any]) -> tuple[int, list[dict[str, Any]], str]:
    """(StatusCode, pilot job dicts, errorDialog) for a getJob / acquire_jobs call."""
    site = as_str(params, "siteName", max_len=128)   # checked before it reaches a query
    queue = await queues.queuedata(request.app, site)
    req = dispatch_request(params, queue)
    caller = identity.pilot(request, params)
    try:
        result = await request.app["dispatcher"].acquire(req, caller.actor)
    except Unavailable as exc:
        return SC_TIMEOUT, [], f"database or log unavailable: {exc}"
    if result.jobs:
        request[DISPATCHED] = result.jobs   # marked delivered by ``deliver`` once the answer is written
        endpoint = (queue or {}).get("default_ddm_endpoint")
        return SC_SUCCESS, [pilot_job(j.spec, j.files, endpoint) for j in result.jobs], ""
    if result.timed_out:
        return SC_TIMEOUT, [], "dispatch timed out"
    return SC_NOJOBS, [], "no jobs in PanDA"


async def deliver(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Write the answer carrying the jobs ``get_jobs`` dispatched, then have their leases marked delivered.

    Why here and not after the handler: only once the response is written can the gateway say its pilot was
    answered. A dispatch whose answer was never written (this process died, the pilot hung up) keeps an
    undelivered lease and the dispatch sweep (services/gateway/undelivered.py) takes it back within seconds,
    instead of the job sitting ``sent`` to nobody until the 30-minute sent timeout. The mark itself runs behind
    the handler (``Dispatcher.delivered_behind``): the connection's next request is read meanwhile."""
    jobs = request.get(DISPATCHED)
    if not jobs:
        return response
    bindings = request.app[BINDINGS]
    pending = bindings.delivering((j.panda_id, j.event.actor) for j in jobs)   # the pilot may answer at once
    try:
        await response.prepare(request)
        await response.write_eof()
    except BaseException as exc:
        bindings.settle(pending, ())
        if not isinstance(exc, ConnectionError):
            raise
        log.warning("the pilot went away before jobs %s were written; the dispatch sweep takes them back",
                    [j.panda_id for j in jobs])
        return response
    # only what was marked delivered is bound for good (bindings.py)
    request.app["dispatcher"].delivered_behind(
        jobs, lambda marked: bindings.settle(pending, ((j.panda_id, j.event.actor) for j in marked)))
    return response


async def update_job(request: web.Request, fields: Mapping[str, Any]) -> dict[str, Any]:
    """One updateJob: the reply dict ({"StatusCode", "command"[, "errorDialog"]}).

    Raises BadRequest for a missing/invalid jobId or state, RetryLater if the log did not take it."""
    upd = translate(fields)
    caller = identity.pilot(request, fields)
    refused = await access.refused(request, caller, [upd.panda_id], "update")
    if refused:   # not sent to the ledger: the job stays as its own pilot left it
        log.warning("refused an update: %s", refused[upd.panda_id])
        return {"StatusCode": SC_ROLE, "command": "NULL", "errorDialog": refused[upd.panda_id]}
    return await _send_update(request, upd, caller.actor)


async def _beside(request: web.Request, cmd: PilotUpdate) -> PilotUpdate:
    """The command with a report/metaData larger than ``[gateway] inline_payload_bytes`` stored beside the
    event (core/payloads.py) and named by its digest: a Kafka message holds about 1 MB, a report can be more."""
    limit = int(request.app["cfg"].gateway.inline_payload_bytes)
    big = {name: text for name, text in (("report", cmd.report), ("metadata", cmd.metadata))
           if text is not None and len(text) > limit // 4 and len(text.encode("utf-8")) > limit}
    if not big:
        return cmd
    changes: dict[str, Any] = {}
    try:
        async with request.app["backend"].pool.connection() as conn:
            for name, text in big.items():
                changes[f"{name}_ref"] = await payloads.aput(conn, text)
                changes[name] = None
    except psycopg.OperationalError as exc:
        raise RetryLater(f"cannot store the report: {exc}") from exc
    return msgspec.structs.replace(cmd, **changes)


async def _send_update(request: web.Request, upd: Update, actor: str) -> dict[str, Any]:
    backend = request.app["backend"]
    try:
        command = await _beside(request, upd.command(actor))
        verdict = await backend.ask(command, float(request.app["cfg"].gateway.verdict_timeout))
    except VerdictTimeout:
        return _timed_out()
    except Unavailable as exc:
        raise RetryLater(str(exc)) from exc
    return _reply(upd, verdict)


def _timed_out() -> dict[str, Any]:
    # in the log, judged later: the update is not lost, only the command for the pilot is unknown
    return {"StatusCode": SC_TIMEOUT, "command": "NULL", "errorDialog": "ledger verdict timed out"}


def _reply(upd: Update, verdict: Event | Rejected) -> dict[str, Any]:
    """The updateJob reply for the ledger's verdict on ``upd``."""
    reply: dict[str, Any]
    if isinstance(verdict, Rejected):
        if verdict.reply:
            reply = {"StatusCode": SC_SUCCESS, "command": verdict.reply}
        else:
            reply = {"StatusCode": SC_FAILED, "command": "NULL"}
        if verdict.code not in ("alreadydone", "ignored"):
            reply["errorDialog"] = f"{verdict.code}: {verdict.reason}"
    else:
        reply = {"StatusCode": SC_SUCCESS, "command": verdict.reply or "NULL"}
    if upd.ignored:
        note = f"ignored invalid fields: {', '.join(upd.ignored)}"
        reply["errorDialog"] = f"{reply['errorDialog']}; {note}" if "errorDialog" in reply else note
    return reply


async def _send_round(request: web.Request, sends: list[tuple[int, Update, str]],
                      out: list[dict[str, Any] | Exception | None]) -> None:
    """One round's updates as commands sent together (one wait for all verdicts), each answered on its own."""
    ready: list[tuple[int, Update, PilotUpdate]] = []
    for i, upd, actor in sends:
        try:
            ready.append((i, upd, await _beside(request, upd.command(actor))))
        except (BadRequest, RetryLater) as exc:
            out[i] = exc
    if not ready:
        return
    verdicts = await request.app["backend"].ask_each([c for _, _, c in ready],
                                                     float(request.app["cfg"].gateway.verdict_timeout))
    for (i, upd, _), verdict in zip(ready, verdicts, strict=True):
        if isinstance(verdict, VerdictTimeout):
            out[i] = _timed_out()
        elif isinstance(verdict, Unavailable):
            out[i] = RetryLater(str(verdict))
        elif isinstance(verdict, BadRequest):
            out[i] = verdict
        elif isinstance(verdict, Exception):
            raise verdict
        else:
            out[i] = _reply(upd, verdict)


def job_rounds(items: list[Any]) -> list[list[int]]:
    """The items' indexes in rounds: round k holds the k-th item of every job (its updates are a sequence, so
    one job's items go one round after another; different jobs share each round). Items without a job id
    are each a job of their own. Pure, so the order rule is tested without a server."""
    chains: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        key = (item.get("jobId", item.get("job_id")) if isinstance(item, dict) else None) or f"#{i}"
        chains.setdefault(str(key), []).append(i)
    rounds: list[list[int]] = []
    for chain in chains.values():
        for k, i in enumerate(chain):
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(i)
    return [sorted(r) for r in rounds]


async def update_many(request: web.Request, items: list[Any]) -> list[dict[str, Any] | Exception]:
    """A bulk of updateJob items: per item the updateJob reply dict, or the BadRequest / RetryLater that
    update_job would have raised for it (the bulk routes answer those in the item's place).

    Why not update_job per item: a Harvester batch is 50+ jobs, and update_job reads each job's binding (who
    it was dispatched to) with a query of its own. Here each round of the bulk (``job_rounds``: the next item
    of every job) is checked with one read per caller and its commands are sent together; the ledger judges
    each command on its own exactly as before, and each item gets its own verdict, timeout or error."""
    out: list[dict[str, Any] | Exception | None] = [None] * len(items)
    caller_of = identity.pilot_of_items(request)
    for indexes in job_rounds(items):
        todo: list[tuple[int, Update, Any]] = []
        for i in indexes:
            item = items[i]
            if not isinstance(item, dict):
                out[i] = BadRequest("item is not an object")
                continue
            try:
                todo.append((i, translate(item), caller_of(item)))
            except BadRequest as exc:
                out[i] = exc
        by_caller: dict[str, tuple[Any, list[int]]] = {}
        for _, upd, caller in todo:
            by_caller.setdefault(caller.actor, (caller, []))[1].append(upd.panda_id)
        refused: dict[tuple[str, int], str] = {}
        for actor, (caller, ids) in by_caller.items():
            for pid, why in (await access.refused(request, caller, ids, "update")).items():
                refused[(actor, pid)] = why
        sends: list[tuple[int, Update, str]] = []
        for i, upd, caller in todo:
            why = refused.get((caller.actor, upd.panda_id))
            if why is not None:   # not sent to the ledger: the job stays as its own pilot left it
                log.warning("refused an update: %s", why)
                out[i] = {"StatusCode": SC_ROLE, "command": "NULL", "errorDialog": why}
            else:
                sends.append((i, upd, caller.actor))
        await _send_round(request, sends, out)
    return out  # type: ignore[return-value]


async def job_rows(request: web.Request, ids: list[int]) -> dict[int, dict[str, Any]]:
    """Current status, attempt and command of jobs from the projection."""
    async with request.app["backend"].pool.connection() as conn:
        rows = await aqueries.jobs(conn, ids, ("status", "attempt_nr", "command_to_pilot", "special_handling"))
    return {pid: {"status": r["status"], "attemptNr": r["attempt_nr"],
                  "command": _command(r["command_to_pilot"], r["special_handling"])} for pid, r in rows.items()}


def _command(command_to_pilot: str | None, special_handling: str | None) -> str:
    """What updateJob would answer now (debug + commandToPilot), as checkJobStatus reports it."""
    tags = (special_handling or "").split(",")
    parts = ["debug"] if ("dm" in tags or "debug" in tags) else []
    if command_to_pilot and command_to_pilot != "NULL":
        parts.append(command_to_pilot)
    return ",".join(parts) or "NULL"


async def update_jobs_bulk(request: web.Request, items: list[Any]) -> list[dict[str, Any]]:
    """Legacy updateJobsInBulk: one updateJob reply per item, bad items answered with StatusCode 50."""
    out: list[dict[str, Any]] = []
    for answer in await update_many(request, items):
        if isinstance(answer, BadRequest):
            out.append({"StatusCode": SC_INVALID, "command": "NULL", "errorDialog": str(answer)})
        elif isinstance(answer, RetryLater):
            out.append({"StatusCode": SC_FAILED, "command": "NULL",
                        "errorDialog": f"not recorded, send again: {answer}"})
        else:
            out.append(answer)
    return out
