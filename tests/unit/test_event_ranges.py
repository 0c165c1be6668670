"""The event-service rules without infrastructure: ranges at submission, the status table, the replay."""

from __future__ import annotations

import pytest

from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import JobSubmitted
from services.eventservice import ranges
from services.eventservice.definer import RangeDefiner
from services.loop import perform


def es_job(**kw) -> JobSpec:
    return JobSpec(eventService=1, nEvents=3, jediTaskID=77, attemptNr=2, **kw,
                   Files=[FileSpec(lfn="EVNT.pool.root", type="input", GUID="g-1", scope="mc", fileID=55),
                          FileSpec(lfn="log.tgz", type="log")])


def test_an_event_service_job_gets_one_range_per_event_named_as_panda_does():
    defs = ranges.define(9, es_job())
    assert [d.range_id for d in defs] == ["77-9-55-1-2", "77-9-55-2-2", "77-9-55-3-2"]
    assert [(d.start_event, d.last_event) for d in defs] == [(0, 0), (1, 1), (2, 2)]
    assert defs[0].lfn == "EVNT.pool.root" and defs[0].guid == "g-1" and defs[0].scope == "mc"
    assert ranges.define(9, JobSpec(nEvents=3)) == []


def test_a_range_is_handed_out_only_by_acquisition_and_final_statuses_are_final():
    assert not ranges.may_change("ready", "running")          # never reported before it was handed out
    assert ranges.may_change("sent", "running") and ranges.may_change("running", "finished")
    for final in ranges.REPORTED_FINAL:
        assert not any(ranges.may_change(final, s) for s in ranges.REPORTABLE)


def test_replay_of_the_changes_gives_the_state_and_refuses_a_gap():
    changes = [("r1", None, "ready"), ("r1", "ready", "sent"), ("r2", None, "ready"), ("r1", "sent", "finished")]
    assert ranges.fold(changes) == {"r1": "finished", "r2": "ready"}
    with pytest.raises(ValueError):
        ranges.fold([("r1", None, "ready"), ("r1", "sent", "finished")])


def test_the_definer_decides_an_action_and_replay_skips_it():
    recorded = []

    class View:
        def define(self, pandaid, defs):
            recorded.append((pandaid, len(defs)))
            return len(defs)

    event = JobSubmitted(PandaID=9, seq=1, from_state="new", to_state="defined", command_id="c", job=es_job())
    definer = RangeDefiner()
    assert definer.wants(event)
    outputs = definer.decide(event, View())
    perform(outputs, replay=True)
    assert recorded == []
    perform(outputs)
    assert recorded == [(9, 3)]
