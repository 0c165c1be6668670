"""Queue configuration for pilots: ``/cache/schedconfig/<queue>.all.json`` and what getJob needs of it.

The real configuration belongs to ``services.sitedata.sites`` (written separately: a sites/queues table).
Until that module and its table exist, queues named in ``[gateway] default_queues`` (``LOCAL`` by
default) are served with a built-in online queue that carries every key pilot3 reads (PANDA-CLIENTS
§3.3): ``state: ACTIVE``, the ``mv`` copytool for stage-in/out and logs. Lookups are cached for a few
seconds (and refreshed behind the requests after that) because a pilot reads its queuedata once per job and
getJob consults the queue status.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from typing import Any

from aiohttp import web

from core import db

log = logging.getLogger(__name__)
_TTL = 10.0
_MAX_NAMES = 10_000   # queue names held (cache, locks): they come from clients


def default_queuedata(name: str) -> dict[str, Any]:
    """An online production queue with the pilot3 keys; ``mv`` copytool, no storage endpoints needed."""
    return {
        "nickname": name, "panda_resource": name, "atlas_site": name, "name": name, "siteid": name,
        "state": "ACTIVE", "status": "online", "type": "production", "resource_type": "SCORE",
        "maxwdir": 10000, "maxrss": 2000, "maxtime": 0, "corecount": 1, "timefloor": 0, "pledgedcpu": 0,
        "is_cvmfs": False, "copytools": {"mv": {"setup": ""}},
        "acopytools": {"pr": ["mv"], "pw": ["mv"], "pl": ["mv"]}, "astorages": {}, "aprotocols": {},
        "params": {}, "catchall": "", "container_type": "", "container_options": "",
        "direct_access_lan": False, "direct_access_wan": False, "cmtconfig": "", "default_ddm_endpoint": "",
    }


def _sites_function(name: str):
    try:
        module = importlib.import_module("services.sitedata.sites")
    except ModuleNotFoundError as exc:
        if exc.name in ("services.sitedata.sites",):
            return None
        raise
    return getattr(module, name, None)


def _lookup_sync(cfg, fn, name: str) -> Any:
    with db.connect(cfg, autocommit=True) as conn:
        return fn(conn, name) if name is not None else fn(conn)


async def _from_sites(app: web.Application, function: str, *args: str) -> Any:
    """Call ``services.sitedata.sites.<function>(conn, *args)``; None if the module, function or table is missing."""
    fn = _sites_function(function)
    if fn is None:
        return None
    try:
        if inspect.iscoroutinefunction(fn):
            async with app["backend"].pool.connection() as conn:
                return await fn(conn, *args)
        return await asyncio.to_thread(_lookup_sync, app["cfg"], fn, args[0] if args else None)
    except Exception as exc:  # e.g. the sites table is not migrated yet: fall back, do not fail the pilot
        log.debug("services.sitedata.sites.%s unavailable: %s", function, exc)
        return None


async def queuedata(app: web.Application, name: str) -> dict[str, Any] | None:
    """The queue's configuration, or None if the queue is unknown.

    Single-flight per queue: when hundreds of pilots of one queue arrive together, one lookup runs and
    the others wait for its result instead of each taking a database connection and a worker thread. Only a
    queue's first lookup is waited for: past ``_TTL`` the answer held is served while one lookup refreshes it
    behind (``_refresh_behind``)."""
    cache: dict[str, tuple[float, Any]] = app["queue_cache"]
    hit = cache.get(name)
    if hit:
        if hit[0] <= time.monotonic():
            _refresh_behind(app, name)
        return hit[1]
    locks: dict[str, asyncio.Lock] = app["queue_locks"]
    lock = locks.setdefault(name, asyncio.Lock())
    async with lock:
        hit = cache.get(name)
        if hit:
            return hit[1]
        data = await _lookup(app, name)
        _keep(cache, name, data)
    if len(locks) > _MAX_NAMES:   # names are client-chosen: keep the table bounded
        locks.clear()
    return data


async def _lookup(app: web.Application, name: str) -> dict[str, Any] | None:
    data = await _from_sites(app, "queuedata", name)
    if data is None and name in list(app["cfg"].gateway.default_queues):
        data = default_queuedata(name)
    return data


def _keep(cache: dict[str, tuple[float, Any]], name: str, data: Any) -> None:
    now = time.monotonic()
    if len(cache) >= _MAX_NAMES:   # client-chosen names: what has not been asked for since its lookup goes first
        for stale in [k for k, (until, _) in cache.items() if until <= now] or list(cache):
            del cache[stale]
    cache[name] = (now + _TTL, data)


def _refresh_behind(app: web.Application, name: str) -> None:
    """One lookup of ``name`` started behind the requests that keep being answered from the cache.

    Why: with every lookup waited for, each queue's cache entry ran out every ``_TTL`` seconds and the getJob
    that found it so, and every getJob of that queue arriving meanwhile, waited for a new database session and
    its query (at 500 getJob/s, a few requests of every 10 s). A queue changed by its operator is seen one
    lookup later, as before within about ``_TTL`` seconds."""
    refreshing: dict[str, asyncio.Task] = app["queue_refreshing"]
    if name in refreshing:
        return

    async def refresh() -> None:
        try:
            _keep(app["queue_cache"], name, await _lookup(app, name))
        finally:
            refreshing.pop(name, None)

    refreshing[name] = asyncio.get_running_loop().create_task(refresh(), name=f"queuedata {name}")


async def stop_refreshing(app: web.Application) -> None:
    """Cancel the lookups still under way (the gateway is stopping)."""
    tasks = list(app["queue_refreshing"].values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    app["queue_refreshing"].clear()   # one cancelled before it ran never reached its own ``finally``


async def ddmendpoints(app: web.Application) -> dict[str, Any]:
    """Storage endpoints (CRIC ddmendpoints format); ``{}`` suits the mv copytool with --output-dir."""
    data = await _from_sites(app, "ddmendpoints")
    return data if isinstance(data, dict) else {}
