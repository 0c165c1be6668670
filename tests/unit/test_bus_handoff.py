"""OutcomeWaiter's hand-over to an event loop: a poll's answers reach their loop's futures in one call."""

from __future__ import annotations

import asyncio
import threading

from core import bus
from schemas.messages import Rejected


def _answer(pid: int) -> Rejected:
    return Rejected(PandaID=pid, command_id=f"c{pid}", command_type="pilot_update", code="ignored", reason="")


def test_a_polls_answers_wake_their_loop_once_and_skip_futures_given_up():
    async def main() -> tuple[list, int]:
        loop = asyncio.get_running_loop()
        calls = []
        real = loop.call_soon_threadsafe

        def counting(*args):
            calls.append(args)
            return real(*args)

        loop.call_soon_threadsafe = counting   # type: ignore[method-assign]
        futs = [loop.create_future() for _ in range(3)]
        futs[1].cancel()                        # its request gave up (timed out, cancelled)
        handoff: list = []
        for i, fut in enumerate(futs):
            bus._settle(fut, _answer(i), handoff)
        thread = threading.Thread(target=bus._hand_over, args=(handoff,))
        thread.start()
        thread.join()
        await asyncio.wait([futs[0], futs[2]], timeout=5)
        return [f.result().PandaID if not f.cancelled() else None for f in futs], len(calls)

    results, wakeups = asyncio.run(main())
    assert results == [0, None, 2]
    assert wakeups == 1


def test_a_threads_future_is_resolved_at_once():
    from concurrent.futures import Future

    fut: Future = Future()
    handoff: list = []
    bus._settle(fut, _answer(7), handoff)
    assert fut.result(0).PandaID == 7 and handoff == []
