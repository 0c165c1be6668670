"""The monitor's kill and retry buttons and log links: the gateway's one cross-origin door
(services/gateway/cors.py) and the page's sign-in box (services/monitor/pages.py). No infrastructure: an
in-process aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core import config
from services.gateway import cors
from services.monitor import app as monitor_app
from services.monitor import pages

MONITOR = "http://127.0.0.1:25090"


def test_allowed_origin_is_the_monitor_unless_configured():
    assert cors.allowed_origin(config.load({})) == MONITOR
    assert cors.allowed_origin(config.load({"PANDAES_MONITOR_PORT": "8123"})) == "http://127.0.0.1:8123"
    cfg = config.load({"PANDAES_GATEWAY_MONITOR_ORIGIN": "https://monitor.example.org/"})
    assert cors.allowed_origin(cfg) == "https://monitor.example.org"
    assert cors.allowed_origin(config.load({"PANDAES_GATEWAY_MONITOR_ORIGIN": "none"})) is None
    assert not cors.is_cross_origin_call(MONITOR, None, "/api/v1/job/kill")


def test_monitor_sends_the_kill_to_the_configured_gateway():
    assert monitor_app.gateway_url(config.load({"PANDAES_HTTP_PORT": "9001"})) == "http://127.0.0.1:9001"
    cfg = config.load({"PANDAES_MONITOR_GATEWAY_URL": "https://panda.example.org/"})
    assert monitor_app.gateway_url(cfg) == "https://panda.example.org"


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"origin": request.headers.get("Origin"),
                              "auth": request.headers.get("Authorization")})


async def _exchange() -> dict[str, tuple[int, dict, dict | None]]:
    app = web.Application(middlewares=[cors.monitor_origin])
    app["cfg"] = config.load({})
    cors.setup(app)
    app.router.add_post("/api/v1/job/kill", _echo)
    app.router.add_post("/api/v1/job/submit", _echo)
    app.router.add_post("/api/v1/job/retry", _echo)
    app.router.add_get("/cache/{name}", _echo)
    app.router.add_post("/cache/{name}", _echo)
    out = {}
    async with TestClient(TestServer(app)) as client:
        async def call(name: str, method: str, path: str, origin: str) -> None:
            headers = {"Origin": origin, "Authorization": "Bearer t"}
            if method == "OPTIONS":
                headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
                           "Access-Control-Request-Headers": "authorization,content-type"}
            async with client.request(method, path, headers=headers) as resp:
                body = await resp.json() if resp.status == 200 else None
                out[name] = (resp.status, dict(resp.headers), body)

        await call("preflight", "OPTIONS", "/api/v1/job/kill", MONITOR)
        await call("preflight-other", "OPTIONS", "/api/v1/job/kill", "https://evil.example")
        await call("preflight-submit", "OPTIONS", "/api/v1/job/submit", MONITOR)
        await call("kill", "POST", "/api/v1/job/kill", MONITOR)
        await call("kill-other", "POST", "/api/v1/job/kill", "https://evil.example")
        await call("submit", "POST", "/api/v1/job/submit", MONITOR)
        await call("vo", "POST", "/api/v1/job/kill", "atlas")
        await call("retry", "POST", "/api/v1/job/retry", MONITOR)
        await call("log", "GET", "/cache/log.1.txt", MONITOR)
        await call("log-other", "GET", "/cache/log.1.txt", "https://evil.example")
        await call("cache-post", "POST", "/cache/log.1.txt", MONITOR)
    return out


def test_only_the_monitor_origin_may_call_kill_across_origins():
    r = asyncio.run(_exchange())
    status, headers, _ = r["preflight"]
    assert status == 204 and headers["Access-Control-Allow-Origin"] == MONITOR
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in headers          # bearer tokens only, never cookies
    for name in ("preflight-other", "preflight-submit"):
        assert r[name][0] == 405 and "Access-Control-Allow-Origin" not in r[name][1], name
    status, headers, body = r["kill"]
    assert status == 200 and headers["Access-Control-Allow-Origin"] == MONITOR
    assert body == {"origin": None, "auth": "Bearer t"}    # the browser's origin is not a PanDA VO for the gate
    for name in ("retry", "log"):     # the retry button and the log links: the same door, the same rules
        status, headers, body = r[name]
        assert status == 200 and headers["Access-Control-Allow-Origin"] == MONITOR and body["origin"] is None, name
    for name, origin in (("kill-other", "https://evil.example"), ("submit", MONITOR), ("vo", "atlas"),
                         ("log-other", "https://evil.example"), ("cache-post", MONITOR)):
        status, headers, body = r[name]
        assert "Access-Control-Allow-Origin" not in headers and body["origin"] == origin, name


def _history() -> list[dict]:
    return [{"seq": 1, "time": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "actor": "user:a", "type": "submitted",
             "action": "submit", "from_state": "new", "to_state": "defined", "body": {"type": "submitted"}}]


def test_kill_box_on_live_jobs_only_and_the_token_never_in_a_form():
    html = pages.job_page(7, {"status": "activated", "spec": {}}, _history(), None, None,
                          gateway='http://gw:1/"><script>')
    assert 'id="actions"' in html and 'data-pandaid="7"' in html and 'data-gateway="http://gw:1/&quot;&gt;' in html
    box = html[html.index('id="actions"'):html.index("</div>", html.index('id="actions"'))]
    assert "<form" not in box and 'type="password"' in box     # no form: the token is never submitted here
    assert 'id="kill"' in box and 'id="retry"' not in box
    for state in ("finished", "cancelled"):
        assert 'id="actions"' not in pages.job_page(7, {"status": state, "spec": {}}, _history(), None, None,
                                                    gateway="http://gw:1")
    assert 'id="actions"' not in pages.job_page(7, {"status": "activated", "spec": {}}, _history(), None, None)


def test_retry_button_on_a_failed_job_until_it_was_retried():
    failed = pages.job_page(7, {"status": "failed", "spec": {}}, _history(), None, None, gateway="http://gw:1")
    assert 'id="retry"' in failed and 'id="kill"' not in failed
    jedi = pages.job_page(7, {"status": "failed", "spec": {"jediTaskID": 9}}, _history(), None, None,
                          gateway="http://gw:1")
    assert 'id="retry"' not in jedi                # JEDI makes the next attempt of its jobs
    marked = {"status": "failed", "spec": {"taskBufferErrorCode": 106}}
    history = [*_history(), {**_history()[0], "seq": 2, "type": "updated", "action": "mark_retried",
                             "from_state": "failed", "to_state": "failed",
                             "body": {"type": "updated", "reason": "retried as 8 by user:alice"}}]
    html = pages.job_page(7, marked, history, None, None, gateway="http://gw:1")
    assert 'id="retry"' not in html and '<a id="retried-as" href="/job/8">8</a>' in html


def test_log_links_to_the_gateways_file_cache():
    html = pages.job_page(7, {"status": "finished", "spec": {}}, _history(), None, None, gateway="http://gw:1",
                          logs=["log.7.txt"])
    assert '<a class="log" href="http://gw:1/cache/log.7.txt" data-name="log.7.txt">' in html
    assert 'id="actions"' in html and 'id="kill"' not in html      # signed in, the links use the token
    assert 'id="nologs"' in pages.job_page(7, {"status": "finished", "spec": {}}, _history(), None, None,
                                           gateway="http://gw:1")


def test_only_uploaded_log_files_are_linked(tmp_path):
    from services.gateway import cache

    cfg = config.load({"PANDAES_STATE_DIR": str(tmp_path)})
    cache.cache_path(cfg).mkdir(parents=True)
    (cache.cache_path(cfg) / "log.7.txt").write_text("the pilot's log")
    assert cache.uploaded(cfg, ["log.7.txt", "log.8.txt", "../log.7.txt", ".owner-log.7.txt"]) == ["log.7.txt"]
