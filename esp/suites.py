"""ESP cipher suites: what each transform needs (keys, IV, ICV, alignment).

Names follow strongSwan's proposal keywords; ids are the IKEv2 IANA transform ids
(RFC 7296 §3.3.2, IANA "IKEv2 Transform Type 1/3").
"""

from __future__ import annotations

from dataclasses import dataclass

from esp.errors import UnknownSuite

# IKEv2 Transform Type 1 (encryption) ids.
ENCR_AES_CBC = 12
ENCR_AES_GCM_16 = 20
ENCR_CHACHA20_POLY1305 = 28
# IKEv2 Transform Type 3 (integrity) ids.
AUTH_NONE = 0
AUTH_HMAC_SHA2_256_128 = 12
AUTH_HMAC_SHA2_384_192 = 13
AUTH_HMAC_SHA2_512_256 = 14

# SPI (4) + sequence number (4), RFC 4303 §2.
ESP_HEADER_LEN = 8
# Pad Length (1) + Next Header (1), RFC 4303 §2.
ESP_TRAILER_LEN = 2


@dataclass(frozen=True, slots=True)
class EspSuite:
    """One ESP transform combination and the sizes it implies."""

    name: str
    """strongSwan-style proposal keyword, e.g. ``aes128gcm16``."""
    encr_id: int
    """IKEv2 encryption transform id."""
    key_bits: int
    """Cipher key length in bits (without the AEAD salt)."""
    integ_id: int | None
    """IKEv2 integrity transform id, or None for AEAD suites."""
    encr_key_len: int
    """Octets of KEYMAT for encryption; includes the 4-octet salt for AEAD
    (RFC 4106 §8.1, RFC 7634 §2)."""
    integ_key_len: int
    """Octets of KEYMAT for integrity (RFC 4868 §2.1.1: key = full hash length)."""
    iv_len: int
    """Explicit IV carried in each packet."""
    icv_len: int
    """Integrity check value (truncated HMAC or AEAD tag)."""
    align: int
    """Payload plus trailer is padded to a multiple of this (RFC 4303 §2.4)."""
    hash_name: str | None = None
    """hashlib name of the HMAC digest, None for AEAD suites."""

    @property
    def is_aead(self) -> bool:
        """True for combined-mode suites (AES-GCM, ChaCha20-Poly1305)."""
        return self.integ_id is None

    def esp_len(self, inner_len: int) -> int:
        """Length of the ESP packet (SPI through ICV) carrying `inner_len` octets."""
        pad = -(inner_len + ESP_TRAILER_LEN) % self.align
        return ESP_HEADER_LEN + self.iv_len + inner_len + pad + ESP_TRAILER_LEN + self.icv_len

    def overhead(self, inner_mtu: int) -> int:
        """Worst-case ESP overhead for inner packets of at most `inner_mtu` octets.

        `esp_len` never decreases with the inner length, so the largest ESP packet
        is the one for `inner_mtu`: the TUN MTU plus this must fit the path.
        """
        return self.esp_len(inner_mtu) - inner_mtu

    def inner_mtu_for(self, esp_budget: int) -> int:
        """Largest inner MTU whose ESP packets fit in `esp_budget` octets.

        `esp_budget` is the path MTU minus the outer IP (and UDP, RFC 3948) headers.
        Returns 0 when not even an empty packet fits.
        """
        # esp_len(L) = header + IV + roundup(L + 2, align) + ICV, so the encrypted
        # part may take the largest whole number of blocks that fits.
        room = esp_budget - ESP_HEADER_LEN - self.iv_len - self.icv_len
        return max(0, room - room % self.align - ESP_TRAILER_LEN)


def _aead(name: str, encr_id: int, key_bits: int) -> EspSuite:
    # RFC 4106 §3 / RFC 7634 §2: 8-octet IV, 16-octet tag, 4-octet salt in KEYMAT;
    # no cipher block, so only the 4-octet alignment of RFC 4303 §2.4 applies.
    return EspSuite(name, encr_id, key_bits, None, key_bits // 8 + 4, 0, 8, 16, 4)


def _cbc(key_bits: int, integ_id: int, hash_bits: int) -> EspSuite:
    # RFC 3602: 16-octet IV, 16-octet block. RFC 4868 §2.1.1 / §2.3: key is the full
    # hash output, ICV is half of it.
    return EspSuite(
        f"aes{key_bits}-sha{hash_bits}",
        ENCR_AES_CBC,
        key_bits,
        integ_id,
        key_bits // 8,
        hash_bits // 8,
        16,
        hash_bits // 16,
        16,
        f"sha{hash_bits}",
    )


SUITES: dict[str, EspSuite] = {
    s.name: s
    for s in (
        _aead("aes128gcm16", ENCR_AES_GCM_16, 128),
        _aead("aes256gcm16", ENCR_AES_GCM_16, 256),
        _aead("chacha20poly1305", ENCR_CHACHA20_POLY1305, 256),
        _cbc(128, AUTH_HMAC_SHA2_256_128, 256),
        _cbc(256, AUTH_HMAC_SHA2_256_128, 256),
        _cbc(128, AUTH_HMAC_SHA2_384_192, 384),
        _cbc(256, AUTH_HMAC_SHA2_384_192, 384),
        _cbc(128, AUTH_HMAC_SHA2_512_256, 512),
        _cbc(256, AUTH_HMAC_SHA2_512_256, 512),
    )
}
"""Every suite the engine implements, by strongSwan name."""


def suite_by_name(name: str) -> EspSuite:
    """The suite for a strongSwan keyword such as ``aes256-sha256`` (case-insensitive)."""
    suite = SUITES.get(name.strip().lower())
    if suite is None:
        raise UnknownSuite(f"unknown ESP suite {name!r}; known: {', '.join(SUITES)}")
    return suite


def suite_from_transforms(encr_id: int, key_bits: int | None, integ_id: int | None) -> EspSuite:
    """The suite for negotiated IKEv2 transform ids.

    `key_bits` is the Key Length attribute (None when absent, as for
    ChaCha20-Poly1305, RFC 7634 §2). `integ_id` is None or AUTH_NONE for AEAD
    (RFC 7296 §3.3: combined-mode ciphers carry no integrity transform).
    """
    if integ_id == AUTH_NONE:
        integ_id = None
    if encr_id == ENCR_CHACHA20_POLY1305 and key_bits is None:
        key_bits = 256
    for suite in SUITES.values():
        if (suite.encr_id, suite.key_bits, suite.integ_id) == (encr_id, key_bits, integ_id):
            return suite
    raise UnknownSuite(f"no ESP suite for encr={encr_id} key_bits={key_bits} integ={integ_id}")
