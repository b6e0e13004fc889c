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
_SEQ_LIMIT = 1 << 64


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
        offset = self._highest - seq
        if offset < 0:
            return seq < _SEQ_LIMIT
        # seq >= 0 also holds here unless the window is near 0; -1 (an ESN
        # number before the start) lands left of the window or on the 0 slot.
        return offset < self.size and seq >= 0 and not (self._bitmap >> offset) & 1

    def commit(self, seq: int) -> None:
        """Record `seq` as received; call only after its ICV verified."""
        shift = seq - self._highest
        if shift > 0:
            self._highest = seq
            # A jump past the whole window leaves only `seq` in it; a shorter one
            # slides the bitmap (shifting by a huge count would build a huge int).
            if shift < self.size:
                self._bitmap = ((self._bitmap << shift) | 1) & self._mask
            else:
                self._bitmap = 1
        elif -shift < self.size:
            self._bitmap |= 1 << -shift

    def commit_run(self, first: int, last: int) -> None:
        """Record `first` .. `last` as received, all right of the window
        (`highest` < `first` <= `last`): what `commit` of each in turn does, in
        one step. Call only after every one of their ICVs verified."""
        shift = last - self._highest
        self._highest = last
        run = last - first + 1
        if shift < self.size:
            # The run's bits, then the old bitmap moved past it (RFC 4303 §3.4.3).
            self._bitmap = ((self._bitmap << shift) | ((1 << run) - 1)) & self._mask
        else:
            self._bitmap = ((1 << min(run, self.size)) - 1) & self._mask


class NoReplayCheck(ReplayWindow):
    """A receiver that does not enable anti-replay (RFC 4303 §3.4.3 leaves that to the
    receiver; then no inbound check is made on the sequence number): every number
    passes `check`, so replayed packets that authenticate are delivered.

    It still keeps the highest authenticated number, because with ESN the high half
    of each sequence number is inferred from it (RFC 4303 Appendix A2.2) whether or
    not replays are checked; the inference spans `MAX_WINDOW` numbers.
    """

    __slots__ = ()

    def __init__(self, highest: int = 0) -> None:
        super().__init__(MAX_WINDOW, highest)

    def check(self, seq: int) -> bool:
        """True for any 64-bit number (-1, an ESN number before the start, is none)."""
        return 0 <= seq < _SEQ_LIMIT

    def commit(self, seq: int) -> None:
        """Track the highest number only: there is no bitmap to keep."""
        if seq > self._highest:
            self._highest = seq

    def commit_run(self, first: int, last: int) -> None:
        """Track the highest number only (`last`, right of the window)."""
        self._highest = last
