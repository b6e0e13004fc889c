"""AUTH payload values: signed octets, PSK MIC (RFC 7296 §2.15), signatures (RFC 7427).

The signed octets of the initiator are its IKE_SA_INIT request as sent, then the
responder's nonce data, then prf(SK_pi, IDi'); the responder's are its IKE_SA_INIT
response, the initiator's nonce data and prf(SK_pr, IDr'). IDx' is the ID payload
body without the generic header (``IdI.id_prime``).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

from ikev2.crypto.algorithms import Prf
from ikev2.errors import AuthenticationFailed, LocalProtocolError

KEY_PAD = b"Key Pad for IKEv2"
"""The 17 ASCII octets of RFC 7296 §2.15, without terminator."""


def signed_octets(
    real_message: bytes, peer_nonce: bytes, prf: Prf, sk_p: bytes, id_prime: bytes
) -> bytes:
    """RealMessage | NonceData(peer) | prf(SK_px, IDx') (RFC 7296 §2.15)."""
    return real_message + peer_nonce + prf(sk_p, id_prime)


def psk_auth(prf: Prf, psk: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <signed octets>) (§2.15)."""
    return prf(prf(psk, KEY_PAD), octets)


def verify_psk_auth(prf: Prf, psk: bytes, octets: bytes, received: bytes) -> None:
    """Raise :class:`AuthenticationFailed` unless ``received`` is the expected PSK AUTH."""
    if not hmac.compare_digest(psk_auth(prf, psk, octets), received):
        raise AuthenticationFailed("peer's AUTH does not match the pre-shared key")


# --- RFC 7427 digital signatures (AUTH method 14) ---------------------------------------


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return b"\x06" + _der_length(len(body)) + bytes(body)


def _algorithm_identifier(oid: str, null_params: bool) -> bytes:
    body = _der_oid(oid) + (b"\x05\x00" if null_params else b"")
    return b"\x30" + _der_length(len(body)) + body


@dataclass(frozen=True, slots=True)
class SignatureScheme:
    """One RFC 7427 signature algorithm: its AlgorithmIdentifier and how to verify it."""

    name: str
    """Operator-readable name."""
    algorithm_identifier: bytes
    """DER AlgorithmIdentifier as sent in the AUTH data."""
    key_kind: str
    """``ecdsa``, ``rsa`` or ``ed25519``."""
    hash_name: str | None
    """Hash name for ECDSA/RSA (``None`` for Ed25519, which hashes itself)."""
    hash_algorithm: int
    """RFC 7427 §7 hash number for SIGNATURE_HASH_ALGORITHMS (2..4 SHA-2, 5 identity)."""


_ECDSA = "1.2.840.10045.4.3."  # ecdsa-with-SHA2 arc (RFC 5758 §3.2)
_PKCS1 = "1.2.840.113549.1.1."  # shaXXXWithRSAEncryption arc (RFC 4055 §5)


def _scheme(name: str, oid: str, kind: str, hash_name: str | None, number: int) -> SignatureScheme:
    # RSA PKCS#1 AlgorithmIdentifiers carry NULL parameters; ECDSA and EdDSA none.
    return SignatureScheme(name, _algorithm_identifier(oid, kind == "rsa"), kind, hash_name, number)


SIGNATURE_SCHEMES: tuple[SignatureScheme, ...] = (
    _scheme("ecdsa-with-sha256", _ECDSA + "2", "ecdsa", "sha256", 2),
    _scheme("ecdsa-with-sha384", _ECDSA + "3", "ecdsa", "sha384", 3),
    _scheme("ecdsa-with-sha512", _ECDSA + "4", "ecdsa", "sha512", 4),
    _scheme("sha256WithRSAEncryption", _PKCS1 + "11", "rsa", "sha256", 2),
    _scheme("sha384WithRSAEncryption", _PKCS1 + "12", "rsa", "sha384", 3),
    _scheme("sha512WithRSAEncryption", _PKCS1 + "13", "rsa", "sha512", 4),
    _scheme("ed25519", "1.3.101.112", "ed25519", None, 5),  # RFC 8420
)
"""Supported AlgorithmIdentifiers (RFC 7427 Appendix A; RFC 8420 for Ed25519)."""

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


def split_signature_auth(auth_data: bytes) -> tuple[SignatureScheme, bytes]:
    """Split method-14 AUTH data into its scheme and signature value (RFC 7427 §3).

    The data is ASN.1 Length (1 octet) | AlgorithmIdentifier | Signature Value.
    """
    if not auth_data:
        raise AuthenticationFailed("empty digital signature AUTH data")
    length = auth_data[0]
    ident = auth_data[1 : 1 + length]
    if len(ident) != length:
        raise AuthenticationFailed("digital signature AUTH data is truncated")
    for scheme in SIGNATURE_SCHEMES:
        if hmac.compare_digest(scheme.algorithm_identifier, ident):
            return scheme, auth_data[1 + length :]
    raise AuthenticationFailed("peer signed with an unsupported signature algorithm")


def verify_signature_auth(
    public_key: CertificatePublicKeyTypes, octets: bytes, auth_data: bytes
) -> SignatureScheme:
    """Verify method-14 AUTH data over the signed octets; returns the scheme used.

    Raises :class:`AuthenticationFailed` for any mismatch (wrong key type, bad signature).
    """
    scheme, signature = split_signature_auth(auth_data)
    try:
        if scheme.key_kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            algo = _HASHES[scheme.hash_name or ""]
            public_key.verify(signature, octets, ec.ECDSA(algo))
        elif scheme.key_kind == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
            algo = _HASHES[scheme.hash_name or ""]
            public_key.verify(signature, octets, padding.PKCS1v15(), algo)
        elif scheme.key_kind == "ed25519" and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, octets)
        else:
            raise AuthenticationFailed(f"{scheme.name} does not match the peer's key type")
    except InvalidSignature:
        raise AuthenticationFailed(f"peer's {scheme.name} signature does not verify") from None
    return scheme


def sign_signature_auth(
    private_key: PrivateKeyTypes, octets: bytes, hash_name: str = "sha256"
) -> bytes:
    """Method-14 AUTH data for our private key (ECDSA, RSA PKCS#1 v1.5 or Ed25519).

    ``hash_name`` is ignored for Ed25519, which hashes internally.
    """
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        kind = "ed25519"
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        kind = "ecdsa"
    elif isinstance(private_key, rsa.RSAPrivateKey):
        kind = "rsa"
    else:
        raise LocalProtocolError("unsupported private key type for a signature AUTH")
    scheme = next(
        (
            s
            for s in SIGNATURE_SCHEMES
            if s.key_kind == kind and (s.hash_name is None or s.hash_name == hash_name)
        ),
        None,
    )
    if scheme is None:
        raise LocalProtocolError(f"no {kind} signature scheme with hash {hash_name}")
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        signature = private_key.sign(octets)
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        signature = private_key.sign(octets, ec.ECDSA(_HASHES[hash_name]))
    else:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise LocalProtocolError("unsupported private key type for a signature AUTH")
        signature = private_key.sign(octets, padding.PKCS1v15(), _HASHES[hash_name])
    ident = scheme.algorithm_identifier
    return bytes([len(ident)]) + ident + signature
