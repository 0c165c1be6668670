"""Committed verdicts told to a waiter on this host (core/local_replies.py): framing, the socket round trip, what is
never told (an aborted batch, another user's datagram), and a listener-less partition costing the ledger nothing."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from core import config, local_replies
from core.local_replies import ReplyListener, ReplyNotifier, pack, unpack

pytestmark = pytest.mark.skipif(not local_replies.SUPPORTED, reason="Unix sockets with SO_PASSCRED (Linux) only")


def _cfg(tmp_path, on: bool = True) -> config.Config:
    return config.load().replace(state={"dir": str(tmp_path)}, ledger={"local_replies": on},
                                 kafka={"bootstrap": "127.0.0.1:1", "replies_topic": "t.job-replies"})


class _Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()

    def __call__(self, pairs: list[tuple[str, bytes]]) -> None:
        with self.cond:
            self.got += pairs
            self.cond.notify_all()

    def wait_for(self, n: int) -> list[tuple[str, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, 10), self.got
            return list(self.got)


def test_pack_and_unpack_keep_every_pair_and_split_large_batches():
    pairs = [(f"c{i:05d}", bytes([i % 251]) * 1000) for i in range(200)]
    datagrams = pack(pairs)
    assert len(datagrams) > 1 and all(len(d) <= local_replies.MAX_DATAGRAM for d in datagrams)
    assert [p for d in datagrams for p in unpack(d)] == pairs


def test_a_verdict_too_large_for_a_datagram_is_left_to_the_topic():
    big = ("big", b"x" * local_replies.MAX_DATAGRAM)
    assert [p for d in pack([("a", b"1"), big, ("b", b"2")]) for p in unpack(d)] == [("a", b"1"), ("b", b"2")]


def test_a_truncated_datagram_gives_its_whole_frames_only():
    data = pack([("a", b"one"), ("b", b"two")])[0]
    assert unpack(data[:-1]) == [("a", b"one")]


def test_committed_verdicts_reach_the_listener_of_their_partition_only(tmp_path):
    cfg = _cfg(tmp_path)
    inbox1, inbox2 = _Inbox(), _Inbox()
    one, two = ReplyListener(cfg, 1, inbox1), ReplyListener(cfg, 2, inbox2)
    notifier = ReplyNotifier(cfg)
    try:
        assert one.bound and two.bound
        assert (one.path.parent.stat().st_mode & 0o777) == 0o700
        notifier.add(1, "a", b"A")
        notifier.add(2, "b", b"B")
        notifier.add(1, "c", b"C")
        assert inbox1.got == [] and inbox2.got == [], "nothing is told before the commit"
        notifier.send()
        assert inbox1.wait_for(2) == [("a", b"A"), ("c", b"C")]
        assert inbox2.wait_for(1) == [("b", b"B")]
    finally:
        notifier.close()
        one.close()
        two.close()
    assert not one.path.exists() and not two.path.exists()


def test_an_aborted_batch_is_never_told(tmp_path):
    cfg = _cfg(tmp_path)
    inbox = _Inbox()
    listener = ReplyListener(cfg, 0, inbox)
    notifier = ReplyNotifier(cfg)
    try:
        notifier.add(0, "aborted", b"X")
        notifier.discard()
        notifier.add(0, "committed", b"Y")
        notifier.send()
        assert inbox.wait_for(1) == [("committed", b"Y")]
    finally:
        notifier.close()
        listener.close()


def test_no_listener_costs_the_ledger_a_dropped_datagram_not_an_error(tmp_path):
    notifier = ReplyNotifier(_cfg(tmp_path))
    try:
        notifier.add(5, "a", b"A")
        notifier.send()
        notifier.drain()
        assert notifier.stats == {"told": 0, "dropped": 1, "untold": 0}
        assert notifier.take_untold() == []   # it is on the topic already
    finally:
        notifier.close()


def test_a_reply_kept_from_the_topic_comes_back_for_it_when_it_cannot_be_told(tmp_path):
    """A verdict the ledger did not write to the replies topic (its command asked: reply_local) is handed back when
    its datagram cannot be sent (no listener, too large), and the ledger is woken to write it; one told is not."""
    woken = threading.Event()
    cfg = _cfg(tmp_path)
    notifier = ReplyNotifier(cfg, on_untold=woken.set)
    inbox = _Inbox()
    listener = ReplyListener(cfg, 1, inbox)
    try:
        notifier.add(1, "told", b"T", kept=True)
        notifier.add(1, "huge", b"x" * local_replies.MAX_DATAGRAM, kept=True)
        notifier.add(1, "written", b"W")                  # on the topic already: never handed back
        notifier.add(5, "nobody", b"N", kept=True)        # no listener of partition 5
        notifier.send()
        notifier.drain()
        assert woken.is_set()
        assert sorted(notifier.take_untold()) == [(1, "huge", b"x" * local_replies.MAX_DATAGRAM), (5, "nobody", b"N")]
        assert notifier.take_untold() == []
        assert sorted(inbox.wait_for(2)) == [("told", b"T"), ("written", b"W")]
        # taken but not written (the ledger's batch aborted): taken again, first
        notifier.give_back_untold([(5, "nobody", b"N")])
        assert notifier.take_untold() == [(5, "nobody", b"N")]
    finally:
        listener.close()
        notifier.close()


def test_switched_off_nothing_is_bound_or_sent(tmp_path):
    cfg = _cfg(tmp_path, on=False)
    listener = ReplyListener(cfg, 0, _Inbox())
    notifier = ReplyNotifier(cfg)
    notifier.add(0, "a", b"A")
    notifier.send()
    notifier.drain()
    assert not listener.bound and notifier.stats == {"told": 0, "dropped": 0, "untold": 0}
    listener.close()
    notifier.close()


def test_a_datagram_from_another_user_is_refused(tmp_path):
    listener = ReplyListener(_cfg(tmp_path), 0, _Inbox())
    try:
        own = struct.pack("iII", 1, listener._uid, 0)
        other = struct.pack("iII", 1, listener._uid + 1, 0)
        assert local_replies.sent_by([(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, own)], listener._uid)
        assert not local_replies.sent_by([(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, other)], listener._uid)
        assert not local_replies.sent_by([], listener._uid), "no credentials: not believed"
    finally:
        listener.close()


def test_a_second_waiter_of_a_partition_takes_the_socket_and_the_first_leaves_it_alone(tmp_path):
    cfg = _cfg(tmp_path)
    first_inbox, second_inbox = _Inbox(), _Inbox()
    first = ReplyListener(cfg, 3, first_inbox)
    second = ReplyListener(cfg, 3, second_inbox)
    notifier = ReplyNotifier(cfg)
    try:
        first.close()   # must not unlink the second's socket
        notifier.add(3, "a", b"A")
        notifier.send()
        assert second_inbox.wait_for(1) == [("a", b"A")] and first_inbox.got == []
    finally:
        notifier.close()
        second.close()


def test_on_a_loop_the_listener_delivers_on_that_loop_thread_and_close_stops_reading(tmp_path):
    """The gateway's listener reads on its event loop (no thread of its own): every datagram's pairs are handed
    over on the loop's thread, several datagrams in one wake-up; after close nothing more is read."""
    import asyncio

    cfg = _cfg(tmp_path)

    async def scenario():
        loop = asyncio.get_running_loop()
        got: list[tuple[str, bytes]] = []
        threads: set[int] = set()
        arrived = asyncio.Event()

        def deliver(pairs):
            threads.add(threading.get_ident())
            got.extend(pairs)
            if len(got) >= 3:
                arrived.set()
        # made off the loop's thread, as the gateway makes its waiter
        listener = await asyncio.to_thread(ReplyListener, cfg, 4, deliver, loop)
        notifier = ReplyNotifier(cfg)
        try:
            assert listener.bound and listener._thread is None
            notifier.add(4, "a", b"A")
            notifier.send()
            notifier.drain()
            notifier.add(4, "b", b"B")
            notifier.add(4, "c", b"C")
            notifier.send()
            await asyncio.wait_for(arrived.wait(), 10)
            await asyncio.to_thread(listener.close)   # from another thread, as the gateway closes it
            return got, threads, listener.stats, listener.path
        finally:
            notifier.close()

    got, threads, stats, path = asyncio.run(scenario())
    assert got == [("a", b"A"), ("b", b"B"), ("c", b"C")]
    assert threads == {threading.get_ident()}, "delivered on the loop's thread"
    assert stats["datagrams"] >= 1 and stats["refused"] == 0
    assert not path.exists()


def _unread_socket(cfg, partition: int) -> socket.socket:
    """A waiter's socket bound at ``partition``'s path that nobody reads (a gateway whose loop is stuck)."""
    return local_replies.bind_own(local_replies.socket_path(cfg, partition), 1 << 16)


def _drain_socket(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(local_replies.MAX_DATAGRAM))
        except BlockingIOError:
            return out


def test_a_waiter_that_does_not_read_is_told_nothing_for_the_back_off_then_again(tmp_path, monkeypatch):
    """A socket full for the whole wait: that batch's kept verdicts come back for the topic, and for the back-off
    the waiter is not waited on again (its verdicts go straight to the topic, although its socket has room by
    then); afterwards it is told again."""
    monkeypatch.setattr(local_replies, "SEND_WAIT_S", 0.05)
    cfg = _cfg(tmp_path)
    sock = _unread_socket(cfg, 6)
    notifier = ReplyNotifier(cfg)
    try:
        for i in range(40):   # more datagrams than the socket queues (net.unix.max_dgram_qlen)
            notifier._send_all([(6, [(f"c{i}", b"v", True)])])
        untold = notifier.take_untold()
        assert untold and notifier.stats["dropped"] >= 1
        assert notifier.stats["told"] + len(untold) == 40, "every verdict either told or handed back"
        told = notifier.stats["told"]
        assert len(_drain_socket(sock)) == told          # room again …
        notifier._send_all([(6, [("late", b"L", True)])])
        assert notifier.take_untold() == [(6, "late", b"L")] and notifier.stats["told"] == told   # … not used yet
        notifier._quiet_until.clear()                     # the back-off is over
        notifier._send_all([(6, [("again", b"A", True)])])
        assert notifier.take_untold() == [] and unpack(_drain_socket(sock)[0]) == [("again", b"A")]
    finally:
        notifier.close()
        sock.close()


def test_batches_queued_for_one_waiter_go_in_one_datagram(tmp_path):
    cfg = _cfg(tmp_path)
    sock = _unread_socket(cfg, 7)
    notifier = ReplyNotifier(cfg)
    try:
        notifier._send_all([(7, [("a", b"A", False)]), (8, [("x", b"X", False)]), (7, [("b", b"B", False)])])
        assert [unpack(d) for d in _drain_socket(sock)] == [[("a", b"A"), ("b", b"B")]]
    finally:
        notifier.close()
        sock.close()
