"""A dispatch whose pilot was never answered is taken back within seconds by the dispatch sweep
(services/gateway/undelivered.py): the gateway died between its dispatch and the HTTP response, so the
job's lease was never marked delivered. The job goes back to ``activated`` (a recorded ``undispatch``)
and the next pilot gets it; a delivered dispatch is never touched; a job told to be killed meanwhile gets
that kill; a ``set`` in between does not stop the undo, even after a ledger rebuilt from the projection."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import urllib.request

from gateway_support import System, auth_headers, post_form, run, start_system
from helpers import wait_until

from core import bus, db
from core.bus import CommandSender
from core.ledger import Ledger
from core.ports import free_port
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.messages import Kill, Transition, decode_command
from services.clock.daemon import Context
from services.gateway import undelivered
from services.gateway.backend import Backend
from services.gateway.dispatcher import Dispatcher, DispatchRequest

REQUEST = DispatchRequest(site="LOCAL", prod_source_label="managed", timeout=30)


def _cfg(cfg):
    # a gateway answers its pilot at most 1 s after the verdict (5 s after a claim without one)
    return cfg.replace(dispatcher={"deliver_grace": 1.0, "dispatch_timeout": 4.0})


def _lease(cfg, pid: int) -> tuple[str, str] | None:
    with db.connect(cfg) as conn:
        row = conn.execute("SELECT state, command_id FROM dispatch_leases WHERE pandaid = %s", (pid,)).fetchone()
    return tuple(row) if row else None


def _sweep_until(cfg, ctx: Context, done, what: str) -> None:
    """Run the daemon's dispatch sweep script until ``done()`` (the sweep acts once a lease is due)."""
    wait_until(lambda: undelivered.run_once(cfg, ctx) >= 0 and done(), 60, 0.2, what)


async def _dying_acquire(cfg, backend: Backend, actor: str, before_verdict: bool) -> int:
    """What a gateway does up to its death: claims a job and sends its dispatch, then dies — before the
    verdict reached it (``before_verdict``) or after it, before the response was written."""
    dispatched: list[int] = []
    seen = asyncio.Event()

    async def ask(cmd, timeout):
        out = await backend.ask(cmd, 30)     # the ledger applies the dispatch …
        dispatched.append(cmd.PandaID)
        seen.set()
        if before_verdict:
            await asyncio.Event().wait()     # … but its verdict never reaches this gateway
        return out

    if not before_verdict:
        result = await Dispatcher(cfg, backend.pool, ask).acquire(REQUEST, actor)
        assert [j.panda_id for j in result.jobs] == dispatched   # and the response is never written
        return dispatched[0]
    task = asyncio.get_running_loop().create_task(Dispatcher(cfg, backend.pool, ask).acquire(REQUEST, actor))
    await seen.wait()
    task.cancel()                             # the process is gone: no cleanup of its own runs
    await asyncio.gather(task, return_exceptions=True)
    return dispatched[0]


def test_a_dispatch_whose_gateway_died_is_undone_and_the_next_pilot_gets_it(cfg, background):
    cfg = _cfg(cfg)
    system = start_system(cfg, background)
    ids = system.activated_jobs(3)
    ctx = Context(cfg)

    async def scenario() -> dict[str, int]:
        backend = Backend(cfg)
        await backend.start()
        try:
            got = {"after": await _dying_acquire(cfg, backend, "pilot-after", before_verdict=False),
                   "before": await _dying_acquire(cfg, backend, "pilot-before", before_verdict=True)}
            # a pilot answered over HTTP: its lease is delivered
            async with system.session() as s:
                status, job = await post_form(s, f"{system.url}/server/panda/getJob",
                                              {"siteName": "LOCAL", "prodSourceLabel": "managed", "node": "wn1"})
            assert status == 200 and job["StatusCode"] == 0, job
            got["delivered"] = job["PandaID"]
            return got
        finally:
            await backend.close()

    try:
        got = run(scenario())
        assert sorted(got.values()) == sorted(ids)
        system.wait_status(ids, "sent")
        # marked behind the answer (the handler returns first): delivered soon after
        wait_until(lambda: _lease(cfg, got["delivered"])[0] == "delivered", 10, 0.05, "the answer's lease delivered")
        # answered by the ledger or not, a lease is claimed until its answer is written
        assert _lease(cfg, got["after"])[0] == "claimed" and _lease(cfg, got["before"])[0] == "claimed"

        # the sweep takes both undelivered dispatches back (the claim without a verdict is due last)
        _sweep_until(cfg, ctx, lambda: set(system.status([got["after"], got["before"]]).values()) == {"activated"},
                     "both undelivered dispatches undone")
        for key in ("after", "before"):
            last = system.events(got[key])[-1]
            assert (last["action"], last["actor"], last["from_state"], last["to_state"]) == (
                "undispatch", undelivered.ACTOR, "sent", "activated")
            assert last["body"]["reason"].startswith(f"dispatch {_lease(cfg, got[key])[1]} to pilot-{key}")
            assert _lease(cfg, got[key])[0] == "undone"
        # the delivered dispatch was due long ago, and is left alone
        assert system.status([got["delivered"]]) == {got["delivered"]: "sent"}
        assert [e["action"] for e in system.events(got["delivered"])][-1] == "dispatch"
        assert undelivered.run_once(cfg, ctx) == 0

        # the next pilots get the two jobs back
        async def next_pilots() -> list[int]:
            backend = Backend(cfg)
            await backend.start()
            try:
                d = Dispatcher(cfg, backend.pool, backend.ask)
                return [j.panda_id for _ in range(2) for j in (await d.acquire(REQUEST, "pilot-next")).jobs]
            finally:
                await backend.close()

        assert sorted(run(next_pilots())) == sorted([got["after"], got["before"]])
        system.wait_status([got["after"], got["before"]], "sent")   # the projection has the verdicts' events
        for key in ("after", "before"):
            wait_until(lambda k=key: [e["action"] for e in system.events(got[k])][-3:] == ["dispatch", "undispatch",
                                                                                          "dispatch"],
                       30, 0.1, f"the {key} job dispatched again in the projection")
    finally:
        ctx.close()


def test_an_undelivered_dispatch_of_a_job_told_to_be_killed_becomes_that_kill(cfg, background):
    cfg = _cfg(cfg)
    system = start_system(cfg, background)
    (pid,) = system.activated_jobs(1)
    ctx = Context(cfg)

    async def scenario() -> int:
        backend = Backend(cfg)
        await backend.start()
        try:
            return await _dying_acquire(cfg, backend, "pilot-gone", before_verdict=False)
        finally:
            await backend.close()

    try:
        assert run(scenario()) == pid
        sender = CommandSender(cfg)
        try:
            sender.send(Kill(PandaID=pid, code=51, actor="jedi", reason="reassign"))
            sender.flush()
        finally:
            sender.close()
        wait_until(lambda: system.events(pid)[-1]["action"] == "kill_signal", 60, 0.1, "kill signal")
        _sweep_until(cfg, ctx, lambda: system.status([pid])[pid] == "closed", "the undo became the kill")
        last = system.events(pid)[-1]
        assert (last["action"], last["from_state"], last["body"]["kill_code"]) == ("kill_close", "sent", 51)
        assert last["body"]["attrs"]["jobSubStatus"] == "toreassign"
    finally:
        ctx.close()


def test_a_set_between_dispatch_and_undo_does_not_stop_the_undo_after_a_ledger_rebuild(cfg, background):
    cfg = _cfg(cfg)
    ledger_stop = background.run(Ledger(cfg, instance="sweep-a", snapshot=partition_snapshot), "ledger-a")
    runner = ProjectionRunner(cfg)
    background.start(runner.run, "projector")
    system = System(cfg, "", runner)
    (pid,) = system.activated_jobs(1)
    ctx = Context(cfg)

    async def scenario() -> int:
        backend = Backend(cfg)
        await backend.start()
        try:
            return await _dying_acquire(cfg, backend, "pilot-gone", before_verdict=False)
        finally:
            await backend.close()

    try:
        assert run(scenario()) == pid
        sender = CommandSender(cfg)
        try:
            sender.send(Transition(PandaID=pid, action="set", actor="operator", attrs={"currentPriority": 5}))
            sender.flush()
        finally:
            sender.close()
        wait_until(lambda: system.events(pid)[-1]["action"] == "set", 60, 0.1, "the set projected")
        # the ledger restarts: it rebuilds the job from the jobs projection (the set is its last command)
        background.stop(ledger_stop)
        background.run(Ledger(cfg, instance="sweep-b", snapshot=partition_snapshot), "ledger-b")
        with db.connect(cfg) as conn:
            rows = {r.pandaid: r for p in range(cfg.kafka.partitions)
                    for r in partition_snapshot(conn, cfg.kafka.events_topic, p).jobs}
        assert rows[pid].dispatch_id == _lease(cfg, pid)[1], "the snapshot names the dispatch, not the set"
        _sweep_until(cfg, ctx, lambda: system.status([pid])[pid] == "activated", "undone after the rebuild")
        assert [e["action"] for e in system.events(pid)][-3:] == ["dispatch", "set", "undispatch"]
    finally:
        ctx.close()


def _env(cfg, port: int) -> dict[str, str]:
    env = dict(os.environ)
    for section in ("kafka", "db", "state"):
        for key, value in getattr(cfg, section).as_dict().items():
            env[f"PANDAES_{section.upper()}_{key.upper()}"] = str(value)
    # a verdict is waited for 20 s: the gateway is killed well before its own wait would run out
    return {**env, "PANDAES_HTTP_HOST": "127.0.0.1", "PANDAES_HTTP_PORT": str(port), "PANDAES_METRICS_ENABLED": "false",
            "PANDAES_DISPATCHER_DISPATCH_TIMEOUT": "20", "PANDAES_DISPATCHER_DELIVER_GRACE": "1"}


def _dispatch_sent(cfg, pid: int) -> bool:
    for p in bus.partitions(cfg, cfg.kafka.commands_topic):
        for rec in bus.read_partition(cfg, cfg.kafka.commands_topic, p, 0):
            cmd = decode_command(rec.value)
            if cmd.PandaID == pid and getattr(cmd, "action", None) == "dispatch":
                return True
    return False


def test_a_gateway_process_killed_while_it_waits_for_the_verdict(cfg, background):
    """The real thing: a gateway process SIGKILLed after it claimed the job and sent its dispatch, while the
    ledger is down; the ledger comes back and applies the dispatch; the sweep takes it back."""
    cfg = _cfg(cfg)
    ledger_stop = background.run(Ledger(cfg, instance="kill-a", snapshot=partition_snapshot), "ledger-a")
    runner = ProjectionRunner(cfg)
    background.start(runner.run, "projector")
    system = System(cfg, "", runner)
    (pid,) = system.activated_jobs(1)
    background.stop(ledger_stop)                     # verdicts wait until a ledger runs again
    port = free_port()
    gateway = subprocess.Popen([sys.executable, "-m", "cli.main", "component", "gateway"], env=_env(cfg, port))
    ctx = Context(cfg)
    try:
        url = f"http://127.0.0.1:{port}/server/panda"

        def alive() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/isAlive", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_until(alive, 60, 0.2, "the gateway process listening")
        answer: list = []

        def pilot() -> None:
            req = urllib.request.Request(f"{url}/getJob", data=b"siteName=LOCAL&node=wn1", method="POST",
                                         headers=auth_headers(cfg))
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    answer.append(resp.read())
            except OSError as exc:          # the connection dies with the gateway
                answer.append(exc)

        asking = threading.Thread(target=pilot, daemon=True)
        asking.start()
        wait_until(lambda: _dispatch_sent(cfg, pid), 30, 0.1, "the gateway's dispatch on the command topic")
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(30)
        asking.join(30)
        assert answer and isinstance(answer[0], OSError), answer     # the pilot never got the job
        assert _lease(cfg, pid)[0] == "claimed"

        background.run(Ledger(cfg, instance="kill-b", snapshot=partition_snapshot), "ledger-b")
        system.wait_status([pid], "sent")                              # the dispatch is applied after all …
        _sweep_until(cfg, ctx, lambda: system.status([pid])[pid] == "activated", "the dispatch taken back")
        last = system.events(pid)[-1]
        assert (last["action"], last["actor"]) == ("undispatch", undelivered.ACTOR)
    finally:
        if gateway.poll() is None:
            gateway.kill()
        ctx.close()
