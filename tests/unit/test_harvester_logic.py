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


def test_a_batch_of_distinct_workers_travels_as_one_json_document():
    import json

    rows = [store.worker_row("h1", {"workerID": 1, "status": "running", "computingSite": "Q", "nJobs": "2",
                                    "pandaid_list": [5, 5, 6], "batchID": "b7"}),
            store.worker_row("h1", {"workerID": "2", "status": None})]
    doc = store._as_document(rows, [[5, 6], []])
    assert json.loads(doc) == [
        {"worker_id": 1, "computing_site": "Q", "status": "running", "resource_type": None, "job_type": None,
         "n_jobs": 2, "spec": {"workerID": 1, "status": "running", "computingSite": "Q", "nJobs": "2",
                               "batchID": "b7"}, "pandaids": [5, 6]},
        {"worker_id": 2, "computing_site": None, "status": None, "resource_type": None, "job_type": None,
         "n_jobs": None, "spec": {"workerID": "2", "status": None}, "pandaids": []}]


def test_a_worker_listed_twice_or_a_text_field_of_another_type_keeps_the_per_row_upsert():
    twice = [store.worker_row("h1", {"workerID": 1, "status": "submitted"}),
             store.worker_row("h1", {"workerID": "1", "status": "running"})]
    assert store._as_document(twice, [[], []]) is None
    odd = [store.worker_row("h1", {"workerID": 1, "computingSite": 7})]
    assert store._as_document(odd, [[]]) is None


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


def test_workers_reported_over_read_no_job():
    """A call reporting only final workers cannot queue a late kill, so it does not read the jobs at all."""
    import asyncio

    workers = [{"workerID": 1, "status": "finished", "pandaid_list": [9]},
               {"workerID": 2, "status": "cancelled", "pandaid_list": [10]}]
    assert asyncio.run(killer.kill_late_mapped(None, "h1", workers)) == 0   # type: ignore[arg-type]  # no conn used
