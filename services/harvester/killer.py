"""A kill reaches a job's payload through its Harvester: a kill-worker command on the kill event.

Why: a killed running job only gets ``commandToPilot=tobekilled``, which its pilot reads on its next
heartbeat (30 minutes by default). Harvester polls ``harvester/acquire_commands`` every few tens of
seconds, so when the job's worker is known (``update_workers`` mapped it) the kill is also queued for
that Harvester as ``SYNC_WORKERS_KILL`` with the workerIDs (Harvester's sweeper marks them to be killed).

``WorkerKiller`` is a reactor on panda.job-events: ``decide`` is pure (the event and the job's live
workers read from the view in, one ``Action`` per worker out, whose step queues the command once per
(job, worker) — redelivered events change nothing). A worker mapped only after the kill (the kill came
first) is caught where the mapping arrives: ``kill_late_mapped`` in the gateway's update_workers.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from psycopg import AsyncConnection

from core import db
from core.config import Config
from core.states import JobStatus
from projections import aqueries
from schemas.messages import Event
from services.loop import Action, Member, run_alone

from . import store

KILL_ACTIONS = frozenset({"kill", "kill_close", "kill_signal"})
#: states in which a worker may still be running the job's payload
WITH_WORKER = frozenset({JobStatus.SENT, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.TRANSFERRING})


def dedup_key(pandaid: int, harvester_id: str, worker_id: int) -> str:
    return f"kill:{pandaid}:{harvester_id}:{worker_id}"


class KillerView(Protocol):
    def workers_of(self, pandaid: int) -> list[tuple[str, int]]: ...

    def add_command(self, harvester_id: str, command: str, params: Any, dedup_key: str) -> int | None:
        """Queue a command once per key (a write: only ever an Action's step)."""


def kill_actions(pandaid: int, workers: Sequence[tuple[str, int]], view: KillerView) -> list[Action]:
    """One Action per live worker of the job: queue SYNC_WORKERS_KILL [worker_id] for its Harvester (pure)."""
    return [Action(label=f"kill worker {hid}/{wid} of {pandaid}",
                   steps=(functools.partial(view.add_command, hid, store.KILL_COMMAND, [wid],
                                            dedup_key(pandaid, hid, wid)),))
            for hid, wid in workers]


class WorkerKiller:
    """Event-driven: every kill of a job that may have a running worker."""

    name = "harvester-killer"

    def wants(self, event: Event) -> bool:
        return getattr(event, "action", None) in KILL_ACTIONS and event.from_state in WITH_WORKER

    def decide(self, event: Event, view: KillerView) -> list[Action]:
        return kill_actions(event.PandaID, view.workers_of(event.PandaID), view)


class SqlKillerView:
    """The Harvester store over one reconnecting connection."""

    def __init__(self, cfg: Config):
        self.db = db.Reconnecting(cfg)

    def workers_of(self, pandaid: int) -> list[tuple[str, int]]:
        return self.db.run(store.workers_of_jobs, [pandaid]).get(pandaid, [])

    def add_command(self, harvester_id: str, command: str, params: Any, dedup_key: str) -> int | None:
        return self.db.run(store.add_command, harvester_id, command, params, dedup_key)

    def close(self) -> None:
        self.db.close()


def late_kills(workers: Sequence[Mapping[str, Any]], jobs: Mapping[int, Mapping[str, Any]]) -> list[tuple[int, int]]:
    """(pandaid, worker_id) of reported live workers whose job was already told to die (pure)."""
    out = []
    for w in workers:
        if w.get("status") in store.FINAL_WORKER_STATES:
            continue
        for pid in (store.as_id(p) for p in w.get("pandaid_list") or []):
            row = jobs.get(pid) if pid is not None else None
            if row and row["status"] in WITH_WORKER and row["command_to_pilot"] == "tobekilled":
                out.append((pid, int(w["workerID"])))
    return out


async def kill_late_mapped(conn: AsyncConnection, harvester_id: str, workers: Sequence[Mapping[str, Any]]) -> int:
    """Queue the kill of workers reported for jobs already being killed; how many were queued now. Only live
    workers can need one (``late_kills``), so a call reporting its workers over (half of Harvester's
    update_workers calls) reads no job."""
    live = [w for w in workers if w.get("status") not in store.FINAL_WORKER_STATES]
    ids = sorted({i for w in live for i in map(store.as_id, w.get("pandaid_list") or []) if i is not None})
    if not ids:
        return 0
    jobs = await aqueries.jobs(conn, ids, ("status", "command_to_pilot"))
    queued = 0
    for pid, wid in late_kills(live, jobs):
        if await store.add_command_async(conn, harvester_id, store.KILL_COMMAND, [wid],
                                         dedup_key(pid, harvester_id, wid)) is not None:
            queued += 1
    return queued


def hosted(cfg: Config) -> Member:
    """The Harvester worker killer (event path only)."""
    view = SqlKillerView(cfg)
    return Member(WorkerKiller(), view, close=view.close)


def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run harvester-killer`: alone in its own consumer group."""
    run_alone(cfg, stop, hosted(cfg))
