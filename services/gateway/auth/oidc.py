"""OIDC bearer tokens (panda-client ``PANDA_AUTH=oidc``, pilot3 ``PANDA_AUTH_TOKEN``), verified with PyJWT.

A token is believed only if its ``iss`` is a configured issuer, the ``Origin`` header's VO is served by that
issuer, its signature verifies against one of the issuer's keys (JWKS, fetched over HTTP and cached;
a ``kid`` not in the cache triggers one refetch, which is how a key rotation is picked up), its ``aud``
is the issuer's configured audience and ``exp``/``nbf`` hold within a small leeway. Groups from the
configured claim are mapped to PanDA roles (``roles.py``). Only asymmetric algorithms are accepted.

A pilot or client sends the same token with every request; checking its signature again each time was
the largest single cost of a request (docs/performance.md). A verified token is remembered with what it
proved, and a later request with the same token is believed only while everything that can change still
holds: ``exp`` (with the leeway), the Origin's VO, and the very key that verified it still being the
issuer's key for its ``kid`` (a JWKS refresh or rotation makes it verify again; a removed key refuses it).
``iss``, ``aud``, ``nbf``/``iat`` and the signature are properties of the token's bytes and of a moment
already past, so they cannot turn false later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from .model import Identity, Refused
from .roles import roles_of

log = logging.getLogger(__name__)

VERIFIED_MAX = 10_000   # tokens remembered as verified (oldest forgotten first)
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MIN_REFETCH = 10.0      # seconds between two fetches triggered by unknown kids (a flood of made-up kids)

JwksSource = Callable[[], Awaitable[dict[str, Any]]]


def http_jwks(issuer: str, jwks_url: str | None, timeout: float = 10.0) -> JwksSource:
    """The issuer's JWKS over HTTP; without a URL, discovered from its openid-configuration."""
    async def fetch() -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            url = jwks_url
            if not url:
                async with session.get(issuer.rstrip("/") + "/.well-known/openid-configuration") as resp:
                    resp.raise_for_status()
                    url = (await resp.json(content_type=None))["jwks_uri"]
            async with session.get(url) as resp:
                resp.raise_for_status()
                return await resp.json(content_type=None)
    return fetch


class JwksCache:
    """An issuer's signing keys by ``kid``: kept ``max_age`` seconds, refetched once for an unknown kid."""

    def __init__(self, source: JwksSource, max_age: float, min_refetch: float = MIN_REFETCH,
                 clock: Callable[[], float] = time.monotonic):
        self.source, self.max_age, self.min_refetch, self.clock = source, max_age, min_refetch, clock
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self.fetched_at: float | None = None
        self.fetches = 0
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        try:
            doc = await self.source()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            raise Refused(401, f"the issuer's signing keys could not be fetched: {exc!r}") from None
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in doc.get("keys", []):
            if entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry.get("kid")] = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                log.warning("skipping an unusable JWKS key %s: %s", entry.get("kid"), exc)
        self.keys, self.fetched_at = keys, self.clock()
        self.fetches += 1

    async def prefetch(self) -> bool:
        """The keys fetched now unless fresh ones are held, so that a gateway's first requests wait for no fetch
        (a remote issuer's JWKS over HTTP; the dev issuer's key read and checked from disk, ~30 ms): after a
        restart hundreds of waiting pilots arrive at once. False, logged, when they could not be fetched: the
        first request that needs them tries again, as before."""
        async with self._lock:
            if self.fetched_at is not None and self.clock() - self.fetched_at <= self.max_age:
                return True
            try:
                await self._refresh()
            except Refused as exc:
                log.warning("%s; the first token of this issuer fetches them again", exc.missing)
                return False
        return True

    async def key(self, kid: str | None) -> jwt.PyJWK:
        found = self.keys.get(kid)
        if found is not None and self.fetched_at is not None and self.clock() - self.fetched_at <= self.max_age:
            return found   # the usual case, every request: a known kid of fresh keys needs no lock
        async with self._lock:
            now = self.clock()
            stale = self.fetched_at is None or now - self.fetched_at > self.max_age
            rotated = kid not in self.keys and (self.fetched_at is None or now - self.fetched_at >= self.min_refetch)
            if stale or rotated:
                await self._refresh()
        if kid not in self.keys:
            raise Refused(401, f"token signed with key {kid!r}, which is not among the issuer's keys")
        return self.keys[kid]


@dataclasses.dataclass
class Issuer:
    vo: str
    issuer: str
    audience: str
    keys: JwksCache


def parse_issuers(entries: Iterable[str], max_age: float) -> list[Issuer]:
    """``[auth] issuers`` entries ``"<vo> <issuer url> <audience> [<jwks url>]"``."""
    out = []
    for entry in entries:
        parts = entry.split()
        if len(parts) not in (3, 4):
            raise ValueError(f"[auth] issuers entry {entry!r} is not '<vo> <issuer> <audience> [<jwks url>]'")
        vo, iss, aud = parts[:3]
        out.append(Issuer(vo, iss, aud, JwksCache(http_jwks(iss, parts[3] if len(parts) == 4 else None), max_age)))
    return out


def origin_vo(origin: str | None, known: Iterable[str]) -> str | None:
    """The VO of an ``Origin`` header: ``<vo>``, ``<vo>:<role>`` or ``<vo>.<role>``."""
    if not origin:
        return None
    vo = origin.strip().split(":", 1)[0]
    if vo not in known and "." in vo:
        vo = vo.split(".", 1)[0]
    return vo


class OidcAuthenticator:
    def __init__(self, issuers: list[Issuer], groups_claim: str, role_map: dict[str, str],
                 default_roles: Iterable[str], leeway: float):
        self.by_iss = {i.issuer: i for i in issuers}
        self.vos = {i.vo for i in issuers}
        self.groups_claim, self.role_map = groups_claim, role_map
        self.default_roles, self.leeway = tuple(default_roles), leeway
        # token → (issuer, kid, the key that verified it, exp, identity)
        self._verified: dict[str, tuple[Issuer, str | None, jwt.PyJWK, float, Identity]] = {}

    async def identify(self, request: web.Request) -> Identity | None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() != "bearer ":
            return None
        return await self.verify(auth[7:].strip(), request.headers.get("Origin"))

    async def verify(self, token: str, origin: str | None) -> Identity:
        known = self._verified.get(token)
        if known is not None:
            issuer, kid, key, exp, ident = known
            vo = origin_vo(origin, self.vos)
            if (vo is None or vo == issuer.vo) and time.time() < exp + self.leeway \
                    and await issuer.keys.key(kid) is key:
                return ident
            self._verified.pop(token, None)   # verified again below, with the reason if it is refused now
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Refused(401, "the bearer token is not a JWT") from None
        iss = unverified.get("iss")
        issuer = self.by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Refused(401, f"token issuer {iss!r} is not a configured issuer")
        vo = origin_vo(origin, self.vos)
        if vo is not None and vo != issuer.vo:
            raise Refused(401, f"Origin VO {vo!r} is not served by issuer {iss} (VO {issuer.vo!r})")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Refused(401, f"token algorithm {alg!r} is not accepted (asymmetric signatures only)")
        key = await issuer.keys.key(header.get("kid"))
        try:
            claims = jwt.decode(token, key=key, algorithms=[alg], audience=issuer.audience, issuer=issuer.issuer,
                                leeway=self.leeway, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Refused(401, "token expired") from None
        except jwt.ImmatureSignatureError:
            raise Refused(401, "token not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise Refused(401, f"token audience {unverified.get('aud')!r} is not {issuer.audience!r}") from None
        except jwt.InvalidSignatureError:
            raise Refused(401, f"token signature does not verify against the keys of {iss}") from None
        except jwt.PyJWTError as exc:
            raise Refused(401, f"invalid token: {exc}") from None
        groups = claims.get(self.groups_claim) or []
        if isinstance(groups, str):
            groups = groups.split()
        groups = tuple(str(g) for g in groups)
        roles = roles_of(groups, self.role_map, self.default_roles)
        ident = Identity(str(claims["sub"]), "oidc", issuer.vo, roles, groups)
        if isinstance(claims.get("exp"), int | float):
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = (issuer, header.get("kid"), key, float(claims["exp"]), ident)
        return ident
