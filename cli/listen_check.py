"""Before `pandaes run` starts anything: are the ports its servers will listen on free?

Why: a gateway whose port another program holds exits at once, and its supervisor restarts it every few
seconds for ever, while that other program answers whoever comes to the port (pilots, panda-client) with
its own replies. Refusing to start, with the port and the setting named, is what an operator needs; a
port still held by a pandaes that is just stopping is waited for a few seconds first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from core import ports
from core.config import Config

WAIT_S = 5.0   # a process that is stopping (a restart of `pandaes run`) lets its port go within this


def listeners(cfg: Config, names: Sequence[str]) -> list[tuple[str, str, int, str]]:
    """(component, host, port, setting) for each fixed port the components ``names`` listen on."""
    out = []
    if "gateway" in names:
        out.append(("gateway", cfg.http.host, int(cfg.http.port), "[http] port (PANDAES_HTTP_PORT)"))
    if "monitor" in names:
        out.append(("monitor", cfg.monitor.host, int(cfg.monitor.port), "[monitor] port (PANDAES_MONITOR_PORT)"))
    return [item for item in out if item[2]]


def held_ports(cfg: Config, names: Sequence[str], *, wait_s: float = WAIT_S,
               log: Callable[[str], object] = print, clock: Callable[[], float] = time.monotonic,
               pause: Callable[[float], object] = time.sleep) -> list[str]:
    """One line per port still held by another process after ``wait_s`` seconds (empty: all free)."""
    wanted = listeners(cfg, names)
    deadline = clock() + wait_s
    told = False
    while True:
        held = [(c, h, p, s) for c, h, p, s in wanted if ports.taken(h, p)]
        if not held or clock() >= deadline:
            break
        if not told:
            where = ", ".join(f"{h}:{p}" for _, h, p, _ in held)
            log(f"waiting up to {wait_s:.0f} s for {where} to be free")
            told = True
        pause(0.2)
    return [f"the {c}'s port {h}:{p} is held by another process; stop it or set {s} to a free port"
            for c, h, p, s in held]
