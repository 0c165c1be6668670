"""The dispatch sweep's decision (services/gateway/undelivered.py) on plain data."""

from __future__ import annotations

from fakes import FakeSweepView

from services.gateway.undelivered import ACTOR, Lease, UndeliveredSweep
from services.loop import Action, perform

NOW = 1_000_000.0


def lease(pid: int, seq: int = 3, state: str = "sent", deliver_by: float = NOW - 1) -> Lease:
    return Lease(pandaid=pid, seq=seq, command_id=f"d{pid}", actor="pilot:x", state=state, deliver_by=deliver_by)


def test_an_overdue_dispatch_whose_job_is_still_sent_or_activated_is_undone():
    view = FakeSweepView([lease(1), lease(2, state="claimed"), lease(3)],
                         {1: ("sent", 4), 2: ("activated", 3), 3: ("sent", 6)})   # 3: a set/kill signal since
    out = UndeliveredSweep().tick(NOW, view)
    assert len(out) == 1 and isinstance(out[0], Action)
    cmds = perform(out)
    assert [(c.PandaID, c.action, c.undoes, c.actor) for c in cmds] == [
        (1, "undispatch", "d1", ACTOR), (2, "undispatch", "d2", ACTOR), (3, "undispatch", "d3", ACTOR)]
    assert view.undone == [(1, "d1"), (2, "d2"), (3, "d3")] and view.forgotten == []
    assert "d1" in cmds[0].reason and "pilot:x" in cmds[0].reason


def test_a_lease_not_yet_due_is_left_alone():
    view = FakeSweepView([lease(1, deliver_by=NOW + 0.5)], {1: ("sent", 4)})
    assert UndeliveredSweep().tick(NOW, view) == []
    assert perform(UndeliveredSweep().tick(NOW + 1, view))[0].PandaID == 1


def test_a_job_that_moved_on_is_never_undone_its_lease_is_forgotten():
    # a pilot spoke (starting/running), the job was killed or reset, undone and activated again, or is gone
    view = FakeSweepView([lease(1), lease(2), lease(3), lease(4), lease(5)],
                         {1: ("starting", 5), 2: ("running", 6), 3: ("cancelled", 5), 4: ("activated", 5)})
    out = UndeliveredSweep().tick(NOW, view)
    assert perform(out) == []
    assert view.forgotten == [(1, "d1"), (2, "d2"), (3, "d3"), (4, "d4"), (5, "d5")] and view.undone == []


def test_nothing_overdue_means_no_output():
    assert UndeliveredSweep().tick(NOW, FakeSweepView([], {})) == []


def test_a_lease_delivered_between_the_read_and_the_mark_is_not_undone():
    view = FakeSweepView([lease(1), lease(2)], {1: ("sent", 4), 2: ("sent", 4)}, delivered=frozenset({(1, "d1")}))
    cmds = perform(UndeliveredSweep().tick(NOW, view))
    assert [c.PandaID for c in cmds] == [2] and view.undone == [(2, "d2")]
