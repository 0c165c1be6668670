"""Activator decisions on plain data (no Kafka, no database)."""

from __future__ import annotations

import time

from fakes import FakePlugin, FakeView, queue

from schemas.jobspec import FileSpec
from schemas.messages import JobTransitioned
from services.loop import Action
from services.reactors.activator import Activator, Assigned, QuietSpell, may_skip


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


class QuietView(FakeView):
    """A FakeView that counts the activator's checks of assigned jobs and remembers quiet spells."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.quiet = QuietSpell()
        self.checks = 0

    def assigned(self, partitions, limit):
        self.checks += 1
        return super().assigned(partitions, limit)


def test_at_rest_the_clock_checks_every_idle_period_until_a_job_is_assigned():
    plugin = FakePlugin(ready=set())
    view = QuietView([queue("SITE")], plugin, assigned=[])
    a = Activator(resend_after=30, idle_period=60)
    t = time.time()
    commands(a.tick(t, view))
    assert view.checks == 1 and view.quiet.none_at == t
    commands(a.tick(t + 1, view))
    assert view.checks == 1, "nothing assigned, nothing assigned since: no check"
    assert ("pump", None) in plugin.calls, "transfers still advance every period"
    commands(a.tick(t + 61, view))
    assert view.checks == 2, "still checked every idle_period"
    commands(a.decide(assigned_event(7, "dis.slow"), view))     # blocks not ready: the clock must look again
    view._assigned = [Assigned(PandaID=7, blocks={"dis.slow": ["x"]})]
    commands(a.tick(t + 62, view))
    commands(a.tick(t + 63, view))
    assert view.checks == 4, "a job held waiting for its blocks keeps the check every period"
    plugin.ready.add("dis.slow")
    assert [c.PandaID for c in commands(a.tick(t + 64, view))] == [7]


def test_may_skip_only_after_a_settled_empty_check_of_the_same_partitions():
    assert may_skip(10, {1}, 5, {1}, 0, 3, 30)
    assert not may_skip(10, {1}, None, None, 0, 3, 30), "never checked"
    assert not may_skip(10, {1, 2}, 5, {1}, 0, 3, 30), "partitions moved"
    assert not may_skip(10, {1}, 5, {1}, 4, 3, 30), "a job assigned just before the check may not be projected yet"
    assert not may_skip(40, {1}, 5, {1}, 0, 3, 30), "the idle period is over"
