"""TCP ports for what pandaes listens on: a free one to pick, and whether a configured one is taken.

Why not simply bind port 0 and hand the number on: between choosing a port and the server binding it,
any other process may take it, and a process that binds port 0 (or connects out) is given one from the
kernel's ephemeral range. ``free_port`` therefore picks from below that range, where only servers that
ask for a fixed number can land, and checks it binds now. ``taken`` is the check `pandaes run` makes
before it starts anything: a port another program holds would otherwise leave a gateway restarting in a
loop while that other program answers the pilots.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

FORBIDDEN_PORTS = frozenset({25080, 25443})  # PanDA's standard ports: other tools probe them; never bind them
LOWEST = 10_000                              # below: well-known and registered services' usual numbers
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_low() -> int:
    """The first port the kernel hands out for bind(0) and outgoing connections (32768 if unknown)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def taken(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be listened on now (another socket holds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the servers bind: TIME_WAIT is no hold
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` nothing holds now, below the ephemeral range (the kernel's own choice if that
    range starts too low to leave room)."""
    high = ephemeral_low()
    if high - LOWEST >= 1_000:
        for _ in range(200):
            port = random.randrange(LOWEST, high)
            if port not in FORBIDDEN_PORTS and not taken(host, port):
                return port
    for _ in range(50):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port
    raise OSError(f"no free TCP port on {host}")
