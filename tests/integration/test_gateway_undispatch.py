"""A dispatch whose verdict comes after the pilot's wait is undone: the job goes back to activated at once
(an ``undispatch`` event), not after the 30-minute sent timeout, and the next pilot gets it."""

from __future__ import annotations

import asyncio

from gateway_support import run, start_system

from services.gateway.backend import Backend, VerdictTimeout
from services.gateway.dispatcher import Dispatcher, DispatchRequest


def test_a_dispatch_answered_too_late_is_undone_and_the_job_goes_to_the_next_pilot(cfg, background):
    system = start_system(cfg, background)
    (pid,) = system.activated_jobs(1)
    request = DispatchRequest(site="LOCAL", prod_source_label="managed", timeout=30)

    async def scenario() -> tuple[list[int], list[int]]:
        backend = Backend(cfg)
        await backend.start()
        try:
            async def late_ask(cmd, timeout):
                # the ledger applies the dispatch, but its verdict reaches the gateway after the pilot's wait
                out = await backend.ask(cmd, 30)
                if cmd.action == "dispatch":
                    assert out.to_state == "sent", out
                    raise VerdictTimeout("no verdict within the wait")
                return out

            late = Dispatcher(cfg, backend.pool, late_ask)
            first = await late.acquire(request, "pilot-late")
            assert first.timed_out and not first.jobs
            await asyncio.gather(*late._undos)          # the undo's own verdict (fire and forget otherwise)
            await asyncio.to_thread(system.wait_status, [pid], "activated")
            second = await Dispatcher(cfg, backend.pool, backend.ask).acquire(request, "pilot-next")
            return [j.panda_id for j in first.jobs], [j.panda_id for j in second.jobs]
        finally:
            await backend.close()

    first, second = run(scenario())
    assert first == [] and second == [pid]
    system.wait_status([pid], "sent")   # the projection has the second verdict's event
    events = system.events(pid)
    assert [(e["action"], e["actor"], e["to_state"]) for e in events[-3:]] == [
        ("dispatch", "pilot-late", "sent"), ("undispatch", "pilot-late", "activated"),
        ("dispatch", "pilot-next", "sent")]
    dispatch, undo = events[-3]["body"], events[-2]["body"]
    assert dispatch["command_id"] in undo["reason"], "the undo event names the dispatch it took back"


def test_the_backend_opens_its_claim_pool_whole_and_sends_with_the_gateways_linger(cfg):
    """Why whole: a claim pool growing at the first burst of getJobs made them wait for new sessions."""

    async def opened(gateway: dict) -> tuple[int, int | None]:
        backend = Backend(cfg.replace(gateway=gateway))
        await backend.start()
        try:
            assert backend.claim_pool is not None and backend.sender is not None
            return backend.claim_pool.get_stats()["pool_size"], backend.sender.linger_ms
        finally:
            await backend.close()

    assert run(opened({"claim_pool_size": 3, "linger_ms": 1})) == (3, 1)
    assert run(opened({"claim_pool_size": 2, "linger_ms": -1})) == (2, None), "-1: [kafka] linger_ms"
