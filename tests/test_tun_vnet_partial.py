"""Partial TCP checksums between two lockgates: `tun.vnet.split_frame_partial` and
`partial_csum_header`.

A kernel TCP super-packet is cut without a pass over its payload: each segment
carries its pseudo-header sum, and the receiving side writes it with F_NEEDS_CSUM so
its kernel finishes it. Whatever did not come from a kernel super-packet keeps the
checksum it came with and is never marked partial.
"""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from tun.vnet import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    PLAIN_HEADER,
    VnetError,
    VnetHeader,
    partial_csum_header,
    segment_tcp,
    split_frame,
    split_frame_partial,
)


def tcp_packet(payload: bytes, *, v6: bool = False, flags: str = "PA") -> bytes:
    ip = (
        IPv6(src="2001:db8:a::10", dst="2001:db8:b::10")
        if v6
        else IP(src="192.0.2.10", dst="203.0.113.10", id=99, flags="DF")
    )
    options = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    return bytes(ip / TCP(sport=40000, dport=5201, seq=7, ack=9, flags=flags, options=options)
                 / Raw(payload))  # fmt: skip


def kernel_frame(packet: bytes, mss: int, *, flags: int = F_NEEDS_CSUM, start: int = -1) -> bytes:
    """A TSO frame as the kernel hands it over: the checksum field holds junk here,
    since neither path may read it."""
    ip_len = 40 if packet[0] >> 4 == 6 else 20
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    gso = GSO_TCPV6 if ip_len == 40 else GSO_TCPV4
    body = bytearray(packet)
    body[ip_len + 16 : ip_len + 18] = b"\xab\xcd"
    csum_start = ip_len if start < 0 else start
    return VnetHeader(flags, gso, ip_len + tcp_len, mss, csum_start, 16).encode() + bytes(body)


def scapy_valid(packet: bytes) -> bool:
    pkt = IPv6(packet) if packet[0] >> 4 == 6 else IP(packet)
    ours = pkt[TCP].chksum
    del pkt[TCP].chksum
    again = IPv6(bytes(pkt)) if packet[0] >> 4 == 6 else IP(bytes(pkt))
    return bool(ours == again[TCP].chksum)


def pseudo_header_sum(segment: bytes) -> int:
    """Folded, not complemented: RFC 9293 §3.1 / RFC 8200 §8.1 pseudo-header."""
    v6 = segment[0] >> 4 == 6
    ip_len = 40 if v6 else 20
    addresses = segment[8:40] if v6 else segment[12:20]
    total = 6 + len(segment) - ip_len
    for i in range(0, len(addresses), 2):
        total += int.from_bytes(addresses[i : i + 2], "big")
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("size", [1, 1399, 1400, 1401, 5000, 64000])
def test_partial_segments_finish_into_exactly_the_full_ones(v6: bool, size: int) -> None:
    packet = tcp_packet(os.urandom(size), v6=v6)
    segments, partial = split_frame_partial(kernel_frame(packet, 1400))
    assert partial
    full = segment_tcp(packet, 1400)
    assert len(segments) == len(full)
    ip_len = 40 if v6 else 20
    for segment, expected in zip(segments, full, strict=True):
        # Everything but the TCP checksum is already final.
        assert segment[: ip_len + 16] == expected[: ip_len + 16]
        assert segment[ip_len + 18 :] == expected[ip_len + 18 :]
        field = int.from_bytes(segment[ip_len + 16 : ip_len + 18], "big")
        assert field % 0xFFFF == pseudo_header_sum(segment) % 0xFFFF
        # What the receiving kernel does with F_NEEDS_CSUM (split_frame completes a
        # partial checksum the same way, and is checked against scapy elsewhere).
        (finished,) = split_frame(partial_csum_header(segment) + segment)
        assert finished == expected
        assert scapy_valid(finished)


def test_a_finished_packet_keeps_its_own_checksum_even_a_wrong_one() -> None:
    packet = bytearray(tcp_packet(b"payload" * 100))
    packet[20 + 16] ^= 0xFF  # a corrupt checksum, as a broken sender would send it
    packets, partial = split_frame_partial(PLAIN_HEADER + bytes(packet))
    assert not partial
    assert packets == [bytes(packet)]
    assert not scapy_valid(packets[0])


@pytest.mark.parametrize("v6", [False, True])
def test_a_single_kernel_segment_goes_on_partial_as_it_came(v6: bool) -> None:
    # Not a super-packet, but the kernel left its checksum partial just the same
    # (an ACK, the short end of a write): passed on untouched, for the peer to
    # complete; completed, it is what split_frame makes of it.
    packet = bytearray(tcp_packet(b"q" * 300, v6=v6))
    at = (40 if v6 else 20) + 16
    packet[at : at + 2] = pseudo_header_sum(bytes(packet)).to_bytes(2, "big")
    start = 40 if v6 else 20
    frame = VnetHeader(F_NEEDS_CSUM, GSO_NONE, 0, 0, start, 16).encode() + bytes(packet)
    packets, partial = split_frame_partial(frame)
    assert partial
    assert packets == [bytes(packet)]
    (full,) = split_frame(frame)
    assert scapy_valid(full)


def test_a_single_partial_udp_datagram_is_completed_here() -> None:
    datagram = bytes(IP(src="192.0.2.1", dst="203.0.113.1") / UDP(sport=1, dport=2) / Raw(b"u"))
    frame = VnetHeader(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6).encode() + datagram
    packets, partial = split_frame_partial(frame)
    assert not partial
    assert packets == split_frame(frame)


@pytest.mark.parametrize(
    ("flags", "start", "why"),
    [
        (F_DATA_VALID, -1, "a super-packet the kernel did not leave partial"),
        (F_NEEDS_CSUM, 21, "a checksum that is not TCP's"),
    ],
)
def test_other_super_packets_get_full_checksums(flags: int, start: int, why: str) -> None:
    packet = tcp_packet(os.urandom(4000))
    packets, partial = split_frame_partial(kernel_frame(packet, 1400, flags=flags, start=start))
    assert not partial, why
    assert packets == segment_tcp(packet, 1400)
    assert all(scapy_valid(p) for p in packets)


def test_partial_csum_header_points_at_the_tcp_checksum() -> None:
    v4, v6 = tcp_packet(b"a"), tcp_packet(b"a", v6=True)
    assert VnetHeader.decode(partial_csum_header(v4)) == VnetHeader(
        F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16
    )
    assert VnetHeader.decode(partial_csum_header(v6)).csum_start == 40


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (bytes(IP(src="192.0.2.1", dst="203.0.113.1") / UDP() / Raw(b"u")), "protocol 17"),
        (
            bytes(IP(src="192.0.2.1", dst="203.0.113.1", frag=8, proto=6) / Raw(b"x" * 40)),
            "fragment",
        ),
        (bytes(IP(src="192.0.2.1", dst="203.0.113.1", proto=6) / Raw(b"x" * 8)), "shorter"),
        (b"\x45" + bytes(10), "not an IPv4/IPv6"),
    ],
)
def test_partial_csum_header_refuses_what_is_not_a_whole_tcp_segment(
    packet: bytes, why: str
) -> None:
    with pytest.raises(VnetError, match=why):
        partial_csum_header(packet)
