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
import threading
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


async def until_set(stop: threading.Event) -> None:
    """Return once ``stop`` (a thread's event) is set, without polling it.

    Why: a server loop that looked at ``stop`` every 0.2 s woke its event loop five times a second while
    idle. A daemon thread blocks on the event instead and wakes the loop once; a loop closed by then is left
    alone, and a thread left waiting (the caller cancelled) ends with the event or the process."""
    if stop.is_set():
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def watch() -> None:
        stop.wait()
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:   # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()
    await done


def call_on(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any], wait: bool = False) -> None:
    """``fn()`` on ``loop``, from any thread: at once when called on that loop itself (no hand-over, no wake-up of
    its pipe), else handed to it (``call_soon_threadsafe``; with ``wait``, waited for up to 5 s: a loop that no
    longer runs does not hold its caller). A closed loop runs nothing: nobody waits on it any more."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop.is_closed():
        return
    if running is loop:
        fn()
        return
    done = threading.Event()

    def call() -> None:
        try:
            fn()
        finally:
            done.set()
    try:
        loop.call_soon_threadsafe(call)
    except RuntimeError:   # closed meanwhile
        return
    if wait:
        done.wait(5)
