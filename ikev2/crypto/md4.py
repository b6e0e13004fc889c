"""MD4 (RFC 1320), for the NT password hash of MS-CHAPv2 (RFC 2759 §8.3).

`hashlib` offers MD4 only where OpenSSL's legacy provider is loaded, which current
distributions do not do. MD4 is broken as a hash; MS-CHAPv2 leaves no choice, and it
only ever hashes a password or the 16-octet NT hash here.
"""

from __future__ import annotations

import struct

_MASK = 0xFFFFFFFF
_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_ROUND2, _ROUND3 = 0x5A827999, 0x6ED9EBA1
# RFC 1320 §3.4: the message word and shift of each of the 16 steps of rounds 1-3.
_R1 = tuple((k, (3, 7, 11, 19)[k % 4]) for k in range(16))
_R2 = tuple(
    (k, (3, 5, 9, 13)[i % 4])
    for i, k in enumerate((0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15))
)
_R3 = tuple(
    (k, (3, 9, 11, 15)[i % 4])
    for i, k in enumerate((0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15))
)
_BLOCK = struct.Struct("<16I")


def _rotl(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _MASK


def _compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    x = _BLOCK.unpack(block)
    a, b, c, d = state
    for k, s in _R1:  # F(X,Y,Z) = XY v not(X) Z
        a, b, c, d = d, _rotl((a + ((b & c) | (~b & d)) + x[k]) & _MASK, s), b, c
    for k, s in _R2:  # G(X,Y,Z) = XY v XZ v YZ
        a, b, c, d = d, _rotl((a + ((b & c) | (b & d) | (c & d)) + x[k] + _ROUND2) & _MASK, s), b, c
    for k, s in _R3:  # H(X,Y,Z) = X xor Y xor Z
        a, b, c, d = d, _rotl((a + (b ^ c ^ d) + x[k] + _ROUND3) & _MASK, s), b, c
    return (
        (state[0] + a) & _MASK,
        (state[1] + b) & _MASK,
        (state[2] + c) & _MASK,
        (state[3] + d) & _MASK,
    )


def md4(data: bytes) -> bytes:
    """The 16-octet MD4 digest of `data` (RFC 1320 §3)."""
    # §3.1-3.2: a 1 bit, zeros to 56 mod 64 octets, then the bit length, little-endian.
    padded = (
        data
        + b"\x80"
        + bytes((55 - len(data)) % 64)
        + struct.pack("<Q", (len(data) * 8) & 0xFFFFFFFFFFFFFFFF)
    )
    state = _INIT
    for offset in range(0, len(padded), 64):
        state = _compress(state, padded[offset : offset + 64])
    return struct.pack("<4I", *state)


__all__ = ["md4"]
