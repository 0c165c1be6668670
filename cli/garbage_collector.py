"""Python's garbage collector, set for a long-running component process.

Why: a component allocates container objects for every message it decodes (events, commands, rows), and
Python starts a collection of its youngest generation every 700 such allocations, and a full one every
hundred of those, which walks every object alive — the tens of thousands of functions, classes and
constants its imports created included. Measured in the bulk workload (docs/performance.md, "Eleventh
session"): 12-16 % of the reactors' and the projector's CPU went to collections, full ones taking 20-25 ms
each. Objects loaded at start-up live as long as the process, so they are frozen out of every collection
(``gc.freeze``), and the youngest generation is collected every ``young`` allocations: reference counting
still frees nearly everything at once; only reference cycles wait a little longer.
"""

from __future__ import annotations

import gc

#: how many young collections make one collection of the middle generation, and how many of those a full one
OLDER = 20


def tune(young: int) -> None:
    """Freeze what is alive now and collect the youngest generation every ``young`` allocations; ``young`` <= 0
    leaves Python's defaults alone."""
    if young <= 0:
        return
    gc.collect()        # what start-up left unreachable goes now, not into the frozen generation
    gc.freeze()
    gc.set_threshold(young, OLDER, OLDER)
