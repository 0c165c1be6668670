"""The event service over HTTP: Harvester's ``/api/v1/event/*`` calls and pilot3's legacy
``getEventRanges`` / ``updateEventRanges``. The ranges and their rules are ``services.eventservice``'s.

Answers follow what the callers read: Harvester takes ``data["StatusCode"]`` and ``data["eventRanges"]``
from acquire_event_ranges and ``data["StatusCode"]``/``data["Returns"]`` from update_event_ranges (one
bool per reported range, in order); pilot3's legacy calls get the same fields at the top level.

Acquiring and updating a job's ranges are bound like updateJob: only the identity the job was dispatched
to (or one ``access.refused`` lets update it: admin, production of its VO) may take or report them; anyone
else gets 403 with StatusCode 60 naming the pilot the job went to, and none of the ranges change.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.eventservice import ranges, store

from . import access, identity, legacy, pilot
from .params import INT64_LIMIT, BadRequest, as_int, json_or_value, read_params, storable_value
from .v1 import Handler, _v1, envelope

MAX_RANGES = 10000


class Refused(Exception):
    """The caller may not act on (some of) these jobs' ranges; the message names the pilot they went to."""


def _pool(request: web.Request):
    return request.app["backend"].pool


async def _check(request: web.Request, caller: identity.Caller, pandaids: list[int]) -> None:
    """Raise Refused unless ``caller`` may update every one of these jobs (the updateJob binding)."""
    refused = await access.refused(request, caller, pandaids, "update")
    if refused:
        raise Refused("; ".join(refused[p] for p in sorted(refused)))


async def _acquire(request: web.Request, pandaid: int, n: int, caller: identity.Caller) -> list[dict[str, Any]]:
    if not 0 < n <= MAX_RANGES:
        raise BadRequest(f"must be between 1 and {MAX_RANGES}, got {n}", field="n_ranges")
    await _check(request, caller, [pandaid])
    async with _pool(request).connection() as conn:
        return [ranges.pilot_range(r) for r in await store.acquire(conn, pandaid, n, caller.actor)]


def _reported(raw: Any, field: str) -> list[dict[str, Any]]:
    """Version 0 (a list of ranges) or 1 (a list of {zipFile…, eventRanges: [...]}) → the ranges, in order."""
    raw = json_or_value(raw, field, list, "must be a list")
    flat: list[dict[str, Any]] = []
    for item in raw:
        if isinstance(item, dict) and isinstance(item.get("eventRanges"), list):
            flat += [r for r in item["eventRanges"] if isinstance(r, dict)]
        elif isinstance(item, dict):
            flat.append(item)
        else:
            raise BadRequest("items must be objects", field=field)
    return storable_value(flat, field)


def _pandaid(range_id: str) -> int | None:
    parts = range_id.split("-")
    try:
        pandaid = int(parts[1]) if len(parts) >= 5 else None
    except ValueError:
        return None
    return pandaid if pandaid is not None and 0 < pandaid < INT64_LIMIT else None


async def _update(request: web.Request, reported: list[dict[str, Any]], caller: identity.Caller) -> dict[str, Any]:
    """Every reported range is checked before any is recorded: one refused job refuses the whole report."""
    returns: list[bool] = []
    actor = caller.actor
    async with _pool(request).connection() as conn:
        owners = await store.jobs_of(conn, [str(r.get("eventRangeID") or "") for r in reported])
    await _check(request, caller, owners)
    async with _pool(request).connection() as conn:
        for r in reported:
            range_id, status = str(r.get("eventRangeID") or ""), str(r.get("eventStatus") or "")
            detail = {k: v for k, v in r.items() if k not in ("eventRangeID", "eventStatus")}
            returns.append(bool(range_id) and await store.report(conn, range_id, status, actor, detail))
    ids = sorted({p for p in (_pandaid(str(r.get("eventRangeID") or "")) for r in reported) if p is not None})
    rows = await pilot.job_rows(request, ids) if ids else {}
    return {"StatusCode": pilot.SC_SUCCESS, "Returns": returns,
            "Commands": {str(p): row["command"] for p, row in rows.items() if row["command"] != "NULL"}}


# ------------------------------------------------------------------------------------------- v1
@_v1
async def acquire_event_ranges(request: web.Request, params: dict[str, Any]) -> web.Response:
    pandaid = as_int(params, "job_id")
    try:
        got = await _acquire(request, pandaid, as_int(params, "n_ranges", default=10),
                             identity.pilot(request, params))
    except Refused as exc:
        return envelope(False, str(exc), {"StatusCode": pilot.SC_ROLE, "eventRanges": []}, status=403)
    return envelope(True, "", {"StatusCode": pilot.SC_SUCCESS, "eventRanges": got})


@_v1
async def update_event_ranges(request: web.Request, params: dict[str, Any]) -> web.Response:
    reported = _reported(params.get("event_ranges"), "event_ranges")
    try:
        return envelope(True, "", await _update(request, reported, identity.pilot(request, params)))
    except Refused as exc:
        return envelope(False, str(exc), {"StatusCode": pilot.SC_ROLE, "Returns": [False] * len(reported)},
                        status=403)


@_v1
async def get_available_event_range_count(request: web.Request, params: dict[str, Any]) -> web.Response:
    pandaid = as_int(params, "job_id")
    async with _pool(request).connection() as conn:
        return envelope(True, "", await store.available(conn, pandaid))


# --------------------------------------------------------------------------------------- legacy
def _legacy_refused(exc: Refused) -> web.Response:
    """PanDA's answer to a missing permission, as the gate gives it on the legacy API."""
    return legacy.reply({"StatusCode": pilot.SC_ROLE, "errorDialog": str(exc)}, status=403)


async def get_event_ranges(request: web.Request) -> web.Response:
    try:
        params = await read_params(request)
        pandaid = as_int(params, "pandaID")
        got = await _acquire(request, pandaid, as_int(params, "nRanges", default=10),
                             identity.pilot(request, params))
    except BadRequest as exc:
        return legacy.invalid(exc)
    except Refused as exc:
        return _legacy_refused(exc)
    return legacy.reply({"StatusCode": pilot.SC_SUCCESS, "eventRanges": got})


async def legacy_update_event_ranges(request: web.Request) -> web.Response:
    try:
        params = await read_params(request)
        reported = _reported(params.get("eventRanges"), "eventRanges")
        return legacy.reply(await _update(request, reported, identity.pilot(request, params)))
    except BadRequest as exc:
        return legacy.invalid(exc)
    except Refused as exc:
        return _legacy_refused(exc)


ROUTES: list[tuple[tuple[str, ...], str, Handler]] = [
    (("POST",), "event/acquire_event_ranges", acquire_event_ranges),
    (("POST",), "event/update_event_ranges", update_event_ranges),
    (("GET",), "event/get_available_event_range_count", get_available_event_range_count),
]
LEGACY: dict[str, Handler] = {"getEventRanges": get_event_ranges, "updateEventRanges": legacy_update_event_ranges}


def setup(app: web.Application) -> None:
    for methods, path, handler in ROUTES:
        for method in methods:
            app.router.add_route(method, f"/api/v1/{path}", handler)
    for name, handler in LEGACY.items():
        for method in ("POST", "GET"):
            app.router.add_route(method, f"/server/panda/{name}", handler)
