"""The pure parts of `pandaes chaos`: the kill plan and the judging of each invariant."""

from __future__ import annotations

import random
from types import SimpleNamespace

from cli.chaos_checks import judge_commands, judge_dispatch, judge_final, judge_seqs, judge_verify, timeouts_note
from cli.chaos_faults import schedule


def test_plan_kills_each_target_once_per_round_within_the_window():
    targets = ["ledger", "gateway", "database", "broker"]
    plan = schedule(random.Random(3), 10, targets, 100.0)
    assert len(plan) == 10
    assert sorted(k.target for k in plan[:4]) == sorted(targets)
    assert sorted(k.target for k in plan[4:8]) == sorted(targets)
    assert all(a.target != b.target for a, b in zip(plan, plan[1:], strict=False))
    times = [k.at for k in plan]
    assert times == sorted(times) and 0 < times[0] and times[-1] < 100
    assert all(b - a >= 100 / 10 / 2 - 0.01 for a, b in zip(times, times[1:], strict=False))


def test_plan_is_the_same_for_the_same_seed_and_empty_without_kills():
    assert schedule(random.Random(1), 5, ["a", "b"], 30) == schedule(random.Random(1), 5, ["a", "b"], 30)
    assert schedule(random.Random(1), 5, ["a", "b"], 30) != schedule(random.Random(2), 5, ["a", "b"], 30)
    assert schedule(random.Random(1), 0, ["a"], 30) == [] and schedule(random.Random(1), 3, [], 30) == []


def test_final_fails_on_a_live_job_a_missing_job_or_no_job():
    assert judge_final({"finished": 9, "failed": 1}, [], 10).ok
    live = judge_final({"finished": 9, "sent": 1}, [], 10)
    assert not live.ok and "NOT FINAL: sent 1" in live.detail
    assert not judge_final({"finished": 9, "defined": 1}, [], 10).ok
    missing = judge_final({"finished": 9}, [1234], 10)
    assert not missing.ok and missing.examples == ["missing PandaID 1234"]
    assert not judge_final({}, [], 0).ok


def test_seqs_fail_on_any_anomaly():
    assert judge_seqs(80, 10, []).ok
    bad = judge_seqs(80, 10, [(1000, 8, 7, 1, 8, 8)])
    assert not bad.ok and "1 job(s) off" in bad.detail and "PandaID 1000" in bad.examples[0]


def test_double_dispatch_is_a_job_two_pilots_got():
    assert judge_dispatch({1: [0], 2: [3]}, 3, 1).ok
    twice = judge_dispatch({1: [0, 4], 2: [3]}, 3, 0)
    assert not twice.ok and twice.examples == ["PandaID 1 handed to pilots [0, 4]"]
    assert not judge_dispatch({1: [2, 2]}, 2, 0).ok    # the same pilot twice is a repeat too


def test_duplicate_command_and_verify():
    assert judge_commands(10, []).ok
    assert not judge_commands(10, [("c1", 2, ["1:2", "1:3"])]).ok
    ok = SimpleNamespace(ok=True, events=5, jobs=1, counted=0, problems=[], differences=[])
    bad = SimpleNamespace(ok=False, events=5, jobs=1, counted=1, problems=[], differences=["jobs [pandaid=1]: x"])
    assert judge_verify(ok).ok
    assert not judge_verify(bad).ok and judge_verify(bad).examples == ["jobs [pandaid=1]: x"]


def test_timeouts_note_names_the_watcher_rule():
    assert timeouts_note({}) == "jobs failed by the watcher's timeouts: none"
    assert timeouts_note({"102": 3, "100": 1, "7": 2}) == ("jobs failed by the watcher's timeouts: 1 lost heartbeat, "
                                                          "3 sent timeout, 2 code 7")
