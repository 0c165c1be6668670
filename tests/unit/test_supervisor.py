"""The supervisor's restart back-off grows with crashes in a row and resets after a healthy period; what
`pandaes run` starts, and never two writers of the projections."""

from __future__ import annotations

from cli.components import DEFAULT, Supervisor, default_components, projections_apart
from core import config


def test_the_back_off_resets_after_a_healthy_period():
    sup = Supervisor(["projector"], env={})
    sup.started["projector"] = 0.0
    assert [sup.next_delay("projector", 1.0) for _ in range(6)] == [2, 4, 8, 16, 30, 30]
    sup.started["projector"] = 100.0
    assert sup.next_delay("projector", 100.0 + Supervisor.HEALTHY_AFTER - 1) == 30   # crashed soon again
    sup.started["projector"] = 200.0
    assert sup.next_delay("projector", 200.0 + Supervisor.HEALTHY_AFTER) == 2        # ran long enough: reset
    assert sup.restarts["projector"] == 1


def test_pandaes_run_starts_no_projector_process_where_the_reactors_apply_the_projections():
    hosted = config.load().replace(reactors={"projector": True})
    apart = config.load().replace(reactors={"projector": False})
    assert "projector" not in default_components(hosted) and "reactors" in default_components(hosted)
    assert default_components(apart) == DEFAULT and "projector" in DEFAULT


def test_a_projector_named_beside_the_reactors_keeps_the_reactors_from_writing_the_projections_too():
    env = {"PATH": "/bin"}
    both = Supervisor(["ledger", "projector", "reactors"], env=env)
    assert both.env["PANDAES_REACTORS_PROJECTOR"] == "false" and env == {"PATH": "/bin"}   # the caller's untouched
    assert "PANDAES_REACTORS_PROJECTOR" not in Supervisor(["ledger", "reactors"], env=env).env
    assert "PANDAES_REACTORS_PROJECTOR" not in projections_apart(["ledger", "projector"], env)
