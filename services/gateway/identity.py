"""Who is calling: the ONE place that turns a request into a ``Caller`` and an ``actor`` string.

Every command the gateway sends records ``actor`` — ``pilot:<pilotID or node>``, ``user:<DN or token
subject>``, or ``anonymous`` — so ``pandaes history`` shows who asked for each step.

With authentication on (``[auth] enabled``, the default) the name is the principal of the identity the
gate verified (``services/gateway/auth``): never a client-supplied field. Only with auth explicitly off
does the gateway fall back to what the request claims (``TrustingAuthenticator``: DN headers, unverified
token claims, pilotID/node), and the gate logs that loudly at start.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from aiohttp import web

from .auth.model import Identity

# Headers a TLS-terminating proxy (Apache mod_ssl / nginx) uses to pass the client certificate's DN.
DN_HEADERS = ("SSL-Client-S-DN", "X-SSL-Client-S-DN", "X-Client-DN")
_PROXY_SUFFIX = re.compile(r"(/CN=(limited proxy|proxy|\d+))+$")


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What the request carries about its sender, before any role is decided."""

    dn: str | None = None
    token_subject: str | None = None
    token_claims: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    origin: str | None = None      # the OIDC "Origin" header: <vo>[:<role>]
    verified: bool = False         # True only once an Authenticator has really checked the credential

    @property
    def principal(self) -> str | None:
        return self.dn or self.token_subject


@dataclasses.dataclass(frozen=True)
class Caller:
    kind: Literal["anonymous", "pilot", "user"]
    name: str
    credentials: Credentials
    identity: Identity | None = None     # the verified identity (None only with auth off, or anonymous)

    @property
    def actor(self) -> str:
        return "anonymous" if self.kind == "anonymous" else f"{self.kind}:{self.name}"


class Authenticator(Protocol):
    def credentials(self, request: web.Request) -> Credentials: ...


def bare_dn(dn: str) -> str:
    """A user's DN without the proxy suffixes (PanDA's get_bare_dn), so a proxy and its owner match."""
    return _PROXY_SUFFIX.sub("", dn.strip())


def _token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, not verified (the seam above decides whether it is trusted)."""
    parts = token.split(".")
    if len(parts) < 2:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


class TrustingAuthenticator:
    """Reads DN headers and bearer-token claims at face value (no verification yet)."""

    def credentials(self, request: web.Request) -> Credentials:
        dn = next((request.headers[h] for h in DN_HEADERS if request.headers.get(h)), None)
        claims: dict[str, Any] = {}
        subject = None
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            claims = _token_claims(auth[7:].strip())
            value = claims.get("sub") or claims.get("name")
            subject = str(value) if value else None
        return Credentials(dn=bare_dn(dn) if dn else None, token_subject=subject, token_claims=claims,
                           origin=request.headers.get("Origin"))


def credentials_of(request: web.Request) -> Credentials:
    cached = request.get("credentials")
    ident: Identity | None = request.get("identity")
    if cached is None and ident is not None:   # verified by the gate: what every caller of this reads
        cached = Credentials(dn=ident.principal if ident.method == "x509" else None,
                             token_subject=ident.principal if ident.method == "oidc" else None,
                             origin=request.headers.get("Origin"), verified=True)
        request["credentials"] = cached
    if cached is None:
        auth: Authenticator = request.app.get("authenticator") or TrustingAuthenticator()
        cached = auth.credentials(request)
        request["credentials"] = cached
    return cached


def _field(fields: Mapping[str, Any] | None, *names: str) -> str | None:
    for name in names:
        value = (fields or {}).get(name)
        if value not in (None, "", "NULL", "unknown"):
            return str(value)
    return None


def pilot(request: web.Request, fields: Mapping[str, Any] | None = None) -> Caller:
    """A pilot: its verified identity; with auth off, its pilotID (updateJob) or node (getJob)."""
    creds = credentials_of(request)
    ident: Identity | None = request.get("identity")
    if ident is not None:
        return Caller("pilot", ident.principal[:200], creds, ident)
    name = _field(fields, "pilotID", "pilot_id", "node", "worker_id") or creds.principal
    if not name:
        return Caller("anonymous", "anonymous", creds)
    return Caller("pilot", name[:200], creds)


def pilot_of_items(request: web.Request) -> Callable[[Mapping[str, Any]], Caller]:
    """``pilot`` for each item of a bulk (``update_jobs_bulk``). With a verified identity no item field counts,
    so every item's caller is the same and is built once per request instead of once per item (a Harvester
    bulk has 100 items: a frozen Caller per item was 4 % of the gateway's samples); with auth off each
    item names its own pilot."""
    if request.get("identity") is not None:
        caller = pilot(request)
        return lambda _fields: caller
    return lambda fields: pilot(request, fields)


def user(request: web.Request) -> Caller:
    """A user or operator: its verified identity; with auth off, the DN or token subject it claims."""
    creds = credentials_of(request)
    ident: Identity | None = request.get("identity")
    if ident is not None:
        return Caller("user", ident.principal[:200], creds, ident)
    if not creds.principal:
        return Caller("anonymous", "anonymous", creds)
    return Caller("user", creds.principal[:200], creds)
