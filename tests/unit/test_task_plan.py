"""The pure plan of JEDI's task operations: which job gets which command."""

from __future__ import annotations

import pytest

from schemas.messages import Kill, Transition
from services.gateway.tasks import plan

JOBS = [(1, "defined"), (2, "activated"), (3, "throttled"), (4, "running"), (5, "finished"), (6, "holding")]


def _shape(cmds):
    return [(c.PandaID, "kill" if isinstance(c, Kill) else c.action, getattr(c, "code", None)) for c in cmds]


def test_kill_touches_every_unfinished_job_with_jedis_code():
    assert _shape(plan("kill", JOBS, actor="user:a")) == [(i, "kill", 50) for i in (1, 2, 3, 4, 6)]
    assert [c.code for c in plan("kill_unfinished_jobs", JOBS, actor="u", code=9)] == [9] * 5
    assert [c.code for c in plan("kill_unfinished_jobs", JOBS, actor="u")] == [None] * 5


def test_reassign_resets_queued_jobs_and_kills_running_ones_unless_soft():
    cmds = plan("reassign", JOBS, actor="u", site="SITE_B")
    assert _shape(cmds) == [(1, "reset", None), (2, "reset", None), (3, "reset", None), (4, "kill", 51)]
    assert all(c.attrs == {"computingSite": "SITE_B"} for c in cmds if isinstance(c, Transition))
    for mode in ("soft", "nokill"):
        assert [c.PandaID for c in plan("reassign", JOBS, actor="u", mode=mode)] == [1, 2, 3]
    assert plan("reassign", [(1, "defined")], actor="u")[0].attrs == {}
    with pytest.raises(ValueError, match="mode"):
        plan("reassign", JOBS, actor="u", mode="sideways")


def test_priority_pause_resume_finish():
    cmds = plan("change_priority", JOBS, actor="u", priority=7)
    assert [c.PandaID for c in cmds] == [1, 2, 3, 4, 6] and all(c.attrs == {"currentPriority": 7} for c in cmds)
    assert _shape(plan("pause", JOBS, actor="u")) == [(2, "throttle", None)]
    assert _shape(plan("resume", JOBS, actor="u")) == [(3, "unthrottle", None)]
    assert [c.PandaID for c in plan("finish", JOBS, actor="u", soft=True)] == [1, 2, 3]
    assert [c.code for c in plan("finish", JOBS, actor="u")] == [55] * 5
    with pytest.raises(ValueError):
        plan("change_priority", JOBS, actor="u")
    with pytest.raises(ValueError):
        plan("explode", JOBS, actor="u")
