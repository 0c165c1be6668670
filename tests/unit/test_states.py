"""JobStatus names exactly the states of the table, in the table's order."""

from core.states import STATES, TRANSITIONS, JobStatus


def test_job_status_is_the_table_s_states():
    assert tuple(JobStatus) == STATES
    destinations = {dest for _, _, dest in TRANSITIONS if dest is not None}
    assert destinations <= set(JobStatus)


def test_job_status_equals_its_string():
    assert JobStatus.FINISHED == "finished"
    assert f"{JobStatus.SENT}" == "sent"
