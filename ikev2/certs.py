"""X.509 certificates for IKE_AUTH: credentials, trust anchors, peer validation.

RFC 7296 §3.6-3.7 and RFC 4945 (the PKI profile for IKE) with RFC 7427 signatures:

* :class:`LocalCredentials`: our certificate (with its intermediates) and private key
  (RSA, ECDSA or Ed25519). It gives the CERT payloads to send (end-entity first,
  RFC 7296 §3.6: "the first certificate provided MUST contain the public key used to
  verify the AUTH field") and signs AUTH with a hash the peer announced in
  SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4).
* :class:`TrustAnchors`: the CA certificates of the configuration. They give the
  CERTREQ payload (SHA-1 of each CA's SubjectPublicKeyInfo, RFC 7296 §3.7) and
  validate a peer's chain with :meth:`TrustAnchors.validate`: validity at the given
  time, signatures, CA basic constraints, path length, key usage (keyCertSign on CAs,
  digitalSignature on the end entity, RFC 4945 §5.1.3.2), unknown critical extensions
  (RFC 5280 §4.2), and that the peer's IKE identity is in the certificate
  (subjectAltName for addresses, FQDNs and RFC 822 names; subject DN for DN
  identities, RFC 4945 §3.1).

The chain is checked by hand rather than with ``cryptography.x509.verification``: its
verifier enforces the Web PKI profile (AKI required, EKU serverAuth/clientAuth, no
Ed25519 issuers), which IKE PKIs built with strongSwan's ``pki`` tool do not follow,
and its errors do not say which certificate failed. Signatures are still checked by
``cryptography`` (``Certificate.verify_directly_issued_by``). Revocation (CRL/OCSP)
is not checked. EKU is not enforced: RFC 4945 §5.1.3.12 lets IKE ignore it, and
strongSwan's own certificates carry TLS EKUs.

Every failure about the peer raises :class:`~ikev2.errors.AuthenticationFailed` with a
message an operator can act on; problems with our own files raise
:class:`CredentialError`.

How the IKE_AUTH task is meant to call it::

    # building our IKE_AUTH message (auth = "pubkey")
    payloads += credentials.cert_payloads()              # CERT, end entity first
    payloads.append(anchors.certreq())                   # CERTREQ (initiator; responder too)
    auth = credentials.sign(octets, peer_hashes)         # AUTH method 14 data
    # peer_hashes = parse_signature_hashes(notify.data) from its IKE_SA_INIT message;
    # our IKE_SA_INIT carries signature_hashes_notify().

    # checking the peer's IKE_AUTH message
    peer = anchors.validate(message.get_all(Certificate), peer_identity, wall_clock)
    verify_signature_auth(peer.public_key, octets, auth_payload.data)   # ikev2.crypto

``wall_clock`` is a ``datetime`` or POSIX seconds: certificate validity needs the real
date, while the core's ``now`` may be a monotonic clock.
"""

from __future__ import annotations

import datetime
import enum
import functools
import hashlib
import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from ikev2.codec.payloads import Certificate, CertificateRequest, Notify
from ikev2.constants import CertEncoding, IdType, NotifyType, enum_name
from ikev2.crypto.auth import sign_signature_auth
from ikev2.errors import AuthenticationFailed, InvalidSyntax, LocalProtocolError
from ikev2.identity import Identity

log = logging.getLogger(__name__)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
"""Private key types usable for IKE_AUTH signatures."""

_E = TypeVar("_E", bound=x509.ExtensionType)

MAX_PEER_CERTIFICATES = 8
"""CERT payloads we look at; a longer chain is refused to bound the work per message."""
MAX_CHAIN_DEPTH = 6
"""Intermediate CAs allowed between the end entity and a trust anchor."""


class CredentialError(LocalProtocolError):
    """Our certificate, private key or CA files are missing, malformed or do not fit."""


# --- RFC 7427 §4 hash negotiation ------------------------------------------------------


class HashAlgorithm(enum.IntEnum):
    """Hash Algorithm numbers of SIGNATURE_HASH_ALGORITHMS (RFC 7427 §7, RFC 8420)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5  # RFC 8420: "hash" of EdDSA, which hashes by itself


SUPPORTED_HASHES: tuple[int, ...] = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)
"""What we announce and accept (SHA-1 deliberately left out, RFC 8247 §3.2)."""

_HASH_NAMES: dict[int, str] = {
    HashAlgorithm.SHA2_256: "sha256",
    HashAlgorithm.SHA2_384: "sha384",
    HashAlgorithm.SHA2_512: "sha512",
}


@functools.cache  # constant, and a Notify is frozen: built once, not per IKE_SA_INIT
def signature_hashes_notify() -> Notify:
    """Our N(SIGNATURE_HASH_ALGORITHMS) for IKE_SA_INIT (RFC 7427 §4)."""
    data = b"".join(h.to_bytes(2, "big") for h in SUPPORTED_HASHES)
    return Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, data)


@functools.lru_cache(maxsize=64)  # peers send the same few lists; the SA keeps the tuple
def parse_signature_hashes(data: bytes) -> tuple[int, ...]:
    """The 2-octet hash numbers of a received SIGNATURE_HASH_ALGORITHMS notify."""
    if len(data) % 2:
        raise InvalidSyntax(f"SIGNATURE_HASH_ALGORITHMS data of odd length {len(data)}")
    return tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))


def _preferred_hashes(key: PrivateKey) -> tuple[int, ...]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return (HashAlgorithm.IDENTITY,)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # Match the hash to the curve strength (RFC 5656 §6.2.1 style), larger next.
        size = key.curve.key_size
        if size > 384:
            return (HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256)
        if size > 256:
            return (HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_256)
    return (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


def choose_signature_hash(key: PrivateKey, peer_hashes: Sequence[int] | None) -> int:
    """The RFC 7427 hash to sign with: our preference for the key, among the peer's.

    ``peer_hashes`` is the peer's SIGNATURE_HASH_ALGORITHMS list, or ``None`` when it
    sent none (then our preferred hash is used). Raises :class:`CredentialError` when
    the peer accepts none of the hashes our key can use.
    """
    preferred = _preferred_hashes(key)
    if peer_hashes is None:
        return preferred[0]
    for number in preferred:
        if number in peer_hashes:
            return number
    raise CredentialError(
        f"peer accepts signature hashes {_hash_list(peer_hashes)}, our "
        f"{_key_name(key)} key can use only {_hash_list(preferred)} (RFC 7427 §4)"
    )


def _hash_list(numbers: Iterable[int]) -> str:
    return ", ".join(enum_name(HashAlgorithm, n) for n in numbers) or "none"


def _key_name(key: PrivateKey | CertificatePublicKeyTypes) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


# --- Naming certificates in messages ----------------------------------------------------


def _name_text(name: x509.Name) -> str:
    return name.rfc4514_string() or "<empty DN>"


def describe(cert: x509.Certificate) -> str:
    """A short operator name for a certificate: its subject CN, else the whole DN."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns and isinstance(cns[0].value, str):
        return cns[0].value
    return _name_text(cert.subject)


def user_name(identity: str) -> str:
    """A certificate client's user name: the CN of a DN identity ("C=CH, O=Example,
    CN=carol"), else the identity itself."""
    for part in identity.split(","):
        key, _, value = part.strip().partition("=")
        if key.upper() == "CN" and value:
            return value
    return identity


def certificate_user(cert: x509.Certificate) -> str:
    """The user an EAP-TLS client certificate names: as `user_name` of its subject,
    spelled as an IKE DN identity is."""
    return user_name(str(Identity.from_wire(IdType.ID_DER_ASN1_DN, cert.subject.public_bytes())))


def _utc(at: datetime.datetime | float) -> datetime.datetime:
    if isinstance(at, datetime.datetime):
        if at.tzinfo is None:
            raise LocalProtocolError("certificate validation time must be timezone-aware")
        return at
    return datetime.datetime.fromtimestamp(at, datetime.UTC)


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the DER SubjectPublicKeyInfo: how CERTREQ names a CA (RFC 7296 §3.7)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(spki, usedforsecurity=False).digest()


def requested_authorities(requests: Iterable[CertificateRequest]) -> frozenset[bytes]:
    """The 20-octet CA hashes of received X.509 CERTREQ payloads (others ignored)."""
    found: set[bytes] = set()
    for request in requests:
        if request.encoding != CertEncoding.X509_SIGNATURE:
            continue
        if len(request.authorities) % 20:
            raise InvalidSyntax("CERTREQ Certification Authority is not a list of SHA-1 hashes")
        data = request.authorities
        found.update(data[i : i + 20] for i in range(0, len(data), 20))
    return frozenset(found)


# --- Our credentials --------------------------------------------------------------------


def _load_pem_certificates(data: bytes, origin: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CredentialError(f"{origin} is not a PEM X.509 certificate file: {exc}") from None
    return certs


def _read(path: Path | str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CredentialError(f"cannot read {str(path)!r}: {exc.strerror}") from None


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True, slots=True, repr=False)
class LocalCredentials:
    """Our end-entity certificate, its intermediates and the matching private key."""

    certificate: x509.Certificate
    """Our end-entity certificate; its public key verifies our AUTH."""
    intermediates: tuple[x509.Certificate, ...]
    """CA certificates between ours and the peer's trust anchor, sent after it."""
    private_key: PrivateKey
    """Signs our AUTH; never logged or shown."""

    def __post_init__(self) -> None:
        public = self.certificate.public_key()
        if _public_der(public) != _public_der(self.private_key.public_key()):
            raise CredentialError(
                f"private key does not belong to certificate {describe(self.certificate)!r}"
            )

    def __repr__(self) -> str:
        return f"LocalCredentials({describe(self.certificate)!r}, {_key_name(self.private_key)})"

    @classmethod
    def from_pem(
        cls, certificate_pem: bytes, key_pem: bytes, password: bytes | None = None
    ) -> LocalCredentials:
        """From PEM octets: the certificate file may hold intermediates after ours."""
        certs = _load_pem_certificates(certificate_pem, "certificate")
        try:
            key = serialization.load_pem_private_key(key_pem, password=password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CredentialError(f"private key cannot be loaded: {exc}") from None
        if not isinstance(key, PrivateKey):
            raise CredentialError(
                f"{type(key).__name__} keys are not supported (RSA, ECDSA or Ed25519)"
            )
        return cls(certs[0], tuple(certs[1:]), key)

    @classmethod
    def from_files(
        cls, certificate: Path | str, private_key: Path | str, password: bytes | None = None
    ) -> LocalCredentials:
        """From a PEM certificate (chain) file and a PEM private key file."""
        try:
            return cls.from_pem(_read(certificate), _read(private_key), password)
        except CredentialError as exc:
            raise CredentialError(f"{certificate}: {exc}") from None

    def cert_payloads(self) -> tuple[Certificate, ...]:
        """CERT payloads to send: ours first, then the intermediates (RFC 7296 §3.6)."""
        return tuple(
            Certificate(CertEncoding.X509_SIGNATURE, c.public_bytes(serialization.Encoding.DER))
            for c in (self.certificate, *self.intermediates)
        )

    def sign(self, octets: bytes, peer_hashes: Sequence[int] | None) -> bytes:
        """AUTH data of method 14 (RFC 7427 §3) over our signed octets."""
        number = choose_signature_hash(self.private_key, peer_hashes)
        return sign_signature_auth(self.private_key, octets, _HASH_NAMES.get(number, "sha256"))


# --- Trust anchors and peer validation --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidatedPeer:
    """A peer certificate that chains to one of our trust anchors and names the peer."""

    certificate: x509.Certificate
    """The peer's end-entity certificate."""
    chain: tuple[x509.Certificate, ...]
    """End entity, intermediates, then the trust anchor."""

    @property
    def public_key(self) -> CertificatePublicKeyTypes:
        """The key that must verify the peer's AUTH payload."""
        return self.certificate.public_key()

    @property
    def anchor(self) -> x509.Certificate:
        """The trust anchor the chain ends at."""
        return self.chain[-1]


def _parse_peer_certificates(payloads: Sequence[Certificate]) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for payload in payloads:
        if payload.encoding != CertEncoding.X509_SIGNATURE:
            # Hash-and-URL and others (RFC 7296 §3.6) are not fetched; skip them.
            log.info("ignoring CERT payload with encoding %d", payload.encoding)
            continue
        try:
            certs.append(x509.load_der_x509_certificate(payload.data))
        except ValueError:
            raise AuthenticationFailed(
                f"peer sent a malformed X.509 certificate (CERT payload {len(certs) + 1})"
            ) from None
    if not certs:
        raise AuthenticationFailed("peer sent no X.509 certificate")
    if len(certs) > MAX_PEER_CERTIFICATES:
        raise AuthenticationFailed(
            f"peer sent {len(certs)} certificates; at most {MAX_PEER_CERTIFICATES} are accepted"
        )
    return certs


def _check_extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        extensions = cert.extensions
    except ValueError as exc:
        raise AuthenticationFailed(
            f"certificate of {describe(cert)} has malformed extensions: {exc}"
        ) from None
    for ext in extensions:
        if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            # RFC 5280 §4.2: a critical extension we cannot process rejects the cert.
            raise AuthenticationFailed(
                f"certificate of {describe(cert)} has unsupported critical extension "
                f"{ext.oid.dotted_string}"
            )
    return extensions


def _ext(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_validity(cert: x509.Certificate, at: datetime.datetime, role: str) -> None:
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at < before:
        raise AuthenticationFailed(
            f"{role} {describe(cert)} is not valid before {before:%Y-%m-%d %H:%M:%S} UTC"
        )
    if at > after:
        raise AuthenticationFailed(
            f"{role} {describe(cert)} expired on {after:%Y-%m-%d %H:%M:%S} UTC"
        )


def _check_ca(cert: x509.Certificate, below: int, role: str) -> None:
    """``cert`` may issue certificates with ``below`` intermediate CAs under it."""
    extensions = _check_extensions(cert)
    constraints = _ext(extensions, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise AuthenticationFailed(f"{role} {describe(cert)} is not a CA (basicConstraints)")
    if constraints.path_length is not None and below > constraints.path_length:
        raise AuthenticationFailed(
            f"{role} {describe(cert)} allows {constraints.path_length} intermediate CAs "
            f"below it, the chain has {below}"
        )
    usage = _ext(extensions, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise AuthenticationFailed(f"{role} {describe(cert)} lacks key usage keyCertSign")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s name and key match ``cert``'s issuer and signature."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _general_name_text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"DirName:{_name_text(name.value)}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    return type(name).__name__


def _fold(name: str) -> str:
    return name.rstrip(".").lower()


def identity_mismatch(cert: x509.Certificate, identity: Identity) -> str | None:
    """Whether ``cert`` names ``identity`` (RFC 4945 §3.1): None if it does, else why not,
    naming what the certificate holds.

    Addresses, FQDNs and RFC 822 names must be in subjectAltName; a DN identity must be
    the subject DN or a directoryName there, octet for octet. The peer's certificate is
    checked with it in :meth:`TrustAnchors.validate`; the configuration checks our own
    with it (the identity we prove with ``auth = "pubkey"``).
    """
    try:
        san = _ext(cert.extensions, x509.SubjectAlternativeName)
    except ValueError as exc:
        return f"cannot be matched: certificate of {describe(cert)} has malformed extensions: {exc}"
    names: list[x509.GeneralName] = list(san) if san is not None else []
    id_type, data = identity.id_type, identity.data
    found: bool
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        address = ipaddress.ip_address(data)
        found = any(isinstance(n, x509.IPAddress) and n.value == address for n in names)
    elif id_type == IdType.ID_FQDN:
        wanted = _fold(data.decode("ascii", errors="replace"))
        found = any(isinstance(n, x509.DNSName) and _fold(n.value) == wanted for n in names)
    elif id_type == IdType.ID_RFC822_ADDR:
        wanted = data.decode("ascii", errors="replace").lower()
        found = any(isinstance(n, x509.RFC822Name) and n.value.lower() == wanted for n in names)
    elif id_type == IdType.ID_DER_ASN1_DN:
        # The subject DN, or a directoryName in subjectAltName, octet for octet.
        if cert.subject.public_bytes() == data or any(
            isinstance(n, x509.DirectoryName) and n.value.public_bytes() == data for n in names
        ):
            return None
        return f"is not the certificate subject {_name_text(cert.subject)!r}"
    else:
        return f"(ID type {id_type}) cannot be matched against a certificate"
    if found:
        return None
    listed = ", ".join(_general_name_text(n) for n in names)
    return f"not in certificate subjectAltName [{listed}] of {describe(cert)}"


def _check_identity(cert: x509.Certificate, peer_id: Identity) -> None:
    """The peer's IKE identity must be in the certificate (RFC 4945 §3.1)."""
    _check_extensions(cert)
    reason = identity_mismatch(cert, peer_id)
    if reason is not None:
        raise AuthenticationFailed(f"peer ID {peer_id} {reason}")


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """The CA certificates a peer's certificate must chain to (TOML ``gateway.ca``)."""

    certificates: tuple[x509.Certificate, ...]
    """Trusted CA certificates (roots or intermediates the operator chose to trust)."""

    def __post_init__(self) -> None:
        if not self.certificates:
            raise CredentialError("no CA certificate configured to validate peers")

    @classmethod
    def from_pem(cls, *pems: bytes) -> TrustAnchors:
        """From PEM octets; each may hold several certificates."""
        certs: list[x509.Certificate] = []
        for index, pem in enumerate(pems):
            certs += _load_pem_certificates(pem, f"CA data {index + 1}")
        return cls(tuple(certs))

    @classmethod
    def from_files(cls, paths: Iterable[Path | str]) -> TrustAnchors:
        """From PEM CA files; each may hold several certificates."""
        certs: list[x509.Certificate] = []
        for path in paths:
            certs += _load_pem_certificates(_read(path), repr(str(path)))
        return cls(tuple(certs))

    def certreq(self) -> CertificateRequest:
        """CERTREQ naming every anchor by the SHA-1 of its public key (RFC 7296 §3.7)."""
        return CertificateRequest(
            CertEncoding.X509_SIGNATURE, b"".join(spki_sha1(c) for c in self.certificates)
        )

    def validate(
        self,
        payloads: Sequence[Certificate],
        peer_id: Identity | None,
        at: datetime.datetime | float,
    ) -> ValidatedPeer:
        """Check the peer's CERT payloads and that they belong to ``peer_id`` (None: an
        EAP-TLS client, whom the certificate names, RFC 5216 §5.2).

        The first X.509 CERT is the end entity; the others may be intermediates in any
        order. Raises :class:`AuthenticationFailed` naming what is wrong.
        """
        when = _utc(at)
        certs = _parse_peer_certificates(payloads)
        leaf, pool = certs[0], certs[1:]
        extensions = _check_extensions(leaf)
        _check_validity(leaf, when, "certificate of")
        usage = _ext(extensions, x509.KeyUsage)
        if usage is not None and not usage.digital_signature:
            # RFC 4945 §5.1.3.2: the AUTH signature needs digitalSignature if KU is set.
            raise AuthenticationFailed(
                f"certificate of {describe(leaf)} lacks key usage digitalSignature"
            )
        if peer_id is not None:
            _check_identity(leaf, peer_id)
        chain = self._build_chain(leaf, pool, when)
        log.info(
            "certificate of %s valid, chain: %s",
            describe(leaf),
            " <- ".join(repr(describe(c)) for c in chain),
        )
        return ValidatedPeer(leaf, chain)

    def _build_chain(
        self, leaf: x509.Certificate, pool: list[x509.Certificate], when: datetime.datetime
    ) -> tuple[x509.Certificate, ...]:
        chain = [leaf]
        current = leaf
        while True:
            below = len(chain) - 1  # intermediate CAs under the issuer we look for
            for anchor in self.certificates:
                if _issued_by(current, anchor):
                    _check_validity(anchor, when, "CA certificate")
                    _check_ca(anchor, below, "CA certificate")
                    return (*chain, anchor)
            if below >= MAX_CHAIN_DEPTH:
                raise AuthenticationFailed(
                    f"certificate chain of {describe(leaf)} is longer than "
                    f"{MAX_CHAIN_DEPTH} intermediate CAs"
                )
            issuer = next(
                (c for c in pool if c not in chain and _issued_by(current, c)),
                None,
            )
            if issuer is None:
                if current is leaf:
                    raise AuthenticationFailed(
                        f"certificate of {describe(leaf)} is signed by an unknown CA "
                        f"{_name_text(current.issuer)!r}"
                    )
                raise AuthenticationFailed(
                    f"certificate of {describe(leaf)} chains to an unknown CA "
                    f"{_name_text(current.issuer)!r} (via {describe(current)!r})"
                )
            _check_validity(issuer, when, "intermediate CA certificate")
            _check_ca(issuer, below, "intermediate CA certificate")
            chain.append(issuer)
            current = issuer
