"""The event service over HTTP: Harvester's ``/api/v1/event/*`` calls and pilot3's legacy
``getEventRanges`` / ``updateEventRanges``. The ranges and their rules are ``services.eventservice``'s.

Answers follow what the callers read: Harvester takes ``data["StatusCode"]`` and ``data["eventRanges"]``
from acquire_event_ranges and ``data["StatusCode"]``/``data["Returns"]`` from update_event_ranges (one
bool per reported range, in order); pilot3's legacy calls get the same fields at the top level.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from services.eventservice import ranges, store

from . import identity, legacy, pilot
from .params import BadRequest, as_int, read_params
from .v1 import Handler, _v1, envelope

MAX_RANGES = 10000


def _pool(request: web.Request):
    return request.app["backend"].pool


async def _acquire(request: web.Request, pandaid: int, n: int, actor: str) -> list[dict[str, Any]]:
    if not 0 < n <= MAX_RANGES:
        raise BadRequest(f"must be between 1 and {MAX_RANGES}, got {n}", field="n_ranges")
    async with _pool(request).connection() as conn:
        return [ranges.pilot_range(r) for r in await store.acquire(conn, pandaid, n, actor)]


def _reported(raw: Any, field: str) -> list[dict[str, Any]]:
    """Version 0 (a list of ranges) or 1 (a list of {zipFile…, eventRanges: [...]}) → the ranges, in order."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise BadRequest("is not valid JSON", field=field) from None
    if not isinstance(raw, list):
        raise BadRequest("must be a list", field=field)
    flat: list[dict[str, Any]] = []
    for item in raw:
        if isinstance(item, dict) and isinstance(item.get("eventRanges"), list):
            flat += [r for r in item["eventRanges"] if isinstance(r, dict)]
        elif isinstance(item, dict):
            flat.append(item)
        else:
            raise BadRequest("items must be objects", field=field)
    return flat


def _pandaid(range_id: str) -> int | None:
    parts = range_id.split("-")
    try:
        return int(parts[1]) if len(parts) >= 5 else None
    except ValueError:
        return None


async def _update(request: web.Request, reported: list[dict[str, Any]], actor: str) -> dict[str, Any]:
    returns: list[bool] = []
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
    actor = identity.pilot(request, params).actor
    got = await _acquire(request, pandaid, as_int(params, "n_ranges", default=10), actor)
    return envelope(True, "", {"StatusCode": pilot.SC_SUCCESS, "eventRanges": got})


@_v1
async def update_event_ranges(request: web.Request, params: dict[str, Any]) -> web.Response:
    reported = _reported(params.get("event_ranges"), "event_ranges")
    return envelope(True, "", await _update(request, reported, identity.pilot(request, params).actor))


@_v1
async def get_available_event_range_count(request: web.Request, params: dict[str, Any]) -> web.Response:
    pandaid = as_int(params, "job_id")
    async with _pool(request).connection() as conn:
        return envelope(True, "", await store.available(conn, pandaid))


# --------------------------------------------------------------------------------------- legacy
async def get_event_ranges(request: web.Request) -> web.Response:
    try:
        params = await read_params(request)
        pandaid = as_int(params, "pandaID")
        got = await _acquire(request, pandaid, as_int(params, "nRanges", default=10),
                             identity.pilot(request, params).actor)
    except BadRequest as exc:
        return legacy.invalid(exc)
    return legacy.reply({"StatusCode": pilot.SC_SUCCESS, "eventRanges": got})


async def legacy_update_event_ranges(request: web.Request) -> web.Response:
    try:
        params = await read_params(request)
        reported = _reported(params.get("eventRanges"), "eventRanges")
    except BadRequest as exc:
        return legacy.invalid(exc)
    return legacy.reply(await _update(request, reported, identity.pilot(request, params).actor))


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
