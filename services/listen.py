"""Start an HTTP server's listening site, with one line an operator can act on when its port is taken.

Both web servers (the gateway and the monitor) listen through this: a port another process holds is a
setting to change, not a crash worth a traceback on every restart of the supervisor's back-off.
"""

from __future__ import annotations

import errno
import logging

from aiohttp import web

log = logging.getLogger("pandaes.listen")


async def start_site(site: web.BaseSite, component: str, host: str, port: int, setting: str) -> None:
    """``site.start()``; a port in use logs which and what to set, then ends the process (exit code 1)."""
    try:
        await site.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        log.error("%s: cannot listen on %s:%d: another process holds it; stop it or set %s",
                  component, host, port, setting)
        raise SystemExit(1) from None
