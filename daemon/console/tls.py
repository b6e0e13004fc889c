"""The console's TLS certificate: `[console]`'s, else `[gateway]`'s, else a self-signed
one made at first start and kept beside the configuration file (key mode 0600).

The self-signed certificate's SHA-256 fingerprint is logged, so the operator can check
it against what the browser shows before trusting it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conf.model import Config

log = logging.getLogger(__name__)

SELF_SIGNED_CERT = "console-cert.pem"
SELF_SIGNED_KEY = "console-key.pem"
SELF_SIGNED_DAYS = 825
"""The longest validity browsers accept for a server certificate they are told to trust."""


def certificate_files(config: Config, config_path: Path) -> tuple[Path, Path]:
    """The console's certificate and key files; the self-signed pair is made if needed."""
    console = config.console
    if console is not None and console.certificate is not None and console.private_key:
        return console.certificate, console.private_key
    gateway = config.gateway
    if gateway.certificate is not None and gateway.private_key is not None:
        return gateway.certificate, gateway.private_key
    directory = config_path.resolve().parent
    cert, key = directory / SELF_SIGNED_CERT, directory / SELF_SIGNED_KEY
    if not (cert.exists() and key.exists()):
        # The listening address, and the gateway's (for a console on 0.0.0.0 or ::).
        listen = [console.host] if console is not None else []
        hosts = [a for a in dict.fromkeys([*listen, *gateway.addresses]) if not a.is_unspecified]
        make_self_signed(cert, key, gateway.id, hosts)
        log.info("console: made a self-signed certificate %s", cert)
    log.info(
        "console: self-signed certificate, SHA-256 fingerprint %s",
        fingerprint(x509.load_pem_x509_certificate(cert.read_bytes())),
    )
    return cert, key


def make_self_signed(
    cert_path: Path,
    key_path: Path,
    name: str,
    hosts: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    """Write a P-256 key (created with mode 0600) and a certificate for `hosts`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"lockgate console {name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        # Browsers match the address against the SAN, never the CN (RFC 6125 §6.4.4).
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(h) for h in hosts]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Owner-only from its first byte: never a moment when others could read the key (a
    # file left from before, whatever its mode, is replaced, not reused).
    with contextlib.suppress(FileNotFoundError):
        key_path.unlink()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint as browsers show it: colon-separated hex pairs."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 or newer with the server's pair."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
