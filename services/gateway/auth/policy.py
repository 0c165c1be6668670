"""Who may do what, as data on one screen (like core/states.py): endpoints by role, and which jobs a role acts on.

Roles are PanDA's: ``user`` (every authenticated identity), ``production`` (a VO's production manager),
``pilot`` (pilots and their factories), ``admin`` (operators: everything). The gate applies ENDPOINTS to
every request before its handler; handlers apply the job rules (SUBMIT_LABELS, ACTS_ON) through
``services/gateway/access.py``. docs/auth.md shows this table.
"""

from __future__ import annotations

import functools
from typing import Literal

PUBLIC: frozenset[str] = frozenset()       # anyone, even without credentials
AUTHENTICATED = frozenset({"*"})            # any verified identity, whatever its roles

USER, PRODUCTION, PILOT, ADMIN = "user", "production", "pilot", "admin"

#: path prefix → roles of which the caller needs one (the longest matching prefix wins; unlisted paths
#: need an authenticated identity, so a route added without a rule is never open to anonymous callers)
ENDPOINTS: dict[str, frozenset[str]] = {
    # liveness and queue data: public (pilot3 reads queuedata with a plain GET)
    "/server/panda/isAlive": PUBLIC,
    "/api/v1/system/is_alive": PUBLIC,
    "/api/v1/openapi.json": PUBLIC,
    "/cache/schedconfig/": PUBLIC,
    "/cache/ddmendpoints.json": PUBLIC,
    "/auth/": PUBLIC,                                  # the dev issuer's public keys
    "/metrics": PUBLIC,                                # Prometheus scrapes counters only (no job data)
    # pilots: ask for work and report on it (and only on jobs dispatched to them: ACTS_ON)
    "/server/panda/getJob": frozenset({PILOT, ADMIN}),
    "/server/panda/updateJob": frozenset({PILOT, ADMIN}),
    "/server/panda/updateJobsInBulk": frozenset({PILOT, ADMIN}),
    "/server/panda/updateWorkerPilotStatus": frozenset({PILOT, ADMIN}),
    "/server/panda/getStatus": frozenset({PILOT, PRODUCTION, ADMIN}),
    "/server/panda/checkJobStatus": frozenset({PILOT, PRODUCTION, ADMIN}),
    "/api/v1/pilot/": frozenset({PILOT, ADMIN}),
    "/api/v1/pilot/get_job_status": frozenset({PILOT, PRODUCTION, ADMIN}),
    "/server/panda/getEventRanges": frozenset({PILOT, ADMIN}),
    "/server/panda/updateEventRanges": frozenset({PILOT, ADMIN}),
    "/api/v1/event/": frozenset({PILOT, ADMIN}),
    # Harvester: an instance runs with its VO's pilot or production identity
    "/api/v1/harvester/": frozenset({PILOT, PRODUCTION, ADMIN}),
    # users and production managers: submit, read, act on jobs (which ones: SUBMIT_LABELS, ACTS_ON)
    "/api/v1/job/": frozenset({USER, PRODUCTION, ADMIN}),
    "/api/v1/file_server/": frozenset({USER, PRODUCTION, ADMIN}),
    # JEDI's task operations: over the task's jobs, each checked by ACTS_ON (pause/resume/priority: production)
    "/api/v1/task/": frozenset({USER, PRODUCTION, ADMIN}),
    "/api/v1/task/change_priority": frozenset({PRODUCTION, ADMIN}),
    "/api/v1/task/pause": frozenset({PRODUCTION, ADMIN}),
    "/api/v1/task/resume": frozenset({PRODUCTION, ADMIN}),
    "/api/v1/file_server/upload_jedi_log": frozenset({PRODUCTION, ADMIN}),
    # credentials from the configured store (services/gateway/creds.py; a proxy also needs the role it names)
    "/api/v1/creds/": frozenset({PILOT, PRODUCTION, ADMIN}),
    "/server/panda/getProxy": frozenset({PILOT, PRODUCTION, ADMIN}),
    "/server/panda/getKeyPair": frozenset({PILOT, PRODUCTION, ADMIN}),
    "/cache/": frozenset({USER, PRODUCTION, PILOT, ADMIN}),
}

#: role → the prodSourceLabels it may submit
SUBMIT_LABELS: dict[str, frozenset[str]] = {
    USER: frozenset({"user", "panda"}),
    PRODUCTION: frozenset({"managed", "test", "ptest", "prod_test", "rc_test", "rc_test2", "rc_alrb",
                           "user", "panda"}),
    ADMIN: frozenset({"*"}),
}

Scope = Literal["own", "vo", "any", "dispatched"]
#: role → the jobs it may kill / reassign / set commands on (pilots: update)
#:   own: jobs submitted by this identity; vo: any job of the identity's VO; dispatched: jobs dispatched to
#:   this identity (the actor of their ``sent`` event); any: every job
ACTS_ON: dict[str, Scope] = {
    USER: "own",
    PRODUCTION: "vo",
    PILOT: "dispatched",
    ADMIN: "any",
}


@functools.lru_cache(maxsize=4096)
def endpoint_roles(path: str) -> frozenset[str]:
    # cached: asked on every request, and a request's path decides it alone (ENDPOINTS is fixed)
    best = max((p for p in ENDPOINTS if path.startswith(p)), key=len, default=None)
    return ENDPOINTS[best] if best is not None else AUTHENTICATED


def may_submit(roles: frozenset[str], label: str | None) -> bool:
    allowed = set().union(*(SUBMIT_LABELS.get(r, frozenset()) for r in roles))
    return "*" in allowed or (label or "managed") in allowed


def may_act(roles: frozenset[str], *, principal: str, vo: str | None, owner: str | None,
            job_vo: str | None, dispatched_to: str | None) -> bool:
    """Whether an identity may act on one job; ``owner``/``dispatched_to`` are principals (not actors)."""
    for role in roles:
        scope = ACTS_ON.get(role)
        if scope == "any":
            return True
        if scope == "own" and owner is not None and owner == principal:
            return True
        if scope == "vo" and vo is not None and job_vo in (None, vo):
            return True
        if scope == "dispatched" and dispatched_to is not None and dispatched_to == principal:
            return True
    return False
