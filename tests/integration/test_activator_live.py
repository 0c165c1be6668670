"""Activator: decisions on plain data, then two copies against the real broker and database."""

from __future__ import annotations

import time
from collections import Counter

from helpers import all_events, wait_until
from setup_support import FakePlugin, FakeView, queue

from core import db
from core.bus import CommandSender
from core.ledger import Ledger
from projections.runner import ProjectionRunner
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import JobTransitioned, Submit, Transition
from services import activator, datasets
from services.activator import Activator, Assigned
from services.base import Action, ServiceLoop


def commands(outputs) -> list:
    out = []
    for item in outputs:
        out += item.execute() if isinstance(item, Action) else [item]
    return out


def assigned_event(pid: int, block: str) -> JobTransitioned:
    return JobTransitioned(PandaID=pid, seq=2, from_state="defined", to_state="assigned", command_id="c",
                           action="assign", files=[FileSpec(lfn=f"in.{pid}", type="input", dispatchDBlock=block,
                                                            status="pending")])


def test_event_activates_only_when_the_block_is_complete():
    view = FakeView([queue("SITE")], FakePlugin(ready={"dis.ok"}))
    a = Activator()
    assert a.wants(assigned_event(1, "dis.ok"))
    assert a.decide(assigned_event(1, "dis.waiting"), view) == []
    [cmd] = commands(a.decide(assigned_event(2, "dis.ok"), view))
    assert cmd.action == "activate" and cmd.files[0].status == "ready" and "dis.ok" in cmd.reason
    assert view.datasets.completed == [["dis.ok"]]


def test_tick_activates_ready_jobs_in_bulk_and_does_not_resend():
    plugin = FakePlugin(ready={"dis.a"})
    jobs = [Assigned(PandaID=1, blocks={"dis.a": ["x"]}), Assigned(PandaID=2, blocks={"dis.a": ["y"]}),
            Assigned(PandaID=3, blocks={"dis.a": ["z"], "dis.b": ["w"]}), Assigned(PandaID=4, blocks={})]
    view = FakeView([queue("SITE")], plugin, assigned=jobs)
    a = Activator(resend_after=60)
    out = a.tick(time.time(), view)
    assert isinstance(out[0], Action) and out[0].label == "advance transfers"
    cmds = commands(out)
    assert sorted(c.PandaID for c in cmds) == [1, 2, 4], "3 still waits for dis.b"
    assert ("pump", None) in plugin.calls and view.datasets.completed == [["dis.a"]]
    assert commands(a.tick(time.time(), view)) == [], "sent activations are not repeated while in flight"
    plugin.ready.add("dis.b")
    assert [c.PandaID for c in commands(a.tick(time.time(), view))] == [3]
    view.partitions = set()
    assert commands(Activator().tick(time.time(), view)) == [], "a copy that owns no partition does nothing"


def test_two_activators_share_assigned_jobs_without_double_activation(cfg, tmp_path, background):
    cfg = cfg.replace(plugins={"default": "dummy"})
    background.start(Ledger(cfg, instance="a").run, "ledger")
    runner = ProjectionRunner(cfg)
    background.start(runner.run, "projector")
    ids = list(range(2000, 2080))
    block = "panda.dis.77.SITE"
    with db.connect(cfg, autocommit=True) as conn:
        datasets.record(conn, [datasets.Block(name=block, type="dispatch", site="SITE", plugin="dummy")],
                        [datasets.BlockFile(dataset=block, pandaid=i, lfn=f"in.{i}", type="input", status="pending")
                         for i in ids], "test")
    # assigned by "someone" before any activator runs: only the clock path can pick them up
    sender = CommandSender(cfg)
    for i in ids:
        sender.send(Submit(PandaID=i, actor="test", job=JobSpec(computingSite="SITE", Files=[
            FileSpec(lfn=f"in.{i}", type="input", dataset="ds")])))
        sender.send(Transition(PandaID=i, action="assign", actor="test", attrs={"dispatchDBlock": block},
                               files=[FileSpec(lfn=f"in.{i}", type="input", dispatchDBlock=block, status="pending")]))
    sender.flush()
    sender.close()

    def assigned_count():
        with db.connect(cfg) as conn:
            return conn.execute("SELECT count(*) FROM jobs WHERE status = 'assigned'").fetchone()[0] == len(ids)
    wait_until(assigned_count, 60, 0.2, "jobs assigned in the projection")
    loops = []
    for n in range(2):
        view = activator.LiveView(cfg)
        loop = ServiceLoop(cfg, Activator(resend_after=30), view, tick_every=0.2)
        loops.append(loop)

        def run(stop, loop=loop, view=view):
            try:
                loop.run(stop)
            finally:
                loop.close()
                view.close()
        background.start(run, f"activator-{n}")

    def all_active():
        with db.connect(cfg) as conn:
            return conn.execute("SELECT count(*) FROM jobs WHERE status = 'activated'").fetchone()[0] == len(ids)
    wait_until(all_active, 60, 0.2, "all activated")
    time.sleep(1.0)
    acts = [e for _, _, e in all_events(cfg) if e.actor == "service:activator"]
    # the action happens once per job: the ledger records exactly one activation each
    assert Counter(e.PandaID for e in acts) == {i: 1 for i in ids}
    # Commands may repeat while partitions move from the first copy to the second (the second's clock
    # sees jobs the projection still shows assigned); the ledger rejects the repeats as illegal.
    sent = sum(loop.stats["commands"] for loop in loops)
    print(f"activate commands sent by the two copies: {sent} for {len(ids)} jobs")
    assert sent >= len(ids)
    assert all(loop.stats["commands"] > 0 for loop in loops), "both copies should have owned partitions"
    with db.connect(cfg) as conn:
        row = conn.execute("SELECT status, nfiles, nfiles_done FROM datasets WHERE name = %s", (block,)).fetchone()
        ready = conn.execute("SELECT count(*) FROM files WHERE status = 'ready'").fetchone()[0]
    assert row == ("completed", len(ids), len(ids)) and ready == len(ids)
