"""How a long-running pandaes process sets Python's cyclic garbage collector.

Why: every message, request or poll allocates a few hundred containers that die young (records, decoded
events, dicts of columns, futures), so with CPython's defaults (a young collection every 700 allocations)
the collector ran every few messages, and its older generations walked everything the process holds: the
ledger's live jobs, the reactors' views, the gateway's app and pools. In the gateway that was 12 % of its CPU
in the lifecycle bench (py-spy ``--native``); in the reactors and the projector, 16 % and 12 % of their CPU in the
bulk workload (timed with ``gc.callbacks``), full collections taking 20-25 ms each. So every component process
settles once its imports are loaded (``cli.components.run_in_process``), and the gateway again once it serves.
Almost none of this garbage forms reference cycles (reference
counting frees it at once), so collecting it less often costs little memory.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: collect the young generation after this many new container objects (CPython's default: 700)
YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Once a process has built what it keeps for its whole life (modules, app, pools, clients): move all of
    it out of the collector's sight (``gc.freeze``: never collected, it lives as long as the process anyway)
    and collect the young generation every ``YOUNG_THRESHOLD`` allocations. Garbage in reference cycles is
    still collected, a little later. Calling it again freezes what was built since."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, gc.get_threshold()[0]), middle, old)


@contextlib.contextmanager
def settled() -> Iterator[None]:
    """``settle()`` for a stretch of a process that goes on afterwards (the bench's pilots), then the
    collector as it was: the thresholds restored and the frozen objects back in sight."""
    threshold = gc.get_threshold()
    settle()
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
