"""Setupper with the real broker and database (its decisions and brokerage: tests/unit/test_setupper.py)."""

from __future__ import annotations

import time
from collections import Counter

from helpers import all_events, wait_for_no_lag, wait_until

from cli.logread import log_bounds
from core import bus, db
from core.bus import CommandSender, TopicPartition
from core.ledger import Ledger
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Submit
from services.loop import ServiceLoop
from services.reactors import activator, setupper
from services.reactors.setupper import Setupper

QUEUES = """
[defaults]
vo = "local"
[queues.SITE_A]
cloud = "EU"
plugin = "local"
endpoints = ["A_DISK"]
maxrss = 2000
[queues.SITE_B]
cloud = "EU"
plugin = "local"
endpoints = ["B_DISK"]
maxrss = 16000
[queues.DOWN]
status = "offline"
plugin = "local"
endpoints = ["DOWN_DISK"]
"""


def setup_system(cfg, tmp_path, background, *, setuppers: int = 1, delay: float = 0.5):
    qfile = tmp_path / "queues.toml"
    qfile.write_text(QUEUES)
    cfg = cfg.replace(sites={"file": str(qfile), "cache_ttl": 0.5},
                      plugins={"local_root": str(tmp_path / "storage"), "local_transfer_delay": delay},
                      activator={"period": 0.2})
    from services.sitedata import configurator
    configurator.configure(cfg)
    ledger = Ledger(cfg, instance="s", snapshot=partition_snapshot)
    background.start(ledger.run, "ledger")
    runner = ProjectionRunner(cfg)
    background.start(runner.run, "projector")
    loops = []
    for i in range(setuppers):
        view = setupper.LiveView(cfg)
        loop = ServiceLoop(cfg, Setupper(), view)
        loops.append(loop)
        background.start(_closing(loop, view), f"setupper-{i}")
    aview = activator.LiveView(cfg)
    aloop = ServiceLoop(cfg, activator.Activator(resend_after=5), aview, tick_every=0.2)
    background.start(_closing(aloop, aview), "activator")
    return cfg, loops


def _closing(loop, view):
    def run(stop):
        try:
            loop.run(stop)
        finally:
            loop.close()
            view.close()
    return run


def put(root, endpoint, dataset, lfn):
    path = root / endpoint / dataset / lfn
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lfn)


def job(pid, site=None, ram=None, inputs=()):
    files = [FileSpec(lfn=lfn, type="input", dataset="ds.in") for lfn in inputs]
    files += [FileSpec(lfn=f"out.{pid}", type="output", dataset="user.test.out"),
              FileSpec(lfn=f"log.{pid}", type="log", dataset="user.test.log")]
    return Submit(PandaID=pid, actor="user:test", job=JobSpec(computingSite=site, minRamCount=ram, attemptNr=1,
                                                              jobDefinitionID=pid, Files=files))


def states(cfg) -> dict[int, str]:
    with db.connect(cfg) as conn:
        return dict(conn.execute("SELECT pandaid, status FROM jobs").fetchall())


def test_flow_local_inputs_moved_inputs_failure_and_brokerage(cfg, tmp_path, background):
    root = tmp_path / "storage"
    put(root, "A_DISK", "ds.in", "here.root")       # already at SITE_A
    put(root, "B_DISK", "ds.in", "there.root")      # must move to SITE_A
    put(root, "B_DISK", "ds.in", "b.root")          # brokerage: SITE_B holds it
    cfg, _ = setup_system(cfg, tmp_path, background)
    sender = CommandSender(cfg)
    started = time.monotonic()
    sender.send_many([
        job(1, "SITE_A", inputs=["here.root"]),         # defined → activated
        job(2, "SITE_A", inputs=["there.root"]),        # defined → assigned → activated (after the copy)
        job(3, "SITE_A", inputs=["ghost.root"]),        # the plugin cannot find it → failed, ddmErrorCode 100
        job(4, None, inputs=["b.root"]),                # brokerage: both fit, SITE_B has the data
        job(5, None, ram=4000),                         # brokerage: only SITE_B has the memory
        job(6, None, ram=99999),                        # brokerage: nothing fits → failed
    ])
    sender.flush()
    sender.close()
    want = {1: "activated", 2: "activated", 3: "failed", 4: "activated", 5: "activated", 6: "failed"}
    wait_until(lambda: states(cfg) == want, 60, 0.2, f"states {want}")
    took = time.monotonic() - started
    events = {}
    for _, _, e in all_events(cfg):
        events.setdefault(e.PandaID, []).append(e)
    assert [e.to_state for e in events[2]] == ["defined", "assigned", "activated"]
    assert [e.to_state for e in events[1]] == ["defined", "activated"]
    assert events[2][2].actor == "service:activator" and events[2][2].files[0].status == "ready"
    assert (root / "A_DISK" / "panda.dis.2.SITE_A" / "there.root").is_file(), "the input really moved"
    fail3 = events[3][1]
    assert fail3.attrs["ddmErrorCode"] == 100 and "ghost.root" in fail3.attrs["ddmErrorDiag"]
    assert events[4][1].attrs["computingSite"] == "SITE_B" and "1/1 inputs local" in events[4][1].reason
    assert events[5][1].attrs["computingSite"] == "SITE_B"
    assert "SITE_A: memory 4000 MB > maxrss 2000" in events[5][1].reason
    assert events[6][1].attrs["brokerageErrorCode"] == 100 and "DOWN: offline" in events[6][1].reason
    with db.connect(cfg) as conn:
        ds = dict(conn.execute("SELECT name, status FROM datasets WHERE type = 'dispatch'").fetchall())
        subs = conn.execute("SELECT name, nfiles, parent FROM datasets WHERE type = 'sub' ORDER BY name").fetchall()
        files = dict(conn.execute("SELECT lfn, dispatch_dblock FROM files WHERE type = 'input'").fetchall())
    assert ds == {"panda.dis.2.SITE_A": "completed"}
    assert ("user.test.out_sub000001", 1, "user.test.out") in subs
    assert files["there.root"] == "panda.dis.2.SITE_A"
    print(f"six jobs set up in {took:.1f}s (transfer delay 0.5s)")


def test_two_setuppers_share_the_work_without_double_actions(cfg, tmp_path, background):
    cfg, loops = setup_system(cfg, tmp_path, background, setuppers=2, delay=0)
    ids = list(range(100, 160))
    sender = CommandSender(cfg)
    sender.send_many([job(i, "SITE_A") for i in ids])
    sender.flush()
    sender.close()
    wait_until(lambda: Counter(states(cfg).values()) == {"activated": len(ids)}, 90, 0.3, "all activated")
    # a second setup of a job would show now: both copies read every event, the ledger judged every command
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-{Setupper.name}", cfg.kafka.events_topic)
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-ledger", cfg.kafka.commands_topic)
    events = [e for _, _, e in all_events(cfg) if e.actor == "service:setupper"]
    assert Counter(e.PandaID for e in events) == {i: 1 for i in ids}, "one setup per job"
    assert all(loop.stats["actions"] > 0 for loop in loops), "both copies should have owned partitions"
    # one setup per job: one command each (a poll's jobs are set up by one Action, so Actions are fewer)
    assert sum(loop.stats["commands"] for loop in loops) == len(ids)


def test_replay_decides_but_does_not_act(cfg, tmp_path, background):
    cfg, _ = setup_system(cfg, tmp_path, background, delay=0)
    sender = CommandSender(cfg)
    sender.send_many([job(300, "SITE_A")])
    sender.flush()
    sender.close()
    wait_until(lambda: states(cfg).get(300) == "activated", 60, 0.2)
    (tmp_path / "storage" / "A_DISK" / "user.test.out_sub000300").rmdir()
    replay_cfg = cfg.replace(kafka={"group_prefix": cfg.kafka.group_prefix + "-replay"})
    view = setupper.LiveView(replay_cfg)
    loop = ServiceLoop(replay_cfg, Setupper(), view, replay=True)
    try:
        wait_until(lambda: loop.step(500) or loop.stats["events"] >= 3, 60, 0, "replay to read the log")
    finally:
        loop.close()
        view.close()
    assert loop.stats["commands"] == 0 and loop.stats["actions"] == 0
    assert not (tmp_path / "storage" / "A_DISK" / "user.test.out_sub000300").exists(), "replay touched storage"


def test_sweep_sets_up_jobs_whose_events_the_setupper_skipped(cfg, tmp_path, background):
    """After a restore the setupper's group starts at the end of the log: the jobs submitted before are
    never decided from their events. The clock-driven sweep finds them in the jobs projection."""
    cfg, _ = setup_system(cfg, tmp_path, background, setuppers=0, delay=0)
    ids = list(range(500, 540))
    sender = CommandSender(cfg)
    sender.send_many([job(i, "SITE_A") for i in ids])
    sender.flush()
    sender.close()
    wait_until(lambda: Counter(states(cfg).values()) == {"defined": len(ids)}, 60, 0.2, "all defined")
    # what `pandaes restore` does to every service group: history is not news to them
    topic = cfg.kafka.events_topic
    _, end = log_bounds(cfg)
    group = f"{cfg.kafka.group_prefix}-{Setupper.name}"
    c = bus.consumer(cfg, group_id=group)
    try:
        c.commit({TopicPartition(topic, p): off for p, off in end.items()})
    finally:
        c.close()
    view = setupper.LiveView(cfg)
    loop = ServiceLoop(cfg, Setupper(sweep_after=0.5, sweep_batch=100), view, tick_every=0.2)
    background.start(_closing(loop, view), "setupper")
    wait_until(lambda: Counter(states(cfg).values()) == {"activated": len(ids)}, 60, 0.2, "all activated")
    assert loop.stats["ticks"] > 0
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-ledger", cfg.kafka.commands_topic)
    events = [e for _, _, e in all_events(cfg) if e.actor == "service:setupper"]
    assert Counter(e.PandaID for e in events) == {i: 1 for i in ids}, "one setup per job"
