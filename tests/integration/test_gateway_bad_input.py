"""Bad input that used to reach a 5xx gets a 4xx naming the problem, through the real HTTP server."""

from __future__ import annotations

import zlib

from gateway_support import run, start_system

NESTED = "[" * 100_000 + "]" * 100_000


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_bad_input_is_a_4xx_never_a_5xx(cfg, background):
    system = start_system(cfg, background)
    api, legacy = f"{system.url}/api/v1", f"{system.url}/server/panda"
    limit = int(cfg.gateway.max_body_bytes)

    async def scenario():
        async with system.session() as s:
            # a deeply nested JSON body
            async with s.post(f"{api}/job/submit", data=f'{{"jobs": {NESTED}}}',
                              headers={"Content-Type": "application/json"}) as r:
                body = await r.json()
                assert r.status == 400 and "nested too deeply" in body["message"], body
            # deeply nested JSON inside form values (parsed by the handlers)
            async with s.post(f"{api}/job/submit", data={"jobs": NESTED}) as r:
                body = await r.json()
                assert r.status == 400 and "nested too deeply" in body["message"], body
            async with s.post(f"{legacy}/updateJobsInBulk", data={"jobList": NESTED}) as r:
                body = await r.json(content_type=None)
                assert r.status == 400 and body["StatusCode"] == 50, body
            # a lone surrogate (a JSON escape no UTF-8 text can hold) in a parameter or inside the jobs text
            for route, body in (("job/set_command", r'{"job_id": 1, "command": "\ud800"}'),
                                ("job/submit", r'{"jobs": "[[\"\ud800\", []]]"}')):
                async with s.post(f"{api}/{route}", data=body, headers={"Content-Type": "application/json"}) as r:
                    reply = await r.json()
                    assert r.status == 400 and "surrogate" in reply["message"], reply
            # a NUL in getJob's query parameters never reaches the database
            for name in ("siteName", "prodSourceLabel", "computingElement"):
                params = {"siteName": "LOCAL", name: "A\x00B"}
                async with s.get(f"{legacy}/getJob", params=params) as r:
                    body = await r.json(content_type=None)
                    assert r.status == 400 and body["StatusCode"] == 50 and name in body["errorDialog"], body
            # an upload whose name holds a NUL: refused, and the reply is a well-formed response
            # (built by hand: aiohttp's client refuses to write such a header itself)
            for filename in (b"a\x00b.txt", b"ok.txt\x00", b"\x00"):
                multipart = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename
                             + b"\"\r\nContent-Type: application/octet-stream\r\n\r\ndata\r\n--XyZ--\r\n")
                async with s.post(f"{api}/file_server/upload_cache_file", data=multipart,
                                  headers={"Content-Type": "multipart/form-data; boundary=XyZ"}) as r:
                    body = await r.json()
                    assert r.status == 400 and body["message"].startswith("file: invalid file name"), body
            async with s.get(f"{system.url}/cache/ok.txt%00") as r:
                assert r.status == 400, await r.text()
            # a small gzip body that would inflate past the body limit: refused without inflating it all
            bomb = _gzip(b"{" + b" " * (limit + 1024) + b"}")
            assert len(bomb) < limit // 100
            async with s.post(f"{api}/job/submit", data=bomb,
                              headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}) as r:
                body = await r.json()
                assert r.status == 413 and "inflates beyond the limit" in body["message"], body
            # a gzip body within the limit still works
            async with s.post(f"{api}/job/get_status", data=_gzip(b'{"job_ids": [1]}'),
                              headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}) as r:
                body = await r.json()
                assert r.status == 200 and body["data"] == [{"status": "unknown", "command": "tobekilled"}], body
            # a truncated gzip body
            async with s.post(f"{api}/job/get_status", data=_gzip(b'{"job_ids": [1]}')[:-12],
                              headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}) as r:
                assert r.status == 400, await r.text()
            # found by the schema fuzzer: free-form JSON a handler stores, and kill options, holding text the
            # database cannot store (a 503 "try again" for ever before), and event range IDs beyond 64 bits
            for route, body, part in (
                    ("harvester/update_service_metrics",
                     r'{"harvester_id": "h", "metrics": [["2026-11-28", "host", {"k": "a\u0000"}]]}',
                     "metrics[0][2].k"),
                    ("harvester/heartbeat", r'{"harvester_id": "h", "data": {"\ud800": 1}}', "data.<key>"),
                    ("harvester/add_dialogs", r'{"harvester_id": "h", "dialogs": [{"diagID": 1, "m": "\u0000"}]}',
                     "dialogs[0].m"),
                    ("job/kill", r'{"job_ids": [1], "kill_options": "jobSubStatus=a\u0000"}', "kill_options[0]")):
                async with s.post(f"{api}/{route}", data=body, headers={"Content-Type": "application/json"}) as r:
                    reply = await r.json()
                    assert r.status == 400 and reply["message"].startswith(f"{part}: "), (route, reply)
            ranges = '[{"eventRangeID": "x-99999999999999999999999-1-1-1", "eventStatus": "finished"}]'
            async with s.post(f"{api}/event/update_event_ranges", json={"event_ranges": ranges}) as r:
                reply = await r.json()
                assert r.status == 200 and reply["data"]["Returns"] == [False], reply

    run(scenario())
