"""Activator: two copies against the real broker and database (its decisions: tests/unit/test_activator.py)."""

from __future__ import annotations

from collections import Counter

from helpers import all_events, wait_for_no_lag, wait_until

from core import db
from core.bus import CommandSender
from core.ledger import Ledger
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Submit, Transition
from services.loop import ServiceLoop
from services.reactors import activator, datasets
from services.reactors.activator import Activator


def test_two_activators_share_assigned_jobs_without_double_activation(cfg, tmp_path, background):
    cfg = cfg.replace(plugins={"default": "dummy"})
    background.start(Ledger(cfg, instance="a", snapshot=partition_snapshot).run, "ledger")
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
    # every command the copies sent is judged and projected: they read every event, the ledger every command
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-{Activator.name}", cfg.kafka.events_topic)
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-ledger", cfg.kafka.commands_topic)
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-projector", cfg.kafka.events_topic)
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
