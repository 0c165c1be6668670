"""``/cache/*``: queuedata for pilots and the user file cache (panda-client's putFile / getFile).

Cached files live on disk under ``<state dir>/cache``. Names are checked, not cleaned: a name with a
path separator, a leading dot or characters outside ``[A-Za-z0-9._-]`` is refused, so nothing outside
the cache directory can be read or written. Uploads are streamed to a temporary file and renamed into
place, and refused beyond ``[gateway] cache_max_bytes``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from core.config import Config

from . import access, queues
from .v1 import envelope

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def cache_path(cfg: Config) -> Path:
    """``<state dir>/cache``: the one folder every copy of the gateway serves the file cache from."""
    return cfg.state_dir / "cache"


def cache_dir(app: web.Application) -> Path:
    path = cache_path(app["cfg"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def uploaded(cfg: Config, names: Iterable[str]) -> list[str]:
    """Which of ``names`` are in the file cache now, so ``/cache/<name>`` serves them (the monitor links a
    job's log files that were really uploaded). Names are checked like downloads; nothing is created."""
    folder = cache_path(cfg)
    return [n for n in names if safe_name(n) == n and (folder / n).is_file()]


def safe_name(name: str) -> str | None:
    name = name.strip()
    return name if _SAFE_NAME.match(name) and ".." not in name else None


async def schedconfig(request: web.Request) -> web.Response:
    name = request.match_info["queue"]
    if not _QUEUE_NAME.match(name):
        return web.json_response({"error": f"invalid queue name {name[:60]!r}"}, status=400)
    data = await queues.queuedata(request.app, name)
    if data is None:
        return web.json_response({"error": f"unknown queue {name!r}"}, status=404)
    return web.json_response(data)


async def ddmendpoints(request: web.Request) -> web.Response:
    return web.json_response(await queues.ddmendpoints(request.app))


class Uploaded(NamedTuple):
    name: str
    size: int


async def receive_upload(request: web.Request, directory: Path,
                         name_of: Callable[[str], str] = os.path.basename) -> Uploaded | web.Response:
    """The ``file`` part of a multipart body stored in ``directory``; an answer to send instead when refused.

    The one way an upload is taken (panda-client's putFile, JEDI's task logs): the name is checked (``name_of``
    picks it from the part's filename), the caller must own any file it replaces, the body is streamed to a
    temporary file and renamed into place, and refused beyond ``[gateway] cache_max_bytes``."""
    if not request.content_type.startswith("multipart/"):
        return envelope(False, "expected a multipart/form-data body with a 'file' field", status=400)
    limit = int(request.app["cfg"].gateway.cache_max_bytes)
    try:
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and (not isinstance(part, BodyPartReader) or part.name != "file"):
            part = await reader.next()
    except (ValueError, HttpProcessingError) as exc:   # a part header with a control character (a NUL) …
        return envelope(False, f"file: invalid file name or bad multipart body: {exc!r}"[:300], status=400)
    if part is None:
        return envelope(False, "file: is required", status=400)
    name = safe_name(name_of(part.filename or ""))
    if name is None:
        return envelope(False, f"file: invalid file name {(part.filename or '')[:80]!r}", status=400)
    refused = access.upload_refused(request, directory, name)
    if refused:
        return envelope(False, refused, status=403)
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
    return Uploaded(name, size)


async def upload(request: web.Request) -> web.Response:
    """Multipart upload, field ``file`` (panda-client putFile); the stored name is the part's filename."""
    got = await receive_upload(request, cache_dir(request.app))
    if isinstance(got, web.Response):
        return got
    return envelope(True, f"uploaded {got.name}", {"file_name": got.name, "file_size": got.size})


def serve_file(request: web.Request, directory: Path, what: str) -> web.StreamResponse:
    """The file named in the URL from ``directory`` (names checked like uploads), or a 400/404 naming it."""
    name = safe_name(request.match_info["name"])
    if name is None:
        return web.json_response({"error": "invalid file name"}, status=400)
    path = directory / name
    if not path.is_file():
        return web.json_response({"error": f"no {what} {name!r}"}, status=404)
    return web.FileResponse(path)


async def download(request: web.Request) -> web.StreamResponse:
    return serve_file(request, cache_dir(request.app), "cached file")


def setup(app: web.Application) -> None:
    app.router.add_get("/cache/schedconfig/{queue}.all.json", schedconfig)
    app.router.add_get("/cache/schedconfig/{queue}.json", schedconfig)
    app.router.add_get("/cache/ddmendpoints.json", ddmendpoints)
    app.router.add_route("POST", "/api/v1/file_server/upload_cache_file", upload)
    app.router.add_route("PUT", "/api/v1/file_server/upload_cache_file", upload)
    app.router.add_get("/cache/{name}", download)
