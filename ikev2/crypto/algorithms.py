"""PRF, integrity and encryption algorithms of IKEv2, on top of ``cryptography``.

Each algorithm is a frozen dataclass describing its sizes plus the few operations
IKEv2 needs. The registry (:mod:`ikev2.crypto.registry`) maps transform IDs to them.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ikev2.constants import EncrId, IntegId, PrfId
from ikev2.errors import IntegrityCheckFailed, LocalProtocolError


class _Hash(Protocol):
    """The part of a :mod:`hashlib` hash object HMAC needs."""

    @property
    def block_size(self) -> int: ...

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def copy(self) -> _Hash: ...


_CONSTRUCTORS: dict[str, Callable[[bytes], _Hash]] = {
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
_IPAD = bytes(octet ^ 0x36 for octet in range(256))
_OPAD = bytes(octet ^ 0x5C for octet in range(256))


def _keyed_hmac(hash_name: str, key: bytes) -> tuple[_Hash, _Hash]:
    """The inner and outer hash states of HMAC (RFC 2104 §2) after absorbing the key.

    HMAC is built here from hashlib's constructors rather than with ``hmac.digest``:
    under OpenSSL 3 every ``hmac.digest`` call looks the MAC and the digest up by name
    and sets up a fresh context, which measured 7 us a call in a busy IKE endpoint
    (28 calls per IKE SA setup) against about 2 us for this. The result is the same
    (tests compare both, and the RFC 4231 vectors).
    """
    new = _CONSTRUCTORS.get(hash_name) or functools.partial(hashlib.new, hash_name)
    inner = new(b"")
    block = inner.block_size
    if len(key) > block:
        key = new(key).digest()  # RFC 2104 §2: a key longer than a block is hashed first
    key = key.ljust(block, b"\x00")
    inner.update(key.translate(_IPAD))
    return inner, new(key.translate(_OPAD))


def hmac_digest(hash_name: str, key: bytes, data: bytes) -> bytes:
    """HMAC-``hash_name`` (RFC 2104) of ``data`` under ``key`` (see :func:`_keyed_hmac`)."""
    inner, outer = _keyed_hmac(hash_name, key)
    inner.update(data)
    outer.update(inner.digest())
    return outer.digest()


@dataclass(frozen=True, slots=True)
class Prf:
    """An HMAC-based pseudorandom function (RFC 7296 §2.13, RFC 4868)."""

    transform_id: PrfId
    """Transform ID of type PRF."""
    name: str
    """strongSwan keyword, e.g. ``prfsha256``."""
    hash_name: str
    """hashlib name of the hash."""
    output_len: int
    """Output size in octets; also the size of SK_d, SK_pi and SK_pr (§2.14)."""

    def __call__(self, key: bytes, data: bytes) -> bytes:
        """prf(key, data). HMAC takes keys of any length, so the full nonces are used."""
        return hmac_digest(self.hash_name, key, data)

    def prf_plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (RFC 7296 §2.13): T1 = prf(K, S|0x01), Tn = prf(K, Tn-1|S|n).

        The counter is one octet, so at most 255 blocks can be produced.
        """
        blocks = -(-length // self.output_len)
        if blocks > 255:
            raise LocalProtocolError("prf+ cannot produce that much key material")
        keyed_inner, keyed_outer = _keyed_hmac(self.hash_name, key)  # one key, every block
        out = bytearray()
        block = b""
        for counter in range(1, blocks + 1):
            inner, outer = keyed_inner.copy(), keyed_outer.copy()
            inner.update(block + seed + bytes([counter]))
            outer.update(inner.digest())
            block = outer.digest()
            out += block
        return bytes(out[:length])


@dataclass(frozen=True, slots=True)
class Integrity:
    """An HMAC-SHA2 integrity algorithm with a truncated ICV (RFC 4868)."""

    transform_id: IntegId
    """Transform ID of type INTEG."""
    name: str
    """strongSwan keyword, e.g. ``sha256``."""
    hash_name: str
    """hashlib name of the hash."""
    key_len: int
    """Key size in octets (the hash output size, RFC 4868 §2.1.1)."""
    icv_len: int
    """Truncated ICV size in octets."""

    def compute(self, key: bytes, data: bytes) -> bytes:
        """The truncated HMAC of ``data``."""
        return hmac_digest(self.hash_name, key, data)[: self.icv_len]

    def verify(self, key: bytes, data: bytes, icv: bytes) -> None:
        """Raise :class:`IntegrityCheckFailed` unless ``icv`` is the ICV of ``data``."""
        if not hmac.compare_digest(self.compute(key, data), icv):
            raise IntegrityCheckFailed("integrity check value does not verify")


class CipherKind(enum.Enum):
    """How an encryption algorithm protects data."""

    CBC = "cbc"
    AES_GCM = "aes-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"


@dataclass(frozen=True, slots=True)
class Encryption:
    """An encryption transform with one key size (RFC 3602, RFC 5282, RFC 7634).

    For the AEAD ciphers the key material is cipher key | 4-octet salt (salt last), and
    the nonce is salt | the 8-octet IV sent in the packet (RFC 5282 §4, RFC 7634 §3).
    """

    transform_id: EncrId
    """Transform ID of type ENCR."""
    name: str
    """strongSwan keyword, e.g. ``aes256gcm16``."""
    kind: CipherKind
    """CBC (needs an integrity transform) or one of the AEADs."""
    key_bits: int
    """Cipher key size in bits (the Key Length attribute, when the transform has one)."""
    iv_len: int
    """IV size in octets as carried in the SK payload."""
    block_len: int
    """Padding alignment of the plaintext (1 for the AEADs, which need none)."""
    salt_len: int = 0
    """Salt octets at the end of the key material (AEAD only)."""
    icv_len: int = 0
    """Authentication tag size of an AEAD; 0 for CBC (the integrity transform's ICV)."""
    has_key_length_attribute: bool = True
    """Whether the transform carries a Key Length attribute (not for ChaCha20, RFC 7634 §2)."""

    @property
    def aead(self) -> bool:
        """True for combined-mode ciphers (no separate integrity transform)."""
        return self.kind is not CipherKind.CBC

    @property
    def key_material_len(self) -> int:
        """Octets of KEYMAT / SK_e this transform takes: key plus salt."""
        return self.key_bits // 8 + self.salt_len

    def _split(self, key_material: bytes) -> tuple[bytes, bytes]:
        if len(key_material) != self.key_material_len:
            raise LocalProtocolError(f"{self.name} needs {self.key_material_len} key octets")
        cut = self.key_bits // 8
        return key_material[:cut], key_material[cut:]

    def seal(self, key_material: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AEAD: ciphertext | tag. CBC: ciphertext (``aad`` unused, the caller MACs it)."""
        key, salt = self._split(key_material)
        if len(iv) != self.iv_len:
            raise LocalProtocolError(f"{self.name} needs an IV of {self.iv_len} octets")
        if self.kind is CipherKind.AES_GCM:
            return AESGCM(key).encrypt(salt + iv, plaintext, aad)
        if self.kind is CipherKind.CHACHA20_POLY1305:
            return ChaCha20Poly1305(key).encrypt(salt + iv, plaintext, aad)
        if len(plaintext) % self.block_len:
            raise LocalProtocolError("CBC plaintext is not padded to the block size")
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        return encryptor.update(plaintext) + encryptor.finalize()

    def open(self, key_material: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`seal`. AEAD tag failures raise :class:`IntegrityCheckFailed`.

        For CBC the caller has verified the ICV before, and ``ciphertext`` is a whole
        number of blocks.
        """
        key, salt = self._split(key_material)
        try:
            if self.kind is CipherKind.AES_GCM:
                return AESGCM(key).decrypt(salt + iv, ciphertext, aad)
            if self.kind is CipherKind.CHACHA20_POLY1305:
                return ChaCha20Poly1305(key).decrypt(salt + iv, ciphertext, aad)
        except InvalidTag:
            raise IntegrityCheckFailed("AEAD tag does not verify") from None
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()


def _hash_len(name: str) -> int:
    return hashlib.new(name).digest_size


PRFS: dict[int, Prf] = {
    p.transform_id: p
    for p in (
        Prf(PrfId.HMAC_SHA2_256, "prfsha256", "sha256", _hash_len("sha256")),
        Prf(PrfId.HMAC_SHA2_384, "prfsha384", "sha384", _hash_len("sha384")),
        Prf(PrfId.HMAC_SHA2_512, "prfsha512", "sha512", _hash_len("sha512")),
    )
}
"""Implemented PRFs by transform ID."""

INTEGRITIES: dict[int, Integrity] = {
    i.transform_id: i
    for i in (
        Integrity(IntegId.HMAC_SHA2_256_128, "sha256", "sha256", 32, 16),
        Integrity(IntegId.HMAC_SHA2_384_192, "sha384", "sha384", 48, 24),
        Integrity(IntegId.HMAC_SHA2_512_256, "sha512", "sha512", 64, 32),
    )
}
"""Implemented integrity algorithms by transform ID (RFC 4868)."""

ENCRYPTIONS: dict[tuple[int, int | None], Encryption] = {
    (e.transform_id, e.key_bits if e.has_key_length_attribute else None): e
    for e in (
        Encryption(EncrId.AES_CBC, "aes128", CipherKind.CBC, 128, 16, 16),
        Encryption(EncrId.AES_CBC, "aes192", CipherKind.CBC, 192, 16, 16),
        Encryption(EncrId.AES_CBC, "aes256", CipherKind.CBC, 256, 16, 16),
        Encryption(EncrId.AES_GCM_16, "aes128gcm16", CipherKind.AES_GCM, 128, 8, 1, 4, 16),
        Encryption(EncrId.AES_GCM_16, "aes192gcm16", CipherKind.AES_GCM, 192, 8, 1, 4, 16),
        Encryption(EncrId.AES_GCM_16, "aes256gcm16", CipherKind.AES_GCM, 256, 8, 1, 4, 16),
        Encryption(
            EncrId.CHACHA20_POLY1305,
            "chacha20poly1305",
            CipherKind.CHACHA20_POLY1305,
            256,
            8,
            1,
            4,
            16,
            has_key_length_attribute=False,
        ),
    )
}
"""Implemented encryption transforms by (transform ID, Key Length attribute or None)."""
