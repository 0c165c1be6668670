"""The HTTP processes' event loop: uvloop when installed, asyncio's own when it is not or is turned off."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core import eventloop


@pytest.mark.parametrize("setting", ["0", "off"])
def test_uvloop_can_be_turned_off(monkeypatch, setting):
    monkeypatch.setenv("PANDAES_UVLOOP", setting)
    assert eventloop.loop_factory() is None

    async def kind() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(kind()).startswith("asyncio")


def test_uvloop_runs_when_installed(monkeypatch):
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.delenv("PANDAES_UVLOOP", raising=False)

    async def loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert isinstance(eventloop.run(loop()), uvloop.Loop)


def test_until_set_returns_when_another_thread_sets_the_event_and_at_once_if_set():
    stop = threading.Event()

    async def main() -> str:
        waiter = asyncio.ensure_future(eventloop.until_set(stop))
        await asyncio.sleep(0)
        assert not waiter.done()
        threading.Timer(0.05, stop.set).start()
        await asyncio.wait_for(waiter, 10)
        await asyncio.wait_for(eventloop.until_set(stop), 1)   # already set
        return "done"

    assert eventloop.run(main()) == "done"


def test_until_set_can_be_cancelled_and_its_thread_ends_with_the_event():
    stop = threading.Event()

    async def main() -> None:
        waiter = asyncio.ensure_future(eventloop.until_set(stop))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    eventloop.run(main())          # the loop closes with the watching thread still waiting
    watchers = [t for t in threading.enumerate() if t.name == "stop-watch"]
    assert watchers and all(t.daemon for t in watchers)
    stop.set()                     # a closed loop is left alone
    for t in watchers:
        t.join(10)
    assert not any(t.is_alive() for t in watchers)
