"""The asyncio event loop our HTTP processes run on: uvloop's when it is installed, the standard one otherwise.

Why: the gateway spends a large share of its CPU in the event loop itself rather than in pandaes' code —
every request is a socket read and write, and every psycopg query an ``add_reader``/``remove_reader`` pair
and a timer. uvloop (libuv, the same asyncio API) does that work in C. It is optional: where it is missing
(an unsupported platform) or turned off (``PANDAES_UVLOOP=0``, to compare or to rule it out) the standard
loop runs the very same code.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's default (not installed, or ``PANDAES_UVLOOP=0``)."""
    if os.environ.get("PANDAES_UVLOOP", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_factory`` names."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
