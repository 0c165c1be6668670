"""Shared set-up of the gateway tests: ledger + projector + gateway in-process on a free port."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
import msgspec
from helpers import wait_until

from core import db
from core.bus import CommandSender
from core.ledger import Ledger
from core.ports import free_port
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Submit, Transition
from services.gateway.app import serve
from services.gateway.auth import dev

TRF = "http://pandaserver-doma.cern.ch:25080/trf/user/payload.sh"
#: the identity the gateway tests act as unless a test is about identity: submits, pilots and kills
OPERATOR = ("test-operator", ("production", "pilot"))


def auth_headers(cfg, principal: str = OPERATOR[0], roles: tuple[str, ...] = OPERATOR[1]) -> dict[str, str]:
    """What a client with a dev-issuer token sends: ``Authorization: Bearer`` and ``Origin: <vo>``."""
    return dev.headers(cfg, principal, roles)


class System:
    def __init__(self, cfg, url: str, runner: ProjectionRunner):
        self.cfg = cfg
        self.url = url
        self.runner = runner

    def session(self, principal: str = OPERATOR[0], roles: tuple[str, ...] = OPERATOR[1],
                **kw: Any) -> aiohttp.ClientSession:
        """An HTTP session that authenticates as ``principal`` with ``roles`` (dev issuer tokens)."""
        return aiohttp.ClientSession(headers=auth_headers(self.cfg, principal, roles), **kw)

    def status(self, ids: list[int]) -> dict[int, str]:
        with db.connect(self.cfg) as conn:
            return dict(conn.execute("SELECT pandaid, status FROM jobs WHERE pandaid = ANY(%s)", (ids,)).fetchall())

    def wait_status(self, ids: list[int], status: str, timeout: float = 60) -> None:
        wait_until(lambda: all(s == status for s in self.status(ids).values()) and len(self.status(ids)) == len(ids),
                   timeout, 0.1, f"jobs {ids[:5]}… {status}")

    def events(self, pid: int) -> list[dict[str, Any]]:
        with db.connect(self.cfg) as conn:
            return db.fetch_all(conn, "SELECT seq, actor, action, from_state, to_state, body FROM job_events"
                                " WHERE pandaid = %s ORDER BY seq", (pid,))

    def activated_jobs(self, n: int, site: str = "LOCAL", label: str = "managed", **attrs: Any) -> list[int]:
        """Submit ``n`` jobs with an output and a log file and activate them; waits for the projection."""
        with db.connect(self.cfg) as conn:
            ids = [r[0] for r in conn.execute("SELECT nextval('pandaid_seq') FROM generate_series(1, %s)", (n,))]
        sender = CommandSender(self.cfg)
        try:
            for pid in ids:
                job = JobSpec(computingSite=site, prodSourceLabel=label, attemptNr=1, transformation=TRF,
                              jobParameters=f"hello 1 0 out.{pid}.txt", jobName=f"job.{pid}", taskID=77,
                              jobsetID=1, jobDefinitionID=1, currentPriority=1000, **attrs,
                              Files=[FileSpec(lfn=f"out.{pid}.txt", type="output", dataset="test.out",
                                              destinationDBlock="test.out_sub01", scope="test",
                                              destinationSE="LOCAL_DISK"),
                                     FileSpec(lfn=f"log.{pid}.tgz", type="log", dataset="test.log",
                                              destinationDBlock="test.log_sub01", scope="test",
                                              GUID=f"00000000-0000-0000-0000-{pid:012d}",
                                              destinationSE="LOCAL_DISK")])
                sender.send(Submit(PandaID=pid, actor="test", job=job))
                sender.send(Transition(PandaID=pid, action="activate", actor="test"))
            sender.flush()
        finally:
            sender.close()
        self.wait_status(ids, "activated")
        return ids


def start_system(cfg, background) -> System:
    background.run(Ledger(cfg, instance="gw", snapshot=partition_snapshot), "ledger")
    runner = ProjectionRunner(cfg)
    background.start(runner.run, "projector")
    port = free_port()
    ready = threading.Event()
    background.start(lambda stop: asyncio.run(serve(cfg, stop, host="127.0.0.1", port=port, ready=ready)),
                     "gateway")
    assert ready.wait(60), "gateway did not start"
    return System(cfg, f"http://127.0.0.1:{port}", runner)


async def post_form(session: aiohttp.ClientSession, url: str, data: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, data={k: str(v) for k, v in data.items()},
                            headers={"Accept": "application/json"}) as resp:
        text = await resp.text()
        try:
            return resp.status, msgspec.json.decode(text)
        except msgspec.DecodeError:
            return resp.status, text


async def post_json(session: aiohttp.ClientSession, url: str, data: Any, method: str = "POST") -> tuple[int, Any]:
    async with session.request(method, url, json=data, headers={"Accept": "application/json"}) as resp:
        text = await resp.text()
        try:
            return resp.status, msgspec.json.decode(text)
        except msgspec.DecodeError:
            return resp.status, text


def run(coro):
    return asyncio.run(coro)


__all__ = ["OPERATOR", "System", "auth_headers", "start_system", "post_form", "post_json", "run", "time"]
