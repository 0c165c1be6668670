"""Token groups / VOMS FQANs → PanDA roles, by the ``[auth] role_map`` configuration."""

from __future__ import annotations

import re
from collections.abc import Iterable

_ROLE = re.compile(r"/Role=([^/]+)")


def parse_role_map(entries: Iterable[str]) -> dict[str, str]:
    """``["production=production", "/atlas/Role=pilot=pilot"]`` → {group key: role} (split at the last '=')."""
    out: dict[str, str] = {}
    for entry in entries:
        key, sep, role = entry.rpartition("=")
        if not sep or not key or not role:
            raise ValueError(f"[auth] role_map entry {entry!r} is not <group>=<role>")
        out[key.strip()] = role.strip()
    return out


def _keys(group: str) -> set[str]:
    """A group matches the map by its full text, its last path part (atlas/production → production) or,
    for an FQAN, its Role (/atlas/Role=production/Capability=NULL → production)."""
    group = group.strip()
    keys = {group, group.rstrip("/").rsplit("/", 1)[-1]}
    match = _ROLE.search(group)
    if match and match.group(1) != "NULL":
        keys.add(match.group(1))
    return keys


def roles_of(groups: Iterable[str], role_map: dict[str, str], default: Iterable[str]) -> frozenset[str]:
    roles = set(default)
    for group in groups:
        roles.update(role_map[k] for k in _keys(str(group)) if k in role_map)
    return frozenset(roles)
