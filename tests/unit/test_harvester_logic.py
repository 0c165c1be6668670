"""Harvester's side without infrastructure: repeated parameters, worker records, the kill decision."""

from __future__ import annotations

import pytest

from schemas.messages import JobTransitioned, JobUpdated
from services.gateway.params import multi_dict
from services.harvester import killer, store
from services.loop import Action, perform


def test_repeated_names_become_lists_and_single_ones_stay_values():
    got = multi_dict([("job_ids", "1"), ("site", "A"), ("job_ids", "2"), ("job_ids", "3")])
    assert got == {"job_ids": ["1", "2", "3"], "site": "A"}
    assert multi_dict([("job_ids", "7")]) == {"job_ids": "7"}


def test_worker_row_needs_a_worker_id_and_keeps_every_field():
    row = store.worker_row("h1", {"workerID": "12", "status": "running", "computingSite": "Q", "nJobs": 2,
                                  "pandaid_list": [5], "batchID": "b7"})
    assert row[:7] == ("h1", 12, "Q", "running", None, None, 2)
    assert row[7].obj == {"workerID": "12", "status": "running", "computingSite": "Q", "nJobs": 2, "batchID": "b7"}
    with pytest.raises(store.BadWorker):
        store.worker_row("h1", {"status": "running"})


def test_worker_statistics_shape_is_checked():
    rows = store.stats_rows("h1", "Q", {"managed": {"SCORE": {"running": 3, "submitted": 1}}})
    assert sorted(rows) == [("h1", "Q", "managed", "SCORE", "running", 3),
                            ("h1", "Q", "managed", "SCORE", "submitted", 1)]
    with pytest.raises(ValueError):
        store.stats_rows("h1", "Q", {"managed": 5})


class _View:
    def __init__(self, workers):
        self.workers = workers
        self.queued: list[tuple] = []

    def workers_of(self, pandaid):
        return self.workers.get(pandaid, [])

    def add_command(self, harvester_id, command, params, dedup_key):
        self.queued.append((harvester_id, command, params, dedup_key))
        return len(self.queued)


def _kill_event(action="kill_signal", from_state="running", to_state="running"):
    cls = JobUpdated if from_state == to_state else JobTransitioned
    return cls(PandaID=9, seq=5, from_state=from_state, to_state=to_state, action=action, command_id="c")


def test_kill_of_a_running_job_with_a_known_worker_queues_a_kill_worker_command():
    view = _View({9: [("h1", 77)]})
    k = killer.WorkerKiller()
    event = _kill_event()
    assert k.wants(event)
    outputs = k.decide(event, view)
    assert [type(o) for o in outputs] == [Action] and view.queued == []   # decided, nothing done yet
    assert perform(outputs, replay=True) == [] and view.queued == []        # replay skips the effect
    perform(outputs)
    assert view.queued == [("h1", "SYNC_WORKERS_KILL", [77], "kill:9:h1:77")]


def test_no_command_without_a_worker_or_for_a_job_no_worker_holds():
    k = killer.WorkerKiller()
    assert k.decide(_kill_event(), _View({})) == []
    assert not k.wants(_kill_event("kill", "activated", "cancelled"))
    assert k.wants(_kill_event("kill", "transferring", "cancelled"))
    assert not k.wants(_kill_event("heartbeat"))


def test_a_worker_mapped_after_the_kill_is_killed_too():
    workers = [{"workerID": 1, "status": "running", "pandaid_list": [9, 10]},
               {"workerID": 2, "status": "finished", "pandaid_list": [9]}]
    jobs = {9: {"status": "running", "command_to_pilot": "tobekilled"},
            10: {"status": "running", "command_to_pilot": None}}
    assert killer.late_kills(workers, jobs) == [(9, 1)]
