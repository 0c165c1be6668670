"""The ``/api/v1`` calls Harvester makes for its instance, workers and commands, and the statistics it reads.

Spoken as Harvester's PandaCommunicator speaks them (POST bodies are JSON, GET parameters are the query
string; every answer the ``{"success", "message", "data"}`` envelope): ``harvester/heartbeat``,
``update_workers``, ``get_current_worker_id``, ``report_worker_statistics``, ``get_worker_statistics``,
``update_service_metrics``, ``add_dialogs``, ``acquire_commands``, ``acknowledge_commands``;
``metaconfig/get_resource_types``; ``statistics/active_job_stats_by_site`` and
``active_job_detailed_stats_by_site``. The tables are ``services.harvester.store``'s; the job statistics
are the jobs projection's (``projections.harvester_queries``).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from projections import harvester_queries
from services.harvester import killer, store

from . import identity
from .params import BadRequest, as_int, as_str, json_or_value, storable_value, to_int
from .v1 import Handler, _v1, envelope

log = logging.getLogger(__name__)

# PanDA's resource_types table as ATLAS fills it: Harvester maps (cores, memory per core) onto these
RESOURCE_TYPES: list[dict[str, Any]] = [
    {"resource_name": "SCORE", "mincore": None, "maxcore": 1, "minrampercore": None, "maxrampercore": 2000},
    {"resource_name": "SCORE_HIMEM", "mincore": None, "maxcore": 1, "minrampercore": 2001, "maxrampercore": None},
    {"resource_name": "MCORE", "mincore": 2, "maxcore": None, "minrampercore": None, "maxrampercore": 2000},
    {"resource_name": "MCORE_HIMEM", "mincore": 2, "maxcore": None, "minrampercore": 2001, "maxrampercore": None},
]
MAX_COMMANDS = 1000


def _list(params: dict[str, Any], name: str) -> list[Any]:
    """A list (or its JSON text) whose every part the database can store."""
    return storable_value(json_or_value(params.get(name), name, list, "must be a list"), name)


def _harvester_id(params: dict[str, Any]) -> str:
    return as_str(params, "harvester_id", max_len=50)


def _pool(request: web.Request):
    return request.app["backend"].pool


@_v1
async def heartbeat(request: web.Request, params: dict[str, Any]) -> web.Response:
    """harvesterIsAlive: records the instance, its owner and host, and the metadata it sends."""
    hid = _harvester_id(params)
    data = params.get("data")
    if data is None or data in ("", "NULL", "None"):   # not given (false, 0 or [] are not an object)
        data = {}
    data = storable_value(json_or_value(data, "data", dict, "must be an object"), "data")
    caller = identity.user(request)
    async with _pool(request).connection() as conn:
        await store.heartbeat(conn, hid, caller.credentials.principal, request.remote, data)
    return envelope(True)


@_v1
async def update_workers(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Upsert the WorkSpecs (and their pandaid_list); data is one bool per worker. A worker reported for a
    job that was already told to die gets its kill command now (the kill came before the mapping)."""
    hid = _harvester_id(params)
    workers = _list(params, "workers")
    if not all(isinstance(w, dict) for w in workers):
        raise BadRequest("must be a list of worker objects", field="workers")
    async with _pool(request).connection() as conn:
        results = await store.upsert_workers(conn, hid, workers)
        await killer.kill_late_mapped(conn, hid, workers)
    return envelope(True, "", results)


@_v1
async def get_current_worker_id(request: web.Request, params: dict[str, Any]) -> web.Response:
    hid = _harvester_id(params)
    async with _pool(request).connection() as conn:
        current = await store.current_worker_id(conn, hid)
    if current is None:
        return envelope(False, f"no workers recorded for {hid}")
    return envelope(True, "", current)


@_v1
async def report_worker_statistics(request: web.Request, params: dict[str, Any]) -> web.Response:
    hid = _harvester_id(params)
    queue = as_str(params, "panda_queue", max_len=128)
    stats = storable_value(json_or_value(params.get("statistics"), "statistics", dict,
                                         "must be a JSON object {jobType: {resourceType: {status: n}}}"), "statistics")
    try:
        async with _pool(request).connection() as conn:
            await store.report_worker_stats(conn, hid, queue, stats)
    except (ValueError, TypeError) as exc:
        raise BadRequest(str(exc), field="statistics") from None
    return envelope(True, "OK")


@_v1
async def get_worker_statistics(request: web.Request, params: dict[str, Any]) -> web.Response:
    async with _pool(request).connection() as conn:
        return envelope(True, "", await store.worker_stats(conn))


@_v1
async def update_service_metrics(request: web.Request, params: dict[str, Any]) -> web.Response:
    hid = _harvester_id(params)
    metrics = _list(params, "metrics")
    if not all(isinstance(m, list) and len(m) == 3 for m in metrics):
        raise BadRequest("must be a list of [creation_time, host, metrics_json] triplets", field="metrics")
    try:
        async with _pool(request).connection() as conn:
            n = await store.add_metrics(conn, hid, metrics)
    except ValueError as exc:
        raise BadRequest(f"metrics JSON: {exc}", field="metrics") from None
    return envelope(True, "", [True] * n)


@_v1
async def add_dialogs(request: web.Request, params: dict[str, Any]) -> web.Response:
    hid = _harvester_id(params)
    dialogs = _list(params, "dialogs")
    if not all(isinstance(d, dict) and "diagID" in d for d in dialogs):
        raise BadRequest("must be a list of dialog objects with a diagID", field="dialogs")
    try:
        async with _pool(request).connection() as conn:
            await store.add_dialogs(conn, hid, dialogs)
    except (ValueError, TypeError) as exc:
        raise BadRequest(str(exc), field="dialogs") from None
    return envelope(True)


@_v1
async def acquire_commands(request: web.Request, params: dict[str, Any]) -> web.Response:
    """The oldest ``n_commands`` new commands of the instance, marked retrieved (getCommands)."""
    hid = _harvester_id(params)
    n = as_int(params, "n_commands")
    if not 0 < n <= MAX_COMMANDS:
        raise BadRequest(f"must be between 1 and {MAX_COMMANDS}, got {n}", field="n_commands")
    async with _pool(request).connection() as conn:
        return envelope(True, "", await store.acquire_commands(conn, hid, n))


@_v1
async def acknowledge_commands(request: web.Request, params: dict[str, Any]) -> web.Response:
    command_ids = [to_int(i, f"command_ids[{n}]") for n, i in enumerate(_list(params, "command_ids"))]
    async with _pool(request).connection() as conn:
        await store.acknowledge_commands(conn, command_ids)
    return envelope(True)


@_v1
async def get_resource_types(request: web.Request, params: dict[str, Any]) -> web.Response:
    return envelope(True, "", RESOURCE_TYPES)


@_v1
async def active_job_stats_by_site(request: web.Request, params: dict[str, Any]) -> web.Response:
    async with _pool(request).connection() as conn:
        return envelope(True, "", await harvester_queries.active_job_stats_by_site(conn))


@_v1
async def active_job_detailed_stats_by_site(request: web.Request, params: dict[str, Any]) -> web.Response:
    async with _pool(request).connection() as conn:
        return envelope(True, "", await harvester_queries.active_job_detailed_stats_by_site(conn))


ROUTES: list[tuple[tuple[str, ...], str, Handler]] = [
    (("POST",), "harvester/heartbeat", heartbeat),
    (("POST",), "harvester/update_workers", update_workers),
    (("GET",), "harvester/get_current_worker_id", get_current_worker_id),
    (("POST",), "harvester/report_worker_statistics", report_worker_statistics),
    (("GET",), "harvester/get_worker_statistics", get_worker_statistics),
    (("POST",), "harvester/update_service_metrics", update_service_metrics),
    (("POST",), "harvester/add_dialogs", add_dialogs),
    (("POST",), "harvester/acquire_commands", acquire_commands),
    (("POST",), "harvester/acknowledge_commands", acknowledge_commands),
    (("GET",), "metaconfig/get_resource_types", get_resource_types),
    (("GET",), "statistics/active_job_stats_by_site", active_job_stats_by_site),
    (("GET",), "statistics/active_job_detailed_stats_by_site", active_job_detailed_stats_by_site),
]


def setup(app: web.Application) -> None:
    for methods, path, handler in ROUTES:
        for method in methods:
            app.router.add_route(method, f"/api/v1/{path}", handler)
