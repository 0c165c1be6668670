"""HTTPS on the gateway itself (PanDA's 25443 convention), so tokens need not cross plain HTTP.

``[auth] tls_cert``/``tls_key`` name PEM files; ``tls_cert = "dev"`` makes (once) a self-signed certificate
for localhost in ``<state dir>/auth`` — for a laptop, where clients are told not to verify the host
(panda-client: ``PANDA_VERIFY_HOST=off``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.config import Config

from .dev import auth_dir


def dev_certificate(cfg: Config) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 in the state dir (made once, valid a year)."""
    cert_path, key_path = auth_dir(cfg) / "dev-tls.crt", auth_dir(cfg) / "dev-tls.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(cfg: Config) -> ssl.SSLContext | None:
    """The gateway's TLS context, or None for plain HTTP (``tls_cert`` empty)."""
    cert = cfg.auth.tls_cert
    if not cert:
        return None
    if cert == "dev":
        cert_path, key_path = dev_certificate(cfg)
    else:
        cert_path, key_path = Path(cert), Path(cfg.auth.tls_key or cert)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
