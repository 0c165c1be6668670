"""The authenticated identity, the refusal, and the ``Authenticator`` protocol every mechanism implements."""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol

from aiohttp import web

Method = Literal["oidc", "x509", "off"]


@dataclasses.dataclass(frozen=True)
class Identity:
    """A verified caller: the principal recorded as the actor of what it asks, its VO and PanDA roles."""

    principal: str                       # token ``sub`` or the bare certificate DN
    method: Method
    vo: str | None = None
    roles: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ()         # token groups or VOMS FQANs, as presented

    def actor(self, kind: str) -> str:
        """``user:<principal>`` / ``pilot:<principal>``: what the ledger records on every event."""
        return f"{kind}:{self.principal[:200]}"


class Refused(Exception):
    """A credential that was presented but does not hold (401), or a missing right (403).

    ``missing`` names what was missing, for the message the caller reads."""

    def __init__(self, status: int, missing: str, kind: str = "credential"):
        super().__init__(missing)
        self.status = status
        self.missing = missing
        self.kind = kind                 # counted per kind: credential, role, ownership, binding


class Authenticator(Protocol):
    """One mechanism: None when the request carries none of its credentials, Refused when it carries a bad one."""

    async def identify(self, request: web.Request) -> Identity | None: ...
