"""The monitor component: a read-only aiohttp app over the projections (``projections.monitor_queries``)
and the archived events, with a live feed from the event log (``live.EventFeed``).

Read-only on purpose: it holds no producer and sends no command, so any number of copies can run beside
the gateway. The job page's kill and retry buttons are sent by the browser straight to the gateway with the
user's own token (the gateway's identity rules decide; services/gateway/cors.py lets this monitor's origin
call it). Its log links point at the gateway's file cache (``/cache/<name>``) for the job's log files that
are there: which ones is asked of the cache's owner (``services.gateway.cache.uploaded``), whose folder
every copy of the gateway, and so the monitor beside them, shares.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from pathlib import Path

import msgspec
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from core import db, eventloop, metrics
from core.config import Config
from core.states import JobStatus
from projections import monitor_queries as mq
from projections.fold import JobView
from schemas.messages import decode_event
from services.gateway import cache
from services.gateway.observe import http_metrics
from services.listen import start_site

from . import pages
from .live import EventFeed

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
HTML = "text/html"


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def job_filter(params) -> mq.JobFilter:
    """The jobs page's query string → JobFilter (400 on a malformed value)."""
    try:
        return mq.JobFilter(
            status=params.get("status") or None, queue=params.get("queue") or None,
            owner=params.get("owner") or None, task=int(params["task"]) if params.get("task") else None,
            label=params.get("label") or None, error=params.get("error") or None,
            since=_time(params.get("since")), until=_time(params.get("until")),
            sort=params.get("sort") or "pandaid", desc=(params.get("desc") or "1") != "0",
            page=int(params.get("page") or 1), size=int(params.get("size") or 50))
    except (ValueError, KeyError) as exc:
        raise web.HTTPBadRequest(text=f"bad filter: {exc}") from None


def fold_at(history: list[dict], seq: int, partition: int) -> dict | None:
    """The job as it was right after event ``seq``, folded from its archived events (projections.fold)."""
    view = JobView()
    for h in history:
        if h["seq"] > seq:
            break
        view.feed(partition, -1, decode_event(msgspec.json.encode(h["body"])))
    return view.as_dict() if view.last else None


async def jobs(request: web.Request) -> web.Response:
    f = job_filter(request.query)
    started = time.monotonic()
    async with request.app["pool"].connection() as conn:
        try:
            rows, has_next = await mq.jobs_page(conn, f)
            counts = await mq.counts(conn, f)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
    elapsed = (time.monotonic() - started) * 1000
    return web.Response(text=pages.jobs_page(request.query, rows, counts, has_next, elapsed), content_type=HTML)


async def job(request: web.Request) -> web.Response:
    try:
        pandaid = int(request.match_info["id"])
        at = int(request.query["at"]) if request.query.get("at") else None
    except ValueError:
        raise web.HTTPBadRequest(text="PandaID and at must be integers") from None
    async with request.app["pool"].connection() as conn:
        current = await mq.job(conn, pandaid)
        history = await mq.history(conn, pandaid)
        files_now = await mq.files(conn, pandaid)
    if not history and current is None:
        raise web.HTTPNotFound(text=f"no job {pandaid}")
    folded = None
    if at is not None and history:
        at = max(1, min(at, history[-1]["seq"]))
        folded = fold_at(history, at, current["partition"] if current else -1)
    logs = cache.uploaded(request.app["cfg"], [f["lfn"] for f in files_now if f.get("type") == "log" and f.get("lfn")])
    return web.Response(text=pages.job_page(
        pandaid, current, history, at, folded, files_now, request.app["feed"].rejected(pandaid),
        gateway=request.app["gateway_url"], logs=logs), content_type=HTML)


async def job_history(request: web.Request) -> web.Response:
    """The job's events as JSON (the bodies `pandaes history --json` prints)."""
    async with request.app["pool"].connection() as conn:
        history = await mq.history(conn, int(request.match_info["id"]))
    return web.json_response([h["body"] for h in history])


def _at(request: web.Request) -> dt.datetime | None:
    try:
        return _time(request.query.get("at"))
    except ValueError:
        raise web.HTTPBadRequest(text="at: expected an ISO 8601 time, e.g. 2026-01-31T12:00:00") from None


async def queues(request: web.Request) -> web.Response:
    at = _at(request)
    async with request.app["pool"].connection() as conn:
        rows = await (mq.queues_as_of(conn, at) if at else mq.queues(conn))
    return web.Response(text=pages.matrix_page(
        "Queues", rows, "queue", lambda q, s: pages.link(f"/queue/{q}", {}) if s is None else pages.link(
            "/jobs", {"queue": q, "status": s}), prefix=pages.as_of_form("/queues", request.query.get("at"))),
        content_type=HTML)


async def queue(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        hours = max(1, min(int(request.query.get("hours") or 6), 24 * 14))
    except ValueError:
        raise web.HTTPBadRequest(text="hours must be an integer") from None
    bucket = max(60, hours * 3600 // 72)
    now = time.time()
    since = dt.datetime.fromtimestamp(now - hours * 3600, dt.UTC)
    states = [JobStatus.FINISHED.value, JobStatus.FAILED.value]
    async with request.app["pool"].connection() as conn:
        counts = (await mq.queues(conn)).get(name, {})
        series = await mq.throughput(conn, name, states, since, bucket)
        errors = await mq.top_errors(conn, name, JobStatus.FAILED.value)
    plot = pages.bars_svg(series, int(now - hours * 3600), int(now) + 1, bucket)
    return web.Response(text=pages.queue_page(name, counts, plot, hours, errors), content_type=HTML)


async def tasks(request: web.Request) -> web.Response:
    at = _at(request)
    async with request.app["pool"].connection() as conn:
        rows = await (mq.tasks_as_of(conn, at) if at else mq.tasks(conn))
    return web.Response(text=pages.matrix_page(
        "Tasks", rows, "jediTaskID", lambda t, s: pages.link(f"/task/{t}", {}) if s is None else pages.link(
            "/jobs", {"task": t, "status": s}), prefix=pages.as_of_form("/tasks", request.query.get("at"))),
        content_type=HTML)


async def task(request: web.Request) -> web.Response:
    try:
        task_id = int(request.match_info["id"])
    except ValueError:
        raise web.HTTPBadRequest(text="jediTaskID must be an integer") from None
    at = _at(request)
    async with request.app["pool"].connection() as conn:
        counts = await (mq.task_as_of(conn, task_id, at) if at else mq.task(conn, task_id))
    return web.Response(text=pages.task_page(task_id, counts, request.query.get("at")), content_type=HTML)


async def live(request: web.Request) -> web.Response:
    async with request.app["pool"].connection() as conn:
        recent = [pages.recent_row(r) for r in await mq.recent_events(conn, 50)]
    return web.Response(text=pages.live_page(request.query, recent), content_type=HTML)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every new event (optionally of one queue or task) as it is written."""
    queue, task_id = request.query.get("queue") or None, request.query.get("task") or None
    feed: EventFeed = request.app["feed"]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(b": connected\n\n")
    q = feed.subscribe()
    where: dict[int, tuple[str | None, str | None]] = {}   # PandaID → (queue, task) for filtering
    try:
        while True:
            try:
                item = await asyncio.wait_for(q.get(), 15)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if queue or task_id:
                pid = item["PandaID"]
                if "queue" in item or "task" in item:
                    where[pid] = (item.get("queue"), str(item.get("task")))
                if pid not in where:
                    async with request.app["pool"].connection() as conn:
                        row = await mq.job(conn, pid)
                    where[pid] = (row["computing_site"], str(row["jedi_task_id"])) if row else (None, None)
                if (queue and where[pid][0] != queue) or (task_id and where[pid][1] != task_id):
                    continue
            await resp.write(pages.sse(item))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        feed.unsubscribe(q)
    return resp


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/jobs")


def gateway_url(cfg: Config) -> str:
    """Where the browser sends the kill/retry calls and reads logs: [monitor] gateway_url, else [http]'s."""
    if cfg.monitor.gateway_url:
        return cfg.monitor.gateway_url.rstrip("/")
    return f"{'https' if cfg.auth.tls_cert else 'http'}://{cfg.http.host}:{int(cfg.http.port)}"


def build_app(cfg: Config) -> web.Application:
    app = web.Application(middlewares=[http_metrics])
    app["cfg"] = cfg
    app["gateway_url"] = gateway_url(cfg)

    async def start(app: web.Application) -> None:
        app["pool"] = AsyncConnectionPool(cfg.db.url, min_size=1, max_size=int(cfg.monitor.db_pool_size),
                                          open=False, kwargs={"autocommit": True, "options": db.SESSION_OPTIONS})
        await app["pool"].open(wait=True, timeout=30)
        metrics.watch_pool("monitor", app["pool"].get_stats)
        app["feed"] = EventFeed(cfg, asyncio.get_running_loop())
        app["feed"].start()

    async def stop(app: web.Application) -> None:
        await asyncio.to_thread(app["feed"].close)
        await app["pool"].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/", index)
    app.router.add_get("/jobs", jobs)
    app.router.add_get("/job/{id}", job)
    app.router.add_get("/job/{id}/history.json", job_history)
    app.router.add_get("/queues", queues)
    app.router.add_get("/queue/{name}", queue)
    app.router.add_get("/tasks", tasks)
    app.router.add_get("/task/{id}", task)
    app.router.add_get("/live", live)
    app.router.add_get("/events", events)
    app.router.add_static("/static", STATIC)
    return app


async def serve(cfg: Config, stop: threading.Event, *, host: str | None = None, port: int | None = None,
                ready: threading.Event | None = None) -> None:
    """Serve until ``stop`` is set; ``ready`` is set once the port accepts requests and the feed reads."""
    app = build_app(cfg)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    host = host or cfg.monitor.host
    port = int(port if port is not None else cfg.monitor.port)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await start_site(site, "monitor", host, port, "[monitor] port (PANDAES_MONITOR_PORT)")
        log.info("monitor on http://%s:%d", host, port)
        await asyncio.to_thread(app["feed"].ready.wait, 30)
        if ready is not None:
            ready.set()
        await eventloop.until_set(stop)   # no look every 0.2 s while idle
    finally:
        await runner.cleanup()


def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run monitor`: the monitor web UI on [monitor] host:port."""
    asyncio.run(serve(cfg, stop))
