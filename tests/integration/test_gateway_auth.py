"""Identity over HTTP with the real broker and database: bad tokens refused with their reason, anonymous
callers only see liveness and queue data, users act on their own jobs, pilots on jobs dispatched to them."""

from __future__ import annotations

import time

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway_support import auth_headers, post_form, post_json, run, start_system
from test_gateway_api import client_jobs

from services.gateway.auth import dev


def test_bad_tokens_and_anonymous_callers_are_refused_with_reasons(cfg, background):
    system = start_system(cfg, background)
    (pid,) = system.activated_jobs(1)
    api = f"{system.url}/api/v1"
    now = time.time()
    good = {"iss": dev.ISSUER, "aud": dev.AUDIENCE, "sub": "mallory", "exp": now + 600, "groups": ["local/production"]}
    key = dev.signing_key(cfg)
    kid = jwt.get_unverified_header(dev.mint(cfg, "x", []))["kid"]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = {
        "expired": jwt.encode({**good, "exp": now - 3600}, key, "RS256", headers={"kid": kid}),
        "signature": jwt.encode(good, stranger, "RS256", headers={"kid": kid}),
        "audience": jwt.encode({**good, "aud": "another-service"}, key, "RS256", headers={"kid": kid}),
        "issuer": jwt.encode({**good, "iss": "https://unknown.example/"}, key, "RS256", headers={"kid": kid}),
    }

    async def scenario():
        async with aiohttp.ClientSession() as s:
            for reason, token in tokens.items():
                headers = {"Authorization": f"Bearer {token}", "Origin": cfg.auth.dev_vo}
                async with s.post(f"{api}/job/kill", json={"job_ids": [pid]}, headers=headers) as r:
                    body = await r.json()
                    assert r.status == 401 and body["success"] is False and reason in body["message"], (reason, body)
            # anonymous: a kill is refused (and says what is missing), liveness and queue data are served
            async with s.post(f"{api}/job/kill", json={"job_ids": [pid]}) as r:
                assert r.status == 401 and "no credentials" in (await r.json())["message"]
            status, body = await post_form(s, f"{system.url}/server/panda/getJob", {"siteName": "LOCAL"})
            assert status == 401 and body["StatusCode"] == 60 and "no credentials" in body["errorDialog"]
            async with s.get(f"{api}/system/is_alive") as r:
                assert r.status == 200
            async with s.get(f"{system.url}/cache/schedconfig/LOCAL.all.json") as r:
                assert r.status == 200
            async with s.get(f"{system.url}{dev.JWKS_PATH}") as r:
                assert (await r.json())["keys"][0]["kid"] == kid
            # a DN header from an address that is not a trusted proxy is ignored: still anonymous
            async with s.post(f"{api}/job/kill", json={"job_ids": [pid]},
                              headers={"SSL-Client-S-DN": "/DC=ch/CN=Admin"}) as r:
                assert r.status == 401
        # a user (no pilot role) may not ask for jobs: 403 with PanDA's StatusCode 60 naming the role
        async with system.session("someone", ("user",)) as s:
            status, body = await post_form(s, f"{system.url}/server/panda/getJob", {"siteName": "LOCAL"})
            assert status == 403 and body["StatusCode"] == 60 and "pilot" in body["errorDialog"], body
            _, sub = await post_json(s, f"{api}/job/submit", {"jobs": client_jobs(1).replace('"user"', '"managed"')})
            assert sub["success"] is False and "managed" in sub["message"], sub

    run(scenario())
    assert [e["to_state"] for e in system.events(pid)] == ["defined", "activated"]   # untouched


def test_users_kill_their_own_jobs_and_pilots_update_only_theirs(cfg, background):
    system = start_system(cfg, background)
    api = f"{system.url}/api/v1"
    base = f"{system.url}/server/panda"

    async def scenario():
        async with system.session("alice", ("user",)) as alice, system.session("bob", ("user",)) as bob:
            _, sub = await post_json(alice, f"{api}/job/submit", {"jobs": client_jobs(1)})
            (pid, _, _), = sub["data"]
            system.wait_status([pid], "defined")
            _, desc = await post_json(alice, f"{api}/job/get_description", {"job_ids": [pid]})
            assert desc["data"][0]["prodUserID"] == "alice"       # the owner is who authenticated
            _, peek = await post_json(bob, f"{api}/job/get_description", {"job_ids": [pid]})
            assert peek["data"] == [None] and "belongs to alice" in peek["message"], peek
            async with bob.post(f"{api}/job/kill", json={"job_ids": [pid]}) as r:
                refused = await r.json()
                assert r.status == 403 and "belongs to alice" in refused["message"], refused
            assert system.status([pid]) == {pid: "defined"}
            _, killed = await post_json(alice, f"{api}/job/kill", {"job_ids": [pid]})
            assert killed["data"] == [True], killed
            # cached files are owned too: bob cannot replace alice's sandbox, alice can
            for who, expected in ((alice, 200), (bob, 403), (alice, 200)):
                form = aiohttp.FormData()
                form.add_field("file", b"sandbox", filename="sandbox.tgz")
                async with who.post(f"{api}/file_server/upload_cache_file", data=form) as r:
                    assert r.status == expected, await r.text()
        ids = system.activated_jobs(1)
        async with system.session("pilot-a", ("pilot",)) as pa, system.session("pilot-b", ("pilot",)) as pb:
            _, job = await post_form(pa, f"{base}/getJob", {"siteName": "LOCAL", "node": "wn-a"})
            assert job["PandaID"] == ids[0]
            upd = {"jobId": ids[0], "attemptNr": 1, "state": "running", "node": "wn-a", "pilotID": "spoofed"}
            _, other = await post_form(pb, f"{base}/updateJob", upd)
            assert other["StatusCode"] == 60 and "dispatched to pilot:pilot-a" in other["errorDialog"], other
            _, mine = await post_form(pa, f"{base}/updateJob", upd)
            assert mine == {"StatusCode": 0, "command": "NULL"}, mine
        return pid, ids[0]

    killed, ran = run(scenario())
    system.wait_status([killed], "cancelled")
    system.wait_status([ran], "running")
    events = system.events(ran)
    assert [(e["to_state"], e["actor"]) for e in events[2:]] == [("sent", "pilot:pilot-a"),
                                                                 ("running", "pilot:pilot-a")]
    assert system.events(killed)[-1]["actor"] == "user:alice"


def test_auth_off_is_explicit_and_trusts_everyone(cfg, background):
    system = start_system(cfg.replace(auth={"enabled": False}), background)
    (pid,) = system.activated_jobs(1)

    async def scenario():
        async with aiohttp.ClientSession() as s:
            _, killed = await post_json(s, f"{system.url}/api/v1/job/kill", {"job_ids": [pid]})
            assert killed["data"] == [True]

    run(scenario())
    assert system.events(pid)[-1]["actor"] == "anonymous"
    assert auth_headers(system.cfg) == {}


def test_https_with_a_dev_certificate(cfg, background):
    system = start_system(cfg.replace(auth={"tls_cert": "dev"}), background)
    url = system.url.replace("http://", "https://")
    (pid,) = system.activated_jobs(1)

    async def scenario():
        async with system.session(connector=aiohttp.TCPConnector(ssl=False)) as s:
            async with s.get(f"{url}/api/v1/system/is_alive") as r:
                assert r.status == 200
            _, job = await post_form(s, f"{url}/server/panda/getJob", {"siteName": "LOCAL"})
            assert job["PandaID"] == pid
        async with aiohttp.ClientSession() as plain:   # plain HTTP to the TLS port does not get through
            try:
                async with plain.get(f"{system.url}/api/v1/system/is_alive") as r:
                    assert r.status >= 400
            except aiohttp.ClientError:
                pass

    run(scenario())
    assert (cfg.state_dir / "auth" / "dev-tls.key").stat().st_mode & 0o077 == 0


def test_x509_from_a_trusted_proxy(cfg, background):
    system = start_system(cfg.replace(auth={"trusted_proxies": ["127.0.0.1/32"]}), background)
    (pid,) = system.activated_jobs(1)
    headers = {"SSL-Client-S-DN": "/DC=ch/CN=Operator/CN=proxy", "X-SSL-Client-FQANs": "/local/Role=production"}

    async def scenario():
        async with aiohttp.ClientSession(headers=headers) as s:
            _, killed = await post_json(s, f"{system.url}/api/v1/job/kill", {"job_ids": [pid]})
            assert killed["data"] == [True], killed

    run(scenario())
    system.wait_status([pid], "cancelled")
    assert system.events(pid)[-1]["actor"] == "user:/DC=ch/CN=Operator"   # the bare DN, from the proxy
