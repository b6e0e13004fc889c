"""The injected source of randomness: DH private keys, nonces, SPIs and IVs.

The IKE core never calls ``secrets`` itself; it is handed a :class:`RandomSource`, so
tests can make every exchange reproducible (STYLE.md §1).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Protocol


class RandomSource(Protocol):
    """Anything with ``token_bytes(n)``, like the :mod:`secrets` module."""

    def token_bytes(self, n: int) -> bytes:
        """``n`` random octets."""
        ...


class SystemRandom:
    """The operating system's CSPRNG (``secrets.token_bytes``); the production source."""

    def token_bytes(self, n: int) -> bytes:
        """``n`` octets from the OS CSPRNG."""
        return secrets.token_bytes(n)


class DeterministicRandom:
    """A reproducible stream for tests: SHAKE-256 of a seed and a counter.

    Never use it outside tests: anyone who knows the seed knows every key.
    """

    def __init__(self, seed: bytes | str) -> None:
        self._seed = seed.encode() if isinstance(seed, str) else seed
        self._counter = 0

    def token_bytes(self, n: int) -> bytes:
        """The next ``n`` octets of the stream."""
        self._counter += 1
        shake = hashlib.shake_256(self._seed + self._counter.to_bytes(8, "big"))
        return shake.digest(n) if n > 0 else b""
