"""The one cross-origin door of the gateway: the monitor's job page calls the gateway from the browser with
the user's own bearer token — its kill and retry buttons (``/api/v1/job/kill``, ``/api/v1/job/retry``) and
its log links (a GET of ``/cache/<file>``, readable by any signed-in user anyway) — so the gateway must let
that one origin (``[gateway] monitor_origin``) make those calls. Nothing else is opened: other origins and
other paths get no CORS headers (the browser then keeps their answers from the page), and no cookies are
ever accepted.

A browser always sends ``Origin: <scheme>://<host>:<port>`` and a script cannot change it, while PanDA's
clients use the same header for their VO (``auth/oidc.py``). For the allowed origin the header is taken
off before the gate looks, so the token's issuer says which VO the caller belongs to.
"""

from __future__ import annotations

from aiohttp import web

from core.config import Config

#: the paths a browser on the monitor's origin may call (POST, with Authorization and a JSON body)
PATHS = frozenset({"/api/v1/job/kill", "/api/v1/job/retry"})
#: and the files it may read (GET, with Authorization): uploaded files and logs of the file cache
READ_PREFIX = "/cache/"
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


def allowed_origin(cfg: Config) -> str | None:
    """``[gateway] monitor_origin``; "" is the monitor's own address, "none" turns cross-origin calls off."""
    configured = cfg.gateway.monitor_origin.strip()
    if configured.lower() == "none":
        return None
    if configured:
        return configured.rstrip("/")
    return f"http://{cfg.monitor.host}:{int(cfg.monitor.port)}"


def is_cross_origin_call(origin: str | None, allowed: str | None, path: str, method: str = "POST") -> bool:
    """Whether this request is one the monitor's page may make (``OPTIONS``: the browser's preflight)."""
    if origin is None or allowed is None or origin != allowed:
        return False
    reads = path.startswith(READ_PREFIX)
    return {"POST": path in PATHS, "GET": reads, "HEAD": reads, "OPTIONS": path in PATHS or reads}.get(method, False)


@web.middleware
async def monitor_origin(request: web.Request, handler) -> web.StreamResponse:
    allowed = request.app["cors_origin"]
    if not is_cross_origin_call(request.headers.get("Origin"), allowed, request.path, request.method):
        return await handler(request)
    cors = {"Access-Control-Allow-Origin": allowed, "Vary": "Origin"}
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={**cors, **PREFLIGHT_HEADERS})
    headers = request.headers.copy()
    del headers["Origin"]
    response = await handler(request.clone(headers=headers))
    response.headers.update(cors)
    return response


def setup(app: web.Application) -> None:
    app["cors_origin"] = allowed_origin(app["cfg"])
