"""The `.ovpn` profile of an SSL remote-access server: what `lockgate profile` prints.

The stock OpenVPN 2.6 client reads it as it is (`openvpn --config office.ovpn`). Every
file it needs is inline, so the profile is the one thing a user is handed:
- `<ca>`: the root that the server's certificate chains to. The server sends its
  certificate file whole (leaf and intermediates); the client needs the self-signed
  anchor, which is looked up among the certificates of that file and of `[gateway] ca`,
  following issuers from the leaf up. A self-signed server certificate is its own.
- `<cert>` and `<key>`: the user's certificate and key, for certificate auth.
- `<tls-crypt>`: the server's tls-crypt key, when it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from conf.model import Config, RemoteAccessConfig


class ProfileError(Exception):
    """A profile cannot be written; the message says why and what to do."""


def render_profile(
    config: Config,
    server: RemoteAccessConfig,
    *,
    user: str | None = None,
    client_cert: bytes | None = None,
    client_key: bytes | None = None,
) -> str:
    """The profile text. `user` only names the user in a comment; a password never
    appears in a profile (the client asks for it: `auth-user-pass`)."""
    if server.protocol != "ssl":
        raise ProfileError(f"remote_access.{server.name} is not an SSL server")
    certificate_auth = server.auth == "certificate"
    check_client_credential(server, client_cert is not None or client_key is not None)
    proto = "tcp-client" if server.transport == "tcp" else "udp"
    whom = f" for user {user}" if user else ""
    lines = [
        f"# OpenVPN profile of lockgate remote-access server {server.name}{whom}",
        "client",
        "dev tun",
        f"proto {proto}",
        f"remote {server.address} {server.port}",
        "nobind",
        "remote-cert-tls server",
        f"data-ciphers {':'.join(server.ciphers)}",
        "auth SHA256",
        # The server renegotiates; the client's own hourly default would only add more.
        "reneg-sec 0",
        "verb 3",
    ]
    if server.transport == "udp":
        # Over UDP the server learns of a clean exit only from this notification.
        lines.append("explicit-exit-notify 1")
    if not certificate_auth:
        lines.append("auth-user-pass")
    lines += _inline("ca", server_anchor(config, server))
    if client_cert is not None and client_key is not None:
        cert_pem, key_pem = client_credential(client_cert, client_key)
        lines += _inline("cert", cert_pem)
        lines += _inline("key", key_pem)
    if server.tls_crypt_key is not None:
        lines += _inline("tls-crypt", server.tls_crypt_key.read_bytes())
    return "\n".join(lines) + "\n"


def check_client_credential(server: RemoteAccessConfig, given: bool) -> None:
    """A certificate-auth profile carries the user's certificate and key; a password
    profile none."""
    if server.auth == "certificate" and not given:
        raise ProfileError(
            f'remote_access.{server.name} has auth = "certificate": give the user\'s '
            "certificate and key (--cert FILE --key FILE)"
        )
    if server.auth != "certificate" and given:
        raise ProfileError(
            f'remote_access.{server.name} has auth = "{server.auth}": users log in with a '
            "password, not a certificate (drop --cert and --key)"
        )


def _inline(tag: str, pem: bytes) -> list[str]:
    return [f"<{tag}>", pem.decode("ascii").strip(), f"</{tag}>"]


def _certificates(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def server_anchor(config: Config, server: RemoteAccessConfig) -> bytes:
    """The self-signed CA certificate at the top of the server certificate's chain."""
    if server.certificate is None:
        raise ProfileError(f"remote_access.{server.name} has no certificate")
    chain = _certificates(server.certificate)
    if not chain:
        raise ProfileError(f"{server.certificate} holds no PEM certificate")
    candidates: Sequence[x509.Certificate] = chain[1:] + [
        cert for path in config.gateway.ca for cert in _certificates(path)
    ]
    current = chain[0]
    for _ in range(len(candidates) + 1):
        if _issued_by(current, current):
            return current.public_bytes(serialization.Encoding.PEM)
        issuer = next((c for c in candidates if _issued_by(current, c)), None)
        if issuer is None:
            break
        current = issuer
    raise ProfileError(
        f"the CA at the top of remote_access.{server.name}'s certificate chain "
        f"({current.issuer.rfc4514_string()}) is in neither {server.certificate} nor "
        "gateway.ca: add it to one of them, so that profiles can carry it"
    )


def client_credential(cert_pem: bytes, key_pem: bytes) -> tuple[bytes, bytes]:
    """The user's certificate (with any intermediates after it) and its key, checked
    to belong together: a mismatch would only show as a TLS failure at connect."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ProfileError("--cert is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ProfileError("--key is not an unencrypted PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != certs[0].public_key().public_bytes(*spki):
        raise ProfileError("--key is not the private key of --cert")
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), key_pem
