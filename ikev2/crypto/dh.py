"""Key exchange (KE payload) groups: MODP, ECP, Curve25519 and Curve448.

Every private value comes from the injected :class:`RandomSource`, so a seeded source
gives reproducible exchanges. Encodings (what goes in the KE payload and what goes into
SKEYSEED as g^ir):

* MODP (RFC 3526, RFC 7296 §2.14): big-endian, zero-padded to the prime's length.
* ECP (RFC 5903 §7): KE data is x | y, each padded to the field size; g^ir is x only.
* Curve25519 / Curve448 (RFC 8031, RFC 7748): the raw 32 / 56 octets.
* ML-KEM (FIPS 203, draft-ietf-ipsecme-ikev2-mlkem): a key encapsulation, not a
  Diffie-Hellman: the initiator sends its encapsulation key, the responder answers
  with the ciphertext (:func:`respond_key_exchange`), and the 32-octet shared secret
  is the "g^ir" of the key schedule. Only the additional key exchanges of RFC 9370
  use it (``KEMS``), never IKE_SA_INIT's.

A peer's public value is validated (range, point on curve, non-zero shared secret);
a bad one raises :class:`ikev2.errors.InvalidKeData`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import dh, ec, mlkem, x448, x25519
from cryptography.utils import CryptographyDeprecationWarning

from ikev2.constants import DhGroup
from ikev2.crypto.rng import RandomSource
from ikev2.errors import InvalidKeData, UnsupportedSuite

MlKemPrivate = mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey
MlKemPublic = mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey


def _pi_scaled(bits: int) -> int:
    """floor(pi * 2**bits), by Machin's formula in integers (exact enough with 64 guard bits)."""
    guard = 64
    one = 1 << (bits + guard)

    def arctan_inv(x: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    return (16 * arctan_inv(5) - 4 * arctan_inv(239)) >> guard


@functools.cache
def rfc3526_prime(bits: int, k: int) -> int:
    """The MODP prime p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k) (RFC 3526).

    Computed from the RFC's formula rather than transcribed as 1,000 hex digits; the
    tests check the results are safe primes with the RFC's leading and trailing words.
    """
    return (1 << bits) - (1 << (bits - 64)) - 1 + (1 << 64) * (_pi_scaled(bits - 130) + k)


_MODP_FORMULA: dict[int, tuple[int, int]] = {
    DhGroup.MODP_2048: (2048, 124476),  # RFC 3526 §3
    DhGroup.MODP_3072: (3072, 1690314),  # RFC 3526 §4
    DhGroup.MODP_4096: (4096, 240904),  # RFC 3526 §5
}

_EC_CURVES: dict[int, type[ec.EllipticCurve]] = {
    DhGroup.ECP_256: ec.SECP256R1,  # RFC 5903 §3.1
    DhGroup.ECP_384: ec.SECP384R1,  # RFC 5903 §3.2
    DhGroup.ECP_521: ec.SECP521R1,  # RFC 5903 §3.3
}

# Exponent size for MODP private values: twice the group's symmetric strength is the
# usual choice (RFC 3526 §8); 512 bits covers the strongest group we implement.
_MODP_PRIVATE_BITS = 512


@dataclass(frozen=True, slots=True)
class KeGroup:
    """Sizes of one key exchange group."""

    group: DhGroup
    """Transform ID of type DH (Key Exchange Method)."""
    name: str
    """strongSwan keyword, e.g. ``x25519`` or ``modp2048``."""
    public_len: int
    """Length of the KE payload's Key Exchange Data."""
    shared_len: int
    """Length of g^ir as fed into the PRF."""
    ciphertext_len: int = 0
    """ML-KEM: length of the responder's ciphertext (its KE data); 0 for DH groups."""

    @property
    def kem(self) -> bool:
        """A key encapsulation (ML-KEM): the two sides send different things."""
        return self.ciphertext_len > 0


GROUPS: dict[int, KeGroup] = {
    g.group: g
    for g in (
        KeGroup(DhGroup.MODP_2048, "modp2048", 256, 256),
        KeGroup(DhGroup.MODP_3072, "modp3072", 384, 384),
        KeGroup(DhGroup.MODP_4096, "modp4096", 512, 512),
        KeGroup(DhGroup.ECP_256, "ecp256", 64, 32),
        KeGroup(DhGroup.ECP_384, "ecp384", 96, 48),
        KeGroup(DhGroup.ECP_521, "ecp521", 132, 66),
        KeGroup(DhGroup.CURVE25519, "x25519", 32, 32),
        KeGroup(DhGroup.CURVE448, "x448", 56, 56),
    )
}
"""Implemented key exchange groups by transform ID."""

_MLKEM_KEYS: dict[int, tuple[type[MlKemPrivate], type[MlKemPublic]]] = {
    DhGroup.ML_KEM_768: (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
    DhGroup.ML_KEM_1024: (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
}
# FIPS 203 §8 table 3: encapsulation key and ciphertext sizes. ML-KEM-512 is not in
# the installed ``cryptography``, so it is not offered (the parser names it unsupported).
KEMS: dict[int, KeGroup] = {
    g.group: g
    for g in (
        KeGroup(DhGroup.ML_KEM_768, "mlkem768", 1184, 32, ciphertext_len=1088),
        KeGroup(DhGroup.ML_KEM_1024, "mlkem1024", 1568, 32, ciphertext_len=1568),
    )
    if g.group in _MLKEM_KEYS
}
"""Implemented key encapsulation methods by transform ID (additional key exchanges)."""

KE_METHODS: dict[int, KeGroup] = {**GROUPS, **KEMS}
"""Every method an additional key exchange (RFC 9370) may use."""


class KeyExchange:
    """Our side of one key exchange: a private value and its public KE data.

    Create it with :meth:`generate`; send :attr:`public_bytes` in the KE payload; feed
    the peer's KE data to :meth:`shared_secret` to get g^ir.
    """

    def __init__(
        self,
        group: KeGroup,
        public_bytes: bytes,
        private: dh.DHPrivateKey
        | ec.EllipticCurvePrivateKey
        | x25519.X25519PrivateKey
        | x448.X448PrivateKey
        | MlKemPrivate,
    ) -> None:
        self.group = group
        self.public_bytes = public_bytes
        self._private = private

    def __repr__(self) -> str:
        # The private value is never shown.
        return f"KeyExchange(group={self.group.name})"

    @classmethod
    def generate(cls, group: int, rng: RandomSource) -> KeyExchange:
        """A fresh private value for ``group`` drawn from ``rng``."""
        info = KE_METHODS.get(group)
        if info is None:
            raise UnsupportedSuite(f"key exchange group {group} is not implemented")
        if info.kem:
            # FIPS 203 §7.1: ML-KEM.KeyGen from the 64-octet seed d | z.
            kem_private = _MLKEM_KEYS[info.group][0].from_seed_bytes(rng.token_bytes(64))
            return cls(info, kem_private.public_key().public_bytes_raw(), kem_private)
        if info.group in _MODP_FORMULA:
            return cls._generate_modp(info, rng)
        if info.group in _EC_CURVES:
            return cls._generate_ecp(info, rng)
        if info.group == DhGroup.CURVE25519:
            key25519 = x25519.X25519PrivateKey.from_private_bytes(rng.token_bytes(32))
            return cls(info, key25519.public_key().public_bytes_raw(), key25519)
        key448 = x448.X448PrivateKey.from_private_bytes(rng.token_bytes(56))
        return cls(info, key448.public_key().public_bytes_raw(), key448)

    @classmethod
    def _generate_modp(cls, info: KeGroup, rng: RandomSource) -> KeyExchange:
        prime = rfc3526_prime(*_MODP_FORMULA[info.group])
        # A private exponent below 2^512 (never 0 or 1): far below p, see above.
        x = int.from_bytes(rng.token_bytes(_MODP_PRIVATE_BITS // 8), "big") | 2
        y = pow(2, x, prime)
        with _ffdh_allowed():
            params = dh.DHParameterNumbers(prime, 2)
            private = dh.DHPrivateNumbers(x, dh.DHPublicNumbers(y, params)).private_key()
        return cls(info, y.to_bytes(info.public_len, "big"), private)

    @classmethod
    def _generate_ecp(cls, info: KeGroup, rng: RandomSource) -> KeyExchange:
        curve = _EC_CURVES[info.group]()
        order = _curve_order(info.group)
        # 8 extra octets make the reduction modulo the order negligibly biased.
        raw = int.from_bytes(rng.token_bytes((order.bit_length() + 7) // 8 + 8), "big")
        private = ec.derive_private_key(raw % (order - 1) + 1, curve)
        numbers = private.public_key().public_numbers()
        half = info.public_len // 2
        public = numbers.x.to_bytes(half, "big") + numbers.y.to_bytes(half, "big")
        return cls(info, public, private)

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir from the peer's Key Exchange Data, in the encoding of RFC 7296 §2.14.

        For ML-KEM (the initiator's side) the peer's data is the ciphertext.
        """
        if self.group.kem:
            return self._decapsulate(peer_public)
        if len(peer_public) != self.group.public_len:
            raise InvalidKeData(
                f"{self.group.name} KE data must be {self.group.public_len} octets, "
                f"got {len(peer_public)}"
            )
        private = self._private
        try:
            if self.group.group in _MODP_FORMULA:
                return self._modp_shared(peer_public)
            if isinstance(private, ec.EllipticCurvePrivateKey):
                point = ec.EllipticCurvePublicKey.from_encoded_point(
                    private.curve, b"\x04" + peer_public
                )
                # RFC 5903 §7: the x-coordinate, at the field's full length.
                return private.exchange(ec.ECDH(), point).rjust(self.group.shared_len, b"\x00")
            if isinstance(private, x25519.X25519PrivateKey):
                return private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
            if isinstance(private, x448.X448PrivateKey):
                return private.exchange(x448.X448PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:
            # Not on the curve, or an all-zero X25519/X448 result (RFC 7748 §6.1).
            raise InvalidKeData(f"invalid {self.group.name} public value") from exc
        raise UnsupportedSuite(f"no key exchange for {self.group.name}")

    def _decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != self.group.ciphertext_len:
            raise InvalidKeData(
                f"{self.group.name} ciphertext must be {self.group.ciphertext_len} octets, "
                f"got {len(ciphertext)}"
            )
        private = self._private
        if not isinstance(private, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey):
            raise UnsupportedSuite(f"no ML-KEM key for {self.group.name}")
        # FIPS 203 §6.3: a well-sized but wrong ciphertext decapsulates to a pseudo-random
        # secret (implicit rejection); nothing here may tell it apart, so the mismatch
        # surfaces only as keys that do not agree, i.e. a failed AUTH.
        return private.decapsulate(ciphertext)

    def _modp_shared(self, peer_public: bytes) -> bytes:
        prime = rfc3526_prime(*_MODP_FORMULA[self.group.group])
        y = int.from_bytes(peer_public, "big")
        # RFC 6989 §2.1: refuse 0, 1, p-1 and anything not below p.
        if not 1 < y < prime - 1:
            raise InvalidKeData(f"{self.group.name} public value out of range")
        with _ffdh_allowed():
            private = self._private
            if not isinstance(private, dh.DHPrivateKey):
                raise UnsupportedSuite(f"no MODP key for {self.group.name}")
            numbers = private.parameters().parameter_numbers()
            secret = private.exchange(dh.DHPublicNumbers(y, numbers).public_key())
        return secret.rjust(self.group.shared_len, b"\x00")


def respond_key_exchange(group: int, peer_public: bytes, rng: RandomSource) -> tuple[bytes, bytes]:
    """The responder's side of one key exchange: (our KE data, the shared secret).

    A DH group makes a fresh key pair; ML-KEM encapsulates to the initiator's key
    (FIPS 203 §7.2, which also checks the key's encoding).
    """
    info = KE_METHODS.get(group)
    if info is None:
        raise UnsupportedSuite(f"key exchange group {group} is not implemented")
    if not info.kem:
        ours = KeyExchange.generate(group, rng)
        return ours.public_bytes, ours.shared_secret(peer_public)
    if len(peer_public) != info.public_len:
        raise InvalidKeData(
            f"{info.name} encapsulation key must be {info.public_len} octets, "
            f"got {len(peer_public)}"
        )
    try:
        public = _MLKEM_KEYS[info.group][1].from_public_bytes(peer_public)
    except ValueError as exc:
        raise InvalidKeData(f"invalid {info.name} encapsulation key") from exc
    # The encapsulation draws its randomness from the library, not from ``rng``.
    secret, ciphertext = public.encapsulate()
    return ciphertext, secret


@contextlib.contextmanager
def _ffdh_allowed() -> Iterator[None]:
    """Silence cryptography's deprecation of finite-field DH for the MODP groups.

    MODP 2048-4096 are still needed to interoperate (RFC 8247 §2.4); when
    ``cryptography`` drops FFDH this is the one place to replace.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


def _curve_order(group: DhGroup) -> int:
    # Group orders of the NIST curves (FIPS 186-4 D.1.2; RFC 5903 §3 quotes them).
    orders = {
        DhGroup.ECP_256: int(
            "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16
        ),
        DhGroup.ECP_384: int(
            "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
            "581a0db248b0a77aecec196accc52973",
            16,
        ),
        DhGroup.ECP_521: int(
            "1ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
            "fa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409",
            16,
        ),
    }
    return orders[group]
