"""Several gateway processes on one port (``[gateway] processes``): every process serves the pilot API with
the same rules (a pilot updates only jobs dispatched to it, wherever its getJob was answered), and
``/metrics`` on any of them counts the requests all of them served."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from gateway_support import System, auth_headers, post_form, run
from helpers import wait_until

from core.ledger import Ledger
from core.ports import free_port
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from services.gateway import workers


def start_processes(cfg, background, n: int) -> System:
    background.run(Ledger(cfg, instance="gwp", snapshot=partition_snapshot), "ledger")
    runner = ProjectionRunner(cfg)
    background.start(runner.run, "projector")
    cfg = cfg.replace(http={"host": "127.0.0.1", "port": free_port()})
    background.start(lambda stop: workers.run(cfg, stop, n), "gateway-processes")
    url = f"http://127.0.0.1:{cfg.http.port}"

    def answering() -> bool:
        async def probe() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{url}/api/v1/system/is_alive") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False
        return asyncio.run(probe())

    wait_until(answering, 90, 0.2, "the gateway processes answer")
    return System(cfg, url, runner)


def fresh(cfg, principal: str) -> aiohttp.ClientSession:
    """A session that opens a new connection per request: the kernel spreads them over the processes."""
    return aiohttp.ClientSession(headers=auth_headers(cfg, principal, ("pilot",)),
                                 connector=aiohttp.TCPConnector(force_close=True))


def test_pilot_rules_and_metrics_hold_across_processes(cfg, background):
    system = start_processes(cfg, background, 2)
    ids = system.activated_jobs(3)
    base = f"{system.url}/server/panda"
    probes = 40

    async def scenario():
        async with fresh(cfg, "pilot-a") as pa, fresh(cfg, "pilot-b") as pb, aiohttp.ClientSession() as anyone:
            for _ in range(probes):   # new connections: both processes answer some of them
                async with anyone.get(f"{base}/isAlive") as r:
                    assert r.status == 200
            got = []
            for _ in ids:
                _, job = await post_form(pa, f"{base}/getJob", {"siteName": "LOCAL", "node": "wn-a"})
                got.append(job["PandaID"])
            assert sorted(got) == sorted(ids)
            for pid in ids:
                for state in ("starting", "running"):
                    upd = {"jobId": pid, "attemptNr": 1, "state": state, "node": "wn-b"}
                    _, other = await post_form(pb, f"{base}/updateJob", upd)
                    assert other["StatusCode"] == 60 and "dispatched to pilot:pilot-a" in other["errorDialog"], other
                    _, mine = await post_form(pa, f"{base}/updateJob", upd)
                    assert mine["StatusCode"] == 0, mine
            async with anyone.get(f"{system.url}/metrics") as r:
                return await r.text()

    text = run(scenario())
    served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("pandaes_http_request_seconds_count") and "isAlive" in line)
    assert served == probes, [line for line in text.splitlines() if "isAlive" in line]
    system.wait_status(ids, "running")
    for pid in ids:
        assert {e["actor"] for e in system.events(pid)[2:]} == {"pilot:pilot-a"}


def test_a_serving_process_that_dies_is_started_again(cfg, background):
    system = start_processes(cfg, background, 2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _children():
        time.sleep(0.1)
    victims = _children()
    assert len(victims) == 2, victims
    killed = victims[0].pid
    victims[0].kill()
    wait_until(lambda: {p.pid for p in _children()} - {killed} and len(_children()) == 2
               and killed not in {p.pid for p in _children()}, 60, 0.2, "the process restarted")

    async def ping() -> int:
        async with aiohttp.ClientSession() as s, s.get(f"{system.url}/server/panda/isAlive") as r:
            return r.status
    assert run(ping()) == 200


def _children():
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.name.startswith("pandaes-gateway-")]

