"""JEDI's task logs: ``file_server/upload_jedi_log`` (multipart field ``file``) and their download.

As in PanDA, a task's log replaces the previous one of the same name and the answer's ``data`` is the URL
to read it from (``/cache/jedilog/<name>``). The files live in ``<state dir>/cache/jedilog``, names are
checked like cache names, and an upload is owned like other uploads: another identity's log is not
overwritten (admins may). Size: ``[gateway] cache_max_bytes``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import unquote

from aiohttp import BodyPartReader, web

from . import access
from .cache import cache_dir, safe_name
from .v1 import envelope

SUBDIR = "jedilog"


def log_dir(app: web.Application) -> Path:
    path = cache_dir(app) / SUBDIR
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _file_part(request: web.Request) -> BodyPartReader | None:
    reader = await request.multipart()
    part = await reader.next()
    while part is not None and (not isinstance(part, BodyPartReader) or part.name != "file"):
        part = await reader.next()
    return part


async def upload(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        return envelope(False, "expected a multipart/form-data body with a 'file' field", status=400)
    try:
        part = await _file_part(request)
    except ValueError as exc:
        return envelope(False, f"bad multipart body: {exc}", status=400)
    if part is None:
        return envelope(False, "file: is required", status=400)
    # PanDA keeps the last path component of the name JEDI sends (clients may percent-encode the slash)
    name = safe_name(os.path.basename(unquote(part.filename or "")))
    if name is None:
        return envelope(False, f"file: invalid file name {(part.filename or '')[:80]!r}", status=400)
    directory = log_dir(request.app)
    refused = access.upload_refused(request, directory, name)
    if refused:
        return envelope(False, refused, status=403)
    limit = int(request.app["cfg"].gateway.cache_max_bytes)
    tmp = directory / f".upload-{uuid.uuid4().hex}"
    size = 0
    try:
        with tmp.open("wb") as out:
            while chunk := await part.read_chunk(256 * 1024):
                size += len(chunk)
                if size > limit:
                    return envelope(False, f"file: larger than the limit of {limit} bytes", status=413)
                out.write(chunk)
        tmp.replace(directory / name)
        access.record_upload(request, directory, name)
    finally:
        tmp.unlink(missing_ok=True)
    return envelope(True, "", f"{request.scheme}://{request.host}/cache/{SUBDIR}/{name}")


async def download(request: web.Request) -> web.StreamResponse:
    name = safe_name(request.match_info["name"])
    if name is None:
        return web.json_response({"error": "invalid file name"}, status=400)
    path = log_dir(request.app) / name
    if not path.is_file():
        return web.json_response({"error": f"no JEDI log {name!r}"}, status=404)
    return web.FileResponse(path)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/file_server/upload_jedi_log", upload)
    app.router.add_get(f"/cache/{SUBDIR}/{{name}}", download)
