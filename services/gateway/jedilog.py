"""JEDI's task logs: ``file_server/upload_jedi_log`` (multipart field ``file``) and their download.

As in PanDA, a task's log replaces the previous one of the same name and the answer's ``data`` is the URL
to read it from (``/cache/jedilog/<name>``). The files live in ``<state dir>/cache/jedilog``, names are
checked like cache names, and an upload is owned like other uploads: another identity's log is not
overwritten (admins may). Size: ``[gateway] cache_max_bytes``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from .cache import cache_dir, receive_upload, serve_file
from .v1 import envelope

SUBDIR = "jedilog"


def log_dir(app: web.Application) -> Path:
    path = cache_dir(app) / SUBDIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jedi_name(filename: str) -> str:
    """PanDA keeps the last path component of the name JEDI sends (clients may percent-encode the slash)."""
    return os.path.basename(unquote(filename))


async def upload(request: web.Request) -> web.Response:
    got = await receive_upload(request, log_dir(request.app), _jedi_name)
    if isinstance(got, web.Response):
        return got
    return envelope(True, "", f"{request.scheme}://{request.host}/cache/{SUBDIR}/{got.name}")


async def download(request: web.Request) -> web.StreamResponse:
    return serve_file(request, log_dir(request.app), "JEDI log")


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/file_server/upload_jedi_log", upload)
    app.router.add_get(f"/cache/{SUBDIR}/{{name}}", download)
