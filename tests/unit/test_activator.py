"""Activator decisions on plain data (no Kafka, no database)."""

from __future__ import annotations

import time

from fakes import FakePlugin, FakeView, queue

from schemas.jobspec import FileSpec
from schemas.messages import JobTransitioned
from services.loop import Action
from services.reactors.activator import Activator, Assigned


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
