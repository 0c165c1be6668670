"""JobStatus names exactly the states of the table, in the table's order; PilotState the words of the pilot rules."""

from core.states import PILOT_RULES, PILOT_STATES, STATES, SUBMIT_TRIGGERS, TRANSITIONS, JobStatus, PilotState


def test_job_status_is_the_table_s_states():
    assert tuple(JobStatus) == STATES
    destinations = {dest for _, _, dest in TRANSITIONS if dest is not None}
    assert destinations <= set(JobStatus)


def test_job_status_equals_its_string():
    assert JobStatus.FINISHED == "finished"
    assert f"{JobStatus.SENT}" == "sent"


def test_pilot_states_are_the_rules_words_spelled_like_job_states():
    # every rule but merging's (any report) names the states a pilot may report
    named = {state for _, states, _ in PILOT_RULES if states is not STATES for state in states}
    assert set(PilotState) == named == set(PILOT_STATES)
    assert set(PilotState) <= set(JobStatus)
    assert PilotState.FINISHED == "finished"


def test_submit_triggers_are_the_table_s_entries():
    assert SUBMIT_TRIGGERS == {"defined": "submit", "pending": "submit_pending", "waiting": "submit_waiting"}
