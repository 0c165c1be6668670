"""The gate: every request is identified once (x509 from a trusted proxy, else an OIDC bearer token) and
checked against ``policy.ENDPOINTS`` before its handler runs. Refusals are 401/403 with a message naming
what was missing (a PanDA StatusCode 60 JSON body on the legacy pilot API), and they are counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from aiohttp import web

from core.config import Config

from . import dev, policy
from .model import Authenticator, Identity, Refused
from .oidc import Issuer, JwksCache, OidcAuthenticator, parse_issuers
from .roles import parse_role_map
from .x509 import ProxyX509Authenticator

log = logging.getLogger(__name__)
SC_ROLE = 60        # PanDA's StatusCode for a missing role/permission (jobdispatcher Protocol)
NO_CREDENTIALS = ("no credentials: send 'Authorization: Bearer <token>' with 'Origin: <vo>', or a client "
                  "certificate through a trusted proxy")


class Gate:
    def __init__(self, cfg: Config, authenticators: list[Authenticator] | None = None):
        a = cfg.auth
        self.enabled = bool(a.enabled)
        self.refusals: collections.Counter[str] = collections.Counter()
        role_map = parse_role_map(a.role_map)
        issuers = parse_issuers(a.issuers, float(a.jwks_cache_seconds))
        if a.dev_issuer:
            async def local_jwks() -> dict[str, Any]:
                return dev.jwks(cfg)
            issuers.append(Issuer(a.dev_vo, dev.ISSUER, dev.AUDIENCE,
                                  JwksCache(local_jwks, float(a.jwks_cache_seconds))))
        self.x509 = ProxyX509Authenticator(a.trusted_proxies, a.dn_headers, a.fqans_header, role_map,
                                           a.default_roles)
        self.oidc = OidcAuthenticator(issuers, a.groups_claim, role_map, a.default_roles, float(a.leeway))
        self.authenticators: list[Authenticator] = authenticators or [self.x509, self.oidc]
        if not self.enabled:
            log.warning("AUTHENTICATION IS OFF ([auth] enabled = false): every caller may do everything, "
                        "and actors are what clients claim. Never run a shared gateway like this.")
        elif a.dev_issuer:
            log.warning("the development token issuer is trusted ([auth] dev_issuer = true): whoever can read "
                        "%s can act as anyone; set dev_issuer = false in production", dev.auth_dir(cfg))

    async def warm(self, timeout_s: float) -> bool:
        """Every trusted issuer's signing keys fetched before the gateway listens, waiting at most ``timeout_s``
        (an issuer that does not answer must not keep the gateway from serving: its keys are then fetched by the
        first token that needs them). Whether all were fetched."""
        issuers = list(self.oidc.by_iss.values()) if self.enabled else []
        if not issuers:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                fetched = await asyncio.gather(*(i.keys.prefetch() for i in issuers))
        except TimeoutError:
            log.warning("the signing keys of the trusted issuers were not all fetched within %.0f s: the first "
                        "tokens of those issuers fetch them", timeout_s)
            return False
        return all(fetched)

    async def identify(self, request: web.Request) -> Identity | None:
        for auth in self.authenticators:
            ident = await auth.identify(request)
            if ident is not None:
                return ident
        return None

    def refuse(self, request: web.Request, exc: Refused) -> web.Response:
        self.refusals[exc.kind] += 1
        log.info("refused %s %s from %s: %s", request.method, request.path, request.remote, exc.missing)
        return refusal(request, exc)


def refusal(request: web.Request, exc: Refused) -> web.Response:
    """The refusal in the caller's protocol: v1 envelope, legacy StatusCode, or a plain JSON error."""
    if request.path.startswith("/api/"):
        return web.json_response({"success": False, "message": exc.missing, "data": None}, status=exc.status)
    if request.path.startswith("/server/panda/"):
        return web.json_response({"StatusCode": SC_ROLE, "errorDialog": exc.missing}, status=exc.status)
    return web.json_response({"error": exc.missing}, status=exc.status)


@web.middleware
async def authenticate(request: web.Request, handler) -> web.StreamResponse:
    gate: Gate = request.app["gate"]
    if not gate.enabled:
        return await handler(request)
    needed = policy.endpoint_roles(request.path)
    try:
        ident = await gate.identify(request)
    except Refused as exc:
        if needed is policy.PUBLIC:
            return await handler(request)
        return gate.refuse(request, exc)
    request["identity"] = ident
    if needed is policy.PUBLIC:
        return await handler(request)
    if ident is None:
        return gate.refuse(request, Refused(401, NO_CREDENTIALS))
    if needed is not policy.AUTHENTICATED and not (ident.roles & needed):
        return gate.refuse(request, Refused(
            403, f"missing role: {request.path} needs one of {', '.join(sorted(needed))}; "
                 f"{ident.principal} has {', '.join(sorted(ident.roles)) or 'none'}", kind="role"))
    return await handler(request)
