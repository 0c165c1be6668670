"""JEDI's task operations (``/api/v1/task/*``): one command per job of the task, one verdict per job.

pandaes has no task table: a task is the set of jobs that carry its ``jediTaskID`` in the jobs projection.
A task call is therefore a bulk job call: ``plan`` (pure) turns the task's jobs and the call's parameters
into commands (``Kill``, ``Transition``), the gateway sends them through the ledger like ``job/kill`` and
answers in PanDA's envelope. ``data`` is what panda-client and JEDI parse (PanDA's return code: 0 request
registered, 2 task not found, 3 permission denied; a list of bools for ``kill_unfinished_jobs``), and
``jobs`` beside it lists the verdict of every job: ``{"job_id", "ok", "action", "reason"}``.

Who may act on the task's jobs is ``auth/policy.py::ACTS_ON`` through ``access.refused``: production for
its VO's tasks, a user for jobs they own. Jobs a caller may not touch get a refused verdict and no command.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from core.states import DEFINED_STATES, NON_FINAL, PILOT_OWNED, JobStatus
from projections import aqueries
from schemas.messages import Command, Event, Kill, Rejected, Transition

from . import access, identity
from .params import BadRequest, as_bool, as_int, as_str
from .v1 import _ask_each, _until_projected, _v1

RC_OK, RC_NOT_FOUND, RC_DENIED = 0, 2, 3
TASK_KILL_CODE = 50          # "kill by JEDI" (KILL_CODES): the task's jobs end cancelled, EC_Kill
REASSIGN_KILL_CODE = 51      # "reassigned by JEDI": a running job of a reassigned task ends closed/toreassign
FINISH_CODE = 55             # "killed since task is (almost) done": closed/taskdone
#: jobs that have not reached a pilot yet: a reassignment sends them back to defined (PanDA resetJob)
QUEUED = (*DEFINED_STATES, JobStatus.ACTIVATED.value, JobStatus.THROTTLED.value)
REASSIGN_MODES = ("kill", "soft", "nokill")


def plan(op: str, jobs: Sequence[tuple[int, str]], *, actor: str, code: int | None = None,
         priority: int | None = None, site: str | None = None, mode: str | None = None,
         soft: bool = False) -> list[Command]:
    """The commands of one task operation over the task's (PandaID, status) jobs. Pure.

    kill / kill_unfinished_jobs: every unfinished job killed (``code``, default 50 for kill);
    reassign: queued jobs back to defined (to ``site`` when given), and in mode ``kill`` (the default)
    the jobs already past dispatch killed with code 51 so JEDI regenerates them; ``soft``/``nokill``
    leave those running; change_priority: ``currentPriority`` of every unfinished job;
    pause: activated jobs throttled; resume: throttled jobs activated again;
    finish: queued jobs (``soft``) or every unfinished job killed with code 55."""
    live = [(pid, status) for pid, status in jobs if status in NON_FINAL]
    reason = f"task operation {op} by {actor}"
    if op in ("kill", "kill_unfinished_jobs"):
        kill_code = code if code is not None or op == "kill_unfinished_jobs" else TASK_KILL_CODE
        return [Kill(PandaID=pid, actor=actor, code=kill_code, reason=reason) for pid, _ in live]
    if op == "reassign":
        mode = mode or "kill"
        if mode not in REASSIGN_MODES:
            raise ValueError(f"mode must be one of {', '.join(REASSIGN_MODES)}")
        attrs = {"computingSite": site} if site else {}
        out: list[Command] = []
        for pid, status in live:
            if status in QUEUED:
                out.append(Transition(PandaID=pid, actor=actor, action="reset", attrs=attrs, reason=reason))
            elif mode == "kill" and status in PILOT_OWNED:
                out.append(Kill(PandaID=pid, actor=actor, code=REASSIGN_KILL_CODE, reason=reason))
        return out
    if op == "change_priority":
        if priority is None:
            raise ValueError("priority is required")
        return [Transition(PandaID=pid, actor=actor, action="set", attrs={"currentPriority": priority},
                           reason=reason) for pid, _ in live]
    if op == "pause":
        return [Transition(PandaID=pid, actor=actor, action="throttle", reason=reason)
                for pid, status in live if status == JobStatus.ACTIVATED]
    if op == "resume":
        return [Transition(PandaID=pid, actor=actor, action="unthrottle", reason=reason)
                for pid, status in live if status == JobStatus.THROTTLED]
    if op == "finish":
        return [Kill(PandaID=pid, actor=actor, code=FINISH_CODE, reason=reason)
                for pid, status in live if not soft or status in QUEUED]
    raise ValueError(f"unknown task operation {op!r}")


def verdict_row(pid: int, cmd: Command, verdict: Event | Rejected | None) -> dict[str, Any]:
    """One job's answer: ok when the ledger recorded the command (a repeated kill counts as done)."""
    action = "kill" if isinstance(cmd, Kill) else getattr(cmd, "action", "")
    if isinstance(verdict, Event):
        return {"job_id": pid, "ok": True, "action": action, "reason": ""}
    if isinstance(verdict, Rejected):
        return {"job_id": pid, "ok": verdict.code == "already_requested", "action": action,
                "reason": f"{verdict.code}: {verdict.reason}"}
    return {"job_id": pid, "ok": False, "action": action, "reason": "not confirmed by the ledger yet"}


def answer(success: bool, message: str, data: Any, jobs: list[dict[str, Any]], status: int = 200) -> web.Response:
    """PanDA's envelope plus ``jobs``, the per-job verdicts (clients that know only the envelope ignore it)."""
    return web.json_response({"success": success, "message": message, "data": data, "jobs": jobs}, status=status,
                             dumps=lambda v: json.dumps(v, default=str))


async def _run(request: web.Request, params: dict[str, Any], op: str, **kw: Any) -> tuple[bool, str, list[Any]]:
    """Plan, check ownership, send, collect. Returns (found, message, verdict rows)."""
    task_id = as_int(params, "task_id", "jediTaskID")
    async with request.app["backend"].pool.connection() as conn:
        jobs = await aqueries.task_jobs(conn, task_id)
    if not jobs:
        return False, f"task {task_id} not found (no jobs carry this jediTaskID)", []
    caller = identity.user(request)
    try:
        cmds = plan(op, jobs, actor=caller.actor, **kw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    refused = await access.refused(request, caller, [c.PandaID for c in cmds], op)
    allowed = [c for c in cmds if c.PandaID not in refused]
    verdicts = await _ask_each(request, allowed)
    await _until_projected(request, verdicts)
    by_id = {c.PandaID: (c, v) for c, v in zip(allowed, verdicts, strict=True)}
    rows = []
    for c in cmds:
        if c.PandaID in refused:
            rows.append({"job_id": c.PandaID, "ok": False, "action": "refused", "reason": refused[c.PandaID]})
        else:
            rows.append(verdict_row(c.PandaID, *by_id[c.PandaID]))
    done = sum(r["ok"] for r in rows)
    message = f"task {task_id}: {op} sent to {len(rows)} of {len(jobs)} jobs, {done} done"
    if refused:
        message += f", {len(refused)} refused"
    return True, message, rows


async def _coded(request: web.Request, params: dict[str, Any], op: str, **kw: Any) -> web.Response:
    """Answer with PanDA's return code in data (panda-client's killTask, reassignTask, pauseTask …)."""
    found, message, rows = await _run(request, params, op, **kw)
    if not found:
        return answer(False, message, RC_NOT_FOUND, rows)
    if rows and all(r["action"] == "refused" for r in rows):
        return answer(False, message, RC_DENIED, rows, status=403)
    return answer(True, message, RC_OK, rows)


@_v1
async def kill(request: web.Request, params: dict[str, Any]) -> web.Response:
    """panda-client killTask: kill every unfinished job of the task (kill code 50)."""
    as_bool(params, "broadcast", default=False)   # our kills reach pilots anyway (commandToPilot / Harvester)
    return await _coded(request, params, "kill")


@_v1
async def kill_unfinished_jobs(request: web.Request, params: dict[str, Any]) -> web.Response:
    """JEDI's killUnfinishedJobs: data is one bool per unfinished job, as PanDA's killJobs answers."""
    code = as_int(params, "code", default=None)
    found, message, rows = await _run(request, params, "kill_unfinished_jobs", code=code)
    if rows and all(r["action"] == "refused" for r in rows):
        return answer(False, message, [False] * len(rows), rows, status=403)
    return answer(True, message, [r["ok"] for r in rows], rows)


@_v1
async def reassign(request: web.Request, params: dict[str, Any]) -> web.Response:
    """panda-client reassignTask: queued jobs back to defined (to ``site`` if given); mode kill/soft/nokill."""
    site = as_str(params, "site", default=None, max_len=128)
    for name in ("cloud", "nucleus"):   # a task-level choice for JEDI's brokerage; jobs carry only a site
        as_str(params, name, default=None, max_len=128)
    mode = as_str(params, "mode", default=None, max_len=16)
    if mode is not None and mode not in REASSIGN_MODES:   # refused whether or not the task exists
        raise BadRequest(f"must be one of {', '.join(REASSIGN_MODES)}, got {mode[:40]!r}", field="mode")
    if as_bool(params, "soft", default=False) and mode is None:
        mode = "soft"
    return await _coded(request, params, "reassign", site=site or None, mode=mode)


@_v1
async def change_priority(request: web.Request, params: dict[str, Any]) -> web.Response:
    """changeTaskPriority: currentPriority of every unfinished job (the dispatcher orders by it)."""
    priority = as_int(params, "priority")
    found, message, rows = await _run(request, params, "change_priority", priority=priority)
    if not found:
        return answer(False, "Task not found", None, rows)
    if rows and all(r["action"] == "refused" for r in rows):
        return answer(False, message, None, rows, status=403)
    return answer(True, message, None, rows)


@_v1
async def pause(request: web.Request, params: dict[str, Any]) -> web.Response:
    """pauseTask: the task's activated jobs are throttled (not dispatched) until resume."""
    return await _coded(request, params, "pause")


@_v1
async def resume(request: web.Request, params: dict[str, Any]) -> web.Response:
    """resumeTask: the task's throttled jobs are activated again."""
    return await _coded(request, params, "resume")


@_v1
async def finish(request: web.Request, params: dict[str, Any]) -> web.Response:
    """finishTask: queued jobs (soft) or every unfinished job closed with code 55 (taskdone)."""
    as_bool(params, "broadcast", default=False)
    return await _coded(request, params, "finish", soft=bool(as_bool(params, "soft", default=False)))


@_v1
async def get_job_ids(request: web.Request, params: dict[str, Any]) -> web.Response:
    """getPandaIDsWithTaskID: the PandaIDs of the task's jobs, in any state."""
    task_id = as_int(params, "task_id", "jediTaskID")
    async with request.app["backend"].pool.connection() as conn:
        jobs = await aqueries.task_jobs(conn, task_id)
    return web.json_response({"success": True, "message": "", "data": [pid for pid, _ in jobs]})


ROUTES: list[tuple[tuple[str, ...], str, Any]] = [
    (("POST",), "task/kill", kill),
    (("POST",), "task/kill_unfinished_jobs", kill_unfinished_jobs),
    (("POST",), "task/reassign", reassign),
    (("POST",), "task/change_priority", change_priority),
    (("POST",), "task/pause", pause),
    (("POST",), "task/resume", resume),
    (("POST",), "task/finish", finish),
    (("GET",), "task/get_job_ids", get_job_ids),
]


def setup(app: web.Application) -> None:
    for methods, path, handler in ROUTES:
        for method in methods:
            app.router.add_route(method, f"/api/v1/{path}", handler)
