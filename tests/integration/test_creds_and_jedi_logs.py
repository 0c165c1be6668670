"""Credentials from the configured store (v1 creds/* and pilot3's legacy getProxy/getKeyPair, role-checked)
and JEDI's log upload (multipart, owned, served back from its URL)."""

from __future__ import annotations

import aiohttp
from gateway_support import post_form, post_json, run, start_system


def test_credentials_are_served_from_the_store_to_the_roles_that_hold_them(cfg, background, tmp_path):
    store = tmp_path / "creds"
    for kind, name, text in (("proxy", "production", "PROD-PROXY-PEM"), ("proxy", "pilot", "PILOT-PROXY-PEM"),
                             ("keys", "pub.pem", "PUBLIC"), ("keys", "priv.pem", "PRIVATE"),
                             ("token_keys", "harvester", "TOKEN-KEY\n")):
        (store / kind).mkdir(parents=True, exist_ok=True)
        (store / kind / name).write_text(text)
    system = start_system(cfg.replace(creds={"dir": str(store)}), background)
    api, legacy = f"{system.url}/api/v1", f"{system.url}/server/panda"

    async def scenario():
        async with system.session() as s:   # production + pilot
            _, p = await post_json(s, f"{api}/creds/get_proxy?role=production", None, method="GET")
            assert p == {"success": True, "message": "", "data": {"user_proxy": "PROD-PROXY-PEM"}}, p
            _, p = await post_json(s, f"{api}/creds/get_proxy", {"role": "admin"})
            assert p["success"] is False and "missing role" in p["message"], p
            _, p = await post_json(s, f"{api}/creds/get_proxy", {"role": "production", "dn": "/CN=someone else"})
            assert p["success"] is False and "another DN" in p["message"], p
            _, k = await post_json(s, f"{api}/creds/get_key_pair?public_key_name=pub.pem&private_key_name=priv.pem",
                                   None, method="GET")
            assert k["data"] == {"public_key": "PUBLIC", "private_key": "PRIVATE"}, k
            _, k = await post_json(s, f"{api}/creds/get_key_pair",
                                   {"public_key_name": "../proxy/production", "private_key_name": "priv.pem"})
            assert k["success"] is False and "invalid name" in k["message"], k   # nothing outside the store
            _, t = await post_json(s, f"{api}/creds/get_token_key", {"client_name": "harvester"})
            assert t["data"] == {"tokenKey": "TOKEN-KEY"}, t
            _, t = await post_json(s, f"{api}/creds/get_token_key", {"client_name": "nobody"})
            assert t["success"] is False and "no token key 'nobody'" in t["message"], t
            # pilot3's legacy calls
            _, lp = await post_form(s, f"{legacy}/getProxy", {"role": "pilot"})
            assert lp == {"StatusCode": 0, "userProxy": "PILOT-PROXY-PEM"}, lp
            _, lk = await post_form(s, f"{legacy}/getKeyPair", {"publicKeyName": "pub.pem",
                                                                 "privateKeyName": "priv.pem"})
            assert lk == {"StatusCode": 0, "publicKey": "PUBLIC", "privateKey": "PRIVATE"}, lk
        async with system.session("someone", ("user",)) as s:   # plain users get no credentials at all
            status, p = await post_json(s, f"{api}/creds/get_proxy", {"role": "user"})
            assert status == 403 and p["success"] is False, p

    run(scenario())


def test_without_a_store_nothing_is_served_and_jedi_logs_upload(cfg, background):
    system = start_system(cfg, background)
    api = f"{system.url}/api/v1"

    async def scenario():
        async with system.session() as s:
            _, p = await post_json(s, f"{api}/creds/get_proxy", {"role": "production"})
            assert p["success"] is False and "no credential store is configured" in p["message"], p
            _, lp = await post_form(s, f"{system.url}/server/panda/getProxy", {"role": "production"})
            assert lp["StatusCode"] == 30 and "[creds] dir" in lp["errorDialog"], lp
            # JEDI's log: multipart field "file"; data is the URL it is served from; a new upload replaces it
            for content in (b"first log", b"second log"):
                form = aiohttp.FormData()
                form.add_field("file", content, filename="jedilog/task.1234.log")
                async with s.post(f"{api}/file_server/upload_jedi_log", data=form) as r:
                    up = await r.json()
                assert r.status == 200 and up["success"] is True, up
                assert up["data"] == f"{system.url}/cache/jedilog/task.1234.log", up
            async with s.get(up["data"]) as r:
                assert r.status == 200 and await r.read() == b"second log"
        async with system.session("another-operator", ("production",)) as s:   # owned like other uploads
            form = aiohttp.FormData()
            form.add_field("file", b"overwrite", filename="task.1234.log")
            async with s.post(f"{api}/file_server/upload_jedi_log", data=form) as r:
                assert r.status == 403 and "belongs to test-operator" in (await r.json())["message"]
        async with system.session("someone", ("user",)) as s:   # production role only
            form = aiohttp.FormData()
            form.add_field("file", b"x", filename="mine.log")
            async with s.post(f"{api}/file_server/upload_jedi_log", data=form) as r:
                assert r.status == 403

    run(scenario())
