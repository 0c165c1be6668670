"""Builds the gateway's aiohttp Application and runs it as the ``gateway`` component.

One process = one event loop, one async database pool, one Kafka producer and one ``OutcomeWaiter``.
Nothing else is kept between requests (the queuedata cache is a few seconds of memoisation), so copies
can run side by side on other ports or hosts.

Error policy (the middleware): a handler never answers 500. Routing errors become 404/405 with a JSON
body naming the problem; a value the database refuses (psycopg's DataError) is a 400; an unexpected
exception is logged with its traceback and answered 503 — JSON envelope on /api/v1, plain text
elsewhere so that pilot3 (which retries only on non-JSON replies) sends its update again rather than
losing it.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import psycopg
from aiohttp import web

from core import collector, eventloop
from core.config import Config
from services.gateway.dispatcher import Dispatcher
from services.listen import start_site

from . import access, cache, cors, creds, events, harvester, jedilog, legacy, observe, openapi, queues, retry, tasks, v1
from .auth import dev, tls
from .auth.gate import Gate, authenticate
from .backend import Backend
from .bindings import Bindings
from .identity import TrustingAuthenticator

log = logging.getLogger(__name__)
KEYS_WARM_S = 5.0   # how long a starting gateway waits for the trusted issuers' signing keys (Gate.warm)


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    api = request.path.startswith("/api/")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason}: {request.method} {request.path}"
        if exc.status == 413:
            message = f"request body too large (limit {request.app['cfg'].gateway.max_body_bytes} bytes)"
        # a 405 keeps its Allow header (RFC 9110: the methods the resource does support)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        if api:
            response = v1.envelope(False, message, status=exc.status)
        else:
            response = web.json_response({"StatusCode": 50, "errorDialog": message}, status=exc.status)
        if headers:
            response.headers.update(headers)
        return response
    except asyncio.CancelledError:
        raise
    except psycopg.DataError as exc:
        # a value the database refused (a NUL, a number out of its column's range …) that no check at the
        # edge caught: the request's fault, so a 4xx; logged, because the check belongs at the edge
        log.warning("the database refused a value of %s %s: %s", request.method, request.path, exc)
        message = f"a value cannot be stored: {exc.diag.message_primary or type(exc).__name__}"[:300]
        if api:
            return v1.envelope(False, message, status=400)
        return web.json_response({"StatusCode": 50, "errorDialog": message}, status=400)
    except RecursionError:
        # only input nests that deeply (JSON in a form value, a list of lists …): the client's mistake
        message = "request nested too deeply"
        if api:
            return v1.envelope(False, message, status=400)
        return web.json_response({"StatusCode": 50, "errorDialog": message}, status=400)
    except Exception as exc:
        log.exception("unhandled error in %s %s", request.method, request.path)
        if api:
            return v1.envelope(False, f"temporary server error, try again: {type(exc).__name__}", status=503)
        return web.Response(status=503, text=f"temporary server error, try again: {type(exc).__name__}\n")


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app["openapi"])


async def serve_dev_jwks(request: web.Request) -> web.Response:
    """The dev issuer's public keys, for anyone verifying its tokens outside this process."""
    return web.json_response(dev.jwks(request.app["cfg"]))


def build_app(cfg: Config, backend: Backend | None = None, metrics_dir: str | None = None) -> web.Application:
    # auto_decompress off: params.read_params undoes Content-Encoding itself and answers a corrupt body 400
    app = web.Application(client_max_size=int(cfg.gateway.max_body_bytes),
                          middlewares=[observe.http_metrics, cors.monitor_origin, errors, authenticate],
                          handler_args={"auto_decompress": False})
    app["cfg"] = cfg
    app["backend"] = backend or Backend(cfg)
    app["authenticator"] = TrustingAuthenticator()   # what clients claim: used only with [auth] enabled = false
    app["gate"] = Gate(cfg)
    app[access.BINDINGS] = Bindings(int(cfg.gateway.binding_memory))
    app["queue_cache"] = {}
    app["queue_locks"] = {}
    app["queue_refreshing"] = {}
    app["openapi"] = openapi.document()
    cors.setup(app)

    async def start(app: web.Application) -> None:
        await app["gate"].warm(KEYS_WARM_S)
        await app["backend"].start()
        backend = app["backend"]
        app["dispatcher"] = Dispatcher(cfg, backend.pool, backend.ask, claim_pool=getattr(backend, "claim_pool", None),
                                       ask_now=getattr(backend, "ask_now", None))

    async def stop(app: web.Application) -> None:
        dispatcher = app.get("dispatcher")
        if dispatcher is not None:
            await dispatcher.drain()
            log.info("gateway stopping: %s", dispatcher.summary())
        await queues.stop_refreshing(app)
        await app["backend"].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    observe.setup(app, metrics_dir=metrics_dir)
    legacy.setup(app)
    v1.setup(app)
    retry.setup(app)
    harvester.setup(app)
    events.setup(app)
    tasks.setup(app)
    creds.setup(app)
    jedilog.setup(app)
    cache.setup(app)
    app.router.add_get("/api/v1/openapi.json", serve_openapi)
    if cfg.auth.dev_issuer:
        app.router.add_get(dev.JWKS_PATH, serve_dev_jwks)
    return app


async def serve(cfg: Config, stop: threading.Event, *, host: str | None = None, port: int | None = None,
                ready: threading.Event | None = None, reuse_port: bool = False,
                metrics_dir: str | None = None) -> None:
    """Serve until ``stop`` is set; ``ready`` is set once the port accepts requests. ``reuse_port``: one of
    several processes on the port (workers.py), whose metrics are in multiprocess folder ``metrics_dir``."""
    app = build_app(cfg, metrics_dir=metrics_dir)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host = host or cfg.http.host
    port = int(port if port is not None else cfg.http.port)
    ssl_context = tls.server_context(cfg)
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None,
                       ssl_context=ssl_context)
    try:
        await start_site(site, "gateway", host, port, "[http] port (PANDAES_HTTP_PORT)")
        collector.settle()   # what serving keeps for its life is built: out of the collector's sight
        log.info("gateway listening on %s://%s:%d", "https" if ssl_context else "http", host, port)
        if ready is not None:
            ready.set()
        await eventloop.until_set(stop)   # no look every 0.2 s while idle
    finally:
        await runner.cleanup()


def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run gateway`: ``[gateway] processes`` gateway processes on [http] host:port (one: this one)."""
    n = int(cfg.gateway.processes)
    if n > 1:
        from . import workers

        workers.run(cfg, stop, n)
    else:
        eventloop.run(serve(cfg, stop))
