"""confluent-kafka (librdkafka) behind the port of ``core.bus``: the default ``[kafka] client``.

Where librdkafka differs from what the port promises, and how this adapter bridges it:

* ``poll`` returns as soon as something is there: one blocking ``Consumer.poll`` (which also runs
  rebalance callbacks), then ``consume(n - 1, 1 ms)`` takes the rest of the fetch that has arrived
  (librdkafka enqueues a fetch response partition by partition). ``consume(n, timeout)`` alone would
  wait the whole timeout for ``n`` records.
* ``assign`` is asynchronous in librdkafka, and a seek on a partition it has not started fetching
  fails (_STATE). So ``assign`` takes effect at the next ``poll``, starting at the offsets of the seeks
  made meanwhile; seeks on fetching partitions are applied together at the next ``poll``, and one
  librdkafka refuses is applied by assigning again at that offset.
* librdkafka forgets a partition's position on seek (-1001 until the next fetch), so positions set by
  seek/assign are kept here until a record of the partition is returned; after that librdkafka's own
  position is used (it moves past transaction markers).
* Rebalance callbacks run inside ``poll`` on the polling thread; a ``seek`` made in ``on_assign``
  becomes the start offset of the assignment that follows the callback.
* ``seek_to_end`` resolves the end now (a watermark query, read_committed).
* ``send`` hands librdkafka one small ``_Delivery`` per record that is itself the delivery callback (no
  closure, no ``concurrent.futures.Future``: they cost more than the produce call). A daemon thread per
  plain producer serves the delivery reports, and its ``flush`` waits for its own count of records not
  reported yet, calling librdkafka's flush (which sends what lingers at once) 2 ms at a time: while another
  thread serves the reports, librdkafka's flush sees the last one go only when its own wait of up to 10 ms
  ends (it is not woken), so every flush took about 10 ms more than the broker did. A transactional
  producer has no such thread: its reports are served by ``commit_transaction`` (and ``flush``) on the
  caller's thread, which is where that same stall was worst (10 ms between the last ProduceResponse and
  EndTxn in every ledger commit under load); its deliveries resolve at the commit, when the ledger reads them.
* Dozing (``bus.Consumer.poll``): librdkafka's fetch wait is fixed when the client is made, so a quiet
  consumer pauses its partitions and, every ``idle_fetch_max_wait_ms``, asks for their read_committed ends in
  one ListOffsets request. Only when an end differs from the one asked before the last real look (the first
  look of a quiet spell is always real: records fetched but not polled yet are not read) does it resume them
  for a real look; a look ends with records or with every partition's end-of-partition report
  (``enable.partition.eof``: it comes after the partition's records), and starts with one watermark request,
  which wakes librdkafka's fetcher (it notices a resume only at its next wake-up, up to a second later). Why:
  a fetch that finds nothing costs Tansu several times a ListOffsets (it holds the fetch for its whole wait,
  and librdkafka sends a second one before the pause that ends the look arrives), so at rest a look is one
  small request instead of two fetches and two watermark requests. Any change of an end wakes (a false alarm
  costs one real look, a missed one would lose records): ends that grow, and Tansu's read_committed end that
  drops to 0 while a transaction is open. A partition a look did not read to its end is looked at for real
  next time. Partitions the caller paused stay paused.
* ``end_offsets`` of several partitions is one ListOffsets request (``offsets_for_times`` at the end,
  read_committed as the consumer reads), not two per partition.
* Keys are partitioned with ``murmur2_random``, Kafka's default partitioner, so ``bus.partition_of``
  holds; librdkafka refuses ``max.poll.interval.ms`` below ``session.timeout.ms``, so it is raised to it.
* A group member does not leave in the middle of a join: ``close`` first lets a join under way finish
  (polling, records dropped, no callbacks), for at most ``session.timeout.ms`` + 10 s. A member that left
  while the embedded Tansu broker was gathering a join left the group without an assignment for good: every
  later member waited in the join and got nothing (a component restarted during a database outage exits
  seconds after it joined; docs/reliability.md). ``on_assign`` raising still applies the assignment.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from core.bus import (
    AdminError,
    AdminSettings,
    ConsumerSettings,
    Delivered,
    Offsets,
    ProducerSettings,
    RecordTuple,
    TopicPartition,
)

log = logging.getLogger(__name__)
NUDGE_WAIT_S = 0.001   # _nudge: sending the request wakes the fetcher; its answer is not waited for
_rdkafka_log = logging.getLogger("librdkafka")   # librdkafka's own log lines, instead of raw stderr
_DRAIN_WAIT_S = 0.001
FLUSH_SLICE_S = 0.002   # a plain producer's flush: how long one librdkafka flush call may wait (see flush),
FLUSH_LONG_AFTER_S = 0.05   # and once the flush has lasted this long
FLUSH_LONG_SLICE_S = 0.05
_delivery_lock = threading.Lock()


def _ctp(tp: TopicPartition, offset: int | None = None) -> ck.TopicPartition:
    if offset is None:
        return ck.TopicPartition(tp.topic, tp.partition)
    return ck.TopicPartition(tp.topic, tp.partition, offset)


def _ours(parts: Iterable[ck.TopicPartition]) -> set[TopicPartition]:
    return {TopicPartition(p.topic, p.partition) for p in parts}


# ----------------------------------------------------------------------------------------- producer
class _Unreported:
    """How many records of one producer librdkafka has not reported on yet: what its ``flush`` waits for."""

    __slots__ = ("n", "_lock")

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.n += 1

    def reported(self) -> None:
        with self._lock:
            self.n -= 1


class _Delivery:
    """``bus.Delivery`` of one record; librdkafka calls it with the record's delivery report."""

    __slots__ = ("_msg", "_error", "_done", "_waiter", "_callbacks", "_count")

    def __init__(self, count: _Unreported | None = None) -> None:
        self._msg: Any = None
        self._error: BaseException | None = None
        self._done = False
        self._waiter: threading.Event | None = None
        self._callbacks: list[Callable[[Any], object]] | None = None
        self._count = count

    def __call__(self, err: ck.KafkaError | None, msg: ck.Message) -> None:
        if err is not None:
            self._error = ck.KafkaException(err)
        else:
            self._msg = msg
        with _delivery_lock:
            self._done = True
            waiter, callbacks = self._waiter, self._callbacks
        if self._count is not None:
            self._count.reported()
        if waiter is not None:
            waiter.set()
        for fn in callbacks or ():
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - a caller's callback must not stop delivery reports
                log.exception("delivery callback failed")

    def _wait(self, timeout: float | None) -> None:
        if self._done:
            return
        with _delivery_lock:
            if self._done:
                return
            if self._waiter is None:
                self._waiter = threading.Event()
            waiter = self._waiter
        if not waiter.wait(timeout):
            raise TimeoutError(f"no acknowledgement within {timeout} s")

    def result(self, timeout: float | None = None) -> Delivered:
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        m = self._msg
        return Delivered(m.topic(), m.partition(), m.offset())

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        with _delivery_lock:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)


class Producer:
    def __init__(self, s: ProducerSettings):
        conf: dict[str, Any] = {
            "bootstrap.servers": s.bootstrap, "client.id": s.client_id, "acks": "all",
            "enable.idempotence": True, "linger.ms": s.linger_ms, "batch.size": 256 * 1024,
            "max.in.flight.requests.per.connection": 5, "partitioner": "murmur2_random",
            "enable.metrics.push": False, "logger": _rdkafka_log}
        if s.transactional_id:
            conf.update({"transactional.id": s.transactional_id, "transaction.timeout.ms": s.transaction_timeout_ms})
        self._p = ck.Producer(conf)
        self._transactional = bool(s.transactional_id)
        self._closed = threading.Event()
        # a plain producer's reports are served by a thread of its own, and counted for flush; a transactional
        # one's by commit_transaction on the caller's thread (module docstring: the 10 ms stall otherwise)
        self._unreported: _Unreported | None = None
        self._poller: threading.Thread | None = None
        if not self._transactional:
            self._unreported = _Unreported()
            self._poller = threading.Thread(target=self._serve, name="confluent-delivery", daemon=True)
            self._poller.start()

    def _serve(self) -> None:
        # poll returns as soon as a delivery report is there, so the timeout only bounds how long close() waits
        # for this thread; 0.2 s instead of 0.05 s: an idle producer wakes 5 times a second, not 20 (a third of
        # its idle CPU, measured)
        while not self._closed.is_set():
            self._p.poll(0.2)

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None) -> _Delivery:
        count = self._unreported
        delivery = _Delivery(count)
        if count is not None:
            count.add()
        while True:
            try:
                self._p.produce(topic, value, key, -1 if partition is None else partition, on_delivery=delivery)
                return delivery
            except BufferError:       # local queue full: let deliveries drain
                self._p.poll(0.05)
            except BaseException:
                if count is not None:
                    count.reported()   # never handed to librdkafka: no report will come
                raise

    def flush(self, timeout: float | None = None) -> None:
        count = self._unreported
        if count is not None:
            # librdkafka's flush sends what lingers at once, but the delivery thread may serve the last report,
            # which that flush notices only when its own wait of up to 10 ms ends: so in slices of 2 ms, until
            # every record this producer sent is reported
            started = time.monotonic()
            deadline = None if timeout is None else started + timeout
            while count.n > 0:
                # a flush that lasts (the broker away) asks less often: it is not waiting for one last report
                now = time.monotonic()
                step = FLUSH_SLICE_S if now - started < FLUSH_LONG_AFTER_S else FLUSH_LONG_SLICE_S
                left_s = step if deadline is None else min(step, deadline - now)
                if left_s <= 0:
                    raise ck.KafkaException(ck.KafkaError(
                        ck.KafkaError._TIMED_OUT, f"{count.n} message(s) still undelivered after flush"))
                self._p.flush(left_s)
            return
        left = self._p.flush(-1 if timeout is None else timeout)
        if left:
            raise ck.KafkaException(ck.KafkaError(ck.KafkaError._TIMED_OUT,
                                                  f"{left} message(s) still undelivered after flush"))

    def partitions(self, topic: str) -> list[int]:
        md = self._p.list_topics(topic, timeout=10).topics.get(topic)
        return sorted(md.partitions) if md is not None and md.error is None else []

    def close(self) -> None:
        if self._closed.is_set():
            return
        try:
            if self._transactional:
                # what is not committed is abandoned; librdkafka's own close would try to abort the
                # transaction and hang on a fenced producer
                self._p.purge(True, True, False)
            else:
                self._p.flush(-1)
        finally:
            self._closed.set()
            if self._poller is not None:
                self._poller.join(5)

    # transactional producers only
    def init_transactions(self) -> None:
        self._p.init_transactions(60)

    def begin_transaction(self) -> None:
        self._p.begin_transaction()

    def send_offsets_to_transaction(self, offsets: Offsets, group: Any) -> None:
        self._p.send_offsets_to_transaction([_ctp(tp, off) for tp, off in offsets.items()], group, 60)

    def commit_transaction(self) -> None:
        self._p.commit_transaction(60)

    def abort_transaction(self) -> None:
        self._p.abort_transaction(60)


def producer(settings: ProducerSettings) -> Producer:
    return Producer(settings)


transactional_producer = producer


# ----------------------------------------------------------------------------------------- consumer
class Consumer:
    def __init__(self, s: ConsumerSettings):
        self._c = ck.Consumer({
            "bootstrap.servers": s.bootstrap, "client.id": s.client_id,
            # librdkafka insists on a group id; assign()-style readers never join or commit with it
            "group.id": s.group_id or f"pandaes-assign-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            "max.poll.interval.ms": max(s.max_poll_interval_ms, s.session_timeout_ms),
            "session.timeout.ms": s.session_timeout_ms, "heartbeat.interval.ms": s.heartbeat_interval_ms,
            "fetch.wait.max.ms": s.fetch_max_wait_ms, "max.partition.fetch.bytes": 8 * 1024 * 1024,
            # the end of a partition is reported (and skipped by poll): a dozing consumer's look is over when
            # every partition has answered
            "enable.partition.eof": True, "enable.metrics.push": False, "logger": _rdkafka_log})
        self._max_records = s.max_poll_records
        self._grouped = s.group_id is not None
        self._joining = False          # subscribed (or revoked) and no assignment since: a join under way
        self._settle_s = s.session_timeout_ms / 1000 + 10
        self._on_assign: Callable[[set[TopicPartition]], None] | None = None
        self._on_revoke: Callable[[set[TopicPartition]], None] | None = None
        self._assigned: set[TopicPartition] = set()
        self._in_assign = False
        self._pending: dict[TopicPartition, int] = {}   # seeks made inside on_assign
        self._pos: dict[TopicPartition, int] = {}       # positions set by seek/assign, not yet fetched past
        self._lazy: dict[TopicPartition, int] | None = None   # assign() not applied yet, with its start offsets
        self._deferred: dict[TopicPartition, int] = {}  # seeks on fetching partitions, applied at the next poll
        # dozing (bus.Consumer.poll): "active" → quiet for idle_after → "dozing" (our partitions paused: no
        # fetches) → after idle_wait "looking" (resumed until every partition answered records or its end) →
        # records: "active", none: "dozing" again. librdkafka's fetch wait is fixed at creation, so this is
        # how it fetches less often while nothing comes.
        self._idle_after = s.idle_after_ms / 1000 if s.idle_after_ms > 0 else None
        self._idle_wait = max(s.idle_fetch_max_wait_ms, s.fetch_max_wait_ms) / 1000
        self._state = "active"
        self._last_records = time.monotonic()
        self._dozed: set[TopicPartition] = set()     # paused by dozing
        self._held: set[TopicPartition] = set()      # paused by the caller (pause()): never resumed here
        self._wake_at = 0.0
        self._look_until = 0.0
        self._answered: set[TopicPartition] = set()
        self._seen: dict[TopicPartition, int] = {}    # ends the dozing partitions had when last seen (see _unchanged)

    # ----------------------------------------------------------------------------- subscription
    def subscribe(self, topics: Sequence[str], *,
                  on_assign: Callable[[set[TopicPartition]], None] | None = None,
                  on_revoke: Callable[[set[TopicPartition]], None] | None = None) -> None:
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._joining = True
        self._c.subscribe(list(topics), on_assign=self._assigned_cb, on_revoke=self._revoked_cb,
                          on_lost=self._revoked_cb)

    def _assigned_cb(self, _c: Any, parts: list[ck.TopicPartition]) -> None:
        tps = _ours(parts)
        self._pending = {}
        try:
            if self._on_assign is not None:
                self._in_assign = True
                self._on_assign(set(tps))
        finally:   # applied even if on_assign raised: librdkafka's join is over only once it is
            self._in_assign = False
            self._joining = False
            self._c.assign([_ctp(tp, self._pending.get(tp, ck.OFFSET_INVALID)) for tp in sorted(tps)])
        self._assigned = tps
        for tp in tps:
            self._pos.pop(tp, None)
            self._deferred.pop(tp, None)
        self._pos.update(self._pending)
        self._pending = {}
        self._active()

    def _revoked_cb(self, _c: Any, parts: list[ck.TopicPartition]) -> None:
        tps = _ours(parts)
        try:
            if self._on_revoke is not None:
                self._on_revoke(set(tps))
        finally:
            self._c.unassign()
            self._joining = self._grouped      # the group rejoins after a revocation
            self._active()
            self._assigned -= tps
            for tp in tps:
                self._pos.pop(tp, None)
                self._deferred.pop(tp, None)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [TopicPartition(*tp) for tp in partitions]
        self._assigned = set(tps)
        self._pos = {}
        self._deferred = {}
        self._lazy = dict.fromkeys(tps, ck.OFFSET_INVALID)
        self._held = set()
        self._active()   # a new assignment starts unpaused

    def _apply_assign(self) -> None:
        if self._lazy is not None:
            lazy, self._lazy = self._lazy, None
            self._c.assign([_ctp(tp, off) for tp, off in lazy.items()])

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    # ------------------------------------------------------------------------------------- polls
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[RecordTuple]]:
        self._apply_assign()
        self._apply_seeks()
        timeout = max(0, timeout_ms) / 1000
        if self._idle_after is not None:
            timeout = self._doze_before(timeout)
        first = self._c.poll(timeout)
        if first is None:
            if self._idle_after is not None:
                self._doze_after(False, ())
            return {}
        want = max_records or self._max_records
        msgs = [first]
        if want > 1:
            msgs += self._c.consume(want - 1, _DRAIN_WAIT_S)
        out: dict[TopicPartition, list[RecordTuple]] = {}
        tp: TopicPartition | None = None
        recs: list[RecordTuple] = []
        new = tuple.__new__
        ends: list[TopicPartition] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise ck.KafkaException(err)
                if err.code() == ck.KafkaError._PARTITION_EOF:
                    ends.append(TopicPartition(m.topic(), m.partition()))
                else:
                    log.warning("consumer: %s", err)
                continue
            topic, part = m.topic(), m.partition()
            if tp is None or part != tp.partition or topic != tp.topic:
                tp = TopicPartition(topic, part)
                got = out.get(tp)
                if got is None:
                    out[tp] = got = []
                    self._pos.pop(tp, None)
                recs = got
            recs.append(new(RecordTuple, (topic, part, m.offset(), m.key(), m.value(), m.timestamp()[1])))
        if self._idle_after is not None:
            self._doze_after(bool(out), ends)
        return out

    # ---------------------------------------------------------------------------------- dozing
    def _active(self) -> None:
        """Back to reading at the busy pace (records came, or a new start: assign, seek, rebalance)."""
        if self._dozed:
            parts = self._dozed & self._assigned
            self._dozed = set()
            if parts and self._lazy is None:
                self._c.resume([_ctp(tp) for tp in sorted(parts)])
        self._state = "active"
        self._last_records = time.monotonic()

    def _ours_to_doze(self) -> set[TopicPartition]:
        return self._assigned - self._held

    def _doze_before(self, timeout: float) -> float:
        """Start dozing, or start a look, before the poll; returns how long the poll may wait."""
        now = time.monotonic()
        if self._state == "active":
            parts = self._ours_to_doze()
            if (parts and now - self._last_records >= self._idle_after and self._lazy is None
                    and not self._deferred):
                self._c.pause([_ctp(tp) for tp in sorted(parts)])
                self._dozed, self._state, self._wake_at = parts, "dozing", now + self._idle_wait
                # not the ends the fetches reported: records fetched but not yet polled are not read; the
                # first look of a quiet spell is a real one, the ends asked just before it are then the seen ones
                self._seen = {}
        if self._state == "dozing":
            if now < self._wake_at:
                return min(timeout, self._wake_at - now)
            parts = self._dozed & self._assigned
            if parts and self._unchanged(parts):
                self._wake_at = time.monotonic() + self._idle_wait   # nothing new: no fetch, doze on
                return min(timeout, self._idle_wait)
            if parts:
                self._c.resume([_ctp(tp) for tp in sorted(parts)])
                self._nudge(min(parts))
            self._state, self._answered = "looking", set()
            self._look_until = now + max(2.0, 2 * self._idle_wait)
        return timeout

    def _unchanged(self, parts: set[TopicPartition]) -> bool:
        """Whether every dozing partition's end is the one last seen (one ListOffsets request); the ends asked
        become the ones seen. Not known (an error, a partition not answered): False, so a real look follows."""
        ends = self._ends(parts)
        same = ends is not None and all(tp in ends and self._seen.get(tp) == ends[tp] for tp in parts)
        self._seen = ends or {}
        return same

    def _ends(self, parts: Iterable[TopicPartition], timeout: float = 1.0) -> dict[TopicPartition, int] | None:
        """The read_committed ends of ``parts`` in one ListOffsets request per leader; None if one is not known."""
        try:
            got = self._c.offsets_for_times([_ctp(tp, ck.OFFSET_END) for tp in sorted(parts)], timeout=timeout)
        except ck.KafkaException as exc:
            log.debug("end offsets not known: %s", exc)
            return None
        ends = {}
        for p in got:
            if p.error is not None or p.offset < 0:
                return None
            ends[TopicPartition(p.topic, p.partition)] = p.offset
        return ends

    def rest(self, stop: threading.Event, longest_s: float) -> None:
        # only while dozing and no join is under way (its callbacks are served by poll)
        if self._idle_after is None or self._state != "dozing" or self._joining:
            return
        wait = min(longest_s, self._wake_at - time.monotonic())
        if wait > 0:
            stop.wait(wait)

    def wake(self) -> None:
        if self._idle_after is None or self._in_assign:
            return
        if self._state == "active":   # records come another way: no quiet spell begins now (as kafka-python's)
            self._last_records = time.monotonic()
            return
        parts = self._dozed & self._assigned
        self._active()
        if parts and self._lazy is None:
            self._nudge(min(parts))

    def _nudge(self, tp: TopicPartition) -> None:
        """Make librdkafka fetch the resumed partitions now: its broker thread notices a resume only when it
        next wakes (up to a second later); a request to that broker (one partition's watermarks) wakes it. Waited
        for briefly: sent is what counts, and the answer can queue behind a fetch the broker holds for its whole wait
        (the ledger's loop stood still for a second that way)."""
        try:
            self._c.get_watermark_offsets(_ctp(tp), timeout=NUDGE_WAIT_S, cached=False)
        except ck.KafkaException as exc:   # the fetch still comes, later
            log.debug("watermark request to wake the fetcher failed: %s", exc)

    def _doze_after(self, got: bool, ends: Iterable[TopicPartition]) -> None:
        if got:
            self._active()
            return
        if self._state != "looking":
            return
        self._answered.update(ends)
        parts = self._dozed & self._assigned
        now = time.monotonic()
        if parts <= self._answered or now >= self._look_until:
            for tp in parts - self._answered:   # not read to its end in this look: the next look is a real one
                self._seen.pop(tp, None)
            if parts:
                self._c.pause([_ctp(tp) for tp in sorted(parts)])
            self._dozed, self._state, self._wake_at = parts, "dozing", now + self._idle_wait

    # --------------------------------------------------------------------------------- positions
    def seek(self, partition: TopicPartition, offset: int) -> None:
        tp = TopicPartition(*partition)
        if self._state != "active" and not self._in_assign:
            self._active()
        if self._in_assign:
            self._pending[tp] = offset
            return
        if self._lazy is not None and tp in self._lazy:
            self._lazy[tp] = offset
        else:
            self._deferred[tp] = offset
        self._pos[tp] = offset

    def _apply_seeks(self) -> None:
        if not self._deferred:
            return
        seeks, self._deferred = self._deferred, {}
        for tp, offset in seeks.items():
            if tp not in self._assigned:
                continue
            try:
                self._c.seek(_ctp(tp, offset))
            except ck.KafkaException as exc:
                # not fetching yet (assign() is asynchronous in librdkafka): assign again, at that offset
                if exc.args[0].code() not in (ck.KafkaError._STATE, ck.KafkaError._OUTDATED):
                    raise
                self._reassign({tp: offset})

    def _reassign(self, offsets: dict[TopicPartition, int]) -> None:
        current = {tp: self._pos.get(tp) for tp in self._assigned}
        for tp in self._assigned - set(offsets):
            lib = self._c.position([_ctp(tp)])[0].offset
            if lib >= 0:
                current[tp] = lib
        current.update(offsets)
        self._c.assign([_ctp(tp, ck.OFFSET_INVALID if off is None else off) for tp, off in current.items()])

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._assigned):
            self.seek(tp, self._watermarks(tp)[1])

    def position(self, partition: TopicPartition) -> int:
        tp = TopicPartition(*partition)
        if tp in self._deferred:
            return self._deferred[tp]
        if tp in self._pos and self._lazy is not None:
            return self._pos[tp]
        lib = -1 if self._lazy is not None else self._c.position([_ctp(tp)])[0].offset
        if lib >= 0:            # librdkafka knows it only after a fetch since the last seek/assign
            self._pos.pop(tp, None)
            return lib
        if tp in self._pos:
            return self._pos[tp]
        # nothing fetched yet: where the fetch will start (the committed offset, else the beginning)
        committed = self.committed(tp) if self._grouped else None
        off = committed if committed is not None else self._watermarks(tp)[0]
        self._pos[tp] = off
        if self._lazy is not None and tp in self._lazy:
            self._lazy[tp] = off
        return off

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        return self._c.get_watermark_offsets(_ctp(tp), timeout=30, cached=False)

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {TopicPartition(*tp): self._watermarks(tp)[0] for tp in partitions}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        tps = [TopicPartition(*tp) for tp in partitions]
        if len(tps) > 1:
            ends = self._ends(tps, timeout=30)
            if ends is not None:
                return ends
        return {tp: self._watermarks(tp)[1] for tp in tps}

    def fetched_ends(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        ends = {}
        for tp in partitions:
            try:
                end = self._c.get_watermark_offsets(_ctp(tp), cached=True)[1]
            except ck.KafkaException:   # not fetched yet (or not assigned)
                continue
            if end >= 0:
                ends[TopicPartition(*tp)] = end
        return ends

    def pause(self, *partitions: TopicPartition) -> None:
        self._apply_assign()
        tps = {TopicPartition(*tp) for tp in partitions}
        self._held |= tps
        self._dozed -= tps
        self._c.pause([_ctp(tp) for tp in tps])

    def resume(self, *partitions: TopicPartition) -> None:
        self._apply_assign()
        tps = {TopicPartition(*tp) for tp in partitions}
        self._held -= tps
        if tps:
            self._c.resume([_ctp(tp) for tp in sorted(tps)])
            self._nudge(min(tps))
        self._active()

    # ----------------------------------------------------------------------------------- commits
    def commit(self, offsets: Offsets, *, asynchronous: bool = False) -> None:
        if not offsets:
            return
        try:
            res = self._c.commit(offsets=[_ctp(tp, off) for tp, off in offsets.items()], asynchronous=asynchronous)
        except ck.KafkaException as exc:
            if exc.args[0].code() == ck.KafkaError._NO_OFFSET:
                return
            raise
        for p in res or ():
            if p.error is not None:
                raise ck.KafkaException(p.error)

    def committed(self, partition: TopicPartition) -> int | None:
        res = self._c.committed([_ctp(partition)], timeout=30)[0]
        if res.error is not None:
            raise ck.KafkaException(res.error)
        return res.offset if res.offset >= 0 else None

    def group_metadata(self) -> Any:
        return self._c.consumer_group_metadata()

    def partitions(self, topic: str) -> list[int]:
        md = self._c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            raise RuntimeError(f"topic {topic!r} does not exist on the broker ({md.error if md else 'unknown'})")
        return sorted(md.partitions)

    def close(self) -> None:
        try:
            self._settle()
            self._c.close()
        except RuntimeError:   # already closed
            pass

    def _settle(self) -> None:
        """Let a join under way finish before leaving (module docstring): poll, dropping what comes."""
        if not self._joining:
            return
        self._on_assign = self._on_revoke = None
        deadline = time.monotonic() + self._settle_s
        while self._joining and time.monotonic() < deadline:
            self._c.poll(0.2)
        if self._joining:
            log.warning("consumer: leaving its group with a join still under way after %.0fs", self._settle_s)


def consumer(settings: ConsumerSettings) -> Consumer:
    return Consumer(settings)


# -------------------------------------------------------------------------------------------- admin
class Admin:
    def __init__(self, s: AdminSettings):
        self._a = AdminClient({"bootstrap.servers": s.bootstrap, "client.id": s.client_id,
                               "enable.metrics.push": False, "logger": _rdkafka_log})
        self._timeout = s.timeout_ms / 1000

    def _result(self, future: Any, what: str, ok: tuple[int, ...] = ()) -> Any:
        try:
            return future.result(self._timeout)
        except ck.KafkaException as exc:
            if exc.args[0].code() in ok:
                return None
            raise AdminError(f"{what} failed: {exc.args[0].str()}") from None

    def topics(self) -> set[str]:
        return set(self._a.list_topics(timeout=self._timeout).topics)

    def partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        # all topics' metadata: asking for named ones could make a broker auto-create them
        md = self._a.list_topics(timeout=self._timeout).topics
        counts = {}
        for name in topics:
            t = md.get(name)
            if t is None or (t.error is not None and t.error.code() == ck.KafkaError.UNKNOWN_TOPIC_OR_PART):
                continue
            if t.error is not None:
                raise AdminError(f"describing Kafka topic {name!r} failed: {t.error.str()}")
            counts[name] = len(t.partitions)
        return counts

    def create_topics(self, partitions: Mapping[str, int],
                      configs: Mapping[str, Mapping[str, str]] | None = None) -> None:
        if not partitions:
            return
        replication = min(3, len(self._a.list_topics(timeout=self._timeout).brokers) or 1)
        futures = self._a.create_topics([NewTopic(name, n, replication, config=dict((configs or {}).get(name) or {}))
                                         for name, n in partitions.items()],
                                        operation_timeout=self._timeout)
        for name, fut in futures.items():
            self._result(fut, f"creating Kafka topic {name!r} ({partitions[name]} partitions, replication "
                              f"{replication})", ok=(ck.KafkaError.TOPIC_ALREADY_EXISTS,))
        deadline = time.monotonic() + self._timeout   # until every partition has a leader in the metadata
        while time.monotonic() < deadline:
            md = self._a.list_topics(timeout=self._timeout).topics
            if all(name in md and md[name].partitions and all(p.leader >= 0 for p in md[name].partitions.values())
                   for name in partitions):
                return
            time.sleep(0.05)

    def topic_configs(self, topic: str) -> dict[str, str] | None:
        (fut,) = self._a.describe_configs([ConfigResource("topic", topic)]).values()
        entries = self._result(fut, f"describing the configuration of Kafka topic {topic!r}") or {}
        return {name: entry.value for name, entry in entries.items()} or None

    def delete_topics(self, topics: Iterable[str]) -> None:
        names = list(topics)
        if not names:
            return
        for name, fut in self._a.delete_topics(names, operation_timeout=self._timeout).items():
            self._result(fut, f"deleting Kafka topic {name!r}", ok=(ck.KafkaError.UNKNOWN_TOPIC_OR_PART,))

    def committed_offsets(self, group: str) -> dict[TopicPartition, int]:
        (fut,) = self._a.list_consumer_group_offsets([ck.ConsumerGroupTopicPartitions(group)]).values()
        res = self._result(fut, f"reading the offsets of consumer group {group!r}")
        return {TopicPartition(p.topic, p.partition): p.offset for p in res.topic_partitions
                if p.error is None and p.offset >= 0}

    def close(self) -> None:
        pass   # librdkafka's admin client has no close: it goes with its last reference


def admin(settings: AdminSettings) -> Admin:
    return Admin(settings)
