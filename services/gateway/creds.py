"""Credentials for pilots and Harvester: ``creds/get_proxy``, ``get_token_key``, ``get_key_pair`` and pilot3's
legacy ``getProxy``/``getKeyPair``, answered from a directory of files, or refused when none is configured.

Why files: the smallest store an operator can fill with the tools they already have (a cron job renewing a
proxy writes one file), and nothing is served unless ``[creds] dir`` names one. Layout under that dir::

    proxy/<role>          the x509 proxy served to callers holding <role> (production, pilot …)
    keys/<name>           public and private keys of get_key_pair, by the names the caller asks for
    token_keys/<client>   the token key of an OIDC client (get_token_key)

Who may read: the endpoint rules of ``auth/policy.py`` (pilots, production, admins) and, for a proxy, the
caller must hold the role it asks for (admins any); a proxy is per role, not per DN, so asking for another
DN's proxy is refused except for admins. Names are checked like cache names, so nothing outside the
directory can be read. A refusal says why; no secret ever goes to the log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from . import legacy, pilot
from .auth import policy
from .cache import safe_name
from .params import BadRequest, as_str, read_params
from .v1 import _v1, envelope

NOT_CONFIGURED = "no credential store is configured on this server ([creds] dir is empty): nothing is served"
DEFAULT_ROLE = policy.PRODUCTION


class Refused(Exception):
    """Why a credential is not served (a message for the caller)."""


def store_dir(app: web.Application) -> Path | None:
    configured = str(app["cfg"].creds.dir or "").strip()
    return Path(configured) if configured else None


def read_secret(root: Path | None, kind: str, name: str) -> str:
    """The secret ``kind/name`` of the store at ``root``; Refused when there is no store, the name is not a
    plain file name, or the file is missing."""
    if root is None:
        raise Refused(NOT_CONFIGURED)
    clean = safe_name(name or "")
    if clean is None:
        raise Refused(f"invalid name {str(name)[:60]!r}")
    path = root / kind / clean
    try:
        return path.read_text()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise Refused(f"no {kind.rstrip('s').replace('_', ' ')} {clean!r} in the credential store") from None


def proxy_refusal(roles: frozenset[str] | None, principal: str | None, role: str, dn: str | None) -> str | None:
    """Why an identity with ``roles`` may not have the proxy of ``role`` (for ``dn``); None: it may. Pure.
    ``roles`` None means authentication is off (every caller is trusted)."""
    if roles is None or policy.ADMIN in roles:
        return None
    if role not in roles:
        return f"missing role: the proxy of role {role!r} needs that role (caller has {', '.join(sorted(roles))})"
    if dn and dn != principal:
        return f"proxies are served per role to their holder, not for another DN ({dn[:80]!r})"
    return None


def _caller(request: web.Request) -> tuple[frozenset[str] | None, str | None]:
    ident = request.get("identity")
    return (None, None) if ident is None else (frozenset(ident.roles), ident.principal)


def proxy(request: web.Request, role: str | None, dn: str | None) -> str:
    role = role or DEFAULT_ROLE
    refusal = proxy_refusal(*_caller(request), role, dn)
    if refusal:
        request.app["gate"].refusals["role"] += 1
        raise Refused(refusal)
    return read_secret(store_dir(request.app), "proxy", role)


def key_pair(request: web.Request, public: str, private: str) -> dict[str, str]:
    root = store_dir(request.app)
    return {"public_key": read_secret(root, "keys", public), "private_key": read_secret(root, "keys", private)}


# ----------------------------------------------------------------------------------------------- /api/v1
@_v1
async def get_proxy(request: web.Request, params: dict[str, Any]) -> web.Response:
    try:
        text = proxy(request, as_str(params, "role", default=None, max_len=64),
                     as_str(params, "dn", default=None, max_len=1000))
    except Refused as exc:
        return envelope(False, str(exc))
    return envelope(True, "", {"user_proxy": text})


@_v1
async def get_key_pair(request: web.Request, params: dict[str, Any]) -> web.Response:
    try:
        data = key_pair(request, as_str(params, "public_key_name", max_len=255),
                        as_str(params, "private_key_name", max_len=255))
    except Refused as exc:
        return envelope(False, str(exc))
    return envelope(True, "", data)


@_v1
async def get_token_key(request: web.Request, params: dict[str, Any]) -> web.Response:
    try:
        key = read_secret(store_dir(request.app), "token_keys", as_str(params, "client_name", max_len=255))
    except Refused as exc:
        return envelope(False, str(exc))
    return envelope(True, "", {"tokenKey": key.strip()})


# ---------------------------------------------------------------------------------------- legacy (pilot3)
async def legacy_get_proxy(request: web.Request) -> web.Response:
    """pilot3's getProxy: ``{"StatusCode": 0, "userProxy": …}``, or a failure code with errorDialog."""
    try:
        params = await read_params(request)
        text = proxy(request, as_str(params, "role", default=None, max_len=64),
                     as_str(params, "dn", default=None, max_len=1000))
    except BadRequest as exc:
        return legacy.invalid(exc)
    except Refused as exc:
        return legacy.reply({"StatusCode": pilot.SC_FAILED, "errorDialog": str(exc)})
    return legacy.reply({"StatusCode": pilot.SC_SUCCESS, "userProxy": text})


async def legacy_get_key_pair(request: web.Request) -> web.Response:
    """pilot3's getKeyPair: ``{"StatusCode": 0, "publicKey": …, "privateKey": …}``."""
    try:
        params = await read_params(request)
        data = key_pair(request, as_str(params, "publicKeyName", max_len=255),
                        as_str(params, "privateKeyName", max_len=255))
    except BadRequest as exc:
        return legacy.invalid(exc)
    except Refused as exc:
        return legacy.reply({"StatusCode": pilot.SC_FAILED, "errorDialog": str(exc)})
    return legacy.reply({"StatusCode": pilot.SC_SUCCESS, "publicKey": data["public_key"],
                         "privateKey": data["private_key"]})


def setup(app: web.Application) -> None:
    for path, handler in (("creds/get_proxy", get_proxy), ("creds/get_key_pair", get_key_pair),
                          ("creds/get_token_key", get_token_key)):
        app.router.add_get(f"/api/v1/{path}", handler)
        app.router.add_post(f"/api/v1/{path}", handler)
    for name, handler in (("getProxy", legacy_get_proxy), ("getKeyPair", legacy_get_key_pair)):
        app.router.add_route("POST", f"/server/panda/{name}", handler)
        app.router.add_route("GET", f"/server/panda/{name}", handler)
