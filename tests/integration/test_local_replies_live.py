"""Committed verdicts told straight to a waiter on this host, beside the replies topic (core/local_replies.py), with
the real ledger, broker and database: the told verdict is the topic's, already committed when it arrives, and a
waiter that cannot listen still gets every verdict from the topic."""

from __future__ import annotations

import pytest
from conftest import BOTH_CLIENTS
from helpers import wait_until
from test_ledger import start_ledger, submits, verdicts

from core import bus, local_replies
from core.bus import CommandSender, OutcomeWaiter
from schemas.messages import JobSubmitted, Rejected, Transition, decode_outcome

pytestmark = [pytest.mark.parametrize("kafka_client", BOTH_CLIENTS, indirect=True),
              pytest.mark.skipif(not local_replies.SUPPORTED, reason="Unix sockets with SO_PASSCRED (Linux) only")]


def test_a_told_verdict_is_the_committed_one_and_the_topics_copy_is_ignored(cfg, background):
    start_ledger(cfg, background)
    waiter = OutcomeWaiter(cfg, reply_partition=1)
    sender = CommandSender(cfg)
    try:
        assert waiter._local is not None and waiter._local.bound
        cmds = [*submits([1, 2]), Transition(PandaID=1, action="dispatch", actor="test")]   # defined: rejected
        outs = verdicts(waiter, sender, cmds, reply_to=1)
        # what the waiter was told is in the log for every read_committed reader already
        events = {decode_outcome(r.value).command_id for p in bus.partitions(cfg, cfg.kafka.events_topic)
                  for r in bus.read_partition(cfg, cfg.kafka.events_topic, p, 0)}
        told = waiter._local.stats["datagrams"]
    finally:
        sender.close()
        waiter.close()
    assert isinstance(outs[0], JobSubmitted) and isinstance(outs[1], JobSubmitted)
    assert isinstance(outs[2], Rejected) and outs[2].code == "illegal_transition"
    assert {cmds[0].id, cmds[1].id} <= events
    assert told >= 1, "the verdicts came through the local socket"
    assert not waiter.reads_urgently, "while the socket answers first, the topic is read at the services' pace"
    replies = {r.key.decode(): r.value for r in bus.read_partition(cfg, cfg.kafka.replies_topic, 1, 0)}
    assert set(replies) == {c.id for c in cmds}, "the replies topic keeps every verdict as before"
    assert [decode_outcome(replies[c.id]) for c in cmds] == outs


def test_a_waiter_that_does_not_listen_gets_every_verdict_from_the_topic(cfg, background):
    start_ledger(cfg, background)
    waiter = OutcomeWaiter(cfg.replace(ledger={"local_replies": False}), reply_partition=2)
    sender = CommandSender(cfg)
    try:
        assert waiter._local is None
        assert waiter.reads_urgently, "the topic is its only path: read with the urgent fetch wait"
        cmds = submits([1, 2, 3])
        outs = verdicts(waiter, sender, cmds, reply_to=2)
    finally:
        sender.close()
        waiter.close()
    assert [o.command_id for o in outs] == [c.id for c in cmds]
    assert all(isinstance(o, JobSubmitted) for o in outs)


def test_a_listening_waiter_whose_ledger_does_not_tell_it_reads_the_topic_urgently(cfg, background):
    """The waiter listens, but no ledger on this host tells it anything (here: one that does not send): the first
    verdicts arrive through the topic read at the relaxed pace, then the waiter switches to the urgent fetch wait
    and, reading on from where it stood, misses none of the later verdicts."""
    start_ledger(cfg.replace(ledger={"local_replies": False}), background)
    waiter = OutcomeWaiter(cfg, reply_partition=3)
    sender = CommandSender(cfg)
    try:
        assert waiter._local is not None and waiter._local.bound
        assert not waiter.reads_urgently
        waiter.LOCAL_SILENT_S = 0.5   # the socket's silence that counts (5 s in service), shortened for the test
        first = submits(range(1, OutcomeWaiter.KAFKA_FIRST_TO_URGENT + 1))
        outs = verdicts(waiter, sender, first, reply_to=3)
        wait_until(lambda: waiter.reads_urgently, 30, what="the waiter switched to the urgent fetch wait")
        later = submits([101, 102, 103])
        outs += verdicts(waiter, sender, later, reply_to=3)
        told = waiter._local.stats["datagrams"]
    finally:
        sender.close()
        waiter.close()
    assert [o.command_id for o in outs] == [c.id for c in [*first, *later]]
    assert all(isinstance(o, JobSubmitted) for o in outs)
    assert told == 0, "nothing came through the socket: every verdict was the topic's"
