"""How fast this machine is right now: a fixed piece of Python and a fixed exchange between two threads, timed
before and after each workload.

Why: on a shared machine the same code gives figures a quarter apart from one hour to the next (the load
average does not show it: the other tenants are outside this machine's process table). A workload's figures
are only comparable with another's measured at a similar probe; docs/performance.md reads pairs that way.
``probe_ms`` is pure interpreter work (no allocation beyond small integers, no I/O), the best of three runs of
about a tenth of a second each. ``wakeup_us`` is what the system's processes pay on every message: a round trip
over a socket pair between two threads, each end woken by the other (on a virtual machine, a wake-up on the other
core costs the host's work too); the interpreter probe can look fast while these are slow, and the end-to-end
workloads follow the second more. Together well under a second per workload."""

from __future__ import annotations

import socket
import threading
import time

LOOP = 1_000_000


def probe_ms(runs: int = 3) -> float:
    """Milliseconds of the fastest of ``runs`` runs of the fixed loop (lower is a faster CPU)."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        s = 0
        for i in range(LOOP):
            s += i * i
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


ROUND_TRIPS = 2000


def wakeup_us(runs: int = 3) -> float:
    """Microseconds per round trip of one byte between two threads over a socket pair (the fastest of ``runs``)."""
    best = float("inf")
    for _ in range(runs):
        a, b = socket.socketpair()
        t = threading.Thread(target=_echo, args=(b,), daemon=True)
        t.start()
        t0 = time.perf_counter()
        for _ in range(ROUND_TRIPS):
            a.sendall(b"x")
            a.recv(1)
        best = min(best, time.perf_counter() - t0)
        t.join()
        a.close()
        b.close()
    return 1e6 * best / ROUND_TRIPS


def _echo(sock: socket.socket) -> None:
    for _ in range(ROUND_TRIPS):
        sock.sendall(sock.recv(1))
