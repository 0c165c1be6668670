"""Whether the components on this host can judge and act yet: the ledger holds every commands partition and
the services' reader every events partition.

Why: a consumer group's join is not instant (on the embedded broker a new group's join completes only after
half the session timeout, 5 s by default), and until the ledger holds a partition nobody judges its commands;
`pandaes run` says when the system is ready and the bench starts its workloads only then. What is seen: the links
the ledger and the events' readers make on this host once a partition is theirs (core/local_commands.py,
core/local_events.py); with those hand-overs switched off there is nothing to see, and nothing is reported missing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from core import local_commands, local_events
from core.config import Config


def missing(cfg: Config, *, ledger: bool = True, readers: bool = True) -> list[str] | None:
    """What is not ready yet, one phrase each (empty: ready); None when nothing can be seen from here (the
    hand-overs off, or the state dir too long a path for their sockets: then nothing links)."""
    partitions = set(range(int(cfg.kafka.partitions)))
    if not local_commands.enabled(cfg) or local_commands.link_path(cfg, 0) is None:
        return None
    out = []
    if ledger:
        held = local_commands.ledgers_linked(cfg, partitions)
        if held != partitions:
            out.append(f"the ledger does not hold commands partitions {sorted(partitions - held)} yet")
    if readers and local_events.enabled(cfg) and local_events.readers_bound(cfg):
        read = local_events.readers_linked(cfg)
        if not read:
            out.append("no reader of the events topic has its partitions yet")
        for group, parts in sorted(read.items()):
            if parts != partitions:
                out.append(f"{group} does not read events partitions {sorted(partitions - parts)} yet")
    return out


def wait(cfg: Config, *, timeout: float, stop: threading.Event | None = None, tell_after: float,
         log: Callable[[str], object], ledger: bool = True, readers: bool = True,
         clock: Callable[[], float] = time.monotonic) -> tuple[list[str] | None, float]:
    """Look every 0.2 s until ready, nothing to see, ``timeout`` or ``stop``: what is still missing then (``[]``
    ready, None nothing to see) and the seconds waited; after ``tell_after`` seconds ``log`` says once what."""
    started = clock()
    told = False
    pause = stop.wait if stop is not None else time.sleep
    while True:
        left = missing(cfg, ledger=ledger, readers=readers)
        waited = clock() - started
        if not left or waited > timeout or (stop is not None and stop.is_set()):
            return left, waited
        if not told and waited > tell_after:
            log("not ready yet: " + "; ".join(left))
            told = True
        pause(0.2)
