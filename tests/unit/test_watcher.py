"""Watcher timeout rules on plain data (no Kafka, no database): one case per copyArchive rule."""

from __future__ import annotations

import pytest
from fakes import FakeWatcherView

from core import config
from schemas.messages import Kill, Transition
from services.clock.watcher import JobRow, Timeouts, Watcher, rule_for
from services.loop import perform

NOW = 1_000_000.0
T = Timeouts(heartbeat=2, heartbeat_analysis=0, sent=1, holding=5, holding_analysis=2, defined=2,
             defined_max_age=10, activated=4, activated_jedi=2, pending=1, waiting=1, throttled=3, starting=3,
             active_max_age=20)


def job(status, *, mod=0.0, change=0.0, created=0.0, **kw) -> JobRow:
    """A job whose clocks are `x` seconds before NOW."""
    return JobRow(pandaid=1, status=status, seq=5, modification_time=NOW - mod, state_change_time=NOW - change,
                  creation_time=NOW - created, **kw)


def fail_code(cmd):
    assert isinstance(cmd, Transition) and cmd.action == "fail", cmd
    return cmd.attrs["jobDispatcherErrorCode"]


@pytest.mark.parametrize("status", ["running", "starting"])
def test_lost_heartbeat_fails_with_100(status):
    assert rule_for(job(status, mod=1.5), NOW, T) is None
    cmd = rule_for(job(status, mod=2.5), NOW, T)
    assert fail_code(cmd) == 100 and cmd.attrs["jobDispatcherErrorDiag"].startswith("lost heartbeat : ")
    assert cmd.actor == "service:watcher"


def test_analysis_heartbeat_override():
    t = Timeouts(heartbeat=10, heartbeat_analysis=2)
    assert rule_for(job("running", mod=3, label="managed"), NOW, t) is None
    assert fail_code(rule_for(job("running", mod=3, label="user"), NOW, t)) == 100


def test_sent_without_pilot_reply_fails_with_102():
    assert rule_for(job("sent", mod=0.5), NOW, T) is None
    assert fail_code(rule_for(job("sent", mod=1.5), NOW, T)) == 102


def test_holding_too_long_fails_with_103():
    with_report = dict(entered_by="pilot_holding", entered_pilot_state="finished", label="managed")
    assert rule_for(job("holding", mod=4, **with_report), NOW, T) is None
    assert fail_code(rule_for(job("holding", mod=6, **with_report), NOW, T)) == 103
    # analysis job held without a report: the 3 h (here 2 s) rule
    no_report = dict(entered_by="pilot_holding", entered_pilot_state="holding", label="user")
    assert fail_code(rule_for(job("holding", mod=3, **no_report), NOW, T)) == 103
    assert rule_for(job("holding", mod=3, entered_pilot_state="finished", label="user"), NOW, T) is None


def test_transferring_by_pilot_without_heartbeat_fails_with_104_but_adder_transfers_are_left_to_finisher():
    assert fail_code(rule_for(job("transferring", mod=3, entered_by="pilot_transferring"), NOW, T)) == 104
    assert rule_for(job("transferring", mod=3, entered_by="transfer"), NOW, T) is None


@pytest.mark.parametrize("status,kw,code", [
    ("pending", dict(change=1.5), 4),
    ("waiting", dict(change=1.5), 4),
    ("defined", dict(change=2.5), 2),
    ("defined", dict(change=2.5, jedi_task_id=7, label="managed"), 51),
    ("assigned", dict(created=11), 2),
    ("defined", dict(created=11), 2),
    ("activated", dict(change=4.5), 2),
    ("activated", dict(change=2.5, jedi_task_id=7, label="managed"), 51),
    ("throttled", dict(change=3.5), 2),
    ("starting", dict(change=3.5, label="managed"), 51),
    ("running", dict(created=21), 2),
])
def test_kill_rules(status, kw, code):
    cmd = rule_for(job(status, **kw), NOW, T)
    assert isinstance(cmd, Kill) and cmd.code == code, cmd


@pytest.mark.parametrize("status,kw", [
    ("pending", dict(change=0.5)), ("defined", dict(change=1.5)), ("activated", dict(change=3.5)),
    ("activated", dict(change=1.5, jedi_task_id=7, label="managed")), ("throttled", dict(change=2)),
    ("assigned", dict(change=100, created=5)), ("merging", dict(mod=100, change=100)),
])
def test_young_or_unwatched_jobs_are_left_alone(status, kw):
    assert rule_for(job(status, **kw), NOW, T) is None


def test_tick_does_not_repeat_itself_until_the_job_changes():
    w, view = Watcher(T), FakeWatcherView([job("running", mod=3)], shortest=1)
    assert len(perform(w.tick(NOW, view))) == 1
    assert perform(w.tick(NOW, view)) == []              # projection has not moved yet
    view.rows = [JobRow(**{**view.rows[0].__dict__, "seq": 6})]
    assert len(perform(w.tick(NOW, view))) == 1          # new state, judged again


def test_timeouts_come_from_config_with_env_override():
    cfg = config.load({"PANDAES_WATCHER_HEARTBEAT_TIMEOUT": "5"})
    t = Timeouts.from_config(cfg)
    assert t.heartbeat == 5 and t.sent == 1800 and t.holding == 172800 and t.pending == 3600
