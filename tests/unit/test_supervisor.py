"""The supervisor's restart back-off grows with crashes in a row and resets after a healthy period."""

from __future__ import annotations

from cli.components import Supervisor


def test_the_back_off_resets_after_a_healthy_period():
    sup = Supervisor(["projector"], env={})
    sup.started["projector"] = 0.0
    assert [sup.next_delay("projector", 1.0) for _ in range(6)] == [2, 4, 8, 16, 30, 30]
    sup.started["projector"] = 100.0
    assert sup.next_delay("projector", 100.0 + Supervisor.HEALTHY_AFTER - 1) == 30   # crashed soon again
    sup.started["projector"] = 200.0
    assert sup.next_delay("projector", 200.0 + Supervisor.HEALTHY_AFTER) == 2        # ran long enough: reset
    assert sup.restarts["projector"] == 1
