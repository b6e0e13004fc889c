"""EspSA behaviour the oracle cannot check: padding, next header, replay, lifetimes,
sequence exhaustion, and robustness against arbitrary input."""

from __future__ import annotations

import hashlib
import hmac
import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esp.drops import DropReason
from esp.errors import EspConfigError
from esp.replay import ReplayWindow
from esp.sa import (
    FAST_MAX_INNER,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_NONE,
    PARTS_PER_PACKET,
    EspSA,
    Lifetime,
    LifetimeState,
)
from esp.suites import SUITES, EspSuite, suite_by_name

SPI = 0x11223344
GCM = suite_by_name("aes128gcm16")
CBC = suite_by_name("aes128-sha256")

IPV4 = bytes.fromhex("45000054000040004001") + bytes(74)  # an 84-octet IPv4 packet
IPV6 = bytes.fromhex("6000000000083a40") + bytes(40)  # a 48-octet IPv6 packet


def keys(suite: EspSuite, seed: int = 0) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    return rng.randbytes(suite.encr_key_len), rng.randbytes(suite.integ_key_len)


def pair(suite: EspSuite, **kwargs: object) -> tuple[EspSA, EspSA]:
    """An outbound and an inbound SA sharing keys, as the two ends of one SA."""
    encr, integ = keys(suite)
    first = kwargs.pop("first_seq", 1)
    out = EspSA(SPI, suite, encr, integ, first_seq=first, **kwargs)  # type: ignore[arg-type]
    inbound = EspSA(SPI, suite, encr, integ, **kwargs)  # type: ignore[arg-type]
    return out, inbound


def seal(suite: EspSuite, seq: int, plaintext: bytes, seed: int = 0) -> bytes:
    """Our own minimal ESP sealer (RFC 4106 / RFC 3602 + RFC 4868), so a test can
    send any trailer, valid or not, under a valid ICV. 32-bit sequence numbers."""
    encr, integ = keys(suite, seed)
    header = struct.pack("!II", SPI, seq)
    if suite.is_aead:
        iv = bytes(range(8))
        aead = AESGCM(encr[:-4]) if suite.name.startswith("aes") else ChaCha20Poly1305(encr[:-4])
        return header + iv + aead.encrypt(encr[-4:] + iv, plaintext, header)
    iv = bytes(range(16))
    enc = Cipher(algorithms.AES(encr), modes.CBC(iv)).encryptor()
    body = header + iv + enc.update(plaintext) + enc.finalize()
    digest = getattr(hashlib, suite.hash_name or "")
    return body + hmac.new(integ, body, digest).digest()[: suite.icv_len]


def trailer(inner: bytes, pad: bytes, next_header: int) -> bytes:
    return inner + pad + bytes((len(pad), next_header))


# ---- round trip and basics ------------------------------------------------------


@pytest.mark.parametrize("name", list(SUITES))
def test_round_trip_every_suite_v4_and_v6(name: str) -> None:
    out, inbound = pair(SUITES[name])
    for inner, nh in ((IPV4, IPPROTO_IPIP), (IPV6, IPPROTO_IPV6)):
        packet = out.encapsulate(inner)
        assert isinstance(packet, bytes)
        assert len(packet) == SUITES[name].esp_len(len(inner))
        assert inbound.decapsulate(packet) == (inner, nh)
    assert (out.packet_count, out.byte_count) == (2, len(IPV4) + len(IPV6))
    assert (inbound.packet_count, inbound.byte_count) == (2, len(IPV4) + len(IPV6))


def test_sequence_numbers_count_from_one_and_gcm_iv_is_unique() -> None:
    out, _ = pair(GCM)
    packets = out.encapsulate_batch([IPV4] * 3)
    seqs = [struct.unpack_from("!I", p, 4)[0] for p in packets if isinstance(p, bytes)]
    ivs = {p[8:16] for p in packets if isinstance(p, bytes)}
    assert seqs == [1, 2, 3]
    assert len(ivs) == 3
    assert out.next_seq == 4


@pytest.mark.parametrize("suite", [GCM, suite_by_name("chacha20poly1305")], ids=str)
def test_iv_is_spi_and_sequence_or_the_esn_sequence(suite: EspSuite) -> None:
    # RFC 4106 §3.1 / RFC 7634 §2: unique per key. 32-bit: SPI | Sequence (the
    # AAD's octets); ESN: the 64-bit sequence number, as the low half cycles.
    out, _ = pair(suite)
    for packet in [out.encapsulate(IPV4), *out.encapsulate_batch([IPV4, IPV6])]:
        assert isinstance(packet, bytes)
        assert packet[8:16] == packet[:8]
    esn_out, _ = pair(suite, esn=True, first_seq=(1 << 32) + 7)
    packet = esn_out.encapsulate(IPV4)
    assert isinstance(packet, bytes)
    assert packet[8:16] == ((1 << 32) + 7).to_bytes(8, "big")
    assert packet[4:8] == (7).to_bytes(4, "big")


def test_batch_equals_one_by_one() -> None:
    a, inbound_a = pair(GCM)
    b, inbound_b = pair(GCM)
    inners = [IPV4, IPV6, b"", IPV4]
    batch = a.encapsulate_batch(inners)
    single = [b.encapsulate(i) for i in inners]
    assert batch == single
    assert batch[2] is DropReason.BAD_INNER_PACKET
    wire = [p for p in batch if isinstance(p, bytes)]
    assert inbound_a.decapsulate_batch(wire) == [inbound_b.decapsulate(p) for p in wire]


def test_a_packet_longer_than_the_trailer_tables_is_sealed_by_the_careful_loop() -> None:
    # FAST_MAX_INNER bounds the fast path's trailer tables; a longer inner packet makes
    # it give up, and the careful loop seals the whole batch with the same octets.
    long_v4 = b"\x45" + bytes(FAST_MAX_INNER)  # one octet past the tables
    inners = [IPV4, long_v4, IPV6]
    a, inbound = pair(GCM)
    b, _ = pair(GCM)
    batch = a.encapsulate_batch(inners)
    assert batch == [b.encapsulate(i) for i in inners]
    c, _ = pair(GCM)
    assert packets_of(c.encapsulate_parts(inners)) == batch
    wire = [p for p in batch if isinstance(p, bytes)]
    assert [inbound.decapsulate(p) for p in wire] == [(IPV4, 4), (long_v4, 4), (IPV6, 41)]
    assert a.next_seq == c.next_seq == 4 and a.byte_count == sum(map(len, inners))


def test_not_an_ip_packet_is_refused_outbound() -> None:
    out, _ = pair(GCM)
    assert out.encapsulate(b"") is DropReason.BAD_INNER_PACKET
    assert out.encapsulate(b"\x50" + bytes(30)) is DropReason.BAD_INNER_PACKET
    assert out.drops[DropReason.BAD_INNER_PACKET] == 2
    assert out.next_seq == 1  # no sequence number was spent


def test_configuration_errors() -> None:
    encr, integ = keys(CBC)
    with pytest.raises(EspConfigError, match="encryption key"):
        EspSA(SPI, GCM, encr)
    with pytest.raises(EspConfigError, match="integrity key"):
        EspSA(SPI, CBC, encr, b"short")
    with pytest.raises(EspConfigError, match="SPI"):
        EspSA(255, CBC, encr, integ)
    with pytest.raises(EspConfigError):
        EspSA(SPI, CBC, encr, integ, first_seq=0)
    with pytest.raises(EspConfigError):
        EspSA(SPI, CBC, encr, integ, next_headers=frozenset({4, 59}))
    with pytest.raises(EspConfigError):
        Lifetime(hard_bytes=-1)


def test_repr_shows_no_key_material() -> None:
    encr, integ = keys(CBC)
    text = repr(EspSA(SPI, CBC, encr, integ))
    assert encr.hex() not in text and integ.hex() not in text
    assert "0x11223344" in text


# ---- padding and next header (RFC 4303 §2.4, §2.6) --------------------------------


@pytest.mark.parametrize("suite", [GCM, CBC], ids=lambda s: s.name)
def test_padding_is_checked(suite: EspSuite) -> None:
    _, inbound = pair(suite)
    inner = IPV4[:82]  # 82 + 2 = 84: aligned for 4; CBC needs 12 more
    base_pad = -(len(inner) + 2) % suite.align
    good = bytes(range(1, base_pad + 1))
    bad = bytes(range(1, base_pad)) + b"\x00" if base_pad else b""
    # A correct pad is accepted.
    assert inbound.decapsulate(seal(suite, 1, trailer(inner, good, 4))) == (
        inner,
        4,
    )
    if bad:
        assert inbound.decapsulate(seal(suite, 2, trailer(inner, bad, 4))) is (
            DropReason.BAD_PADDING
        )
    # More padding than needed is allowed (RFC 4303 §2.4, up to 255), if it is 1,2,3,...
    longer = bytes(range(1, base_pad + suite.align + 1))
    assert inbound.decapsulate(seal(suite, 3, trailer(inner, longer, 4))) == (
        inner,
        4,
    )
    wrong_values = bytes([2] * (base_pad + suite.align))
    assert inbound.decapsulate(seal(suite, 4, trailer(inner, wrong_values, 4))) is (
        DropReason.BAD_PADDING
    )


def test_pad_length_longer_than_payload_is_bad_padding() -> None:
    _, inbound = pair(GCM)
    assert inbound.decapsulate(seal(GCM, 1, b"\x01\x02" + bytes((200, 4)))) is (
        DropReason.BAD_PADDING
    )
    # The packet was authentic: its number is used up even though it was dropped.
    assert inbound.replay.highest == 1
    assert inbound.decapsulate(seal(GCM, 1, b"\x01\x02" + bytes((200, 4)))) is DropReason.REPLAY


def test_dummy_packet_is_dropped_with_its_own_reason() -> None:
    out, inbound = pair(GCM)
    dummy = out.encapsulate(b"", next_header=IPPROTO_NONE)
    assert isinstance(dummy, bytes)
    assert inbound.decapsulate(dummy) is DropReason.DUMMY_PACKET
    assert inbound.drops == {DropReason.DUMMY_PACKET: 1}
    assert inbound.packet_count == 0


@pytest.mark.parametrize(
    ("inner", "next_header"),
    [
        (IPV4, 17),  # transport-mode protocol on a tunnel SA
        (IPV6, IPPROTO_IPIP),  # says IPv4, carries IPv6
        (IPV4, IPPROTO_IPV6),  # says IPv6, carries IPv4
        (b"", IPPROTO_IPIP),  # says IPv4, carries nothing
    ],
)
def test_next_header_must_match_tunnel_mode(inner: bytes, next_header: int) -> None:
    _, inbound = pair(GCM)
    pad = bytes(range(1, -(len(inner) + 2) % 4 + 1))
    packet = seal(GCM, 1, trailer(inner, pad, next_header))
    assert inbound.decapsulate(packet) is DropReason.BAD_NEXT_HEADER


# ---- replay and integrity (RFC 4303 §3.4.3, §3.4.4) -------------------------------


@pytest.mark.parametrize("suite", [GCM, CBC, suite_by_name("chacha20poly1305")], ids=str)
def test_replay_and_forgery(suite: EspSuite) -> None:
    out, inbound = pair(suite, replay_window=64)
    packets = [out.encapsulate(IPV4) for _ in range(70)]
    wire = [p for p in packets if isinstance(p, bytes)]
    # Out of order inside the window is fine; the same packet twice is not.
    assert inbound.decapsulate(wire[5]) == (IPV4, 4)
    assert inbound.decapsulate(wire[2]) == (IPV4, 4)
    assert inbound.decapsulate(wire[2]) is DropReason.REPLAY
    # A forged packet far ahead must not move the window (RFC 4303 §3.4.3).
    forged = bytearray(wire[69])
    forged[-1] ^= 0x80
    assert inbound.decapsulate(bytes(forged)) is DropReason.ICV_FAILURE
    assert inbound.replay.highest == 6
    assert inbound.decapsulate(wire[3]) == (IPV4, 4)
    # The genuine one arrives; now 6 (64 + 1 behind 70) is left of the window.
    assert inbound.decapsulate(wire[69]) == (IPV4, 4)
    assert inbound.decapsulate(wire[4]) is DropReason.REPLAY
    assert inbound.decapsulate(wire[6]) == (IPV4, 4)
    assert inbound.drops == {
        DropReason.REPLAY: 2,
        DropReason.ICV_FAILURE: 1,
    }


def test_a_changed_sequence_number_fails_the_icv() -> None:
    out, inbound = pair(GCM)
    packet = out.encapsulate(IPV4)
    assert isinstance(packet, bytes)
    moved = packet[:4] + struct.pack("!I", 9) + packet[8:]
    assert inbound.decapsulate(moved) is DropReason.ICV_FAILURE
    assert inbound.decapsulate(packet) == (IPV4, 4)


def test_wrong_spi_short_and_misaligned_packets() -> None:
    out, inbound = pair(CBC)
    packet = out.encapsulate(IPV4)
    assert isinstance(packet, bytes)
    assert inbound.decapsulate(b"\x00\x00\x00\x01" + packet[4:]) is DropReason.NO_SA
    assert inbound.decapsulate(packet[:20]) is DropReason.TOO_SHORT
    assert inbound.decapsulate(packet[:-1]) is DropReason.BAD_LENGTH
    assert inbound.decapsulate(packet) == (IPV4, 4)


@pytest.mark.parametrize("suite", [GCM, CBC], ids=str)
def test_esn_round_trip_across_the_low_wrap(suite: EspSuite) -> None:
    first = (1 << 32) - 2
    out, inbound = pair(suite, esn=True, first_seq=first)
    inbound.replay = ReplayWindow(1024, highest=first - 1)
    lows = []
    for _ in range(4):
        packet = out.encapsulate(IPV4)
        assert isinstance(packet, bytes)
        lows.append(struct.unpack_from("!I", packet, 4)[0])
        assert inbound.decapsulate(packet) == (IPV4, 4)
    # Only the low half is on the wire (RFC 4303 §2.2.1).
    assert lows == [(1 << 32) - 2, (1 << 32) - 1, 0, 1]
    assert inbound.replay.highest == (1 << 32) + 1


# ---- sequence exhaustion and lifetimes --------------------------------------------


def test_32_bit_counter_never_wraps() -> None:
    out, inbound = pair(GCM, first_seq=(1 << 32) - 2)
    inbound.replay = ReplayWindow(64, highest=(1 << 32) - 3)
    assert out.lifetime_state() is LifetimeState.SOFT  # past 15/16 of the space
    first, last = out.encapsulate(IPV4), out.encapsulate(IPV4)
    assert isinstance(first, bytes) and isinstance(last, bytes)
    assert struct.unpack_from("!I", last, 4)[0] == 0xFFFFFFFF
    assert out.encapsulate(IPV4) is DropReason.SEQ_EXHAUSTED
    assert out.encapsulate(IPV4) is DropReason.SEQ_EXHAUSTED
    assert out.seq_exhausted
    assert out.lifetime_state() is LifetimeState.HARD
    assert out.drops[DropReason.SEQ_EXHAUSTED] == 2
    assert out.packet_count == 2
    assert inbound.decapsulate(first) == (IPV4, 4)
    assert inbound.decapsulate(last) == (IPV4, 4)


def test_64_bit_counter_never_wraps() -> None:
    out, _ = pair(GCM, esn=True, first_seq=(1 << 64) - 1)
    assert isinstance(out.encapsulate(IPV4), bytes)
    assert out.encapsulate(IPV4) is DropReason.SEQ_EXHAUSTED
    assert out.lifetime_state() is LifetimeState.HARD


def test_esn_counter_goes_past_2_32() -> None:
    out, _ = pair(GCM, esn=True, first_seq=(1 << 32) - 1)
    assert isinstance(out.encapsulate(IPV4), bytes)
    assert isinstance(out.encapsulate(IPV4), bytes)
    assert out.next_seq == (1 << 32) + 1
    assert out.lifetime_state() is LifetimeState.OK


def test_packet_lifetime_soft_then_hard_outbound() -> None:
    out, _ = pair(GCM, lifetime=Lifetime(soft_packets=2, hard_packets=3))
    assert out.lifetime_state() is LifetimeState.OK
    out.encapsulate(IPV4)
    assert out.lifetime_state() is LifetimeState.OK
    out.encapsulate(IPV4)
    assert out.lifetime_state() is LifetimeState.SOFT
    assert isinstance(out.encapsulate(IPV4), bytes)
    assert out.lifetime_state() is LifetimeState.HARD
    assert out.encapsulate(IPV4) is DropReason.LIFETIME_EXPIRED
    assert out.packet_count == 3


def test_byte_lifetime_counts_inner_octets_both_ways() -> None:
    life = Lifetime(soft_bytes=100, hard_bytes=200)
    out, inbound = pair(GCM, lifetime=life)
    small = IPV4[:32]
    wire = [out.encapsulate(IPV4), out.encapsulate(IPV4)]
    assert out.byte_count == 168
    assert out.lifetime_state() is LifetimeState.SOFT
    # 168 + 84 would pass the hard limit: refused, nothing counted, no number spent.
    assert out.encapsulate(IPV4) is DropReason.LIFETIME_EXPIRED
    assert out.next_seq == 3
    wire.append(out.encapsulate(small))  # exactly 200
    assert out.lifetime_state() is LifetimeState.HARD
    assert out.encapsulate(small[:20]) is DropReason.LIFETIME_EXPIRED

    states = []
    for packet in wire:
        assert isinstance(packet, bytes)
        assert inbound.decapsulate(packet)[0] in (IPV4, small)  # type: ignore[index]
        states.append(inbound.lifetime_state())
    assert states == [LifetimeState.OK, LifetimeState.SOFT, LifetimeState.HARD]
    assert inbound.byte_count == 200
    late = EspSA(SPI, GCM, *keys(GCM), first_seq=4).encapsulate(small)
    assert isinstance(late, bytes)
    assert inbound.decapsulate(late) is DropReason.LIFETIME_EXPIRED


def test_inbound_hard_byte_limit_is_checked_once_the_inner_length_is_known() -> None:
    encr, integ = keys(GCM)
    out = EspSA(SPI, GCM, encr, integ)
    inbound = EspSA(SPI, GCM, encr, integ, lifetime=Lifetime(hard_bytes=100))
    wire = [out.encapsulate(IPV4[:n]) for n in (60, 60, 40, 20)]
    results = [inbound.decapsulate(p) for p in wire if isinstance(p, bytes)]
    assert (
        results
        == [
            (IPV4[:60], 4),
            DropReason.LIFETIME_EXPIRED,  # 60 + 60 > 100
            (IPV4[:40], 4),  # 60 + 40 == 100
            DropReason.LIFETIME_EXPIRED,  # at the limit: nothing more
        ]
    )
    assert inbound.byte_count == 100
    assert inbound.lifetime_state() is LifetimeState.HARD


# ---- robustness: any input gives a result, never an exception ----------------------

SUITE_NAMES = st.sampled_from(list(SUITES))


def ip_packets() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda version, rest: bytes([version << 4 | (rest[0] & 0xF if rest else 5)]) + rest[1:],
        st.sampled_from([4, 6]),
        st.binary(min_size=0, max_size=1500),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=SUITE_NAMES, esn=st.booleans(), inners=st.lists(ip_packets(), min_size=1, max_size=5))
def test_round_trip_random_packets(name: str, esn: bool, inners: list[bytes]) -> None:
    out, inbound = pair(SUITES[name], esn=esn)
    for inner in inners:
        packet = out.encapsulate(inner)
        assert isinstance(packet, bytes)
        assert len(packet) == SUITES[name].esp_len(len(inner))
        nh = IPPROTO_IPIP if inner[0] >> 4 == 4 else IPPROTO_IPV6
        assert inbound.decapsulate(packet) == (inner, nh)


@settings(max_examples=150, deadline=None)
@given(name=SUITE_NAMES, esn=st.booleans(), data=st.binary(max_size=200), keep_spi=st.booleans())
def test_random_bytes_give_a_drop_reason(name: str, esn: bool, data: bytes, keep_spi: bool) -> None:
    _, inbound = pair(SUITES[name], esn=esn)
    if keep_spi:
        data = struct.pack("!I", SPI) + data
    result = inbound.decapsulate(data)
    assert isinstance(result, DropReason)
    assert sum(inbound.drops.values()) == 1


@settings(max_examples=100, deadline=None)
@given(name=SUITE_NAMES, esn=st.booleans(), inner=ip_packets(), cut=st.integers(0, 2000))
def test_truncated_or_extended_packets_give_a_drop_reason(
    name: str, esn: bool, inner: bytes, cut: int
) -> None:
    out, inbound = pair(SUITES[name], esn=esn)
    packet = out.encapsulate(inner)
    assert isinstance(packet, bytes)
    cut %= len(packet)
    assert isinstance(inbound.decapsulate(packet[:cut]), DropReason)
    assert isinstance(inbound.decapsulate(packet + b"\x00"), DropReason)
    # Neither attempt burnt the genuine packet's number.
    assert inbound.decapsulate(packet)[0] == inner  # type: ignore[index]


@settings(max_examples=100, deadline=None)
@given(name=SUITE_NAMES, inner=ip_packets(), position=st.integers(0, 4000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(name: str, inner: bytes, position: int, bit: int) -> None:
    out, inbound = pair(SUITES[name])
    packet = out.encapsulate(inner)
    assert isinstance(packet, bytes)
    flipped = bytearray(packet)
    flipped[position % len(packet)] ^= 1 << bit
    result = inbound.decapsulate(bytes(flipped))
    where = position % len(packet)
    # Everything from the SPI to the ICV is authenticated; the SPI picks the SA,
    # and a sequence number flipped to 0 is refused before the ICV (never sent).
    if where < 4:
        assert result is DropReason.NO_SA
    elif where < 8 and struct.unpack_from("!I", flipped, 4)[0] == 0:
        assert result is DropReason.REPLAY
    else:
        assert result is DropReason.ICV_FAILURE


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["aes128gcm16", "chacha20poly1305", "aes256gcm16"]),
    esn=st.booleans(),
    inners=st.lists(st.one_of(ip_packets(), st.sampled_from([b"", b"\x50abc"])), max_size=12),
    hard_packets=st.one_of(st.none(), st.integers(0, 12)),
    hard_bytes=st.one_of(st.none(), st.integers(0, 6000)),
    near_end=st.booleans(),
)
def test_batch_is_the_same_as_one_by_one(
    name: str,
    esn: bool,
    inners: list[bytes],
    hard_packets: int | None,
    hard_bytes: int | None,
    near_end: bool,
) -> None:
    """The inlined AEAD batch loop against the one-packet path: same octets (the
    IV is the sequence number, so they are deterministic), counters and drops,
    including lifetimes and sequence exhaustion in the middle of a batch."""
    suite = SUITES[name]
    encr, integ = keys(suite)
    life = Lifetime(hard_packets=hard_packets, hard_bytes=hard_bytes)
    first = ((1 << 64) if esn else (1 << 32)) - 4 if near_end else 1
    batch_sa = EspSA(SPI, suite, encr, integ, esn=esn, lifetime=life, first_seq=first)
    single_sa = EspSA(SPI, suite, encr, integ, esn=esn, lifetime=life, first_seq=first)
    # Two batches, so the second starts from counters the first one stored.
    half = len(inners) // 2
    batched = batch_sa.encapsulate_batch(inners[:half]) + batch_sa.encapsulate_batch(inners[half:])
    assert batched == [single_sa.encapsulate(inner) for inner in inners]
    assert batch_sa.drops == single_sa.drops
    assert (batch_sa.next_seq, batch_sa.packet_count, batch_sa.byte_count) == (
        single_sa.next_seq,
        single_sa.packet_count,
        single_sa.byte_count,
    )
    assert batch_sa.lifetime_state() is single_sa.lifetime_state()


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["aes128gcm16", "chacha20poly1305", "aes128-sha256"]),
    esn=st.booleans(),
    inners=st.lists(st.one_of(ip_packets(), st.sampled_from([b"", b"\x50abc"])), max_size=12),
    hard_packets=st.one_of(st.none(), st.integers(0, 12)),
    near_end=st.booleans(),
)
def test_parts_join_to_the_packets_of_one_by_one(
    name: str, esn: bool, inners: list[bytes], hard_packets: int | None, near_end: bool
) -> None:
    """`encapsulate_parts` gives groups of parts that join to exactly the packets
    the one-packet path sends, refused packets without a group, and the same
    counters and drops; AEAD parts are SPI | Sequence, IV, ciphertext + ICV."""
    suite = SUITES[name]
    encr, integ = keys(suite)
    life = Lifetime(hard_packets=hard_packets)
    first = ((1 << 64) if esn else (1 << 32)) - 4 if near_end else 1
    parts_sa = EspSA(SPI, suite, encr, integ, esn=esn, lifetime=life, first_seq=first)
    single_sa = EspSA(SPI, suite, encr, integ, esn=esn, lifetime=life, first_seq=first)
    half = len(inners) // 2
    parts = parts_sa.encapsulate_parts(inners[:half]) + parts_sa.encapsulate_parts(inners[half:])
    assert len(parts) % PARTS_PER_PACKET == 0
    joined = packets_of(parts)
    singles = [
        p for p in (single_sa.encapsulate(inner) for inner in inners) if isinstance(p, bytes)
    ]
    if suite.is_aead:
        # The IV is the sequence number: the octets are deterministic.
        assert joined == singles
        assert all(len(h) == 8 for h in parts[0::3]) and all(len(iv) == 8 for iv in parts[1::3])
    else:
        # A random CBC IV per packet: compare what the packets carry.
        inbound = EspSA(SPI, suite, encr, integ, esn=esn, first_seq=first)
        inbound.replay = ReplayWindow(64, highest=first - 1)
        assert [inbound.decapsulate(p) for p in joined] == [
            (i, 4 if i[0] >> 4 == 4 else 41) for i in inners if i and i[0] >> 4 in (4, 6)
        ][: len(joined)]
        assert len(joined) == len(singles)
    assert parts_sa.drops == single_sa.drops
    assert (parts_sa.next_seq, parts_sa.packet_count, parts_sa.byte_count) == (
        single_sa.next_seq,
        single_sa.packet_count,
        single_sa.byte_count,
    )


def packets_of(parts: list[bytes]) -> list[bytes]:
    """The whole packets in `encapsulate_parts` output."""
    return [
        b"".join(parts[i : i + PARTS_PER_PACKET]) for i in range(0, len(parts), PARTS_PER_PACKET)
    ]


def test_parts_stop_at_a_non_ip_packet_without_a_half_group() -> None:
    # The fast loop raises on the non-IP packet; the careful loop finishes the batch.
    out, inbound = pair(GCM)
    parts = out.encapsulate_parts([IPV4, b"\x50abc", IPV6])
    assert len(parts) == 2 * PARTS_PER_PACKET
    assert [inbound.decapsulate(p) for p in packets_of(parts)] == [
        (IPV4, 4),
        (IPV6, 41),
    ]
    assert out.drops[DropReason.BAD_INNER_PACKET] == 1
    assert out.next_seq == 3


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["aes128gcm16", "chacha20poly1305", "aes128-sha256"]),
    esn=st.booleans(),
    plan=st.lists(
        st.tuples(
            st.integers(0, 11),
            st.sampled_from(["as-is", "flip", "cut", "dummy", "spi", "junk"]),
        ),
        max_size=16,
    ),
    hard_packets=st.one_of(st.none(), st.integers(0, 10)),
    hard_bytes=st.one_of(st.none(), st.integers(0, 3000)),
)
def test_decapsulate_batch_is_the_same_as_one_by_one(
    name: str,
    esn: bool,
    plan: list[tuple[int, str]],
    hard_packets: int | None,
    hard_bytes: int | None,
) -> None:
    """The inlined inbound loop against the one-packet path, on a stream of good,
    replayed (repeated indices), reordered, forged, truncated, dummy and foreign
    packets: same results, drops, counters and window."""
    suite = SUITES[name]
    encr, integ = keys(suite)
    first = (1 << 32) - 6 if esn else 1
    out = EspSA(SPI, suite, encr, integ, esn=esn, first_seq=first)
    rng = random.Random(len(plan))
    good = []
    for i in range(12):
        inner = (IPV4 if i % 2 else IPV6)[: 20 + rng.randrange(40)]
        packet = out.encapsulate(b"" if i == 11 else inner, None if i != 11 else IPPROTO_NONE)
        assert isinstance(packet, bytes)
        good.append(packet)
    stream = []
    for index, how in plan:
        packet = good[index]
        if how == "flip":
            packet = packet[:-1] + bytes([packet[-1] ^ 1])
        elif how == "cut":
            packet = packet[: rng.randrange(len(packet))]
        elif how == "dummy":
            packet = good[11]
        elif how == "spi":
            packet = b"\x00\x00\x01\x00" + packet[4:]
        elif how == "junk":
            packet = rng.randbytes(rng.randrange(80))
        stream.append(packet)
    life = Lifetime(hard_packets=hard_packets, hard_bytes=hard_bytes)
    batch_sa = EspSA(SPI, suite, encr, integ, esn=esn, lifetime=life)
    single_sa = EspSA(SPI, suite, encr, integ, esn=esn, lifetime=life)
    for sa in (batch_sa, single_sa):
        sa.replay = ReplayWindow(64, highest=first - 1)
    half = len(stream) // 2
    batched = batch_sa.decapsulate_batch(stream[:half]) + batch_sa.decapsulate_batch(stream[half:])
    assert batched == [single_sa.decapsulate(p) for p in stream]
    assert batch_sa.drops == single_sa.drops
    assert (batch_sa.packet_count, batch_sa.byte_count, batch_sa.replay.highest) == (
        single_sa.packet_count,
        single_sa.byte_count,
        single_sa.replay.highest,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["aes128gcm16", "chacha20poly1305"]),
    window=st.sampled_from([0, 4, 64]),
    plan=st.lists(
        st.sampled_from(["next", "next", "next", "skip", "back", "again", "flip", "v6-as-v4"]),
        max_size=36,
    ),
    cut=st.integers(0, 36),
)
def test_decapsulate_batch_leaves_the_same_window(
    name: str, window: int, plan: list[str], cut: int
) -> None:
    """Runs of consecutive numbers, gaps, reordering, replays, forgeries and a
    Next Header that does not match the inner version: the batch call gives the
    one-packet results and leaves a window that answers every check alike."""
    suite = SUITES[name]
    encr, integ = keys(suite)
    out = EspSA(SPI, suite, encr, integ)
    good = []
    for i in range(80):
        packet = out.encapsulate(IPV4 if i % 3 else IPV6)
        assert isinstance(packet, bytes)
        good.append(packet)
    # An IPv6 packet sealed with Next Header 4: authentic, refused after decryption.
    mismatched = out.encapsulate(IPV6, IPPROTO_IPIP)
    assert isinstance(mismatched, bytes)
    stream = []
    position = 0  # the next packet in order
    for how in plan:
        if how == "skip":
            position += 2
        if how in ("next", "skip"):
            stream.append(good[position])
            position += 1
        elif how == "back":
            stream.append(good[max(0, position - 3)])
        elif how == "again":
            stream.append(good[max(0, position - 1)])
        elif how == "flip":
            packet = good[position]
            stream.append(packet[:-1] + bytes([packet[-1] ^ 1]))
        else:
            stream.append(mismatched)
    batch_sa = EspSA(SPI, suite, encr, integ, replay_window=window)
    single_sa = EspSA(SPI, suite, encr, integ, replay_window=window)
    batched = batch_sa.decapsulate_batch(stream[:cut]) + batch_sa.decapsulate_batch(stream[cut:])
    assert batched == [single_sa.decapsulate(p) for p in stream]
    assert batch_sa.drops == single_sa.drops
    assert (batch_sa.packet_count, batch_sa.byte_count) == (
        single_sa.packet_count,
        single_sa.byte_count,
    )
    assert batch_sa.replay.highest == single_sa.replay.highest
    for seq in range(0, 85):
        assert batch_sa.replay.check(seq) == single_sa.replay.check(seq), seq


@pytest.mark.parametrize("name", list(SUITES))
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("buffer", [bytes, bytearray, memoryview])
def test_decapsulate_takes_any_buffer(name: str, esn: bool, buffer: type) -> None:
    # A receive path may hand over a bytearray or a memoryview (recv_into).
    out, inbound = pair(SUITES[name], esn=esn)
    packet = out.encapsulate(IPV4)
    assert isinstance(packet, bytes)
    batch_sa = pair(SUITES[name], esn=esn)[1]
    assert inbound.decapsulate(buffer(packet)) == (IPV4, IPPROTO_IPIP)
    assert batch_sa.decapsulate_batch([buffer(packet)]) == [(IPV4, IPPROTO_IPIP)]
    assert isinstance(inbound.decapsulate(buffer(packet[:-3])), DropReason)


def test_mirror_takes_a_workers_counters_and_never_goes_back() -> None:
    suite = suite_by_name("aes128gcm16")
    out, _ = pair(suite, lifetime=Lifetime(soft_packets=90, hard_packets=100))
    out.mirror(packets=95, octets=95 * 1400, next_seq=96)
    assert (out.packet_count, out.byte_count, out.next_seq) == (95, 95 * 1400, 96)
    assert out.lifetime_state() is LifetimeState.SOFT
    out.mirror(packets=10, octets=10, next_seq=11)  # an older report
    assert (out.packet_count, out.byte_count, out.next_seq) == (95, 95 * 1400, 96)
    out.mirror(packets=100, octets=100 * 1400, next_seq=101)
    assert out.lifetime_state() is LifetimeState.HARD
