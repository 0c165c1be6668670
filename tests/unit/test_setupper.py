"""Setupper and brokerage decisions on plain data (no Kafka, no database)."""

from __future__ import annotations

import functools

from fakes import FakePlugin, FakeView, queue

from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import JobSubmitted, JobTransitioned, Transition
from services.loop import Action
from services.reactors.setupper import Setupper
from services.sitedata import brokerage
from services.sitedata.brokerage import Needs


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


def test_action_without_on_error_propagates():
    boom = Action(label="x", steps=(functools.partial(int, "not a number"),),
                  then=(Transition(PandaID=1, action="activate"),))
    try:
        boom.execute()
    except ValueError:
        pass
    else:
        raise AssertionError("expected the step's error")


# ----------------------------------------------------------------------------------------- the sweep
class SweepView(FakeView):
    """FakeView plus the sweep's reads: ``defined`` maps PandaID → (seq, defined since)."""

    def __init__(self, *args, defined: dict[int, tuple[int, float]], **kw):
        super().__init__(*args, **kw)
        self.defined = defined
        self.swept: dict[int, float] = {}

    def stale_defined(self, partitions, before, limit):
        rows = sorted((since, pid, seq) for pid, (seq, since) in self.defined.items() if since < before)
        return [(pid, seq) for _, pid, seq in rows][:limit]

    def swept_since(self, since):
        return {pid for pid, at in self.swept.items() if at >= since}

    def mark_swept(self, pandaids, at):
        self.swept.update(dict.fromkeys(pandaids, at))


def test_sweep_decides_old_defined_jobs_once_per_window_from_the_projection():
    jobs = {pid: ({"PandaID": pid, "computingSite": "SITE"}, [{"lfn": f"log.{pid}", "type": "log"}])
            for pid in (21, 22, 23)}
    view = SweepView([queue("SITE")], FakePlugin(), jobs=jobs,
                     defined={21: (1, 100.0), 22: (1, 150.0), 23: (1, 195.0)})
    s = Setupper(sweep_after=30.0, sweep_batch=10)
    out = s.tick(200.0, view)
    cmds = run_actions(out)
    assert sorted(c.PandaID for c in cmds) == [21, 22], "only jobs defined for longer than sweep_after"
    assert all(c.action == "activate" and c.actor == "service:setupper" for c in cmds)
    assert view.swept == {21: 200.0, 22: 200.0}
    assert run_actions(s.tick(210.0, view)) == [], "not again before sweep_after has passed"
    again = run_actions(s.tick(231.0, view))
    assert sorted(c.PandaID for c in again) == [21, 22, 23], "still defined a window later: decided again"


def test_sweep_does_nothing_without_partitions_or_candidates():
    view = SweepView([queue("SITE")], FakePlugin(), defined={})
    s = Setupper(sweep_after=1.0)
    assert s.tick(100.0, view) == []
    view.defined = {5: (1, 0.0)}
    view.partitions = set()
    assert s.tick(100.0, view) == [], "owns no partition: another copy sweeps"


def test_a_batch_sets_up_every_job_with_one_datasets_write_and_fails_only_the_refused_one():
    plugin = FakePlugin(replicas={f"in.{i}": {"SITE_DISK"} for i in (1, 2, 3)}, refuse={"user.out_sub000002"})
    view = FakeView([queue("SITE")], plugin)
    out = Setupper().decide_batch([submitted(i, computingSite="SITE") for i in (1, 2, 3)], view)
    assert len(out) == 1 and isinstance(out[0], Action) and plugin.calls == [], "decide only plans"
    cmds = {c.PandaID: c for c in run_actions(out)}
    assert cmds[1].action == cmds[3].action == "activate"
    assert cmds[2].action == "fail" and cmds[2].attrs["ddmErrorCode"] == 100
    [(blocks, files, actor)] = view.datasets.records           # one write for the poll
    assert actor == "service:setupper"
    assert {f.pandaid for f in files} == {1, 3}
    names = [b.name for b in blocks]
    assert len(names) == len(set(names)) and {"user.out", "user.log", "user.out_sub000001"} <= set(names)
    assert "user.out_sub000002" not in names
