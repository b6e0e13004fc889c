"""The ESP engine's mark for TCP segments with a partial checksum (`NH_PARTIAL_CSUM`).

A sender seals the segments cut from a kernel super-packet with that Next Header; a
receiver whose IKE SA agreed on it (`EspSA.partial_csum`) gets them back with it, and
everything else as before. The mark sits in the ESP trailer, under the ICV.
"""

from __future__ import annotations

import random

import pytest

from esp.drops import DropReason
from esp.sa import IPPROTO_IPIP, IPPROTO_IPV6, NH_PARTIAL_CSUM, PARTS_PER_PACKET, EspSA
from esp.suites import EspSuite, suite_by_name
from testkit.dataplane import tcp_super_frame
from tun.vnet import split_frame_partial

SPI = 0x0BADCAFE
GCM = suite_by_name("aes128gcm16")
CBC = suite_by_name("aes128-sha256")


def pair(suite: EspSuite, *, agreed: bool, esn: bool = False) -> tuple[EspSA, EspSA]:
    rng = random.Random(7)
    encr, integ = rng.randbytes(suite.encr_key_len), rng.randbytes(suite.integ_key_len)
    out = EspSA(SPI, suite, encr, integ, esn=esn)
    inbound = EspSA(SPI, suite, encr, integ, esn=esn)
    inbound.partial_csum = agreed
    return out, inbound


def packets_of(parts: list[bytes]) -> list[bytes]:
    return [b"".join(parts[i : i + PARTS_PER_PACKET]) for i in range(0, len(parts), 3)]


@pytest.mark.parametrize("suite", [GCM, CBC], ids=["gcm", "cbc"])
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_marked_segments_arrive_marked_and_full_ones_unmarked(
    suite: EspSuite, esn: bool, v6: bool
) -> None:
    segments, partial = split_frame_partial(tcp_super_frame(4321, v6=v6))
    assert partial and len(segments) == 5
    out, inbound = pair(suite, agreed=True, esn=esn)
    marked = packets_of(out.encapsulate_parts(segments, partial=True))
    plain = packets_of(out.encapsulate_parts(segments))
    opened = inbound.decapsulate_batch(marked + plain)
    nh = IPPROTO_IPV6 if v6 else IPPROTO_IPIP
    assert opened == [(s, NH_PARTIAL_CSUM) for s in segments] + [(s, nh) for s in segments]
    assert inbound.drops.total() == 0


@pytest.mark.parametrize("suite", [GCM, CBC], ids=["gcm", "cbc"])
def test_one_by_one_decapsulation_agrees_with_the_batch(suite: EspSuite) -> None:
    segments, _ = split_frame_partial(tcp_super_frame(2500))
    out, inbound = pair(suite, agreed=True)
    marked = packets_of(out.encapsulate_parts(segments, partial=True))
    assert [inbound.decapsulate(p) for p in marked] == [(s, NH_PARTIAL_CSUM) for s in segments]


@pytest.mark.parametrize("suite", [GCM, CBC], ids=["gcm", "cbc"])
def test_a_receiver_that_did_not_agree_drops_marked_packets(suite: EspSuite) -> None:
    segments, _ = split_frame_partial(tcp_super_frame(2500))
    out, inbound = pair(suite, agreed=False)
    marked = packets_of(out.encapsulate_parts(segments, partial=True))
    assert inbound.decapsulate_batch(marked) == [DropReason.BAD_NEXT_HEADER] * len(segments)
    assert inbound.packet_count == 0


@pytest.mark.parametrize("suite", [GCM, CBC], ids=["gcm", "cbc"])
def test_a_tampered_marked_packet_fails_the_icv(suite: EspSuite) -> None:
    segments, _ = split_frame_partial(tcp_super_frame(2500))
    out, inbound = pair(suite, agreed=True)
    marked = packets_of(out.encapsulate_parts(segments, partial=True))
    # Flip the last ciphertext octet before the ICV: the Next Header itself.
    victim = bytearray(marked[1])
    victim[-suite.icv_len - 1] ^= 0xFF
    opened = inbound.decapsulate_batch([marked[0], bytes(victim), marked[2]])
    assert opened[0] == (segments[0], NH_PARTIAL_CSUM)
    assert opened[1] is DropReason.ICV_FAILURE
    assert opened[2] == (segments[2], NH_PARTIAL_CSUM)


def test_a_marked_packet_must_still_hold_ip() -> None:
    out, inbound = pair(GCM, agreed=True)
    # The careful path seals whatever it is given with the mark; not IP inside:
    # the receiver refuses it as it refuses any unknown inner packet.
    sealed = out.encapsulate(b"\x10" + bytes(60), NH_PARTIAL_CSUM)
    assert isinstance(sealed, bytes)
    assert inbound.decapsulate_batch([sealed]) == [DropReason.BAD_NEXT_HEADER]


def test_the_sender_refuses_to_mark_what_is_not_ip() -> None:
    out, _ = pair(CBC, agreed=True)
    assert out.encapsulate_parts([b"\x10" + bytes(60)], partial=True) == []
    assert out.drops[DropReason.BAD_INNER_PACKET] == 1
