"""Ports pandaes listens on: a free one is picked outside the kernel's ephemeral range, a held one is
refused by `pandaes run` before anything starts, and a server whose port is held says so in one line."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from cli import listen_check
from core import config, ports
from services.listen import start_site

ROOT = Path(__file__).resolve().parents[2]


def _hold(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_free_port_is_below_the_ephemeral_range_and_bindable():
    low = ports.ephemeral_low()
    for _ in range(20):
        port = ports.free_port()
        assert port not in ports.FORBIDDEN_PORTS
        if low - ports.LOWEST >= 1_000:
            assert ports.LOWEST <= port < low
        assert not ports.taken("127.0.0.1", port)


def test_taken_sees_a_listener_and_not_a_closed_socket():
    held = _hold()
    port = held.getsockname()[1]
    assert ports.taken("127.0.0.1", port)
    held.close()
    assert not ports.taken("127.0.0.1", port)


def test_held_ports_names_the_component_port_and_setting_after_waiting():
    held = _hold()
    port = held.getsockname()[1]
    cfg = config.load().replace(http={"host": "127.0.0.1", "port": port},
                                monitor={"host": "127.0.0.1", "port": ports.free_port()})
    now = [0.0]
    lines: list[str] = []
    try:
        found = listen_check.held_ports(cfg, ["gateway", "monitor", "ledger"], wait_s=1.0, log=lines.append,
                                        clock=lambda: now[0], pause=lambda s: now.__setitem__(0, now[0] + s))
    finally:
        held.close()
    assert len(found) == 1 and f"127.0.0.1:{port}" in found[0] and "PANDAES_HTTP_PORT" in found[0], found
    assert "gateway" in found[0]
    assert now[0] >= 1.0 and len(lines) == 1 and str(port) in lines[0]   # waited, and said so once


def test_held_ports_is_empty_when_the_holder_lets_go_while_waiting():
    held = _hold()
    port = held.getsockname()[1]
    cfg = config.load().replace(http={"host": "127.0.0.1", "port": port})
    now = [0.0]

    def pause(s: float) -> None:
        now[0] += s
        held.close()    # a stopping pandaes lets its port go

    assert listen_check.held_ports(cfg, ["gateway"], wait_s=5.0, log=lambda _: None,
                                   clock=lambda: now[0], pause=pause) == []


def test_pandaes_run_refuses_a_held_gateway_port_before_starting_anything(tmp_path):
    held = _hold()
    port = held.getsockname()[1]
    env = {"PATH": "/usr/bin:/bin", "PANDAES_STATE_DIR": str(tmp_path / "s"), "PANDAES_HTTP_PORT": str(port),
           "PANDAES_MONITOR_PORT": str(ports.free_port())}
    try:
        out = subprocess.run([sys.executable, "-m", "cli.main", "run"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    finally:
        held.close()
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"127.0.0.1:{port}" in out.stderr and "PANDAES_HTTP_PORT" in out.stderr
    assert not (tmp_path / "s" / "endpoints.json").exists()   # no broker, no database started


def test_start_site_on_a_held_port_logs_one_line_and_exits_1(caplog):
    held = _hold()
    port = held.getsockname()[1]

    async def serve() -> None:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        try:
            await start_site(web.TCPSite(runner, "127.0.0.1", port), "monitor", "127.0.0.1", port, "[monitor] port")
        finally:
            await runner.cleanup()

    try:
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
            asyncio.run(serve())
    finally:
        held.close()
    assert stopped.value.code == 1
    assert any(f"127.0.0.1:{port}" in r.getMessage() and "[monitor] port" in r.getMessage() for r in caplog.records)
