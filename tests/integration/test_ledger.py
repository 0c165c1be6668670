"""The ledger against the real broker and database: verdicts, exactly-once under a crash, scaling."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from conftest import BOTH_CLIENTS
from helpers import all_events, wait_until

from core import bus
from core.bus import CommandSender, OutcomeWaiter
from core.ledger import CRASH_ENV, Ledger
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import JobSpec
from schemas.messages import JobSubmitted, Kill, Rejected, Submit, Transition, decode_outcome, encode

# every test here runs with kafka-python and with confluent-kafka behind core.bus
pytestmark = pytest.mark.parametrize("kafka_client", BOTH_CLIENTS, indirect=True)


def env_for(cfg) -> dict[str, str]:
    env = dict(os.environ)
    for section in ("kafka", "db", "state"):
        for key, value in getattr(cfg, section).as_dict().items():
            env[f"PANDAES_{section.upper()}_{key.upper()}"] = str(value)
    return env


def submits(ids, site="LOCAL"):
    return [Submit(PandaID=i, actor="test", job=JobSpec(computingSite=site, attemptNr=1,
                                                          transformation="run.sh")) for i in ids]


def verdicts(waiter, sender, cmds, reply_to=None) -> list:
    """Send ``cmds`` (answered on ``reply_to`` when given) and wait for each one's event or rejection, in order."""
    for c in cmds:
        if reply_to is not None:
            c.reply_to = reply_to
    futs = [waiter.expect(c.id) for c in cmds]
    sender.send_many(cmds)
    sender.flush()
    return [f.result(60) for f in futs]


def start_ledger(cfg, background, instance="0") -> Ledger:
    ledger = Ledger(cfg, instance=instance, snapshot=partition_snapshot)
    ledger.stop_event = background.run(ledger, f"ledger-{instance}")
    return ledger


def test_commands_become_events_and_illegal_ones_rejections(cfg, background):
    start_ledger(cfg, background)
    waiter = OutcomeWaiter(cfg)
    sender = CommandSender(cfg)
    try:
        cmds = [*submits([1, 2]), Transition(PandaID=1, action="activate", actor="service:setupper"),
                Transition(PandaID=2, action="dispatch", actor="test"),     # illegal from defined
                Transition(PandaID=3, action="activate", actor="test")]     # unknown job
        outs = verdicts(waiter, sender, cmds)
    finally:
        sender.close()
        waiter.close()
    assert isinstance(outs[0], JobSubmitted) and outs[0].seq == 1 and outs[0].to_state == "defined"
    assert outs[2].to_state == "activated" and outs[2].seq == 2 and outs[2].actor == "service:setupper"
    assert isinstance(outs[3], Rejected) and outs[3].code == "illegal_transition"
    assert "dispatch is not allowed from defined" in outs[3].reason
    assert isinstance(outs[4], Rejected) and outs[4].code == "unknown_job"
    events = all_events(cfg)
    assert sorted((e.PandaID, e.seq) for _, _, e in events) == [(1, 1), (1, 2), (2, 1)]


def test_a_command_with_reply_to_gets_its_verdict_on_that_reply_partition(cfg, background):
    """The verdict (event or rejection, the same bytes) also goes, keyed by command id, to the reply partition the
    command names, in the ledger's transaction; commands without reply_to, or naming a partition the replies topic
    does not have, are answered on the events and rejected topics only (and the ledger goes on)."""
    start_ledger(cfg, background)
    mine, shared = OutcomeWaiter(cfg, reply_partition=1), OutcomeWaiter(cfg, reply_partition=1)
    everything = OutcomeWaiter(cfg)
    sender = CommandSender(cfg)
    producer = bus.producer(cfg)
    try:
        ok, other = submits([1, 2])
        ok.reply_to = other.reply_to = 1
        illegal = Transition(PandaID=2, action="dispatch", actor="test", reply_to=1)   # defined: rejected
        nowhere = Kill(PandaID=1, actor="test", reply_to=999)        # no such reply partition
        plain = Transition(PandaID=1, action="activate", actor="test")
        futs = [mine.expect(ok.id), shared.expect(other.id), mine.expect(illegal.id),
                everything.expect(nowhere.id), everything.expect(plain.id), everything.expect(ok.id)]
        bad_id = "f" * 32   # a command that does not decode still gets its rejection where it asked
        bad = mine.expect(bad_id)
        for cmd in (ok, other, illegal, nowhere):
            sender.send(cmd)
        sender.flush()
        raw = b'{"type":"kill","PandaID":"x","id":"%s","reply_to":1}' % bad_id.encode()
        producer.send(cfg.kafka.commands_topic, raw, key=b"3")
        producer.flush()
        outs = [f.result(60) for f in futs[:4]]
        sender.send(plain)      # after the kill: judged on the killed job
        sender.flush()
        outs += [f.result(60) for f in futs[4:]]
        out_bad = bad.result(60)
    finally:
        producer.close()
        sender.close()
        for w in (mine, shared, everything):
            w.close()
    assert isinstance(outs[0], JobSubmitted) and outs[0].command_id == ok.id and outs[0] == outs[5]
    assert isinstance(outs[1], JobSubmitted) and outs[1].PandaID == 2
    assert isinstance(outs[2], Rejected) and outs[2].code == "illegal_transition"
    assert outs[3].command_id == nowhere.id and outs[3].to_state == "cancelled"
    assert isinstance(outs[4], Rejected) and outs[4].command_id == plain.id
    assert isinstance(out_bad, Rejected) and out_bad.code == "bad_command"
    replies = {p: list(bus.read_partition(cfg, cfg.kafka.replies_topic, p, 0))
               for p in bus.partitions(cfg, cfg.kafka.replies_topic)}
    assert {p for p, recs in replies.items() if recs} == {1}
    by_key = {rec.key.decode(): rec.value for rec in replies[1]}
    assert set(by_key) == {ok.id, other.id, illegal.id, bad_id}
    assert decode_outcome(by_key[ok.id]) == outs[0]
    assert encode(decode_outcome(by_key[illegal.id])) == encode(outs[2])


def _send(cfg, cmds):
    sender = CommandSender(cfg)
    sender.send_many(cmds)
    sender.flush()
    sender.close()


def test_commands_handed_over_on_this_host_are_judged_in_the_log_order_with_other_writers(cfg, background):
    """Senders on the ledger's host hand each stored command over (core/local_commands.py); a writer that does not
    (another host, here a bare producer) leaves a gap the ledger waits for: per job, submit (handed over),
    activate (bare) and dispatch (handed over, sent without waiting) are judged in the log's order, so the
    dispatch finds the job activated. Every event names its command's topic offset, rising per partition."""
    ledger = start_ledger(cfg, background)
    waiter = OutcomeWaiter(cfg)
    sender = CommandSender(cfg)
    bare = bus.producer(cfg)
    ids = list(range(500, 540))
    try:
        wait_until(lambda: ledger.intake.bound and not ledger.to_rebuild
                   and len(ledger.resume_at) == cfg.kafka.partitions, 60, 0.1, "the ledger holding every partition")
        dispatches = [Transition(PandaID=i, action="dispatch", actor="test") for i in ids]
        futs = [waiter.expect(c.id) for c in dispatches]
        for i, dispatch in zip(ids, dispatches, strict=True):
            [submit] = submits([i])
            sender.send(submit)
            sender.flush()
            activate = Transition(PandaID=i, action="activate", actor="test")
            bare.send(cfg.kafka.commands_topic, encode(activate), key=str(i).encode())
            bare.flush()
            sender.send(dispatch)
        sender.flush()
        outs = [f.result(60) for f in futs]
    finally:
        bare.close()
        sender.close()
        waiter.close()
    assert all(not isinstance(o, Rejected) and o.to_state == "sent" for o in outs), outs
    assert ledger.intake.stats["commands"] >= 2 * len(ids)
    events = all_events(cfg)
    assert len(events) == 3 * len(ids)
    for p in {p for p, _, _ in events}:
        srcs = [e.src[1] for q, _, e in events if q == p]
        assert srcs == sorted(srcs) and len(set(srcs)) == len(srcs), f"partition {p}: {srcs}"


def test_exactly_once_when_the_ledger_dies_between_produce_and_commit(cfg, background):
    env = env_for(cfg)
    ids = list(range(100, 140))
    first = submits(ids)
    second = [Transition(PandaID=i, action="activate", actor="test") for i in ids]
    # a ledger that processes one batch normally and dies after producing the second, before commit
    crashing = subprocess.Popen([sys.executable, "-m", "cli.main", "component", "ledger"],
                                env={**env, CRASH_ENV: "2"})
    try:
        _send(cfg, first)
        wait_until(lambda: len(all_events(cfg)) >= len(ids), 90, 0.5, "first batch of events")
        _send(cfg, second)
        assert crashing.wait(90) == 17, "the ledger should have crashed on purpose"
    finally:
        if crashing.poll() is None:
            crashing.kill()
    # a new ledger with the same instance id fences the old transaction and carries on
    start_ledger(cfg, background, instance="0")
    wait_until(lambda: len(all_events(cfg)) >= 2 * len(ids), 90, 0.5, "second batch of events")
    events = [e for _, _, e in all_events(cfg)]
    per_command = Counter(e.command_id for e in events)
    assert set(per_command) == {c.id for c in first + second}, "an event is missing"
    assert max(per_command.values()) == 1, "a command produced two events"
    for pid in ids:
        assert sorted(e.seq for e in events if e.PandaID == pid) == [1, 2]


def test_two_ledgers_share_partitions_without_double_events(cfg, background):
    a = start_ledger(cfg, background, "a")
    b = start_ledger(cfg, background, "b")
    ids = list(range(1000, 1200))
    cmds = submits(ids) + [Transition(PandaID=i, action="activate", actor="test") for i in ids]
    _send(cfg, cmds)
    wait_until(lambda: len(all_events(cfg)) >= len(cmds), 120, 0.5, "all events")
    events = [e for _, _, e in all_events(cfg)]
    assert len(events) == len(cmds)
    assert Counter(e.command_id for e in events) == Counter(c.id for c in cmds)
    assert a.stats["events"] + b.stats["events"] == len(cmds)
    assert a.stats["events"] > 0 and b.stats["events"] > 0, "both ledgers should own partitions"


def test_ledger_rebuilds_state_from_projection_and_log(cfg, background):
    """A new ledger judges commands against state it rebuilt (snapshot + later events)."""
    first = start_ledger(cfg, background, "x")
    runner = ProjectionRunner(cfg)
    background.start(runner.run, "projector")
    _send(cfg, submits([7, 8]) + [Transition(PandaID=7, action="activate", actor="test")])
    wait_until(lambda: len(all_events(cfg)) >= 3, 60, 0.2)
    wait_until(lambda: runner.positions.get("jobs"), 60, 0.2, "projection progress")
    background.stop(first.stop_event)  # it leaves the group: the next ledger takes every partition
    second = start_ledger(cfg, background, "y")
    waiter = OutcomeWaiter(cfg)
    try:
        ok = Transition(PandaID=7, action="dispatch", actor="test")       # legal only if 7 is activated
        bad = Transition(PandaID=8, action="dispatch", actor="test")      # 8 is still defined
        futs = [waiter.expect(ok.id), waiter.expect(bad.id)]
        _send(cfg, [ok, bad])
        out_ok, out_bad = (f.result(90) for f in futs)
    finally:
        waiter.close()
    assert out_ok.to_state == "sent" and out_ok.seq == 3
    assert isinstance(out_bad, Rejected) and out_bad.state == "defined"
    assert second.stats["events"] == 1


def test_a_dispatch_handed_directly_is_judged_in_no_topic_and_a_new_ledger_resumes_after_it(cfg, background):
    """getJob's dispatch handed straight to the ledger of its partition (core/local_commands.py, DIRECT): its
    event is in the log naming no command offset and its verdict comes on the reply partition, while the commands
    topic never holds it; one handed to a partition that is not its job's is refused by name. A new ledger, whose
    rebuild finds only direct events after the projection's snapshot, resumes the topic's commands after the last
    one judged: the next command is judged once, on the dispatched state."""
    first = start_ledger(cfg, background, "x")
    runner = ProjectionRunner(cfg)
    background.start(runner.run, "projector")
    waiter = OutcomeWaiter(cfg, reply_partition=1)
    sender = CommandSender(cfg)
    ids = list(range(600, 612))
    try:
        sender.warm_up()
        wait_until(lambda: first.intake.bound and not first.to_rebuild
                   and len(first.resume_at) == cfg.kafka.partitions, 60, 0.1, "the ledger holding every partition")
        verdicts(waiter, sender, submits(ids) + [Transition(PandaID=i, action="activate", actor="test") for i in ids],
                 reply_to=1)
        dispatches = [Transition(PandaID=i, action="dispatch", actor="pilot:p", reply_to=1) for i in ids]
        futs = [waiter.expect(c.id) for c in dispatches]
        assert all(sender.hand_many([(c, encode(c)) for c in dispatches]))   # one datagram for all
        outs = [f.result(60) for f in futs]
        stray = Transition(PandaID=ids[0], action="kill", actor="test", reply_to=1)
        wrong = (bus.partition_of(stray.PandaID, cfg.kafka.partitions) + 1) % cfg.kafka.partitions
        fut = waiter.expect(stray.id)
        assert sender.forwarder.hand(wrong, str(stray.PandaID).encode(), encode(stray))
        refused = fut.result(60)
        wait_until(lambda: runner.positions.get("jobs") and all(
            status == "sent" for _, status in _statuses(cfg, ids)), 60, 0.2, "the projection showing every dispatch")
        background.stop(first.stop_event)
        second = start_ledger(cfg, background, "y")
        after = Kill(PandaID=ids[1], actor="test", reply_to=1)
        [killed] = verdicts(waiter, sender, [after], reply_to=1)
    finally:
        sender.close()
        waiter.close()
    assert all(not isinstance(o, Rejected) and o.to_state == "sent" and o.src == [] for o in outs), outs
    assert first.stats["direct"] == len(ids) + 1
    assert isinstance(refused, Rejected) and refused.code == "bad_command" and "does not hold it" in refused.reason
    assert not isinstance(killed, Rejected) and killed.from_state == "sent" and killed.seq == 4
    events = [e for _, _, e in all_events(cfg)]
    assert Counter(e.command_id for e in events).most_common(1)[0][1] == 1
    assert {e.command_id for e in events if e.PandaID in ids and e.seq == 3} == {c.id for c in dispatches}
    assert not any(e.src for e in events if e.command_id in {c.id for c in dispatches})
    # the new ledger judged the kill alone: no dispatch waited in the topic after where it resumed
    assert second.stats["commands"] == 1 and second.stats["direct"] == 0


def _statuses(cfg, ids):
    from core import db
    with db.connect(cfg) as conn:
        return conn.execute("SELECT pandaid, status FROM jobs WHERE pandaid = ANY(%s)", (ids,)).fetchall()


def test_a_verdict_told_on_this_host_is_written_to_the_replies_topic_only_when_telling_fails(cfg, background):
    """A command asking for its verdict told only (reply_local: its waiter listens here and holds the partition
    alone) is answered through the socket and leaves no reply record; one whose partition nobody listens to is
    answered all the same, its reply record written by the ledger after the telling failed (core/local_replies.py)."""
    start_ledger(cfg, background)
    told = OutcomeWaiter(cfg, reply_partition=1)
    deaf = OutcomeWaiter(cfg, reply_partition=2, listen=False)   # reads the topic only
    sender = CommandSender(cfg)
    try:
        assert told.listening and not deaf.listening
        here, there = submits([700, 701])
        here.reply_local = there.reply_local = True
        [out_here] = verdicts(told, sender, [here], reply_to=1)
        [out_there] = verdicts(deaf, sender, [there], reply_to=2)
    finally:
        sender.close()
        told.close()
        deaf.close()
    assert isinstance(out_here, JobSubmitted) and isinstance(out_there, JobSubmitted)
    by_partition = {p: [rec.key.decode() for rec in bus.read_partition(cfg, cfg.kafka.replies_topic, p, 0)]
                    for p in (1, 2)}
    assert by_partition == {1: [], 2: [there.id]}
