"""Anti-replay window (RFC 4303 §3.4.3, Appendix A) against a reference model."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from esp.errors import EspConfigError
from esp.replay import MAX_WINDOW, NoReplayCheck, ReplayWindow

LOW = 1 << 32


class ModelWindow:
    """The obvious definition: every number ever committed, and the highest."""

    def __init__(self, size: int, highest: int = 0) -> None:
        self.size = size
        self.highest = highest
        self.seen = {0, highest}

    def check(self, seq: int) -> bool:
        if seq > self.highest:
            return True
        if self.highest - seq >= self.size:
            return False
        return seq not in self.seen

    def commit(self, seq: int) -> None:
        self.seen.add(seq)
        self.highest = max(self.highest, seq)


# (window size, committed in order, candidate, expected check)
TABLE = [
    (64, [], 0, False),  # 0 is never a valid sequence number
    (64, [], 1, True),
    (64, [1], 1, False),
    (64, [1, 2, 3], 2, False),
    (64, [1, 3], 2, True),  # a hole inside the window
    (64, [100], 37, True),  # 100 - 37 = 63: the last slot of a 64 window
    (64, [100], 36, False),  # 64 behind: left of the window
    (64, [100], 101, True),
    (32, [5, 200], 170, True),
    (32, [5, 200], 168, False),
    (4096, [10_000], 10_000 - 4095, True),
    (4096, [10_000], 10_000 - 4096, False),
    (1024, [1, 5000, 3], 3, False),  # 3 was committed while left of the window
]


@pytest.mark.parametrize(("size", "committed", "candidate", "expected"), TABLE)
def test_window_table(size: int, committed: list[int], candidate: int, expected: bool) -> None:
    window = ReplayWindow(size)
    for seq in committed:
        window.commit(seq)
    assert window.check(candidate) is expected


def test_check_does_not_commit() -> None:
    window = ReplayWindow(64)
    assert window.check(7)
    assert window.check(7)
    assert window.highest == 0
    window.commit(7)
    assert not window.check(7)


def test_default_and_bounds() -> None:
    assert ReplayWindow().size == 1024
    assert ReplayWindow(4096).size == 4096
    with pytest.raises(EspConfigError):
        ReplayWindow(0)
    with pytest.raises(EspConfigError):
        ReplayWindow(1 << 20)
    with pytest.raises(EspConfigError):
        ReplayWindow(64, highest=1 << 64)


def test_beyond_64_bits_is_rejected() -> None:
    window = ReplayWindow(64, highest=(1 << 64) - 1)
    assert not window.check(1 << 64)


def test_no_replay_check_passes_every_number_and_tracks_the_highest() -> None:
    # A receiver may leave anti-replay off (RFC 4303 §3.4.3): replays pass `check`.
    window = NoReplayCheck()
    window.commit(7)
    assert window.check(7) and window.check(1) and window.check(8)
    window.commit(3)
    assert window.highest == 7
    assert not window.check(-1) and not window.check(1 << 64)


def test_no_replay_check_still_infers_the_esn_high_half() -> None:
    # ESN numbers still need their high half, inferred from the highest authenticated
    # number (RFC 4303 Appendix A2.2), over the widest window.
    window = NoReplayCheck(highest=(3 << 32) | (LOW - 2))
    assert window.size == MAX_WINDOW
    assert window.infer_seq(0) == 4 << 32
    assert window.infer_seq(LOW - 10) == (3 << 32) | (LOW - 10)
    window.commit(4 << 32)
    assert window.infer_seq(LOW - 1) == (3 << 32) | (LOW - 1)
    assert window.check((3 << 32) | (LOW - 2))  # a replay, and it passes
    assert window.infer_seq(5) == (4 << 32) | 5


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from([1, 2, 32, 64, 100, 1024, 4096]),
    ops=st.lists(st.tuples(st.integers(min_value=0, max_value=9000), st.booleans()), max_size=120),
)
def test_window_matches_model(size: int, ops: list[tuple[int, bool]]) -> None:
    window = ReplayWindow(size)
    model = ModelWindow(size)
    for seq, authentic in ops:
        verdict = window.check(seq)
        assert verdict == model.check(seq), (seq, model.highest)
        # A forged packet is checked but never committed (RFC 4303 §3.4.3).
        if verdict and authentic:
            window.commit(seq)
            model.commit(seq)
        assert window.highest == model.highest


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from([32, 64, 1024, 4096]),
    high=st.integers(min_value=0, max_value=(1 << 32) - 2),
    low=st.integers(min_value=0, max_value=LOW - 1),
    ahead=st.integers(min_value=0, max_value=LOW),
)
# The two edges of the range, in both cases of Appendix A2.2.
@example(size=64, high=3, low=1000, ahead=0)
@example(size=64, high=3, low=1000, ahead=LOW - 1)
@example(size=64, high=3, low=10, ahead=0)
@example(size=64, high=3, low=10, ahead=LOW - 1)
def test_esn_inference_recovers_numbers_in_range(
    size: int, high: int, low: int, ahead: int
) -> None:
    # RFC 4303 Appendix A2.2: with the window at T, any number from T - W + 1 up
    # to T + 2^32 - W is reconstructed exactly from its low 32 bits.
    top = (high << 32) | low
    window = ReplayWindow(size, highest=top)
    seq = top - size + 1 + ahead
    if seq < 1 or seq > top + LOW - size or seq >= 1 << 64:
        return
    assert window.infer_seq(seq & (LOW - 1)) == seq


def test_esn_inference_at_the_start_rejects_the_previous_block() -> None:
    # Window at 10: a low half near 2^32 would belong to block -1, which does not exist.
    window = ReplayWindow(64, highest=10)
    assert window.infer_seq(LOW - 5) == -1
    assert not window.check(-1)
    assert window.infer_seq(11) == 11


def test_esn_inference_across_the_wrap() -> None:
    window = ReplayWindow(64, highest=(3 << 32) | (LOW - 2))
    # Low half 0 is the next block; a recent low half stays in this block.
    assert window.infer_seq(0) == 4 << 32
    assert window.infer_seq(LOW - 10) == (3 << 32) | (LOW - 10)
    window.commit(4 << 32)
    # Case B: the window now spans the boundary; late packets of block 3 still map back.
    assert window.infer_seq(LOW - 1) == (3 << 32) | (LOW - 1)
    assert window.check((3 << 32) | (LOW - 1))
    assert not window.check((3 << 32) | (LOW - 2))  # committed as the start
    assert window.infer_seq(5) == (4 << 32) | 5


@settings(max_examples=100, deadline=None)
@given(
    size=st.sampled_from([32, 64, 1024]),
    start_block=st.integers(min_value=0, max_value=5),
    start_low=st.integers(min_value=LOW - 3000, max_value=LOW - 1),
    deltas=st.lists(st.integers(min_value=-1500, max_value=1500), min_size=1, max_size=80),
    forged=st.lists(st.booleans(), min_size=80, max_size=80),
)
def test_esn_receiver_matches_model_across_boundary(
    size: int, start_block: int, start_low: int, deltas: list[int], forged: list[bool]
) -> None:
    """A sender near a 2^32 boundary, reordering and replaying; the receiver sees only
    the low 32 bits. Whenever the true number is within the inference range the
    receiver's verdict equals the model's on the true 64-bit numbers."""
    start = (start_block << 32) | start_low
    window = ReplayWindow(size, highest=start)
    model = ModelWindow(size, highest=start)
    sent = start
    for i, delta in enumerate(deltas):
        seq = max(1, sent + delta)
        sent = max(sent, seq)
        inferred = window.infer_seq(seq & (LOW - 1))
        in_range = model.highest - size + 1 <= seq <= model.highest + LOW - size
        if not in_range:
            # Too old to place: the receiver may guess another block, whose ICV
            # would fail (RFC 4303 A2.2); it is never committed here.
            continue
        assert inferred == seq
        verdict = window.check(inferred)
        assert verdict == model.check(seq)
        if verdict and not forged[i]:
            window.commit(inferred)
            model.commit(seq)
        assert window.highest == model.highest


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from([1, 2, 32, 64, 100, 1024]),
    before=st.lists(st.integers(min_value=1, max_value=3000), max_size=20),
    gap=st.integers(min_value=1, max_value=2500),
    run=st.integers(min_value=1, max_value=1200),
)
def test_commit_run_is_each_commit_in_turn(
    size: int, before: list[int], gap: int, run: int
) -> None:
    window = ReplayWindow(size)
    model = ModelWindow(size)
    for seq in before:
        if window.check(seq):
            window.commit(seq)
            model.commit(seq)
    first = window.highest + gap
    window.commit_run(first, first + run - 1)
    for seq in range(first, first + run):
        model.commit(seq)
    assert window.highest == model.highest
    for seq in range(max(0, model.highest - size - 2), model.highest + 3):
        assert window.check(seq) == model.check(seq), seq


def test_no_replay_check_commit_run_tracks_the_highest() -> None:
    window = NoReplayCheck(highest=7)
    window.commit_run(9, 12)
    assert window.highest == 12
    assert window.check(10)  # no window: a replay passes
