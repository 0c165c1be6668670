"""How fast this machine's CPU is right now: a fixed piece of Python timed, before and after each workload.

Why: on a shared machine the same code gives figures a quarter apart from one hour to the next (the load
average does not show it: the other tenants are outside this machine's process table). A workload's figures
are only comparable with another's measured at a similar probe; docs/performance.md reads pairs that way.
The probe is pure interpreter work (no allocation beyond small integers, no I/O), the best of three runs of
about a tenth of a second each, so it costs well under a second per workload."""

from __future__ import annotations

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
