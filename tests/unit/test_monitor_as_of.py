"""The "as of" views fold each job from its events up to the moment: a job counts in the queue and task its
events had named by then, not in the ones the jobs table shows now."""

from __future__ import annotations

from projections.fold import Placement, counts_by, placements

# (PandaID, seq, to_state, computingSite named by the event, jediTaskID named by the event)
MOVED = [
    (1, 1, "defined", "SITE_A", "7"),          # submitted to SITE_A
    (1, 2, "assigned", None, None),
    (1, 3, "activated", None, None),
    (1, 4, "defined", "SITE_B", None),          # reassigned: back to defined, now at SITE_B
    (1, 5, "activated", None, None),
    (1, 6, "running", None, None),
]
STAYED = [(2, 1, "defined", "SITE_A", "7"), (2, 2, "activated", None, None)]
NO_TASK = [(3, 1, "defined", None, None), (3, 2, "assigned", "SITE_C", None)]   # brokerage named its queue


def test_a_job_that_moved_counts_in_the_queue_it_was_in_at_the_time():
    before_the_move = placements(MOVED[:3] + STAYED)
    assert before_the_move[1] == Placement("activated", "SITE_A", 7)
    assert counts_by(before_the_move.values(), "queue") == {"SITE_A": {"activated": 2}}
    after = placements(MOVED + STAYED)
    assert after[1] == Placement("running", "SITE_B", 7)
    assert counts_by(after.values(), "queue") == {"SITE_A": {"activated": 1}, "SITE_B": {"running": 1}}
    assert counts_by(after.values(), "task") == {7: {"running": 1, "activated": 1}}


def test_a_queue_named_later_and_jobs_without_a_task():
    first = placements(NO_TASK[:1])
    assert first[3] == Placement("defined", None, None)
    assert counts_by(first.values(), "queue") == {"": {"defined": 1}}
    later = placements(NO_TASK)
    assert counts_by(later.values(), "queue") == {"SITE_C": {"assigned": 1}}
    assert counts_by(later.values(), "task") == {}     # no task: not in the task views


def test_a_task_id_that_is_not_a_number_is_no_task():
    assert placements([(4, 1, "defined", "Q", "NULL")])[4].task is None
