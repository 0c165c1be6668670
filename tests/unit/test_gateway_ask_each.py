"""Backend.ask_each: a bulk sent together, each command answered on its own (verdict, bad input, late)."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from core import bus, config
from schemas.messages import PilotUpdate, Rejected, decode_command
from services.gateway.backend import Backend, Unavailable, VerdictTimeout
from services.gateway.params import BadRequest


class FakeWaiter:
    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future] = {}

    def expect_on(self, command_id: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        self.waiting[command_id] = loop.create_future()
        return self.waiting[command_id]

    def forget(self, command_id: str) -> None:
        self.waiting.pop(command_id, None)


class FakeSender:
    """Acknowledges every record; answers (from another thread, as the real waiter does) all but ``late``."""

    def __init__(self, waiter: FakeWaiter, late: set[int], unsent: set[int]) -> None:
        self.waiter, self.late, self.unsent, self.sent = waiter, late, unsent, []

    def send_encoded(self, cmd: PilotUpdate, raw: bytes) -> concurrent.futures.Future:
        self.sent.append(cmd.PandaID)
        ack: concurrent.futures.Future = concurrent.futures.Future()
        if cmd.PandaID in self.unsent:
            ack.set_exception(RuntimeError("broker down"))
            return ack
        ack.set_result(None)
        if cmd.PandaID not in self.late:
            verdict = Rejected(PandaID=cmd.PandaID, command_id=cmd.id, command_type="pilot_update", code="ignored",
                               reason=f"job {cmd.PandaID}")
            fut = self.waiter.waiting[cmd.id]   # handed to the loop from another thread, as bus._hand_over does
            concurrent.futures.ThreadPoolExecutor(1).submit(bus._hand_over, [(fut, verdict)])
        return ack


def _backend(late: set[int], unsent: set[int] = frozenset()) -> tuple[Backend, FakeSender]:
    backend = Backend(config.load())
    waiter = FakeWaiter()
    backend.waiter = waiter  # type: ignore[assignment]
    backend.sender = FakeSender(waiter, late, set(unsent))  # type: ignore[assignment]
    return backend, backend.sender  # type: ignore[return-value]


def test_each_command_gets_its_own_answer() -> None:
    backend, sender = _backend(late={3}, unsent={4})
    cmds = [PilotUpdate(PandaID=pid, actor="p", state="running") for pid in (1, 2, 3, 4)]
    cmds.insert(1, PilotUpdate(PandaID=9, actor="p", state="running", attrs={"x": "nul\x00"}))
    out = asyncio.run(backend.ask_each(cmds, 0.5))
    assert [type(o) for o in out] == [Rejected, BadRequest, Rejected, VerdictTimeout, Unavailable]
    assert out[0].reason == "job 1" and out[2].reason == "job 2"
    assert 9 not in sender.sent            # the unstorable command never reaches the log
    assert not backend.waiter.waiting      # nothing left waiting after the answers


def test_ask_one_command_verdict_late_or_unsent() -> None:
    """Backend.ask (one pilot update): its verdict; VerdictTimeout when the log has it but the ledger is late;
    Unavailable when the log never acknowledged it (the pilot must send it again)."""
    backend, sender = _backend(late={2, 3}, unsent={3})
    answered = asyncio.run(backend.ask(PilotUpdate(PandaID=1, actor="p", state="running"), 0.5))
    assert isinstance(answered, Rejected) and answered.reason == "job 1"
    for pid, kind in ((2, VerdictTimeout), (3, Unavailable)):
        with pytest.raises(kind):
            asyncio.run(backend.ask(PilotUpdate(PandaID=pid, actor="p", state="running"), 0.3))
    assert sender.sent == [1, 2, 3] and not backend.waiter.waiting


def test_ask_many_sends_the_checked_bytes_and_refuses_the_unstorable() -> None:
    backend, sender = _backend(late=set())
    raws: list[bytes] = []
    send = sender.send_encoded
    sender.send_encoded = lambda cmd, raw: raws.append(raw) or send(cmd, raw)  # type: ignore[method-assign]
    cmds = [PilotUpdate(PandaID=pid, actor="p", state="running") for pid in (1, 2)]
    out = asyncio.run(backend.ask_many(cmds, 0.5))
    assert [o.reason for o in out] == ["job 1", "job 2"]
    assert [decode_command(r).PandaID for r in raws] == [1, 2]
    with pytest.raises(BadRequest):   # refused before it is sent
        asyncio.run(backend.ask_many([PilotUpdate(PandaID=5, actor="p", state="running", attrs={"x": "\x00"})], 0.5))
    assert sender.sent == [1, 2]
