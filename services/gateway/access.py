"""The job-level half of authorization: may this caller act on these jobs (``auth/policy.py::ACTS_ON``)?

Reads who submitted each job, its prodUserID/VO and the pilot it was dispatched to (the actor of its
``sent`` event; the dispatcher's lease while the projection has not shown that event yet). With auth off
every job is allowed. Refusals name what was missing and are counted by the gate.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

from projections import aqueries

from . import leases
from .auth import policy
from .bindings import Bindings
from .identity import Caller

#: the app's memory of the pilots this process delivered jobs to (``[gateway] binding_memory`` entries)
BINDINGS: web.AppKey[Bindings] = web.AppKey("pandaes.bindings", Bindings)


def _principal(actor: str | None) -> str | None:
    """``user:<p>``/``pilot:<p>`` → ``<p>``; other actors (services, tests) own nothing."""
    if not actor or ":" not in actor:
        return None
    kind, _, name = actor.partition(":")
    return name if kind in ("user", "pilot") else None


async def refused(request: web.Request, caller: Caller, ids: Iterable[int], what: str) -> dict[int, str]:
    """PandaID → why ``caller`` may not ``what`` it; unknown jobs are left to the ledger (unknown_job)."""
    ident = caller.identity
    ids = list(ids)
    if ident is None or not ids:
        return {}
    if policy.PILOT in ident.roles:
        # jobs this process delivered to this very pilot: their binding is fixed (bindings.py), no query
        known = await request.app[BINDINGS].confirmed_for(ids, ident.principal)
        if known:
            ids = [pid for pid in ids if pid not in known]
            if not ids:
                return {}
    async with request.app["backend"].pool.connection() as conn:
        rows = await aqueries.job_bindings(conn, ids)
        out: dict[int, str] = {}
        for pid in ids:
            row = rows.get(pid)
            if row is None:
                continue
            dispatched = _principal(row["dispatched_to"])
            if dispatched is None and policy.PILOT in ident.roles:
                dispatched = _principal(await leases.sent_to(conn, pid))
            owners = {_principal(row["submitted_by"]), row["prod_user"]} - {None}
            if policy.may_act(ident.roles, principal=ident.principal, vo=ident.vo,
                              owner=ident.principal if ident.principal in owners else None,
                              job_vo=row["vo"], dispatched_to=dispatched):
                continue
            if what == "update":
                out[pid] = (f"job {pid} was dispatched to {'pilot:' + dispatched if dispatched else 'no pilot'}, "
                            f"not to {caller.actor}")
            else:
                out[pid] = (f"{caller.actor} may not {what} job {pid}: it belongs to "
                            f"{', '.join(sorted(owners)) or 'another submitter'}"
                            f" (roles {', '.join(sorted(ident.roles)) or 'none'})")
    if out:
        kind = "binding" if what == "update" else "ownership"
        request.app["gate"].refusals[kind] += len(out)
    return out


# ------------------------------------------------------------------------------------ cached files
def _owner_file(directory: Path, name: str) -> Path:
    # a leading dot: never a valid cache name, so the record cannot be downloaded or overwritten by an upload
    return directory / f".owner-{name}"


def upload_refused(request: web.Request, directory: Path, name: str) -> str | None:
    """Why the caller may not (re)place cached file ``name``: another identity uploaded it (admins may)."""
    ident = request.get("identity")
    if ident is None or policy.ADMIN in ident.roles:
        return None
    try:
        owner = _owner_file(directory, name).read_text()
    except FileNotFoundError:
        return None
    if owner == ident.principal:
        return None
    request.app["gate"].refusals["ownership"] += 1
    return f"file {name!r} belongs to {owner}; upload under another name"


def record_upload(request: web.Request, directory: Path, name: str) -> None:
    ident = request.get("identity")
    if ident is not None:
        _owner_file(directory, name).write_text(ident.principal)
