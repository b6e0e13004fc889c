"""A throwaway PKI for the lab's certificate cases: a CA (optionally an intermediate
under a root) that issues gateway, TLS server and TLS client certificates, all generated
in memory per run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key (PEM), plus how to name it in configs."""

    cert_pem: bytes
    key_pem: bytes
    dn: str  # strongSwan's spelling: "C=XX, O=lockgate test, CN=gw-a.example.net"
    dns_name: str | None

    @property
    def id(self) -> str:
        """The identity to configure: the DNS SAN if there is one, else the DN."""
        return self.dns_name or self.dn


KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa2048", "rsa4096", "ed25519")


def _new_key(key_type: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"key type {key_type!r} not one of {KEY_TYPES}")


class Pki:
    """A test CA (optionally under a parent CA) that issues gateway certificates.

    Everything is generated in memory for this test run: no secret is ever stored.
    """

    def __init__(
        self,
        name: str = "lockgate test CA",
        key_type: str = "ecdsa-p256",
        parent: Pki | None = None,
    ) -> None:
        self.key_type = key_type
        self.parent = parent
        self.ca = self._issue(name, None, key_type, is_ca=True)

    def _issue(
        self,
        cn: str,
        dns_name: str | None,
        key_type: str,
        *,
        is_ca: bool,
        eku: str | None = "serverAuth",
        key_usage: bool = False,
    ) -> Credential:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = _new_key(key_type)
        attributes = [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lockgate test"),
        ]
        if cn:  # "": a subject without a common name
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        subject = x509.Name(attributes)
        # A root CA signs itself; an intermediate CA is signed by its parent; a
        # gateway certificate by this CA.
        parent_ca = self.parent.ca if self.parent is not None else None
        issuer_cred = parent_ca if is_ca else self.ca
        if issuer_cred is None:
            issuer_name, signing_key = subject, key
        else:
            issuer_cert = x509.load_pem_x509_certificate(issuer_cred.cert_pem)
            issuer_name = issuer_cert.subject
            signing_key = serialization.load_pem_private_key(issuer_cred.key_pem, None)
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if dns_name is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False
            )
        if not is_ca and eku is not None:
            purpose = {
                "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
                "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
            }[eku]
            builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        if not is_ca and key_usage:
            # What TLS needs of an end entity's key (RFC 5280 §4.2.1.3): signing (ECDHE,
            # TLS 1.3) and, for RSA key transport, encipherment.
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        digest = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        cert = builder.sign(signing_key, digest)
        return Credential(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            dn="C=XX, O=lockgate test" + (f", CN={cn}" if cn else ""),
            dns_name=dns_name,
        )

    def issue(
        self,
        dns_name: str,
        key_type: str | None = None,
        *,
        eku: str | None = "serverAuth",
        key_usage: bool = False,
        cn: str | None = None,
    ) -> Credential:
        """A gateway certificate for `dns_name` (CN and DNS SAN; `cn`: another CN, or
        "" for none).

        `eku`: the extended key usage, "serverAuth" (the default), "clientAuth" or None
        (no extension). `key_usage`: add keyUsage digitalSignature and keyEncipherment,
        which the OpenVPN client's `remote-cert-tls server` insists on (an IKE peer
        needs neither)."""
        return self._issue(
            dns_name if cn is None else cn,
            dns_name,
            key_type or self.key_type,
            is_ca=False,
            eku=eku,
            key_usage=key_usage,
        )

    def issue_client(self, name: str, key_type: str | None = None) -> Credential:
        """A TLS client certificate for the user `name` (CN only, clientAuth, keyUsage),
        as an OpenVPN client presents it to a server with certificate auth."""
        return self._issue(
            name, None, key_type or self.key_type, is_ca=False, eku="clientAuth", key_usage=True
        )

    def chain(self) -> list[bytes]:
        """CA certificates from this CA up to the root (PEM)."""
        out: list[bytes] = []
        pki: Pki | None = self
        while pki is not None:
            out.append(pki.ca.cert_pem)
            pki = pki.parent
        return out
