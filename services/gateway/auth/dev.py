"""The development issuer: a local signing key in ``<state dir>/auth`` and the tokens ``make run`` hands out.

Only for a laptop or a test: whoever can read the state directory can mint any identity. The gateway
trusts it when ``[auth] dev_issuer`` is true (the default, so that a fresh clone works with auth on) and
serves its public keys at ``JWKS_PATH``; an operator sets ``dev_issuer = false`` and configures real
issuers. ``pandaes token`` prints a token; ``dev_headers`` gives the simulated pilot and the tests theirs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.config import Config

ISSUER = "pandaes-dev"
AUDIENCE = "pandaes"
JWKS_PATH = "/auth/dev/jwks.json"
TOKEN_TTL = 7 * 24 * 3600.0
#: the tokens ``make run`` writes: name → (principal, roles)
DEV_IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "user": ("dev-user", ("user",)),
    "production": ("dev-production", ("user", "production")),
    "pilot": ("dev-pilot", ("pilot",)),
}


def auth_dir(cfg: Config) -> Path:
    path = cfg.state_dir / "auth"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _key_path(cfg: Config) -> Path:
    return auth_dir(cfg) / "dev-signing-key.pem"


def signing_key(cfg: Config) -> rsa.RSAPrivateKey:
    """The dev issuer's private key, created (mode 0600) the first time; concurrent creators agree on one."""
    path = _key_path(cfg)
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)          # the first writer wins; everyone then reads the same file
        tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded


def _kid(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def jwks(cfg: Config) -> dict[str, Any]:
    key = signing_key(cfg)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": _kid(key), "use": "sig", "alg": "RS256"}]}


def mint(cfg: Config, principal: str, roles: tuple[str, ...] | list[str], ttl: float = TOKEN_TTL,
         now: float | None = None, **claims: Any) -> str:
    """A dev token for ``principal`` with ``roles`` as groups ``<dev vo>/<role>`` (mapped by [auth] role_map)."""
    key = signing_key(cfg)
    now = time.time() if now is None else now
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": principal, "iat": int(now), "nbf": int(now),
            "exp": int(now + ttl), "groups": [f"{cfg.auth.dev_vo}/{r}" for r in roles], **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": _kid(key)})


def token_file(cfg: Config, name: str) -> Path:
    """``<state dir>/auth/<name>.token`` for a DEV_IDENTITIES name, re-minted when missing or half expired."""
    path = auth_dir(cfg) / f"{name}.token"
    with contextlib.suppress(OSError, jwt.PyJWTError):
        claims = jwt.decode(path.read_text().strip(), options={"verify_signature": False})
        if claims.get("exp", 0) - time.time() > TOKEN_TTL / 2 and claims.get("iss") == ISSUER:
            return path
    principal, roles = DEV_IDENTITIES[name]
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(mint(cfg, principal, roles) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def ensure_tokens(cfg: Config) -> dict[str, Path]:
    return {name: token_file(cfg, name) for name in DEV_IDENTITIES}


def headers(cfg: Config, principal: str, roles: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Request headers for a fresh dev token of ``principal`` (benchmarks, tests); empty with auth off."""
    if not cfg.auth.enabled or not cfg.auth.dev_issuer:
        return {}
    return {"Authorization": f"Bearer {mint(cfg, principal, roles)}", "Origin": cfg.auth.dev_vo}


def dev_headers(cfg: Config, name: str = "pilot") -> dict[str, str]:
    """What panda-client/pilot3 send with a token: ``Authorization: Bearer`` and ``Origin: <vo>``.
    Empty when auth is off or there is no dev issuer (the caller then goes without)."""
    if not cfg.auth.enabled or not cfg.auth.dev_issuer:
        return {}
    return {"Authorization": f"Bearer {token_file(cfg, name).read_text().strip()}", "Origin": cfg.auth.dev_vo}
