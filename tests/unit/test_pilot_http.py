"""cli.pilot_http: the simulated pilot's own connection sends the request aiohttp sends, byte for byte, and
reads the answers an HTTP/1.1 server gives (Content-Length, chunked, gzip, a closed connection)."""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import pytest

from cli.pilot_http import HttpError, PilotConnection, host_header
from cli.simulated_pilot import FORM_TYPE, HEADERS, form_body, form_payload

FIELDS = {"jobId": 4242, "state": "running", "node": "sim-wn0003", "xml": '{"a b": "c&d=é"}'}
SESSION_HEADERS = {"Authorization": "Bearer abc", "Origin": "atlas"}


async def _serve(answers: list[bytes]):
    """A server recording each request (head and body) and answering the next of ``answers`` in turn."""
    seen: list[bytes] = []
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        while answers:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            seen.append(head + await reader.readexactly(length))
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, seen, connections


def _ok(body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def test_the_request_is_aiohttps_byte_for_byte():
    async def main() -> list[bytes]:
        server, port, seen, _ = await _serve([_ok(b"{}"), _ok(b"{}")])
        url = f"http://127.0.0.1:{port}/server/panda"
        async with aiohttp.ClientSession(headers=SESSION_HEADERS) as session:
            async with session.post(f"{url}/updateJob", data=form_payload(FIELDS), headers=HEADERS) as resp:
                await resp.read()
        conn = PilotConnection(url, {**SESSION_HEADERS, **HEADERS})
        assert await conn.post("/updateJob", form_body(FIELDS), FORM_TYPE) == (200, b"{}")
        conn.close()
        server.close()
        return seen

    via_aiohttp, mine = asyncio.run(main())
    assert mine == via_aiohttp


def test_answers_chunked_gzip_keep_alive_and_close():
    chunked = (b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    packed = gzip.compress(b'{"StatusCode": 0}')
    answers = [_ok(b'{"x": 1}'), chunked, _ok(packed, "Content-Encoding: gzip\r\n"), b"HTTP/1.1 204 No Content\r\n\r\n",
               _ok(b"{}", "Connection: close\r\n"), _ok(b"[]")]

    async def main():
        server, port, seen, connections = await _serve(answers)
        conn = PilotConnection(f"http://127.0.0.1:{port}/server/panda", HEADERS)
        got = [await conn.post("/getJob", b"a=1", FORM_TYPE) for _ in range(6)]
        conn.close()
        server.close()
        return got, connections[0], seen

    got, connections, seen = asyncio.run(main())
    assert got == [(200, b'{"x": 1}'), (503, b"hello world"), (200, b'{"StatusCode": 0}'), (204, b""), (200, b"{}"),
                   (200, b"[]")]
    assert connections == 2          # kept alive until the server said close, then a new connection
    assert all(s.startswith(b"POST /server/panda/getJob HTTP/1.1\r\n") for s in seen)


def test_a_connection_closed_before_the_answer_is_an_error_not_a_resend():
    async def main():
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        conn = PilotConnection(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", {})
        try:
            with pytest.raises(HttpError):
                await conn.post("/x", b"", FORM_TYPE)
        finally:
            server.close()

    asyncio.run(main())


def test_host_header_as_aiohttp_writes_it():
    assert host_header("http://gw:80/a") == ("gw", 80, "gw")
    assert host_header("http://127.0.0.1:25080") == ("127.0.0.1", 25080, "127.0.0.1:25080")
    assert host_header("http://[::1]:8080/") == ("::1", 8080, "[::1]:8080")
    with pytest.raises(ValueError):
        host_header("https://gw/")
