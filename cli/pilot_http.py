"""One simulated pilot's HTTP connection: form POSTs over one kept-alive HTTP/1.1 connection, nothing else.

Why not aiohttp's client: the benches run hundreds of simulated pilots in their own process, and there the
client's per-request machinery (a request and a response object, a task per request, the connector's
bookkeeping, cookie and redirect handling) was most of the pilots' CPU — CPU the lifecycle bench counts
against the system. A pilot needs one request at a time on its own connection: the request is a few header
lines written with the body in one ``write``, the answer a status line, headers and a Content-Length (or
chunked) body. The request is the one aiohttp sends for the same call (the same header lines in the same
order, ``tests/unit/test_pilot_http.py``), so the gateway sees what it saw before.

Plain ``http://`` only; ``cli.simulated_pilot`` keeps aiohttp for ``https://`` (its TLS settings live in
the caller's session).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from urllib.parse import urlsplit

#: sent on every request after the caller's headers, as aiohttp adds it
ACCEPT_ENCODING = "gzip, deflate"


class HttpError(ConnectionError):
    """The connection failed or closed before a whole answer came, or the answer was not HTTP."""


def host_header(url: str) -> tuple[str, int, str]:
    """(host, port, Host header value) of an ``http://`` URL, the Host as aiohttp writes it (the port only
    when it is not 80, an IPv6 address in brackets)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not a plain http:// URL: {url!r}")
    host = parts.hostname
    port = parts.port or 80
    shown = f"[{host}]" if ":" in host else host
    return host, port, shown if port == 80 else f"{shown}:{port}"


def request_head(method: str, path: str, host: str, headers: Mapping[str, str]) -> bytes:
    """The request line and the headers before Content-Length (fixed for a pilot and an endpoint)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()
              if k.lower() not in ("host", "accept-encoding", "content-length", "content-type")]
    lines.append(f"Accept-Encoding: {ACCEPT_ENCODING}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def request_bytes(head: bytes, body: bytes, content_type: str) -> bytes:
    return b"%bContent-Length: %d\r\nContent-Type: %b\r\n\r\n%b" % (head, len(body), content_type.encode(), body)


class _Answer:
    """Parses one HTTP/1.1 response from the bytes received so far."""

    __slots__ = ("status", "keep_alive", "_length", "_chunked", "_start", "_encoding")

    def __init__(self) -> None:
        self.status = 0
        self.keep_alive = True
        self._length: int | None = None
        self._chunked = False
        self._start = -1
        self._encoding = ""

    def body(self, buf: bytearray, eof: bool) -> bytes | None:
        """The body once ``buf`` holds the whole answer (None: more bytes are needed); raises HttpError."""
        if self._start < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if eof:
                    raise HttpError("connection closed before an answer")
                return None
            self._head(bytes(buf[:end]))
            self._start = end + 4
            if self.status in (204, 304) or self.status < 200:   # no body, whatever the headers say
                self._length, self._chunked = 0, False
        if self._chunked:
            return self._chunks(buf, eof)
        if self._length is None:   # the body runs to the end of the connection
            self.keep_alive = False
            return self._decoded(bytes(buf[self._start:])) if eof else None
        if len(buf) - self._start < self._length:
            if eof:
                raise HttpError("connection closed in the middle of an answer")
            return None
        return self._decoded(bytes(buf[self._start:self._start + self._length]))

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP answer: {lines[0][:80]!r}")
        self.status = int(parts[1])
        self.keep_alive = parts[0] != "HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                self._length = int(value)
            elif name == "transfer-encoding":
                self._chunked = "chunked" in value.lower()
            elif name == "connection":
                self.keep_alive = value.lower() == "keep-alive" or (self.keep_alive and value.lower() != "close")
            elif name == "content-encoding":
                self._encoding = value.lower()

    def _chunks(self, buf: bytearray, eof: bool) -> bytes | None:
        out, at = [], self._start
        while True:
            line_end = buf.find(b"\r\n", at)
            if line_end < 0:
                break
            size = int(bytes(buf[at:line_end]).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                if buf.find(b"\r\n\r\n", line_end) < 0 and not buf.endswith(b"\r\n\r\n"):
                    break
                return self._decoded(b"".join(out))
            if len(buf) < line_end + 2 + size + 2:
                break
            out.append(bytes(buf[line_end + 2:line_end + 2 + size]))
            at = line_end + 2 + size + 2
        if eof:
            raise HttpError("connection closed in the middle of a chunked answer")
        return None

    def _decoded(self, body: bytes) -> bytes:
        if self._encoding in ("gzip", "x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if self._encoding == "deflate":
            return zlib.decompress(body)
        return body


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.answer: _Answer | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._check(False)

    def eof_received(self) -> bool:
        self._check(True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._check(True)

    def _check(self, eof: bool) -> None:
        waiter, answer = self.waiter, self.answer
        if waiter is None or waiter.done() or answer is None:
            return
        try:
            body = answer.body(self.buf, eof)
        except (HttpError, ValueError, zlib.error) as exc:
            waiter.set_exception(exc if isinstance(exc, HttpError) else HttpError(str(exc)))
            return
        if body is not None:
            waiter.set_result((answer.status, body))


class PilotConnection:
    """Form POSTs to one ``http://`` server over one kept-alive connection, one request at a time."""

    def __init__(self, url: str, headers: Mapping[str, str], timeout: float = 150.0):
        self.host, self.port, self._host_header = host_header(url)
        self.path = urlsplit(url).path.rstrip("/")
        self.headers = dict(headers)
        self.timeout = timeout
        self._heads: dict[str, bytes] = {}
        self._proto: _Protocol | None = None

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """(HTTP status, body) of a POST of ``body`` to ``path`` (under the URL's path). Not sent again when
        the connection fails (a POST is not idempotent; aiohttp does not resend one either): HttpError."""
        head = self._heads.get(path)
        if head is None:
            head = self._heads[path] = request_head("POST", self.path + path, self._host_header, self.headers)
        try:
            return await self._exchange(request_bytes(head, body, content_type))
        except HttpError:
            self.close()
            raise

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        proto = self._proto
        if proto is None or proto.closed:
            try:
                _, proto = await loop.create_connection(_Protocol, self.host, self.port)
            except OSError as exc:
                raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
            self._proto = proto
        proto.buf.clear()
        proto.answer = _Answer()
        proto.waiter = waiter = loop.create_future()
        assert proto.transport is not None
        proto.transport.write(raw)
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            status, body = await waiter
        except TimeoutError:
            self.close()
            raise
        finally:
            timer.cancel()
        if not proto.answer.keep_alive:
            self.close()
        return status, body

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer in time"))
