"""Setupper and brokerage: decisions on plain data, then the loop with the real broker and database."""

from __future__ import annotations

import functools
import time
from collections import Counter

from helpers import all_events, wait_until
from setup_support import FakePlugin, FakeView, queue

from core import db
from core.bus import CommandSender
from core.ledger import Ledger
from projections.runner import ProjectionRunner
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import JobSubmitted, JobTransitioned, Submit, Transition
from services import activator, brokerage, setupper
from services.base import Action, ServiceLoop
from services.brokerage import Needs
from services.setupper import Setupper


def submitted(pid: int, **attrs) -> JobSubmitted:
    files = attrs.pop("Files", [
        FileSpec(lfn=f"in.{pid}", type="input", dataset="ds.in"),
        FileSpec(lfn=f"out.{pid}", type="output", dataset="user.out"),
        FileSpec(lfn=f"log.{pid}", type="log", dataset="user.log"),
    ])
    job = JobSpec(PandaID=pid, jobStatus="defined", Files=files, **attrs)
    return JobSubmitted(PandaID=pid, seq=1, from_state="new", to_state="defined", command_id="c", job=job)


def run_actions(outputs) -> list:
    """What the loop does: execute each action and collect the commands it lets through."""
    cmds = []
    for item in outputs:
        cmds += item.execute() if isinstance(item, Action) else [item]
    return cmds


# ------------------------------------------------------------------------------------- brokerage
def test_brokerage_filters_by_status_cloud_and_resources_and_prefers_data():
    qs = [queue("A", cloud="EU", maxrss=2000), queue("B", cloud="EU", maxrss=8000, weight=1),
          queue("C", cloud="US", maxrss=8000), queue("D", status="offline"), queue("E", status="brokeroff"),
          queue("T", status="test"), queue("W", cloud="EU", maxtime=600), queue("K", cloud="EU", corecount=1)]
    needs = Needs(memory=4000, cores=8, walltime=3600, cloud="EU", n_inputs=2)
    choice = brokerage.choose(needs, qs, lambda q: 0)
    assert choice.queue.name == "B"
    assert choice.verdicts == {"A": "memory 4000 MB > maxrss 2000", "B": "ok, 0/2 inputs local",
                               "C": "cloud US != EU", "D": "offline", "E": "brokeroff",
                               "T": "test queue (test jobs only)", "W": "walltime 3600 s > maxtime 600",
                               "K": "cores 8 > corecount 1"}
    assert choice.reason.startswith("brokerage: B v1, 0/2 inputs local, others A: memory 4000 MB > maxrss 2000")
    # data locality beats weight; then weight beats name
    both = [queue("P", weight=0), queue("Q", weight=5)]
    assert brokerage.choose(Needs(n_inputs=3), both, lambda q: 3 if q.name == "P" else 1).queue.name == "P"
    assert brokerage.choose(Needs(n_inputs=3), both, lambda q: 0).queue.name == "Q"
    assert brokerage.choose(Needs(test=True), [queue("T", status="test")], lambda q: 0).queue.name == "T"
    none = brokerage.choose(Needs(memory=10**6), [queue("A", maxrss=10)], lambda q: 0)
    assert none.queue is None and "no queue fits (A: memory" in none.reason
    assert brokerage.failure_attrs(none)["brokerageErrorCode"] == brokerage.EC_NO_QUEUE


def test_needs_from_job_attributes():
    n = brokerage.needs_of({"minRamCount": 1000, "minRamUnit": "MBPerCore", "coreCount": 4, "maxDiskCount": 2,
                            "maxDiskUnit": "GB", "maxWalltime": 60, "cloud": "NULL", "prodSourceLabel": "ptest"})
    assert (n.memory, n.disk, n.cores, n.walltime, n.cloud, n.test) == (4000, 2000, 4, 60, None, True)


# -------------------------------------------------------------------------------------- decisions
def test_input_at_the_site_activates_and_creates_output_blocks():
    plugin = FakePlugin(replicas={"in.7": {"SITE_DISK"}})
    view = FakeView([queue("SITE")], plugin)
    out = Setupper().decide(submitted(7, computingSite="SITE", jobDefinitionID=42), view)
    assert len(out) == 1 and isinstance(out[0], Action)
    assert plugin.calls == [], "decide only plans; the loop runs the action"
    [cmd] = run_actions(out)
    assert cmd.action == "activate" and cmd.actor == "service:setupper" and "1 inputs at SITE_DISK" in cmd.reason
    patches = {f.lfn: f for f in cmd.files}
    assert patches["in.7"].status == "ready" and patches["in.7"].dispatchDBlock is None
    assert patches["out.7"].destinationDBlock == "user.out_sub000042" and patches["out.7"].dataset == "user.out"
    assert patches["log.7"].destinationSE == "SITE_DISK"
    assert plugin.calls == [("prepare_outputs", ["user.out", "user.out_sub000042", "user.log", "user.log_sub000042"])]
    blocks, files, actor = view.datasets.records[0]
    assert {(b.name, b.type, b.parent) for b in blocks} == {
        ("user.out", "destination", None), ("user.out_sub000042", "sub", "user.out"),
        ("user.log", "destination", None), ("user.log_sub000042", "sub", "user.log")}
    assert len(files) == 4 and actor == "service:setupper"


def test_input_elsewhere_assigns_with_a_dispatch_block():
    plugin = FakePlugin(replicas={"in.8": {"OTHER_DISK"}})
    view = FakeView([queue("SITE")], plugin)
    [cmd] = run_actions(Setupper().decide(submitted(8, computingSite="SITE", jobsetID=5), view))
    assert cmd.action == "assign" and cmd.attrs == {"dispatchDBlock": "panda.dis.5.SITE"}
    inp = next(f for f in cmd.files if f.lfn == "in.8")
    assert (inp.dispatchDBlock, inp.status) == ("panda.dis.5.SITE", "pending")
    assert ("prepare_dispatch", ("panda.dis.5.SITE", "SITE_DISK", ["in.8"])) in plugin.calls
    dis = [b for b in view.datasets.records[0][0] if b.type == "dispatch"]
    assert dis[0].name == "panda.dis.5.SITE" and dis[0].endpoint == "SITE_DISK"


def test_plugin_failure_fails_the_job_with_ddm_error_100():
    plugin = FakePlugin(replicas={"in.9": {"OTHER_DISK"}}, fail="the storage is on fire")
    view = FakeView([queue("SITE")], plugin)
    [cmd] = run_actions(Setupper().decide(submitted(9, computingSite="SITE"), view))
    assert cmd.action == "fail" and cmd.attrs["ddmErrorCode"] == 100
    assert "the storage is on fire" in cmd.attrs["ddmErrorDiag"]
    assert view.datasets.records == [], "no blocks recorded for a failed setup"


def test_brokerage_on_the_event_and_unknown_or_unfit_queues_fail():
    plugin = FakePlugin(replicas={"in.1": {"B_DISK"}})
    view = FakeView([queue("A", cloud="EU"), queue("B", cloud="EU"), queue("C", cloud="US")], plugin)
    [cmd] = run_actions(Setupper().decide(submitted(1), view))
    assert cmd.action == "activate" and cmd.attrs["computingSite"] == "B" and cmd.attrs["cloud"] == "EU"
    assert "brokerage: B v1, 1/1 inputs local" in cmd.reason
    # a cloud instead of a queue: only that cloud's queues
    [cmd] = run_actions(Setupper().decide(submitted(2, computingSite="US"), view))
    assert cmd.attrs["computingSite"] == "C" and cmd.action == "assign"
    [cmd] = Setupper().decide(submitted(3, computingSite="NOWHERE"), view)
    assert cmd.action == "fail" and "unknown queue NOWHERE" in cmd.attrs["brokerageErrorDiag"]
    [cmd] = Setupper().decide(submitted(4, minRamCount=10**6, **{"Files": []}), FakeView([queue("A", maxrss=100)],
                                                                                          plugin))
    assert cmd.action == "fail" and cmd.attrs["brokerageErrorCode"] == 100


def test_reset_job_is_set_up_from_the_projection_and_other_events_are_ignored():
    plugin = FakePlugin()
    spec = {"PandaID": 11, "computingSite": "SITE"}
    view = FakeView([queue("SITE")], plugin, jobs={11: (spec, [{"lfn": "log.11", "type": "log"}])})
    reset = JobTransitioned(PandaID=11, seq=4, from_state="activated", to_state="defined", command_id="c",
                            action="reset")
    s = Setupper()
    assert s.wants(reset) and s.wants(submitted(1))
    assert not s.wants(JobTransitioned(PandaID=11, seq=2, from_state="defined", to_state="assigned",
                                       command_id="c", action="assign"))
    [cmd] = run_actions(s.decide(reset, view))
    assert cmd.action == "activate" and cmd.files[0].destinationDBlock == "panda.11.log_sub000011"


def test_given_sub_blocks_are_kept():
    files = [FileSpec(lfn="o", type="output", dataset="example.out", destinationDBlock="example.out_sub01")]
    [cmd] = run_actions(Setupper().decide(submitted(5, computingSite="SITE", Files=files),
                                          FakeView([queue("SITE")], FakePlugin())))
    assert cmd.files[0].destinationDBlock == "example.out_sub01"


# ------------------------------------------------------------------------------- with the real system
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
    from services import configurator
    configurator.configure(cfg)
    ledger = Ledger(cfg, instance="s")
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
    time.sleep(1)
    events = [e for _, _, e in all_events(cfg) if e.actor == "service:setupper"]
    assert Counter(e.PandaID for e in events) == {i: 1 for i in ids}, "one setup per job"
    assert all(loop.stats["actions"] > 0 for loop in loops), "both copies should have owned partitions"
    assert sum(loop.stats["actions"] for loop in loops) == len(ids)


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


def test_action_without_on_error_propagates():
    boom = Action(label="x", steps=(functools.partial(int, "not a number"),),
                  then=(Transition(PandaID=1, action="activate"),))
    try:
        boom.execute()
    except ValueError:
        pass
    else:
        raise AssertionError("expected the step's error")
