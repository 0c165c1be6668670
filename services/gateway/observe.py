"""The gateway's metrics: request latency by route and status (a middleware), ``/metrics`` on the
gateway's own port, and its database pool's use (read when scraped). Metric names live in core.metrics."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core import metrics


def route_of(request: web.Request) -> str:
    """The route's pattern (``/api/v1/job/{id}``), never the raw path: one time series per route."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


#: (resource, method, status) → its histogram child: ``labels()`` validates and looks up on every call
_CHILDREN: dict[tuple[Any, str, int], Any] = {}


def _latency(request: web.Request, status: int) -> Any:
    key = (request.match_info.route.resource, request.method, status)
    child = _CHILDREN.get(key)
    if child is None:
        if len(_CHILDREN) > 10_000:   # bounded: routes × methods × statuses is small; never grow without end
            _CHILDREN.clear()
        child = _CHILDREN[key] = metrics.HTTP_LATENCY.labels(route_of(request), request.method, str(status))
    return child


@web.middleware
async def http_metrics(request: web.Request, handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        _latency(request, status).observe(time.monotonic() - started)


async def serve_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app.get(EXPOSITION) or metrics.EXPOSED)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


#: what /metrics shows when it is not this process's registry (several gateway processes: workers.py)
EXPOSITION: web.AppKey[Any] = web.AppKey("pandaes.exposition", object)


def setup(app: web.Application, pool_name: str = "gateway", metrics_dir: str | None = None) -> None:
    """Add /metrics and report the backend pool once it is open; with ``metrics_dir`` (one of several
    processes on the port, in multiprocess mode) /metrics shows all of them."""
    app.router.add_get("/metrics", serve_metrics)
    if metrics_dir:
        app[EXPOSITION] = metrics.SharedAcrossProcesses(metrics_dir)

    async def watch(app: web.Application) -> None:
        pool = getattr(app["backend"], "pool", None)
        if pool is not None:
            metrics.watch_pool(pool_name, pool.get_stats)
        claims = getattr(app["backend"], "claim_pool", None)   # getJob's claims ([gateway] claim_pool_size)
        if claims is not None:
            metrics.watch_pool(f"{pool_name}-claims", claims.get_stats)

    app.on_startup.append(watch)
