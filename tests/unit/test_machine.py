"""The transition table and the decision function, without Kafka (pure logic)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import states as S
from core.machine import MACHINE, JobState, apply, decide
from schemas.jobspec import JobSpec
from schemas.messages import (
    JobSubmitted,
    JobTransitioned,
    JobUpdated,
    Kill,
    PilotUpdate,
    Rejected,
    Submit,
    Transition,
)

PID = 4242


def run(cmds, job=None):
    """Feed commands through decide/apply like the ledger; return (final state, outcomes)."""
    outcomes = []
    for cmd in cmds:
        out = decide(job, cmd)
        outcomes.append(out)
        if not isinstance(out, Rejected):
            job = apply(job, out)
    return job, outcomes


def submitted(**spec):
    return Submit(PandaID=PID, job=JobSpec(computingSite="LOCAL", attemptNr=1, **spec))


def test_table_states_are_known_and_final_states_have_no_way_out():
    for trigger, sources, dest in S.TRANSITIONS:
        assert dest is None or dest in S.STATES, trigger
        for src in sources:
            assert src == S.NEW or src in S.STATES
            if src in S.FINAL_STATES:
                assert dest is None, f"{trigger} leaves final state {src}"


def test_happy_path_event_sequence():
    job, outs = run([
        submitted(),
        Transition(PandaID=PID, action="activate"),
        Transition(PandaID=PID, action="dispatch"),
        PilotUpdate(PandaID=PID, state="starting", attempt_nr=1),
        PilotUpdate(PandaID=PID, state="running", attempt_nr=1),
        PilotUpdate(PandaID=PID, state="running", attempt_nr=1),
        PilotUpdate(PandaID=PID, state="finished", attempt_nr=1, report='{"out.txt": {}}'),
        Transition(PandaID=PID, action="finish"),
    ])
    assert [type(o).__name__ for o in outs] == ["JobSubmitted"] + ["JobTransitioned"] * 4 + [
        "JobUpdated", "JobTransitioned", "JobTransitioned"]
    assert [o.to_state for o in outs] == ["defined", "activated", "sent", "starting", "running", "running",
                                         "holding", "finished"]
    assert [o.seq for o in outs] == list(range(1, 9))
    assert outs[6].pilot_state == "finished" and outs[6].report == '{"out.txt": {}}'
    assert job.state == "finished" and job.seq == 8


def test_illegal_transition_is_rejected_with_reason_and_no_state_change():
    job, _ = run([submitted()])
    out = decide(job, Transition(PandaID=PID, action="dispatch"))
    assert isinstance(out, Rejected)
    assert out.code == "illegal_transition"
    assert "dispatch is not allowed from defined" in out.reason
    assert out.state == "defined"


def test_unknown_job_and_duplicate_submit():
    out = decide(None, Transition(PandaID=PID, action="activate"))
    assert isinstance(out, Rejected) and out.code == "unknown_job"
    out = decide(None, PilotUpdate(PandaID=PID, state="running"))
    assert out.reply == "tobekilled"
    job, _ = run([submitted()])
    assert decide(job, submitted()).code == "duplicate_job"


def _running():
    job, _ = run([submitted(), Transition(PandaID=PID, action="activate"),
                  Transition(PandaID=PID, action="dispatch"), PilotUpdate(PandaID=PID, state="running")])
    assert job.state == "running"
    return job


def test_stale_attempt_is_told_to_die():
    out = decide(_running(), PilotUpdate(PandaID=PID, state="running", attempt_nr=0))
    assert isinstance(out, Rejected) and out.code == "stale_attempt" and out.reply == "tobekilled"


def test_duplicate_final_report_is_alreadydone():
    job, outs = run([PilotUpdate(PandaID=PID, state="finished"), PilotUpdate(PandaID=PID, state="finished")],
                    _running())
    assert outs[0].to_state == "holding"
    assert isinstance(outs[1], Rejected) and outs[1].reply == "alreadydone"


def test_holding_to_transferring_by_pilot_is_blocked():
    job, outs = run([PilotUpdate(PandaID=PID, state="holding"), PilotUpdate(PandaID=PID, state="transferring")],
                    _running())
    assert job.state == "holding"
    assert isinstance(outs[1], Rejected)


def test_running_to_starting_is_coerced_to_a_heartbeat():
    _, outs = run([PilotUpdate(PandaID=PID, state="starting")], _running())
    assert isinstance(outs[0], JobUpdated) and outs[0].to_state == "running" and outs[0].action == "heartbeat"


def test_failed_job_answers_alreadydone_and_finals_are_irreversible():
    job, _ = run([Transition(PandaID=PID, action="fail")], _running())
    assert job.state == "failed"
    assert decide(job, PilotUpdate(PandaID=PID, state="running")).reply == "alreadydone"
    for action in ("activate", "reset", "finish", "dispatch"):
        assert isinstance(decide(job, Transition(PandaID=PID, action=action)), Rejected)
    assert decide(job, Kill(PandaID=PID)).code == "already_final"


def test_kill_of_running_job_signals_the_pilot_then_adder_cancels():
    job, outs = run([Kill(PandaID=PID, actor="user:alice")], _running())
    assert isinstance(outs[0], JobUpdated) and outs[0].attrs["commandToPilot"] == "tobekilled"
    assert job.state == "running" and job.pilot_reply() == "tobekilled"
    again = decide(job, Kill(PandaID=PID))
    assert isinstance(again, Rejected) and again.code == "already_requested"
    hb = decide(job, PilotUpdate(PandaID=PID, state="running"))
    assert hb.reply == "tobekilled"
    job, outs = run([PilotUpdate(PandaID=PID, state="failed"), Transition(PandaID=PID, action="adder_cancel")], job)
    assert job.state == "cancelled"


@pytest.mark.parametrize("code,state,tb_code,sub", [
    (None, "cancelled", 100, None), (2, "closed", 102, "toreassign"), (4, "closed", 102, "toreassign"),
    (3, "cancelled", 103, None), (8, "cancelled", 105, None), (51, "closed", 100, "toreassign"),
    (10, "closed", 130, None), (55, "closed", 100, "taskdone"), (91, "cancelled", 100, None),
])
def test_kill_codes_of_activated_job(code, state, tb_code, sub):
    job, _ = run([submitted(), Transition(PandaID=PID, action="activate")])
    out = decide(job, Kill(PandaID=PID, code=code))
    assert isinstance(out, JobTransitioned) and out.to_state == state
    assert out.attrs["taskBufferErrorCode"] == tb_code
    assert out.attrs.get("jobSubStatus") == sub


def test_force_kill_archives_a_running_job_at_once():
    out = decide(_running(), Kill(PandaID=PID, code=9))
    assert isinstance(out, JobTransitioned) and out.to_state == "cancelled"


def test_code_7_marks_failed_job_retried():
    job, _ = run([Transition(PandaID=PID, action="fail")], _running())
    out = decide(job, Kill(PandaID=PID, code=7))
    assert isinstance(out, JobUpdated) and out.attrs["taskBufferErrorCode"] == 106


def test_unknown_attribute_is_rejected():
    job, _ = run([submitted()])
    out = decide(job, Transition(PandaID=PID, action="activate", attrs={"jobstatus": "x", "computingSite": "Q"}))
    assert isinstance(out, Rejected) and "jobstatus" in out.reason and out.code == "bad_attributes"


# --------------------------------------------------------------------------------- property-based
ACTIONS = sorted({t for t, _, _ in S.TRANSITIONS})
commands = st.one_of(
    st.builds(lambda to: Submit(PandaID=PID, job=JobSpec(attemptNr=1), to=to),
              st.sampled_from(["defined", "pending", "waiting"])),
    st.builds(lambda a: Transition(PandaID=PID, action=a), st.sampled_from(ACTIONS)),
    st.builds(lambda s, a: PilotUpdate(PandaID=PID, state=s, attempt_nr=a),
              st.sampled_from(S.PILOT_STATES + ("bogus",)), st.sampled_from([None, 1, 2])),
    st.builds(lambda c: Kill(PandaID=PID, code=c), st.sampled_from([None, 2, 3, 7, 9, 10, 51, 52, 55, 60, 99])),
)
LEGAL = {(src, trig): dest for trig, srcs, dest in S.TRANSITIONS for src in srcs}


@settings(max_examples=400, deadline=None)
@given(st.lists(commands, max_size=40))
def test_random_commands_never_yield_an_illegal_event_sequence(cmds):
    job, outs = run(cmds)
    events = [o for o in outs if not isinstance(o, Rejected)]
    state = S.NEW
    for i, ev in enumerate(events, start=1):
        assert ev.seq == i
        assert ev.from_state == state
        trigger = "submit" if isinstance(ev, JobSubmitted) else ev.action
        if isinstance(ev, JobSubmitted):
            assert state == S.NEW and ev.to_state in ("defined", "pending", "waiting")
        else:
            assert (state, trigger) in LEGAL, f"{trigger} from {state}"
            dest = LEGAL[(state, trigger)]
            assert ev.to_state == (dest or state)
        if state in S.FINAL_STATES:
            assert ev.to_state == state, "final states are irreversible"
        state = ev.to_state
    # every accepted sequence replays to the same state
    replayed = None
    for ev in events:
        replayed = apply(replayed, ev)
    assert replayed == job


def test_compiled_lookup_agrees_with_the_transitions_machine_everywhere():
    triggers = sorted({t for t, _, _ in S.TRANSITIONS})
    for state in (S.NEW, *S.STATES):
        for trigger in triggers:
            try:
                fast = MACHINE.target(state, trigger)
            except Exception as exc:  # noqa: BLE001 - compared below
                fast = type(exc).__name__
            try:
                slow = MACHINE.target_via_machine(state, trigger)
            except Exception as exc:  # noqa: BLE001
                slow = type(exc).__name__
            assert fast == slow, (state, trigger)


def test_machine_reports_allowed_triggers():
    assert "dispatch" in MACHINE.allowed("activated")
    assert "undispatch" in MACHINE.allowed("sent")
    assert MACHINE.allowed("finished") == []


def test_jobstate_reply_joins_debug_and_command():
    assert JobState(PandaID=1, state="running", seq=1).pilot_reply() == "NULL"
    js = JobState(PandaID=1, state="running", seq=1, special_handling="dm", command_to_pilot="tobekilled")
    assert js.pilot_reply() == "debug,tobekilled"


def test_final_report_after_the_pilots_own_transferring_moves_on_to_holding():
    """PanDA's updateJobStatus: a job its pilot (or Harvester) put into transferring takes the final report."""
    job, outs = run([PilotUpdate(PandaID=PID, state="transferring"),
                     PilotUpdate(PandaID=PID, state="transferring"),
                     PilotUpdate(PandaID=PID, state="finished", report='{"files": {}}')], _running())
    assert outs[0].action == "pilot_transferring" and outs[0].attrs["jobDispatcherErrorDiag"].startswith(
        S.PILOT_TRANSFER_DIAG)
    assert outs[1].action == "heartbeat"
    assert outs[2].action == "pilot_holding" and outs[2].to_state == "holding" and outs[2].report
    assert outs[2].attrs["jobDispatcherErrorDiag"] is None
    assert job.state == "holding" and not job.pilot_transfer


def test_final_report_for_a_job_the_server_put_into_transferring_is_alreadydone():
    job, _ = run([PilotUpdate(PandaID=PID, state="finished"), Transition(PandaID=PID, action="transfer")],
                 _running())
    assert job.state == "transferring" and not job.pilot_transfer
    out = decide(job, PilotUpdate(PandaID=PID, state="finished"))
    assert isinstance(out, Rejected) and out.reply == "alreadydone"


# --------------------------------------------------------------------------------- undispatch
def _sent():
    d1 = Transition(PandaID=PID, action="dispatch")
    job, _ = run([submitted(), Transition(PandaID=PID, action="activate"), d1])
    return job, d1


def test_undispatch_takes_back_the_dispatch_it_names():
    job, d1 = _sent()
    assert job.state == "sent" and job.dispatch_id == d1.id
    job, outs = run([Transition(PandaID=PID, action="undispatch", undoes=d1.id)], job)
    assert isinstance(outs[0], JobTransitioned)
    assert (outs[0].from_state, outs[0].to_state, outs[0].action) == ("sent", "activated", "undispatch")
    assert job.state == "activated" and job.dispatch_id is None


def test_undispatch_of_another_or_no_dispatch_is_refused():
    job, d1 = _sent()
    for undoes in ("not-the-dispatch", None):
        out = decide(job, Transition(PandaID=PID, action="undispatch", undoes=undoes))
        assert isinstance(out, Rejected) and out.code == "not_this_dispatch"
    # undone, dispatched again: a second undo of the first dispatch must not take the job from its new pilot
    d2 = Transition(PandaID=PID, action="dispatch")
    job, outs = run([Transition(PandaID=PID, action="undispatch", undoes=d1.id), d2,
                     Transition(PandaID=PID, action="undispatch", undoes=d1.id)], job)
    assert isinstance(outs[2], Rejected) and outs[2].code == "not_this_dispatch"
    assert job.state == "sent" and job.dispatch_id == d2.id


def test_undispatch_after_the_pilot_spoke_or_before_any_dispatch_is_illegal():
    job, d1 = _sent()
    job, outs = run([PilotUpdate(PandaID=PID, state="starting", attempt_nr=1),
                     Transition(PandaID=PID, action="undispatch", undoes=d1.id)], job)
    assert isinstance(outs[1], Rejected) and outs[1].code == "illegal_transition" and job.state == "starting"
    job, _ = run([submitted(), Transition(PandaID=PID, action="activate")])
    out = decide(job, Transition(PandaID=PID, action="undispatch", undoes=d1.id))
    assert isinstance(out, Rejected) and out.code == "illegal_transition"


def test_dispatch_id_stays_through_internal_updates_while_sent():
    job, d1 = _sent()
    job, outs = run([Transition(PandaID=PID, action="set", attrs={"currentPriority": 5})], job)
    assert job.state == "sent" and job.dispatch_id == d1.id


def test_undo_of_a_dispatch_whose_job_was_told_to_be_killed_is_that_kill():
    # no pilot ever held the job: the kill its pilot was to carry out happens now, with the kill's own code
    job, d1 = _sent()
    job, outs = run([Kill(PandaID=PID, code=51, actor="jedi"),
                     Transition(PandaID=PID, action="undispatch", undoes=d1.id)], job)
    assert outs[0].action == "kill_signal" and job.state == "closed"
    undo = outs[1]
    assert isinstance(undo, JobTransitioned) and (undo.action, undo.to_state) == ("kill_close", "closed")
    assert undo.kill_code == 51 and undo.attrs["jobSubStatus"] == "toreassign" and d1.id in undo.reason
    job, d1 = _sent()
    job, outs = run([Kill(PandaID=PID, actor="user"), Transition(PandaID=PID, action="undispatch", undoes=d1.id)],
                    job)
    assert (outs[1].action, outs[1].to_state, outs[1].attrs["taskBufferErrorCode"]) == ("kill", "cancelled", 100)


def test_undispatch_after_a_set_takes_the_job_back_with_its_new_attributes():
    job, d1 = _sent()
    job, outs = run([Transition(PandaID=PID, action="set", attrs={"currentPriority": 5}),
                     Transition(PandaID=PID, action="undispatch", undoes=d1.id)], job)
    assert (outs[1].action, outs[1].to_state) == ("undispatch", "activated")
