"""The watchdog's decision (pure) and the Watchdog fed a clock and a lag by hand."""

from __future__ import annotations

import pytest

from core import watchdog
from core.watchdog import Stuck, Watchdog, hung, stuck, worth_a_look


def test_stuck_only_with_records_waiting_and_no_progress_past_the_bound():
    assert stuck(progress_at=0.0, lag=5, now=121.0, bound=120.0)
    assert not stuck(progress_at=0.0, lag=5, now=119.0, bound=120.0)     # within the bound
    assert not stuck(progress_at=0.0, lag=0, now=1000.0, bound=120.0)    # nothing waits: idle, not stuck
    assert not stuck(progress_at=0.0, lag=None, now=1000.0, bound=120.0)  # not known: not stuck
    assert not stuck(progress_at=0.0, lag=5, now=1000.0, bound=0.0)      # switched off


def test_hung_when_no_step_ended_past_the_bound():
    assert hung(beat_at=10.0, now=131.0, bound=120.0)
    assert not hung(beat_at=10.0, now=129.0, bound=120.0)
    assert not hung(beat_at=0.0, now=1e9, bound=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_raises_stuck_when_records_wait_and_none_come():
    clock, lag = Clock(), {"n": 3}
    dog = Watchdog("g", 60.0, lambda: lag["n"], check_every=5.0, clock=clock)
    for t in range(0, 60, 5):
        clock.now = float(t)
        dog.step({})
    clock.now = 66.0
    with pytest.raises(Stuck, match="3 record"):
        dog.step({})


def test_records_received_or_nothing_to_do_are_progress():
    clock, lag = Clock(), {"n": 3}
    dog = Watchdog("g", 60.0, lambda: lag["n"], check_every=5.0, clock=clock)
    clock.now = 50.0
    dog.step({"tp": [object()]})          # records came
    clock.now = 100.0
    dog.step({})                          # 50 s since: within the bound
    lag["n"] = 0
    clock.now = 200.0
    dog.step({})                          # idle: nothing waits
    lag["n"] = 2
    clock.now = 250.0
    dog.step({})
    clock.now = 261.0
    with pytest.raises(Stuck):
        dog.step({})


def test_a_look_only_after_a_check_without_progress():
    assert not worth_a_look(progress_at=100.0, now=104.9, every=5.0)
    assert worth_a_look(progress_at=100.0, now=105.0, every=5.0)


def test_a_busy_loop_does_not_ask_for_the_lag_between_its_polls():
    clock, looks = Clock(), []
    dog = Watchdog("g", 60.0, lambda: looks.append(clock.now) or 0, check_every=5.0, clock=clock)
    for tenth in range(1, 1000):          # records every second, empty steps in between, for 100 s
        clock.now = tenth / 10
        dog.step({"tp": [object()]} if tenth % 10 == 0 else {})
    assert looks == []
    clock.now = 105.0                     # then 5 s with nothing: an idle loop looks as before
    dog.step({})
    assert looks == [105.0]


def test_work_that_came_another_way_is_progress_and_spares_the_look():
    """The ledger's direct dispatches are in no poll of the topic: a step that judged them says so (``True``), and
    a loop doing only that work is neither looked at (the look stalls it behind a held fetch) nor stuck."""
    clock, looks = Clock(), []
    dog = Watchdog("g", 60.0, lambda: looks.append(clock.now) or 5, check_every=5.0, clock=clock)
    for tenth in range(1, 1000):          # 100 s of steps that judged direct commands, nothing polled
        clock.now = tenth / 10
        dog.step(True)
    assert looks == []
    clock.now = 105.0                     # nothing at all for 5 s: looked at, as any idle loop
    dog.step(False)
    assert looks == [105.0]


def test_lag_not_known_is_not_stuck():
    clock = Clock()

    def broken() -> int:
        raise OSError("broker away")

    dog = Watchdog("g", 10.0, broken, check_every=1.0, clock=clock)
    clock.now = 1000.0
    dog.step({})                          # no exception


def test_guard_exits_a_loop_whose_step_never_ends():
    clock, exits = Clock(), []
    dog = Watchdog("g", 10.0, lambda: 0, check_every=0.01, clock=clock, exit=exits.append)
    clock.now = 11.0                      # the loop started at 0 and never finished a step
    dog.start()
    dog._thread.join(5)
    assert exits == [watchdog.EXIT_CODE]


def test_a_long_step_that_says_it_is_alive_is_not_hung():
    clock, exits = Clock(), []
    dog = Watchdog("g", 10.0, lambda: 0, clock=clock, exit=exits.append)
    clock.now = 9.0
    dog.alive()
    clock.now = 15.0
    assert not hung(beat_at=dog.beat_at, now=clock.now, bound=dog.bound)
    assert dog.progress_at == 0.0        # a sign of life is not progress


def test_a_closed_guard_exits_nothing_and_can_start_again():
    clock, exits = Clock(), []
    dog = Watchdog("g", 10.0, lambda: 0, check_every=0.01, clock=clock, exit=exits.append)
    dog.start()
    dog.close()                           # the loop's run() returned: it is not hung, however long it rests
    dog._thread.join(5)
    clock.now = 100.0
    assert exits == [] and not dog._thread.is_alive()
    dog.start()                           # run() again: the guard watches again, from now
    clock.now = 200.0
    dog._thread.join(5)
    assert exits == [watchdog.EXIT_CODE]


def test_only_a_components_own_process_is_ended_by_a_guard(monkeypatch):
    ended = []
    monkeypatch.setattr(watchdog.os, "_exit", ended.append)
    monkeypatch.setattr(watchdog, "_exit_allowed", False)
    watchdog._exit_if_component(watchdog.EXIT_CODE)   # a loop used as a library (tests, the bench): no exit
    assert ended == []
    watchdog.allow_exit()
    watchdog._exit_if_component(watchdog.EXIT_CODE)
    assert ended == [watchdog.EXIT_CODE]
