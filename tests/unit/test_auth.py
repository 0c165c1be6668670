"""Authentication and the role table, without a network: tokens signed by keys made here, JWKS served by a
function, requests built by aiohttp's test helper."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import wait_until

from core import config
from services.gateway.auth import dev, policy
from services.gateway.auth.gate import Gate
from services.gateway.auth.model import Refused
from services.gateway.auth.oidc import Issuer, JwksCache, OidcAuthenticator
from services.gateway.auth.roles import parse_role_map, roles_of
from services.gateway.auth.x509 import ProxyX509Authenticator

ISS, AUD = "https://iam.example.org/", "pandaserver"
ROLE_MAP = parse_role_map(["production=production", "pilot=pilot", "/atlas/Role=production=production"])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict:
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


def _token(key, kid="k1", **over) -> str:
    now = time.time()
    claims = {"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 600, "nbf": now - 5,
              "groups": ["atlas", "atlas/production"], **over}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256",
                      headers={"kid": kid})


class _Keys:
    """An issuer's JWKS that can rotate; counts fetches."""

    def __init__(self, *pairs):
        self.doc = {"keys": [_jwk(k, kid) for k, kid in pairs]}
        self.fetches = 0

    async def __call__(self) -> dict:
        self.fetches += 1
        return self.doc


def _auth(keys: _Keys, leeway: float = 10.0) -> OidcAuthenticator:
    issuer = Issuer("atlas", ISS, AUD, JwksCache(keys, max_age=3600, min_refetch=0.0))
    return OidcAuthenticator([issuer], "groups", ROLE_MAP, ["user"], leeway)


def _verify(auth, token, origin="atlas"):
    return asyncio.run(auth.verify(token, origin))


def _refusal(auth, token, origin="atlas") -> str:
    with pytest.raises(Refused) as exc:
        _verify(auth, token, origin)
    assert exc.value.status == 401
    return exc.value.missing


def test_a_valid_token_gives_the_subject_vo_and_mapped_roles():
    key = _key()
    ident = _verify(_auth(_Keys((key, "k1"))), _token(key))
    assert (ident.principal, ident.vo, ident.method) == ("alice", "atlas", "oidc")
    assert ident.roles == {"user", "production"}
    assert ident.actor("user") == "user:alice"


def test_expired_wrongly_signed_wrong_audience_and_unknown_issuer_are_refused_with_their_reason():
    key, other = _key(), _key()
    auth = _auth(_Keys((key, "k1")))
    assert "expired" in _refusal(auth, _token(key, exp=time.time() - 60))
    assert "signature" in _refusal(auth, _token(other))                      # right kid, wrong key
    assert "audience" in _refusal(auth, _token(key, aud="someone-else"))
    assert "issuer" in _refusal(auth, _token(key, iss="https://evil.example/"))
    assert "not valid yet" in _refusal(auth, _token(key, nbf=time.time() + 600))
    assert "Origin VO 'cms'" in _refusal(auth, _token(key), origin="cms")
    assert "not a JWT" in _refusal(auth, "not-a-token")
    assert "exp" in _refusal(auth, _token(key, exp=None))                    # exp is required
    hs = jwt.encode({"iss": ISS, "aud": AUD, "sub": "x", "exp": time.time() + 60}, "secret" * 8, algorithm="HS256")
    assert "algorithm" in _refusal(auth, hs)                                 # no symmetric keys, ever


def test_leeway_accepts_a_token_just_expired():
    key = _key()
    assert _verify(_auth(_Keys((key, "k1")), leeway=30), _token(key, exp=time.time() - 10)).principal == "alice"


def test_origin_with_a_role_suffix_names_the_vo():
    key = _key()
    assert _verify(_auth(_Keys((key, "k1"))), _token(key), origin="atlas:production").vo == "atlas"
    assert _verify(_auth(_Keys((key, "k1"))), _token(key), origin="atlas.pilot").vo == "atlas"


def test_keys_are_cached_and_an_unknown_kid_refetches_once_key_rotation():
    old, new = _key(), _key()
    keys = _Keys((old, "k1"))
    auth = _auth(keys)
    for _ in range(3):
        _verify(auth, _token(old))
    assert keys.fetches == 1                                                  # cached
    keys.doc = {"keys": [_jwk(new, "k2")]}                                    # the issuer rotates
    assert _verify(auth, _token(new, kid="k2")).principal == "alice"
    assert keys.fetches == 2
    assert "not among the issuer's keys" in _refusal(auth, _token(new, kid="k3"))
    assert keys.fetches == 3                                                  # one refetch per unknown kid


def test_unknown_kid_refetch_is_rate_limited():
    key = _key()
    keys = _Keys((key, "k1"))
    issuer = Issuer("atlas", ISS, AUD, JwksCache(keys, max_age=3600, min_refetch=60.0))
    auth = OidcAuthenticator([issuer], "groups", ROLE_MAP, ["user"], 10)
    _verify(auth, _token(key))
    for kid in ("x1", "x2", "x3"):
        _refusal(auth, _token(key, kid=kid))
    assert keys.fetches == 1


def test_groups_and_fqans_map_to_roles():
    assert roles_of(["atlas/pilot"], ROLE_MAP, ["user"]) == {"user", "pilot"}
    assert roles_of(["/atlas/Role=production/Capability=NULL"], ROLE_MAP, []) == {"production"}
    assert roles_of(["/atlas/Role=NULL/Capability=NULL", "atlas"], ROLE_MAP, ["user"]) == {"user"}
    with pytest.raises(ValueError):
        parse_role_map(["no-separator"])


def _request(headers: dict, remote: str):
    req = make_mocked_request("GET", "/api/v1/job/kill", headers=headers)
    # make_mocked_request's transport has no peer name; aiohttp reads request.remote from it
    req._transport_peername = (remote, 1234)
    return req


def test_x509_header_from_an_untrusted_address_is_ignored():
    auth = ProxyX509Authenticator(["10.0.0.0/8"], ["X-SSL-Client-S-DN"], "X-SSL-Client-FQANs", ROLE_MAP, ["user"])
    headers = {"X-SSL-Client-S-DN": "/DC=ch/CN=Bob/CN=proxy", "X-SSL-Client-FQANs": "/atlas/Role=production"}
    assert asyncio.run(auth.identify(_request(headers, "192.168.1.5"))) is None
    assert auth.ignored == 1
    ident = asyncio.run(auth.identify(_request(headers, "10.1.2.3")))
    assert (ident.principal, ident.vo, ident.method) == ("/DC=ch/CN=Bob", "atlas", "x509")
    assert ident.roles == {"user", "production"}


def test_the_dev_issuer_mints_tokens_the_gate_accepts(tmp_path):
    cfg = config.load().replace(state={"dir": str(tmp_path)})
    gate = Gate(cfg)
    token = dev.mint(cfg, "carol", ["pilot"])
    ident = asyncio.run(gate.oidc.verify(token, cfg.auth.dev_vo))
    assert (ident.principal, ident.roles) == ("carol", {"user", "pilot"})
    assert (tmp_path / "auth" / "dev-signing-key.pem").stat().st_mode & 0o077 == 0
    paths = dev.ensure_tokens(cfg)
    assert set(paths) == {"user", "production", "pilot"}
    assert dev.token_file(cfg, "user").read_text() == paths["user"].read_text()       # kept, not re-minted
    assert dev.dev_headers(cfg.replace(auth={"enabled": False})) == {}


def test_role_table():
    assert policy.endpoint_roles("/api/v1/system/is_alive") is policy.PUBLIC
    assert policy.endpoint_roles("/cache/schedconfig/LOCAL.all.json") is policy.PUBLIC
    assert policy.endpoint_roles("/server/panda/getJob") == {"pilot", "admin"}
    assert policy.endpoint_roles("/api/v1/job/kill") == {"user", "production", "admin"}
    assert policy.endpoint_roles("/api/v1/new_route/x") is policy.AUTHENTICATED   # unlisted: not public
    assert policy.may_submit(frozenset({"user"}), "user") and not policy.may_submit(frozenset({"user"}), "managed")
    assert policy.may_submit(frozenset({"production"}), "managed")
    args = {"principal": "alice", "vo": "atlas", "job_vo": "atlas", "dispatched_to": None}
    assert policy.may_act(frozenset({"user"}), owner="alice", **args)
    assert not policy.may_act(frozenset({"user"}), owner=None, **args)
    assert policy.may_act(frozenset({"production"}), owner=None, **args)
    assert not policy.may_act(frozenset({"production"}), owner=None, **{**args, "job_vo": "cms"})
    assert policy.may_act(frozenset({"pilot"}), owner=None, **{**args, "dispatched_to": "alice"})
    assert not policy.may_act(frozenset({"pilot"}), owner=None, **{**args, "dispatched_to": "bob"})


def test_a_verified_token_is_remembered_but_still_expires_and_loses_a_removed_key():
    key, new = _key(), _key()
    keys = _Keys((key, "k1"))
    auth = _auth(keys, leeway=0)
    token = _token(key, exp=time.time() + 1.5)
    assert _verify(auth, token).principal == "alice"
    assert _verify(auth, token).principal == "alice"                          # remembered: no new signature check
    assert "Origin VO 'cms'" in _refusal(auth, token, origin="cms")          # the Origin is checked every time
    assert _verify(auth, token).principal == "alice"
    keys.doc = {"keys": [_jwk(new, "k2")]}                                    # the issuer drops k1 ...
    assert _verify(auth, _token(new, kid="k2")).principal == "alice"         # ... and the JWKS is refetched
    assert "not among the issuer's keys" in _refusal(auth, token)            # not outliving its key
    keys.doc = {"keys": [_jwk(key, "k1")]}
    auth = _auth(keys, leeway=0)
    assert _verify(auth, token).principal == "alice"


    def refused_as_expired() -> bool:                                         # exp is checked on every request
        try:
            _verify(auth, token)
        except Refused as exc:
            assert "expired" in exc.missing
            return True
        return False

    wait_until(refused_as_expired, 10, 0.1, "the remembered token to expire")


def test_keys_prefetched_at_start_serve_the_first_token_without_a_fetch():
    key = _key()
    keys = _Keys((key, "k1"))
    auth = _auth(keys)
    issuer = auth.by_iss[ISS]
    assert asyncio.run(issuer.keys.prefetch()) and keys.fetches == 1
    assert asyncio.run(issuer.keys.prefetch()) and keys.fetches == 1          # fresh: not fetched again
    assert _verify(auth, _token(key)).principal == "alice" and keys.fetches == 1


def test_an_issuer_whose_keys_cannot_be_fetched_leaves_them_to_the_first_token():
    key = _key()
    calls = {"n": 0}

    async def down() -> dict:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("connection refused")
        return {"keys": [_jwk(key, "k1")]}

    auth = OidcAuthenticator([Issuer("atlas", ISS, AUD, JwksCache(down, max_age=3600, min_refetch=0.0))],
                             "groups", ROLE_MAP, ["user"], 10)
    assert asyncio.run(auth.by_iss[ISS].keys.prefetch()) is False
    assert _verify(auth, _token(key)).principal == "alice" and calls["n"] == 2


def test_the_gate_warms_every_issuer_and_gives_up_on_a_silent_one_after_its_timeout(tmp_path):
    cfg = config.load().replace(state={"dir": str(tmp_path)})
    gate = Gate(cfg)
    dev_keys = next(iter(gate.oidc.by_iss.values())).keys
    assert dev_keys.fetched_at is None
    assert asyncio.run(gate.warm(5.0)) and dev_keys.fetched_at is not None   # the dev issuer's key, read now

    async def silent() -> dict:
        await asyncio.sleep(3600)
        return {}

    gate.oidc.by_iss["https://silent.example"] = Issuer("atlas", "https://silent.example", AUD,
                                                        JwksCache(silent, max_age=3600))
    assert asyncio.run(gate.warm(0.05)) is False
