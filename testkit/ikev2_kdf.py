"""The IKEv2 PRF and prf+ written out from RFC 7296 §2.13 with HMAC-SHA-384, for tests
that compute a key schedule a second time, without the production code."""

from __future__ import annotations

import hashlib
import hmac


def prf_sha384(key: bytes, data: bytes) -> bytes:
    """PRF_HMAC_SHA2_384 (RFC 4868)."""
    return hmac.new(key, data, hashlib.sha384).digest()


def prf_plus_sha384(key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 §2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    out, block, n = b"", b"", 1
    while len(out) < length:
        block = prf_sha384(key, block + seed + bytes([n]))
        out += block
        n += 1
    return out[:length]


__all__ = ["prf_plus_sha384", "prf_sha384"]
