"""x509 through a TLS-terminating proxy: the client DN and VOMS FQANs from the proxy's headers.

The headers are believed only when the request comes from a configured trusted proxy address; from
anywhere else they are ignored (and counted), since any client can write them.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable

from aiohttp import web

from .model import Identity
from .roles import roles_of

log = logging.getLogger(__name__)
_PROXY_SUFFIX = re.compile(r"(/CN=(limited proxy|proxy|\d+))+$")


def bare_dn(dn: str) -> str:
    """A user's DN without the proxy suffixes (PanDA's get_bare_dn), so a proxy and its owner match."""
    return _PROXY_SUFFIX.sub("", dn.strip())


def vo_of_fqans(fqans: Iterable[str]) -> str | None:
    for fqan in fqans:
        part = fqan.strip().lstrip("/").split("/", 1)[0]
        if part:
            return part
    return None


class ProxyX509Authenticator:
    def __init__(self, trusted: Iterable[str], dn_headers: Iterable[str], fqans_header: str,
                 role_map: dict[str, str], default_roles: Iterable[str]):
        self.trusted = [ipaddress.ip_network(t, strict=False) for t in trusted]
        self.dn_headers, self.fqans_header = tuple(dn_headers), fqans_header
        self.role_map, self.default_roles = role_map, tuple(default_roles)
        self.ignored = 0

    def is_trusted(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    async def identify(self, request: web.Request) -> Identity | None:
        dn = next((request.headers[h] for h in self.dn_headers if request.headers.get(h)), None)
        if not dn:
            return None
        if not self.is_trusted(request.remote):
            self.ignored += 1
            log.warning("ignoring a client-DN header from %s, which is not a trusted proxy", request.remote)
            return None
        fqans = tuple(f.strip() for f in request.headers.get(self.fqans_header, "").split(",") if f.strip())
        return Identity(bare_dn(dn), "x509", vo_of_fqans(fqans),
                        roles_of(fqans, self.role_map, self.default_roles), fqans)
