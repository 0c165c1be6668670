"""The HTTP processes' event loop: uvloop when installed, asyncio's own when it is not or is turned off."""

from __future__ import annotations

import asyncio

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
