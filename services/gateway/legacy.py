"""PanDA's legacy pilot API, ``/server/panda/<method>``, as pilot3 3.7 speaks it.

Requests are form-encoded (JSON bodies tolerated); every reply is a JSON object with PanDA's
``StatusCode`` — pilot3 runs ``json.loads`` on it and gives up on anything else. A malformed request is
HTTP 400 with StatusCode 50 and the field in ``errorDialog`` (pilot3 parses the body whatever the status).
Two deliberate exceptions: ``isAlive`` answers PanDA's plain ``alive=yes``, and an update that could not be written to
the log is answered with a non-JSON 503, because that is the only answer that makes pilot3's
``send_update`` try again (it ignores StatusCode).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from . import pilot
from .params import BadRequest, as_id_list, read_params

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply(data: dict[str, Any], status: int = 200) -> web.Response:
    """A JSON answer of the legacy API, encoded by msgspec: the standard library's encoder was 4 % of the gateway's
    CPU in the getJob level (every getJob's job dict, every updateJob's reply)."""
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def invalid(exc: BadRequest) -> web.Response:
    """A request that cannot be acted on: HTTP 4xx (400 unless the cause says otherwise) with PanDA's
    StatusCode 50 and the field in ``errorDialog``. pilot3 runs curl without ``--fail`` and parses the JSON
    body whatever the status, so it reads this exactly as it would read the same body with a 200."""
    return reply({"StatusCode": pilot.SC_INVALID, "errorDialog": str(exc)}, status=exc.status)


def retry_later(exc: Exception) -> web.Response:
    return web.Response(status=503, text=f"update not recorded, send it again: {exc}\n")


async def get_job(request: web.Request) -> web.Response:
    try:
        params = await read_params(request)
        code, jobs, dialog = await pilot.get_jobs(request, params)
    except BadRequest as exc:
        return invalid(exc)
    if "nJobs" in params:  # the multi-job form: a list under "jobs"
        return await pilot.deliver(request, reply({"StatusCode": code, "jobs": jobs,
                                                   **({"errorDialog": dialog} if dialog else {})}))
    if code != pilot.SC_SUCCESS:
        return reply({"StatusCode": code, "errorDialog": dialog})
    return await pilot.deliver(request, reply({"StatusCode": pilot.SC_SUCCESS, **jobs[0]}))


async def update_job(request: web.Request) -> web.Response:
    try:
        params = await read_params(request)
        return reply(await pilot.update_job(request, params))
    except BadRequest as exc:
        return invalid(exc)
    except pilot.RetryLater as exc:
        return retry_later(exc)


async def update_jobs_in_bulk(request: web.Request) -> web.Response:
    try:
        params = await read_params(request)
        raw = params.get("jobList")
        if raw is None:
            raise BadRequest("is required", field="jobList")
        items = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise BadRequest("must be a JSON list of updates", field="jobList")
    except ValueError:
        return invalid(BadRequest("is not valid JSON", field="jobList"))
    except BadRequest as exc:
        return invalid(exc)
    # PanDA answers a (success, [per-job reply]) pair
    return web.json_response([True, await pilot.update_jobs_bulk(request, items)])


async def get_status(request: web.Request) -> web.Response:
    try:
        ids = as_id_list(await read_params(request), "ids")
    except BadRequest as exc:
        return invalid(exc)
    rows = await pilot.job_rows(request, ids)
    status = "+".join(rows[i]["status"] if i in rows else "notfound" for i in ids)
    attempts = "+".join(str(rows[i]["attemptNr"]) if i in rows else "0" for i in ids)
    return reply({"StatusCode": pilot.SC_SUCCESS, "status": status, "attemptNr": attempts})


async def check_job_status(request: web.Request) -> web.Response:
    try:
        ids = as_id_list(await read_params(request), "ids")
    except BadRequest as exc:
        return invalid(exc)
    rows = await pilot.job_rows(request, ids)
    data = [{"status": rows[i]["status"], "command": rows[i]["command"]} if i in rows
            else {"status": "unknown", "command": "tobekilled"} for i in ids]
    return reply({"StatusCode": pilot.SC_SUCCESS, "data": data})


async def update_worker_pilot_status(request: web.Request) -> web.Response:
    """Harvester worker bookkeeping is not modelled yet: accepted and acknowledged."""
    try:
        params = await read_params(request)
    except BadRequest as exc:
        return invalid(exc)
    status = str(params.get("status") or "")
    if status not in ("started", "finished"):
        return invalid(BadRequest(f"must be started or finished, got {status[:40]!r}", field="status"))
    return reply({"StatusCode": pilot.SC_SUCCESS})


async def is_alive(request: web.Request) -> web.Response:
    return web.Response(text="alive=yes", content_type="text/plain")


ROUTES: dict[str, Handler] = {
    "getJob": get_job,
    "updateJob": update_job,
    "updateJobsInBulk": update_jobs_in_bulk,
    "getStatus": get_status,
    "checkJobStatus": check_job_status,
    "updateWorkerPilotStatus": update_worker_pilot_status,
    "isAlive": is_alive,
}


def setup(app: web.Application) -> None:
    for name, handler in ROUTES.items():
        app.router.add_route("POST", f"/server/panda/{name}", handler)
        app.router.add_route("GET", f"/server/panda/{name}", handler)
