"""Anti-replay window (RFC 4303 §3.4.3 and Appendix A), ESN aware.

The window works on full 64-bit sequence numbers; `infer_seq` rebuilds the
high half that ESN packets do not carry (RFC 4303 Appendix A2.2). `check` runs
before decryption and `commit` only after the ICV verified, so a forged packet
never moves the window (strongSwan libipsec: verify_seqno / set_authenticated_seqno).
"""

from __future__ import annotations

from esp.errors import EspConfigError

MAX_WINDOW = 65536
"""Largest window accepted; the bitmap is a Python int, so size costs little."""

_LOW_MASK = 0xFFFFFFFF


class ReplayWindow:
    """Sliding bitmap of the `size` sequence numbers at and below the highest seen.

    Bit i of the bitmap stands for sequence number ``highest - i``.
    """

    __slots__ = ("_bitmap", "_highest", "_mask", "size")

    def __init__(self, size: int = 1024, highest: int = 0) -> None:
        # RFC 4303 §3.4.3: at least 32 MUST be supported; smaller sizes are allowed
        # here so property tests can reach the window edges quickly.
        if not 1 <= size <= MAX_WINDOW:
            raise EspConfigError(f"replay window size {size} not in 1..{MAX_WINDOW}")
        if not 0 <= highest < 1 << 64:
            raise EspConfigError(f"replay window start {highest} is not a 64-bit number")
        self.size = size
        self._mask = (1 << size) - 1
        self._highest = highest
        # `highest` counts as seen; so does 0, which is never sent (RFC 4303 §3.3.3).
        self._bitmap = 1 | (1 << highest if highest < size else 0)

    @property
    def highest(self) -> int:
        """Highest authenticated sequence number so far (0 before the first)."""
        return self._highest

    def infer_seq(self, seq_low: int) -> int:
        """Full 64-bit sequence number for the low 32 bits of an ESN packet.

        RFC 4303 Appendix A2.2: pick the high half that puts `seq_low` inside or to
        the right of the window. Returns -1 when the number would fall before the
        start of the sequence space (it can only be a replay or garbage).
        """
        size = self.size
        top_high = self._highest >> 32
        top_low = self._highest & _LOW_MASK
        if top_low >= size - 1:
            # Case A: the window does not span a 2^32 boundary.
            if seq_low >= top_low - size + 1:
                return (top_high << 32) | seq_low
            return ((top_high + 1) << 32) | seq_low
        # Case B: the window spans the boundary below top_high.
        if seq_low >= (top_low - size + 1) & _LOW_MASK:
            if top_high == 0:
                return -1
            return ((top_high - 1) << 32) | seq_low
        return (top_high << 32) | seq_low

    def check(self, seq: int) -> bool:
        """True if `seq` is new: right of the window or an unseen slot in it."""
        highest = self._highest
        if seq > highest:
            return seq < 1 << 64
        offset = highest - seq
        if offset >= self.size or seq < 0:
            return False
        return not (self._bitmap >> offset) & 1

    def commit(self, seq: int) -> None:
        """Record `seq` as received; call only after its ICV verified."""
        highest = self._highest
        if seq > highest:
            shift = seq - highest
            if shift >= self.size:
                self._bitmap = 1
            else:
                self._bitmap = ((self._bitmap << shift) | 1) & self._mask
            self._highest = seq
        else:
            offset = highest - seq
            if offset < self.size:
                self._bitmap |= 1 << offset
