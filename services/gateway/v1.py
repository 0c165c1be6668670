"""The ``/api/v1`` API: panda-client 2.2's calls and the v1 pilot calls, in PanDA's envelope.

Every reply is ``{"success": bool, "message": str, "data": ...}`` with HTTP 200, as panda-client parses it
(PANDA-CLIENTS §6.2): domain failures ("No jobs in PanDA", unknown job) are ``success: false`` in band.
Requests the gateway cannot understand (malformed JSON, a missing or mistyped parameter) get HTTP 400
with the same envelope and a message naming the parameter.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from core.states import JobStatus
from projections import aqueries
from projections.wait import ProjectionLag
from schemas.jobspec import JobSpec, SpecError, job_from_dict, job_to_description, jobs_from_client_json
from schemas.messages import Event, Kill, Rejected, Submit, Transition

from . import access, identity, pilot
from .auth import policy
from .backend import Unavailable, VerdictTimeout
from .params import BadRequest, as_bool, as_id_list, as_int, as_str, json_or_value, read_params, storable_value
from .updates import V1_NAMES, legacy_names

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: how long job/submit and job/kill wait for the jobs projection to show what the ledger recorded, so that
#: a client's next call (getJobStatus, setDebugMode…) reads its own write, as it does on PanDA's database
PROJECTION_WAIT = 5.0
PROJECTION_POLL = 0.02   # the longest pause between two looks: a client is waiting for the answer
ANALYSIS_OR_PTEST = ("user", "panda", "ptest", "rc_test", "rc_test2", "rc_alrb")


def envelope(success: bool, message: str = "", data: Any = None, status: int = 200) -> web.Response:
    return web.json_response({"success": success, "message": message, "data": data}, status=status,
                             dumps=lambda v: json.dumps(v, default=str))


def _v1(fn: Callable[[web.Request, dict[str, Any]], Awaitable[web.Response]]) -> Handler:
    """Parse parameters once; BadRequest → 4xx envelope; lost contact with the log → 503 envelope."""
    async def handler(request: web.Request) -> web.Response:
        try:
            return await fn(request, await read_params(request))
        except BadRequest as exc:
            return envelope(False, str(exc), status=exc.status)
        except (Unavailable, pilot.RetryLater) as exc:
            return envelope(False, f"not recorded, try again: {exc}", status=503)
    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


# ------------------------------------------------------------------------------------------ system
async def is_alive(request: web.Request) -> web.Response:
    return envelope(True, "alive")


# ------------------------------------------------------------------------------------------- pilot
_ACQUIRE_NAMES = {"site_name": "siteName", "memory": "mem", "disk_space": "diskSpace",
                  "prod_source_label": "prodSourceLabel", "computing_element": "computingElement",
                  "task_id": "taskID", "n_jobs": "nJobs", "resource_type": "resourceType",
                  "scheduler_id": "schedulerID", "job_type": "jobType", "core_count": "coreCount"}


@_v1
async def acquire_jobs(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Late binding for v1 pilots: the jobs in the pilot's flat format under data.jobs."""
    legacy = {_ACQUIRE_NAMES.get(k, k): v for k, v in params.items()}
    code, jobs, dialog = await pilot.get_jobs(request, legacy)
    if code == pilot.SC_SUCCESS:
        return await pilot.deliver(request, envelope(True, "", {"StatusCode": 0, "jobs": jobs}))
    if code == pilot.SC_TIMEOUT:
        return envelope(False, "Timed out", None)
    return envelope(False, "No jobs in PanDA", None)


_LEGACY_TO_V1 = {legacy: v1 for v1, legacy in V1_NAMES.items()}


def _v1_named(exc: BadRequest) -> BadRequest:
    """The same refusal naming the parameter as the v1 caller sent it (job_id, not jobId)."""
    if exc.field is None or exc.field not in _LEGACY_TO_V1:
        return exc
    message = str(exc).removeprefix(f"{exc.field}: ")
    return BadRequest(message, field=_LEGACY_TO_V1[exc.field], status=exc.status)


async def _update_job_answer(request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
    """update_job's envelope as a dict: pilot/update_job sends it, update_jobs_bulk lists one per job.
    Raises BadRequest (v1 names) for a missing or invalid job_id / job_status."""
    try:
        data = await pilot.update_job(request, legacy_names(params))
    except BadRequest as exc:
        raise _v1_named(exc) from None
    return {"success": data["StatusCode"] == pilot.SC_SUCCESS, "message": data.get("errorDialog", ""), "data": data}


@_v1
async def update_job(request: web.Request, params: dict[str, Any]) -> web.Response:
    """A malformed update (no job_id, an unknown job_status) is a 400 naming the parameter."""
    answer = await _update_job_answer(request, params)
    return envelope(answer["success"], answer["message"], answer["data"])


@_v1
async def update_jobs_bulk(request: web.Request, params: dict[str, Any]) -> web.Response:
    """One answer per item, as the real server gives it: update_job's whole envelope; an item that is not a
    valid update is answered in its place and the others are recorded (``pilot.update_many``)."""
    items = json_or_value(params.get("job_list"), "job_list", list, "must be a list of updates")
    items = [legacy_names(item) if isinstance(item, dict) else item for item in items]
    return envelope(True, "", [_bulk_answer(a) for a in await pilot.update_many(request, items)])


def _bulk_answer(answer: dict[str, Any] | Exception) -> dict[str, Any]:
    if isinstance(answer, BadRequest):
        return {"success": False, "message": str(_v1_named(answer)), "data": {"StatusCode": pilot.SC_INVALID}}
    if isinstance(answer, Exception):   # RetryLater: not in the log
        return {"success": False, "message": f"not recorded, send again: {answer}",
                "data": {"StatusCode": pilot.SC_FAILED, "command": "NULL"}}
    return {"success": answer["StatusCode"] == pilot.SC_SUCCESS, "message": answer.get("errorDialog", ""),
            "data": answer}


@_v1
async def pilot_job_status(request: web.Request, params: dict[str, Any]) -> web.Response:
    ids = as_id_list(params, "job_ids")
    rows = await pilot.job_rows(request, ids)
    data = [{"job_id": i, "status": rows[i]["status"] if i in rows else "not found",
             "attempt_number": rows[i]["attemptNr"] if i in rows else 0} for i in ids]
    return envelope(True, "", data)


# --------------------------------------------------------------------------------------------- job
async def _until_projected(request: web.Request, verdicts: list[Any]) -> None:
    """Wait (at most PROJECTION_WAIT) until the jobs projection has every recorded event of ``verdicts``;
    the answer goes out then whatever the projection shows (what was recorded is in the log)."""
    want = {v.PandaID: v.seq for v in verdicts if isinstance(v, Event)}
    if not want:
        return
    try:
        await aqueries.wait_projected(request.app["backend"].pool, want, PROJECTION_WAIT, most=PROJECTION_POLL)
    except ProjectionLag as exc:
        log.info("answering before the projection caught up: %s", exc)


async def _allocate_ids(request: web.Request, n: int) -> list[int]:
    async with request.app["backend"].pool.connection() as conn:
        return await aqueries.next_pandaids(conn, n)


@_v1
async def submit(request: web.Request, params: dict[str, Any]) -> web.Response:
    """panda-client's job/submit: ``jobs`` is the JSON text of positional JobSpec lists."""
    raw = params.get("jobs")
    if raw is None:
        raise BadRequest("is required", field="jobs")
    try:
        jobs = jobs_from_client_json(raw if isinstance(raw, str) else json.dumps(raw))
    except SpecError as exc:
        raise BadRequest(str(exc), field="jobs") from None
    limit = int(request.app["cfg"].gateway.submit_max_jobs)
    if not jobs or len(jobs) > limit:
        raise BadRequest(f"expected 1 to {limit} jobs, got {len(jobs)}", field="jobs")
    to = JobStatus.PENDING if as_bool(params, "to_pending", default=False) else JobStatus.DEFINED
    caller = identity.user(request)
    ident = caller.identity
    if ident is not None:
        labels = sorted({str(j.prodSourceLabel) for j in jobs if not policy.may_submit(ident.roles, j.prodSourceLabel)})
        if labels:
            request.app["gate"].refusals["role"] += 1
            return envelope(False, f"missing role: {caller.actor} (roles {', '.join(sorted(ident.roles))}) may not "
                                   f"submit prodSourceLabel {', '.join(labels)}", status=403)
    ids = await _allocate_ids(request, len(jobs))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    cmds = []
    for pid, job in zip(ids, jobs, strict=True):
        changes: dict[str, Any] = {"PandaID": pid, "creationTime": job.creationTime or now}
        if ident is not None:   # the owner is who authenticated; production may submit on behalf of a user
            if job.prodUserID is None or not ident.roles & {policy.PRODUCTION, policy.ADMIN}:
                changes["prodUserID"] = ident.principal
            if ident.vo:   # a job belongs to the VO its submitter authenticated with (what production acts on)
                changes["VO"] = ident.vo
        elif job.prodUserID is None and caller.credentials.principal:
            changes["prodUserID"] = caller.credentials.principal
        files = [msgspec.structs.replace(f, PandaID=pid) for f in job.Files]
        # to.value, the plain string: a Submit omits its default ``to`` from the message only when it is that string
        cmds.append(Submit(PandaID=pid, actor=caller.actor, to=to.value,
                           job=msgspec.structs.replace(job, Files=files, **changes)))
    message = ""
    try:
        verdicts: list[Any] = await request.app["backend"].ask_many(
            cmds, float(request.app["cfg"].gateway.verdict_timeout))
    except VerdictTimeout:
        verdicts, message = [None] * len(cmds), "accepted; the ledger has not confirmed every job yet"
    await _until_projected(request, verdicts)
    data = []
    for cmd, verdict in zip(cmds, verdicts, strict=True):
        job: JobSpec = cmd.job
        pid = None if isinstance(verdict, Rejected) else cmd.PandaID
        if job.prodSourceLabel in ANALYSIS_OR_PTEST:
            data.append([pid, job.jobDefinitionID, {"jobsetID": job.jobsetID}])
        else:
            data.append([pid, job.jobDefinitionID, job.jobName])
    return envelope(True, message, data)


async def _descriptions(request: web.Request, ids: list[int]) -> list[dict[str, Any] | None]:
    async with request.app["backend"].pool.connection() as conn:
        specs = {pid: r["spec"] for pid, r in (await aqueries.jobs(conn, ids, ("spec",))).items()}
        files = await aqueries.files_of(conn, ids)
    out: list[dict[str, Any] | None] = []
    for pid in ids:
        spec = specs.get(pid)
        if spec is None:
            out.append(None)
            continue
        try:
            job = job_from_dict({**spec, "PandaID": pid, "Files": files.get(pid, [])})
        except SpecError as exc:   # a projection row that no longer parses: show it rather than fail the call
            log.warning("job %s does not parse as a JobSpec: %s", pid, exc)
            out.append({**spec, "Files": files.get(pid, [])})
            continue
        out.append(job_to_description(job))
    return out


@_v1
async def get_description(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Job descriptions (JobSpec dicts, None for unknown IDs); the projection holds archived jobs too.
    Another user's job reads as None, and the message says why."""
    ids = as_id_list(params, "job_ids")
    refused = await access.refused(request, identity.user(request), ids, "read")
    data = await _descriptions(request, [i for i in ids if i not in refused])
    shown = dict(zip([i for i in ids if i not in refused], data, strict=True))
    return envelope(True, "; ".join(refused.values()), [shown.get(i) for i in ids])


async def _ask_each(request: web.Request, cmds: list[Any]) -> list[Event | Rejected | None]:
    if not cmds:
        return []
    try:
        return await request.app["backend"].ask_many(cmds, float(request.app["cfg"].gateway.verdict_timeout))
    except VerdictTimeout:
        return [None] * len(cmds)


@_v1
async def kill(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Kill jobs with an optional PanDA kill code; data is one bool per ID (True: killed or signalled)."""
    ids = as_id_list(params, "job_ids")
    code = as_int(params, "code", default=None)
    options = params.get("kill_options")
    if options is None or options in ("", "NULL", "None"):
        options = []
    if isinstance(options, str):
        options = [o for o in options.split(",") if o]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise BadRequest("must be a list of strings", field="kill_options")
    storable_value(options, "kill_options")
    sub_status = next((str(o).split("=", 1)[1] for o in options if str(o).startswith("jobSubStatus=")), None)
    caller = identity.user(request)
    actor = caller.actor
    refused = await access.refused(request, caller, ids, "kill")
    if refused and len(refused) == len(ids):
        return envelope(False, "; ".join(refused.values()), [False] * len(ids), status=403)
    cmds = [Kill(PandaID=i, actor=actor, code=code, job_sub_status=sub_status, reason=f"killed by {actor}")
            for i in ids if i not in refused]
    verdicts = iter(await _ask_each(request, cmds))
    answered = {i: next(verdicts) for i in ids if i not in refused}
    await _until_projected(request, list(answered.values()))
    data = [isinstance(v, Event) or (isinstance(v, Rejected) and v.code == "already_requested")
            for v in (answered.get(i) for i in ids)]
    return envelope(True, "; ".join(refused.values()), data)


@_v1
async def reassign(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Send jobs back to ``defined`` (PanDA resetJob); PanDA answers success whatever happened."""
    ids = as_id_list(params, "job_ids")
    caller = identity.user(request)
    refused = await access.refused(request, caller, ids, "reassign")
    if refused:
        return envelope(False, "; ".join(refused.values()), None, status=403)
    await _ask_each(request, [Transition(PandaID=i, action="reset", actor=caller.actor) for i in ids])
    return envelope(True, "", None)


async def _set(request: web.Request, panda_id: int, attrs: dict[str, Any]) -> web.Response:
    caller = identity.user(request)
    refused = await access.refused(request, caller, [panda_id], "change")
    if refused:
        return envelope(False, refused[panda_id], None, status=403)
    (verdict,) = await _ask_each(request, [Transition(PandaID=panda_id, action="set", actor=caller.actor,
                                                      attrs=attrs)])
    if isinstance(verdict, Event):
        return envelope(True, "done", None)
    if verdict is None:
        return envelope(True, "accepted; not confirmed by the ledger yet", None)
    return envelope(False, f"{verdict.code}: {verdict.reason}", None)


@_v1
async def set_command(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Set commandToPilot (e.g. tobekilled); the pilot gets it in its next updateJob reply."""
    panda_id = as_int(params, "job_id")
    command = as_str(params, "command", max_len=250)
    return await _set(request, panda_id, {"commandToPilot": command})


@_v1
async def set_debug_mode(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Turn the ``dm`` tag of specialHandling on or off; heartbeats then answer ``debug``."""
    panda_id = as_int(params, "job_id")
    mode = as_bool(params, "mode")
    async with request.app["backend"].pool.connection() as conn:
        row = (await aqueries.jobs(conn, [panda_id], ("special_handling", "status"))).get(panda_id)
    if row is None:
        return envelope(False, f"job {panda_id} not found", None)
    tags = [t for t in (row["special_handling"] or "").split(",") if t and t not in ("dm", "debug")]
    if mode:
        tags.append("dm")
    # read-modify-write on the projection: a concurrent change of specialHandling could be overwritten;
    # acceptable for an operator switch, and the event log shows both changes
    return await _set(request, panda_id, {"specialHandling": ",".join(tags) or None})


@_v1
async def job_status(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Status and pending pilot command per job (old checkJobStatus); unknown → unknown/tobekilled."""
    ids = as_id_list(params, "job_ids")
    rows = await pilot.job_rows(request, ids)
    data = [{"status": rows[i]["status"], "command": rows[i]["command"]} if i in rows
            else {"status": "unknown", "command": "tobekilled"} for i in ids]
    return envelope(True, "", data)


# method, path (under /api/v1/), handler
ROUTES: list[tuple[tuple[str, ...], str, Handler]] = [
    (("GET",), "system/is_alive", is_alive),
    (("POST",), "pilot/acquire_jobs", acquire_jobs),
    (("POST",), "pilot/update_job", update_job),
    (("POST",), "pilot/update_jobs_bulk", update_jobs_bulk),
    (("GET", "POST"), "pilot/get_job_status", pilot_job_status),
    (("POST",), "job/submit", submit),
    (("GET", "POST"), "job/get_description", get_description),
    (("GET", "POST"), "job/get_description_incl_archive", get_description),
    (("POST",), "job/kill", kill),
    (("POST",), "job/reassign", reassign),
    (("POST",), "job/set_command", set_command),
    (("POST",), "job/set_debug_mode", set_debug_mode),
    (("GET", "POST"), "job/get_status", job_status),
]


def setup(app: web.Application) -> None:
    for methods, path, handler in ROUTES:
        for method in methods:
            app.router.add_route(method, f"/api/v1/{path}", handler)

