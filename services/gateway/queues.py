"""Queue configuration for pilots: ``/cache/schedconfig/<queue>.all.json`` and what getJob needs of it.

The real configuration belongs to ``services.sitedata.sites`` (written separately: a sites/queues table).
Until that module and its table exist, queues named in ``[gateway] default_queues`` (``LOCAL`` by
default) are served with a built-in online queue that carries every key pilot3 reads (PANDA-CLIENTS
§3.3): ``state: ACTIVE``, the ``mv`` copytool for stage-in/out and logs. Lookups are cached for a few
seconds because a pilot reads its queuedata once per job and getJob consults the queue status.
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
    the others wait for its result instead of each taking a database connection and a worker thread."""
    cache: dict[str, tuple[float, Any]] = app["queue_cache"]
    hit = cache.get(name)
    if hit and hit[0] > time.monotonic():
        return hit[1]
    locks: dict[str, asyncio.Lock] = app["queue_locks"]
    lock = locks.setdefault(name, asyncio.Lock())
    async with lock:
        hit = cache.get(name)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        data = await _from_sites(app, "queuedata", name)
        if data is None and name in list(app["cfg"].gateway.default_queues):
            data = default_queuedata(name)
        cache[name] = (time.monotonic() + _TTL, data)
    if len(locks) > 10000:   # names are client-chosen: keep the table bounded
        locks.clear()
    return data


async def ddmendpoints(app: web.Application) -> dict[str, Any]:
    """Storage endpoints (CRIC ddmendpoints format); ``{}`` suits the mv copytool with --output-dir."""
    data = await _from_sites(app, "ddmendpoints")
    return data if isinstance(data, dict) else {}
