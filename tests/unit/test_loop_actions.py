"""The Action path on plain data: a step's result feeds the commands, replay runs nothing, clock rules
get ``now`` from whoever ticks them, and the decisions that used to write or read a clock no longer do."""

from __future__ import annotations

import functools

import pytest

from core import config
from plugins.base import OutputFile
from schemas.messages import JobTransitioned, Kill, Submit, Transition
from services.clock.finisher import Finisher, TransferringJob
from services.loop import Action, ServiceLoop, perform
from services.reactors.activator import Activator, Assigned
from services.reactors.retrier import Retrier, RetryRules


def kill(pid: int, reason: str = "") -> Kill:
    return Kill(PandaID=pid, code=9, actor="test", reason=reason)


class Recorder:
    """A command sender that keeps what it was given."""

    def __init__(self):
        self.sent: list = []
        self.flushes = 0
        self.closed = False

    def send_many(self, cmds):
        self.sent += list(cmds)

    def flush(self, timeout=None):
        self.flushes += 1

    def close(self):
        self.closed = True


# ------------------------------------------------------------------------------------------- Action
def test_then_is_built_from_the_last_steps_result():
    calls = []
    action = Action(label="allocate", steps=(functools.partial(calls.append, "first"), lambda: 4242),
                    then=lambda new_id: [kill(new_id, "made from the result")])
    assert calls == []                                    # building an Action runs nothing
    [cmd] = action.execute()
    assert calls == ["first"] and cmd.PandaID == 4242 and cmd.reason == "made from the result"
    assert Action(label="no steps", then=lambda result: [kill(1, repr(result))]).execute()[0].reason == "None"


def test_an_error_while_building_then_goes_to_on_error():
    def broken(result):
        raise ValueError(f"cannot use {result}")

    action = Action(label="x", steps=(lambda: 7,), then=broken, on_error=lambda exc: [kill(1, str(exc))])
    assert [c.reason for c in action.execute()] == ["cannot use 7"]
    with pytest.raises(ValueError):
        Action(label="y", steps=(lambda: 7,), then=broken).execute()


def test_perform_keeps_order_and_replay_runs_nothing():
    ran = []
    outputs = [kill(1), Action(label="a", steps=(lambda: ran.append("a") or 2,), then=lambda r: [kill(r)]), kill(3)]
    assert [c.PandaID for c in perform(outputs)] == [1, 2, 3] and ran == ["a"]
    ran.clear()
    assert perform(outputs, replay=True) == [] and ran == []


# ------------------------------------------------------------------------------- ServiceLoop.tick(now)
class Clocked:
    """A clock-driven service that records the ``now`` it is given."""

    name = "clocked"

    def __init__(self):
        self.nows: list[float] = []
        self.effects: list[float] = []

    def wants(self, event):
        return False

    def decide(self, event, view):
        return []

    def tick(self, now, view):
        self.nows.append(now)
        return [Action(label="effect", steps=(functools.partial(self.effects.append, now), lambda: 99),
                       then=lambda pid: [kill(pid)])]


def test_a_loop_that_does_not_consume_ticks_at_the_given_time_through_the_action_path():
    cfg = config.load()
    svc, sender = Clocked(), Recorder()
    loop = ServiceLoop(cfg, svc, object(), sender=sender, consume=False)
    sent = loop.tick(123.0)
    assert svc.nows == [123.0] and svc.effects == [123.0]
    assert [c.PandaID for c in sent] == [99] and sender.sent == sent and sender.flushes == 1
    assert loop.stats["ticks"] == 1 and loop.stats["actions"] == 1 and loop.stats["commands"] == 1
    loop.close()
    assert not sender.closed, "a sender passed in belongs to the caller"


def test_replay_decides_but_skips_every_action():
    svc = Clocked()
    loop = ServiceLoop(config.load(), svc, object(), sender=Recorder(), consume=False, replay=True)
    assert loop.tick(5.0) == [] and svc.nows == [5.0] and svc.effects == []
    assert loop.sender.sent == []


# ---------------------------------------------------------------------------------------- the retrier
class RetrierView:
    def __init__(self):
        self.claims: dict[int, int] = {}

    def job(self, pid, at_least):
        return {"seq": 1, "status": "failed", "spec": {"attemptNr": 1, "maxAttempt": 3}}

    def files(self, pid):
        return []

    def exists(self, pid):
        return False

    def claim(self, old, attempt, reason):
        return self.claims.setdefault(old, 9000 + len(self.claims))


def failed(pid: int) -> JobTransitioned:
    return JobTransitioned(PandaID=pid, seq=2, from_state="running", to_state="failed", command_id="c", action="fail")


def test_the_retriers_pandaid_is_allocated_by_its_action_and_never_in_replay():
    view, retrier = RetrierView(), Retrier(RetryRules())
    outputs = retrier.decide(failed(5), view)
    assert view.claims == {}, "decide must not write"
    assert perform(outputs, replay=True) == [] and view.claims == {}
    sub, k = perform(outputs)
    assert view.claims == {5: 9000} and isinstance(sub, Submit) and sub.PandaID == 9000
    assert k.reason == "retried as 9000"
    assert [c.PandaID for c in perform(retrier.decide(failed(5), view)) if isinstance(c, Submit)] == [9000]


# --------------------------------------------------------------------------------------- the activator
class ActivatorView:
    def __init__(self, jobs):
        from services.reactors.activator import SentActivations

        self.partitions = None
        self.jobs = jobs
        self.sent = SentActivations()
        self.completed: list = []
        self.datasets = self

    def complete_dispatch(self, names):
        self.completed.append(list(names))

    def assigned(self, partitions, limit):
        return self.jobs

    def dispatch_ready(self, block):
        return True

    def plugins(self):
        return []

    def in_flight(self, since):
        return self.sent.since(since)

    def mark_sent(self, pandaids, at=None):
        self.sent.mark(pandaids, at)


def test_activator_decisions_keep_no_state_and_measure_resends_with_the_time_given():
    view = ActivatorView([Assigned(PandaID=1, blocks={"dis": ["a"]})])
    a = Activator(resend_after=10)
    before = dict(vars(a))
    first = perform(a.tick(100.0, view))
    assert [c.PandaID for c in first if isinstance(c, Transition)] == [1] and vars(a) == before
    assert perform(a.tick(109.0, view)) == [], "in flight for resend_after seconds of the tick's clock"
    assert [c.PandaID for c in perform(a.tick(111.0, view))] == [1], "then sent again"
    # the decision alone remembers nothing: only the action that sends records the activation
    fresh = ActivatorView([Assigned(PandaID=2, blocks={})])
    a.tick(200.0, fresh)
    assert fresh.in_flight(0.0) == set()


# ---------------------------------------------------------------------------------------- the finisher
class FinisherView:
    def __init__(self):
        self.log: list[str] = []
        self.arrived: set[str] = set()

    # the plugin, inline
    def pump(self):
        self.log.append("pump")
        self.arrived.add("out.1")
        return 1

    def outputs_arrived(self, files: list[OutputFile]):
        self.log.append("query")
        return [f.lfn for f in files if f.lfn in self.arrived]

    def plugins(self):
        return [self]

    def placement(self, spec):
        return self, "HERE"

    def transferring(self):
        return [TransferringJob(pandaid=7, seq=9, state_change_time=0.0, priority=0, label="managed", spec={},
                                files=({"lfn": "out.1", "type": "output", "status": "transferring",
                                        "destinationSE": "THERE"},))]

    def archive(self):
        self.log.append("archive")
        return 0


def test_finisher_judges_after_its_pump_and_its_tick_does_nothing_by_itself():
    view, f = FinisherView(), Finisher(transfer_timeout_hi=50, transfer_timeout_lo=50)
    outputs = f.tick(10.0, view)
    assert view.log == [], "the tick only plans"
    [cmd] = perform(outputs)
    assert view.log == ["pump", "query", "archive"]
    assert cmd.action == "finish" and cmd.files[0].status == "ready"


def test_finisher_times_out_by_the_time_it_is_given():
    view = FinisherView()
    view.pump = lambda: 0                      # nothing ever arrives
    f = Finisher(transfer_timeout_hi=50, transfer_timeout_lo=50)
    assert perform(f.tick(50.0, view)) == []
    [cmd] = perform(f.tick(51.0, view))
    assert cmd.action == "fail" and cmd.attrs["taskBufferErrorCode"] == 101


def test_json_reads_give_what_the_standard_parser_gives():
    """The reactors' json/jsonb loader (msgspec, falling back to ``json.loads`` for what msgspec refuses)
    reads every value as ``json.loads`` did, including a number beyond a double and a lone surrogate."""
    import json

    from services.loop import _json_loads

    for text in (b'{"PandaID": 7, "attemptNr": 0, "spec": {"a": [1, 2.5, null, true, "\\u00e9"]}}',
                 b'123456789012345678901234567890', b'{"big": 1e400}', b'"\\ud800"', b'[]', b'0.1'):
        assert _json_loads(text) == json.loads(text)
        assert type(_json_loads(text)) is type(json.loads(text))
