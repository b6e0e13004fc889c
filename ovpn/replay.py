"""The data channel's replay window: a sliding bitmap over 32-bit packet ids.

`check` runs before decryption, `commit` only after the AEAD tag verified, so a
forged packet never moves the window (the same split as `esp/replay.py`).
"""

from __future__ import annotations


class ReplayWindow:
    """Bit i of the bitmap stands for packet id ``highest - i``; id 0 is never sent."""

    __slots__ = ("_bitmap", "_highest", "size")

    def __init__(self, size: int = 256) -> None:
        if size < 1:
            raise ValueError("replay window size must be positive")
        self.size = size
        self._highest = 0
        self._bitmap = 1

    @property
    def highest(self) -> int:
        return self._highest

    def check(self, packet_id: int) -> bool:
        """True if `packet_id` is new and inside (or ahead of) the window."""
        if packet_id > self._highest:
            return True
        offset = self._highest - packet_id
        if offset >= self.size:
            return False
        return not (self._bitmap >> offset) & 1

    def commit(self, packet_id: int) -> None:
        """Record an authenticated packet id (call only after `check` said yes)."""
        if packet_id > self._highest:
            shift = packet_id - self._highest
            # A jump past the window clears it (and never builds a huge integer).
            bitmap = self._bitmap << shift if shift < self.size else 0
            self._bitmap = (bitmap | 1) & ((1 << self.size) - 1)
            self._highest = packet_id
        else:
            self._bitmap |= 1 << (self._highest - packet_id)
