"""`pandaes run`'s line saying when the system can judge commands (core/readiness.py), or what it still waits for.

Why: the components are up within a second, but until the ledger's consumer group join completes (5 s on the
embedded broker) commands are accepted and wait; an operator or a script watching the output knows from this
line when submitted jobs start to move.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from core import readiness
from core.config import Config

TELL_AFTER_S = 30.0   # not ready by then: say once what is still missing


def announce(cfg: Config, names: Sequence[str], stop: threading.Event, started: float,
             log: Callable[[str], object] = print) -> None:
    """Watch until ready (or ``stop``), then log one line; once after ``TELL_AFTER_S`` what is missing. Nothing
    where nothing can be seen from here (no line rather than a wrong one)."""
    ledger = "ledger" in names
    readers = "reactors" in names or "projector" in names
    if not (ledger or readers):
        return
    left, _ = readiness.wait(cfg, timeout=float("inf"), stop=stop, tell_after=TELL_AFTER_S, log=log,
                             ledger=ledger, readers=readers)
    if left == []:
        waited = time.monotonic() - started
        log(f"ready: the ledger and the services hold their partitions ({waited:.1f} s after start)")


def _say(line: str) -> None:
    print(line, flush=True)   # seen at once where the output goes to a file or a pipe


def start(cfg: Config, names: Sequence[str], stop: threading.Event, log: Callable[[str], object] = _say
          ) -> threading.Thread:
    thread = threading.Thread(target=announce, args=(cfg, names, stop, time.monotonic(), log), name="ready",
                              daemon=True)
    thread.start()
    return thread
