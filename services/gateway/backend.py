"""The gateway's link to the rest of pandaes: an async database pool and ledger round trips.

``ask`` sends one command and awaits the ledger's verdict: ``OutcomeWaiter.expect_on`` gives a future of the
gateway's event loop, and the waiter's thread hands the verdicts of each poll to the loop together (one
wake-up per poll, not one per verdict). The
distinction that matters to a pilot is whether the command reached the log: ``Unavailable`` (it did
not — the caller must retry, so the pilot gets a non-JSON 503 and its send_update loop tries again) versus
``VerdictTimeout`` (it is in the log and will be judged; only the answer is late).

Every command names the process's partition of the replies topic (``reply_to``, claimed in ``replies.py``),
and the waiter reads only that partition: the ledger writes each verdict there in the transaction of the
event or rejection. ``[gateway] replies = false`` (or a broker without the replies topic) waits on the events
and rejected topics instead, as every other caller does.
"""

from __future__ import annotations

import asyncio
import logging
import time

from psycopg_pool import AsyncConnectionPool

from core import db, metrics
from core.bus import CommandSender, Delivery, OutcomeWaiter, partitions
from core.config import Config
from projections.candidates import ORDERED_WALK_OPTIONS
from schemas.messages import Command, Event, Rejected
from schemas.storable import Unstorable, encoded

from . import leases, replies
from .params import BadRequest

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The command could not be written to the log."""


class VerdictTimeout(TimeoutError):
    """The command is in the log, but the ledger's answer did not come in time."""


class Backend:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.pool: AsyncConnectionPool | None = None
        self.claim_pool: AsyncConnectionPool | None = None   # getJob's claims only ([gateway] claim_pool_size)
        self.sender: CommandSender | None = None
        self.waiter: OutcomeWaiter | None = None
        self.reply_claim: replies.ReplyClaim | None = None
        self.reply_local = False   # verdicts told on this host, the replies topic only where that fails
        # ask_now's commands of one turn of the event loop, handed over together (_hand_all)
        self._to_hand: list[tuple[Command, bytes, asyncio.Future[bool]]] = []

    async def start(self) -> None:
        self.pool = AsyncConnectionPool(self.cfg.db.url, min_size=1, max_size=int(self.cfg.gateway.db_pool_size),
                                        open=False, kwargs={"autocommit": True, "options": db.SESSION_OPTIONS})
        await self.pool.open(wait=True, timeout=30)
        claims = int(self.cfg.gateway.claim_pool_size)
        if claims > 0:
            # opened whole: a pool growing at the first burst of getJobs made them wait for new sessions
            # (claim p90 76 ms in the first second of the dispatch bench's level, 2-4 ms after)
            self.claim_pool = AsyncConnectionPool(
                self.cfg.db.url, min_size=claims, max_size=claims, open=False,
                kwargs={"autocommit": True,
                        "options": f"{db.SESSION_OPTIONS} {ORDERED_WALK_OPTIONS} {leases.CLAIM_SESSION_OPTIONS}"})
            await self.claim_pool.open(wait=True, timeout=30)
        self.reply_claim = await self._claim_reply_partition()
        # a partition held alone is listened to on this host; a shared one only read from the topic (a verdict
        # told to the socket would reach whichever process bound it last)
        alone = self.reply_claim is not None and self.reply_claim.conn is not None
        self.waiter = await asyncio.to_thread(
            OutcomeWaiter, self.cfg, reply_partition=self.reply_claim.partition if self.reply_claim else None,
            listen=alone, listen_on=asyncio.get_running_loop())
        self.reply_local = alone and self.waiter.listening
        # a caller waits on every command the gateway sends: its own linger ([gateway] linger_ms; -1: [kafka]'s)
        linger = int(self.cfg.gateway.linger_ms)
        self.sender = await asyncio.to_thread(CommandSender, self.cfg, linger_ms=None if linger < 0 else linger)
        # fetch the topic metadata now so the first send does not block on it
        await asyncio.to_thread(self.sender.warm_up)

    async def close(self) -> None:
        if self.sender is not None:
            await asyncio.to_thread(self.sender.close)
        if self.waiter is not None:
            await asyncio.to_thread(self.waiter.close)
        if self.reply_claim is not None:
            await self.reply_claim.release()
        if self.claim_pool is not None:
            await self.claim_pool.close()
        if self.pool is not None:
            await self.pool.close()

    async def _claim_reply_partition(self) -> replies.ReplyClaim | None:
        if not self.cfg.gateway.replies:
            return None
        topic = self.cfg.kafka.replies_topic
        try:
            count = len(await asyncio.to_thread(partitions, self.cfg, topic))
        except Exception as exc:  # noqa: BLE001 - whatever the client raises: no replies topic to read
            log.warning("gateway: no replies topic %r (%s): waiting for verdicts on the events and rejected topics "
                        "(`pandaes run` or `pandaes restore` creates it)", topic, exc)
            return None
        return await replies.claim(self.cfg, count)

    async def ask(self, cmd: Command, timeout: float) -> Event | Rejected:
        """Send ``cmd`` and return the ledger's event or rejection for it."""
        return (await self.ask_many([cmd], timeout))[0]

    async def ask_now(self, cmd: Command, timeout: float) -> Event | Rejected:
        """``ask`` for a command whose loss the caller repairs (getJob's dispatch: a late verdict is undone):
        handed straight to the ledger of its partition when one runs on this host, in no topic — no Produce
        round trip and no linger before the ledger judges it (``core/local_commands.py``). Sent to the topic as
        ``ask`` does when it cannot be handed over. A verdict that does not come raises ``VerdictTimeout``."""
        assert self.waiter is not None and self.sender is not None, "backend not started"
        if not self.cfg.gateway.direct_dispatch:
            return await self.ask(cmd, timeout)
        reply_to = self.reply_claim.partition if self.reply_claim is not None else None
        raw = _encode(cmd, reply_to, int(self.cfg.kafka.max_message_bytes), self.reply_local)
        loop = asyncio.get_running_loop()
        verdict = self.waiter.expect_on(cmd.id, loop)
        handed: asyncio.Future[bool] = loop.create_future()
        if not self._to_hand:
            loop.call_soon(self._hand_all)
        self._to_hand.append((cmd, raw, handed))
        try:
            if not await handed:
                self._forget([cmd], [verdict])
                return await self.ask(cmd, timeout)
            started = time.monotonic()
            done = await _within(verdict, timeout)
            _verdict_latency(cmd).observe(time.monotonic() - started)
            return done
        except TimeoutError:
            raise VerdictTimeout(f"no verdict from the ledger within {timeout:.0f}s") from None
        finally:
            self._forget([cmd], [verdict])

    def _hand_all(self) -> None:
        """Hand the commands ``ask_now`` gathered in this turn of the loop in one go: packed per partition (a
        Harvester batch, or the getJobs of a busy moment, as a few datagrams instead of one each)."""
        batch, self._to_hand = self._to_hand, []
        assert self.sender is not None
        try:
            results = self.sender.hand_many([(cmd, raw) for cmd, raw, _ in batch])
        except Exception:   # noqa: BLE001 - never strand the callers: they send to the topic instead
            log.exception("commands not handed to the ledger; sent to the topic")
            results = [False] * len(batch)
        for (_, _, handed), ok in zip(batch, results, strict=True):
            if not handed.done():
                handed.set_result(ok)

    async def ask_many(self, cmds: list[Command], timeout: float) -> list[Event | Rejected]:
        """Send commands together; every verdict or the first failure (Unavailable / VerdictTimeout)."""
        assert self.waiter is not None and self.sender is not None, "backend not started"
        limit = int(self.cfg.kafka.max_message_bytes)
        reply_to = self.reply_claim.partition if self.reply_claim is not None else None
        raws = [_encode(cmd, reply_to, limit, self.reply_local) for cmd in cmds]   # the very bytes sent below
        loop = asyncio.get_running_loop()
        verdicts = [self.waiter.expect_on(c.id, loop) for c in cmds]
        try:
            # called on the loop: with the topic metadata fetched at start, send() only appends to the
            # producer's buffer (it blocks only when 32 MB of records are waiting for the broker)
            acks = [_failing(self.sender.send_encoded(c, raw), verdict)
                    for c, raw, verdict in zip(cmds, raws, verdicts, strict=True)]
        except Exception as exc:
            self._forget(cmds, verdicts)
            raise Unavailable(f"cannot write to the command log: {exc}") from exc
        try:
            started = time.monotonic()
            if len(verdicts) == 1:   # one pilot update: the future itself, under a timer of the loop
                done = [await _within(verdicts[0], timeout)]
            else:
                done = await asyncio.wait_for(asyncio.gather(*verdicts), timeout)
            elapsed = time.monotonic() - started
            for c in cmds:
                _verdict_latency(c).observe(elapsed)
            return list(done)
        except TimeoutError:
            if all(a.done() and a.exception() is None for a in acks):
                raise VerdictTimeout(f"no verdict from the ledger within {timeout:.0f}s") from None
            raise Unavailable("the command log did not acknowledge the command") from None
        finally:
            self._forget(cmds, verdicts)

    async def ask_each(self, cmds: list[Command], timeout: float) -> list[Event | Rejected | Exception]:
        """Send commands together and answer each on its own: its verdict, or BadRequest (this command cannot be
        stored), Unavailable (it did not reach the log) or VerdictTimeout (it is in the log, its verdict is late).

        Why beside ``ask_many``: a bulk of pilot updates is one round trip for all its items, yet one item's
        bad field or late verdict must not become every item's answer."""
        assert self.waiter is not None and self.sender is not None, "backend not started"
        limit = int(self.cfg.kafka.max_message_bytes)
        reply_to = self.reply_claim.partition if self.reply_claim is not None else None
        out: list[Event | Rejected | Exception | None] = [None] * len(cmds)
        good: list[tuple[int, Command, bytes]] = []
        for i, cmd in enumerate(cmds):
            try:
                good.append((i, cmd, _encode(cmd, reply_to, limit, self.reply_local)))
            except BadRequest as exc:
                out[i] = exc
        sent = [c for _, c, _ in good]
        loop = asyncio.get_running_loop()
        verdicts = [self.waiter.expect_on(c.id, loop) for c in sent]
        acks: list[Delivery] = []
        try:
            for (_, cmd, raw), verdict in zip(good, verdicts, strict=True):
                acks.append(_failing(self.sender.send_encoded(cmd, raw), verdict))
        except Exception as exc:  # noqa: BLE001 - whatever the client raises: the rest did not reach the log
            for (i, _, _) in good[len(acks):]:
                out[i] = Unavailable(f"cannot write to the command log: {exc}")
            self._forget(sent[len(acks):], verdicts[len(acks):])
            good, verdicts, sent = good[:len(acks)], verdicts[:len(acks)], sent[:len(acks)]
        try:
            if verdicts:
                started = time.monotonic()
                # the waiter hands a poll's verdicts over together: the loop wakes once per poll, not per verdict
                await asyncio.wait(verdicts, timeout=timeout)   # each late verdict is answered below on its own
                elapsed = time.monotonic() - started
                for (i, cmd, _), verdict, ack in zip(good, verdicts, acks, strict=True):
                    if not verdict.done():
                        out[i] = (VerdictTimeout(f"no verdict from the ledger within {timeout:.0f}s")
                                  if ack.done() and ack.exception() is None
                                  else Unavailable("the command log did not acknowledge the command"))
                    elif verdict.exception() is not None:
                        exc = verdict.exception()
                        out[i] = exc if isinstance(exc, Exception) else Unavailable(str(exc))
                    else:
                        _verdict_latency(cmd).observe(elapsed)
                        out[i] = verdict.result()
        finally:
            self._forget(sent, verdicts)
        return out  # type: ignore[return-value]

    def _forget(self, cmds: list[Command], verdicts: list[asyncio.Future]) -> None:
        """The waiter stops looking for ``cmds``; a verdict future still pending is cancelled (a late failure
        of its send then finds it done, and nothing is left unretrieved)."""
        for c in cmds:
            self.waiter.forget(c.id)
        for v in verdicts:
            v.cancel()


class _Expired(TimeoutError):
    """The wait for one verdict ran out (set by the loop's timer, ``_within``)."""


async def _within(verdict: asyncio.Future, timeout: float) -> Event | Rejected:
    """``verdict``'s result, or TimeoutError after ``timeout`` seconds. Why not ``asyncio.wait_for``: for one
    future it adds a task-like wrapper, a waiter future and its callbacks per call; this is one timer."""
    timer = verdict.get_loop().call_later(timeout, _expire, verdict)
    try:
        return await verdict
    finally:
        timer.cancel()


def _expire(verdict: asyncio.Future) -> None:
    if not verdict.done():
        verdict.set_exception(_Expired())


def _encode(cmd: Command, reply_to: int | None, limit: int, local: bool = False) -> bytes:
    """``cmd`` addressed to this process's reply partition (``reply_to``) and encoded once: the bytes to send.
    BadRequest for what the log must not hold: a value its readers could not store (the ledger checks again),
    or more than ``limit`` bytes (refused on every try: a final answer instead of "try again")."""
    cmd.reply_to = reply_to
    cmd.reply_local = local and reply_to is not None
    try:
        raw = encoded(cmd)
    except Unstorable as exc:
        raise BadRequest(exc.message, field=exc.field or None) from None
    if len(raw) > limit:
        raise BadRequest(f"the command for PandaID {cmd.PandaID} is {len(raw)} bytes, more than the log's "
                         f"message limit of {limit} bytes", status=413)
    return raw


def _verdict_latency(cmd: Command):
    """The verdict latency histogram of ``cmd``'s type (``labels()`` validates and looks up on every call)."""
    kind = type(cmd)
    child = _LATENCY_BY_TYPE.get(kind)
    if child is None:
        child = _LATENCY_BY_TYPE[kind] = metrics.VERDICT_LATENCY.labels(kind.__name__)
    return child


_LATENCY_BY_TYPE: dict[type, object] = {}


def _failing(record: Delivery, verdict: asyncio.Future) -> Delivery:
    """``record``, whose failed send also fails ``verdict`` at once (its waiter learns that the command never
    reached the log instead of waiting out the timeout). ``record`` itself is the acknowledgement the timeout
    path reads (done without an exception: in the log, only the verdict is late). Why not a Future of its own
    per command: one more lock and condition for every pilot call, for a state the record already holds.
    The record's callback runs on the producer's thread (or at once, here, for a send that failed already):
    the failure reaches ``verdict`` through its loop."""
    loop = verdict.get_loop()

    def fail(exc: BaseException) -> None:
        if not verdict.done():
            verdict.set_exception(Unavailable(f"cannot write to the command log: {exc}"))

    def acknowledged(delivery: Delivery) -> None:
        exc = delivery.exception()
        if exc is None:
            return
        try:
            loop.call_soon_threadsafe(fail, exc)
        except RuntimeError:   # the loop is closed: nobody waits for this verdict any more
            pass

    record.add_done_callback(acknowledged)
    return record
