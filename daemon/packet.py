"""Inner (plaintext) IP packet helpers for the data plane.

These read the few header fields the pump needs (version, addresses, protocol,
ports) straight out of the packet bytes, and build the ICMP errors a router sends
when a packet does not fit the tunnel. They never raise on malformed input: a packet
that cannot be read yields ``None`` and the caller counts the drop.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58
IPPROTO_SCTP: Final = 132
IPPROTO_ESP: Final = 50

# Protocols whose first four payload bytes are source and destination ports.
_PORT_PROTOCOLS: Final = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, 136})  # 136: UDP-Lite
_ICMP_PROTOCOLS: Final = frozenset({IPPROTO_ICMP, IPPROTO_ICMPV6})

IPV4_HEADER_LEN: Final = 20
IPV6_HEADER_LEN: Final = 40
IPV6_MIN_MTU: Final = 1280  # RFC 8200 §5
IPV4_MIN_MTU: Final = 68  # RFC 791

# A port value that no real port equals: a packet without readable ports (a non-first
# fragment, an unknown protocol) only matches selectors that cover every port.
OPAQUE_PORT: Final = -1

Flow = tuple[int, int, int, int, int, int]
"""(version, source, destination, protocol, source port, destination port).

Addresses are integers; ports are ``OPAQUE_PORT`` when the packet has none. For
ICMP the 16-bit value type<<8|code stands in for both ports (RFC 7296 §3.13.1)."""


def _ipv4_header_len(packet: bytes | bytearray | memoryview, n: int) -> int | None:
    """The header length (IHL * 4) of the IPv4 packet ``packet`` of ``n`` octets, or
    ``None`` if the packet is shorter than the header or the IHL is below five words
    (RFC 791 §3.1)."""
    if n < IPV4_HEADER_LEN:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_HEADER_LEN or n < ihl:
        return None
    return ihl


def flow_of(packet: bytes | bytearray | memoryview) -> Flow | None:
    """Read the flow fields of an IPv4 or IPv6 packet, or ``None`` if it is malformed."""
    n = len(packet)
    if n < 1:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = _ipv4_header_len(packet, n)
        if ihl is None:
            return None
        proto = packet[9]
        src = int.from_bytes(packet[12:16], "big")
        dst = int.from_bytes(packet[16:20], "big")
        # Only the first fragment carries the transport header (RFC 791).
        first_fragment = (packet[6] & 0x1F) == 0 and packet[7] == 0
        offset = ihl if first_fragment else -1
    elif version == 6:
        if n < IPV6_HEADER_LEN:
            return None
        proto = packet[6]
        src = int.from_bytes(packet[8:24], "big")
        dst = int.from_bytes(packet[24:40], "big")
        # Extension headers are not walked: ports then stay opaque (RFC 4301 §4.4.1.1).
        offset = IPV6_HEADER_LEN
    else:
        return None
    sport = dport = OPAQUE_PORT
    if offset >= 0:
        if proto in _PORT_PROTOCOLS and n >= offset + 4:
            sport = (packet[offset] << 8) | packet[offset + 1]
            dport = (packet[offset + 2] << 8) | packet[offset + 3]
        elif proto in _ICMP_PROTOCOLS and n >= offset + 2:
            sport = dport = (packet[offset] << 8) | packet[offset + 1]
    return (version, src, dst, proto, sport, dport)


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = 64) -> bytes:
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0, ttl, proto, 0, src, dst)
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header)


def too_big_reply(
    packet: bytes | bytearray | memoryview, mtu: int, source: bytes | None = None
) -> bytes | None:
    """The ICMP error that tells the sender of ``packet`` to use at most ``mtu`` bytes.

    IPv4: Destination Unreachable, "fragmentation needed and DF set" with the next-hop
    MTU (RFC 792, RFC 1191 §4). IPv6: Packet Too Big (RFC 4443 §3.2). ``source`` is the
    address the error comes from (the gateway's inner address); without it the
    original destination is used, which is what the sender's PMTU cache keys on.
    Returns ``None`` where RFC 1812 §4.3.2.7 forbids an error (ICMP errors, non-first
    fragments, packets we cannot read).
    """
    n = len(packet)
    if n < 1:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = _ipv4_header_len(packet, n)
        if ihl is None:
            return None
        if (packet[6] & 0x1F) or packet[7]:
            return None  # non-first fragment
        if packet[9] == IPPROTO_ICMP and n > ihl and packet[ihl] not in (0, 8, 13, 14):
            return None  # never an error about an ICMP error
        mtu = max(mtu, IPV4_MIN_MTU)
        quoted = bytes(packet[: ihl + 8])  # header + 64 bits of data (RFC 792)
        icmp = bytearray(struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quoted)
        struct.pack_into("!H", icmp, 2, checksum(icmp))
        src = source if source is not None else bytes(packet[16:20])
        return _ipv4_header(src, bytes(packet[12:16]), IPPROTO_ICMP, len(icmp)) + bytes(icmp)
    if version == 6:
        if n < IPV6_HEADER_LEN:
            return None
        if packet[6] == IPPROTO_ICMPV6 and n > IPV6_HEADER_LEN and packet[40] < 128:
            return None  # ICMPv6 error messages have types below 128 (RFC 4443 §2.1)
        mtu = max(mtu, IPV6_MIN_MTU)
        # As much of the invoking packet as fits in the minimum MTU (RFC 4443 §3.2).
        quoted = bytes(packet[: IPV6_MIN_MTU - IPV6_HEADER_LEN - 8])
        src = source if source is not None else bytes(packet[24:40])
        dst = bytes(packet[8:24])
        icmp = bytearray(struct.pack("!BBHI", 2, 0, 0, mtu) + quoted)
        pseudo = src + dst + struct.pack("!I3xB", len(icmp), IPPROTO_ICMPV6)
        struct.pack_into("!H", icmp, 2, checksum(pseudo + icmp))
        header = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), IPPROTO_ICMPV6, 64, src, dst)
        return header + bytes(icmp)
    return None


def may_fragment(packet: bytes | bytearray | memoryview) -> bool:
    """True for an IPv4 packet without the Don't Fragment bit (RFC 791)."""
    return len(packet) >= IPV4_HEADER_LEN and packet[0] >> 4 == 4 and not packet[6] & 0x40


def fragment_ipv4(packet: bytes | bytearray | memoryview, mtu: int) -> list[bytes] | None:
    """Split an IPv4 packet into fragments of at most ``mtu`` bytes (RFC 791 §3.2).

    Used for inner packets without DF that do not fit the tunnel, so the ESP packet
    never exceeds the path MTU. Options are copied only into the first fragment (a
    simplification RFC 791 allows for options without the copy flag; such options
    are rare enough that we drop them from later fragments). Returns ``None`` if the
    packet is malformed or the MTU leaves no room for data.
    """
    n = len(packet)
    if n < IPV4_HEADER_LEN:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = (packet[2] << 8) | packet[3]
    if ihl < IPV4_HEADER_LEN or total < ihl or total > n:
        return None
    chunk = (mtu - IPV4_HEADER_LEN) & ~7
    if chunk <= 0:
        return None
    base_offset = ((packet[6] & 0x1F) << 8) | packet[7]
    more_after = bool(packet[6] & 0x20)
    data = bytes(packet[ihl:total])
    first_header = bytes(packet[:ihl])
    plain_header = bytearray(packet[:IPV4_HEADER_LEN])
    plain_header[0] = 0x45
    fragments = []
    pos = 0
    first_chunk = (mtu - ihl) & ~7
    if first_chunk <= 0:
        return None
    while pos < len(data):
        header = bytearray(first_header if pos == 0 else plain_header)
        size = first_chunk if pos == 0 else chunk
        piece = data[pos : pos + size]
        last = pos + len(piece) >= len(data)
        offset = base_offset + pos // 8
        flags = 0 if last and not more_after else 0x2000
        struct.pack_into("!H", header, 2, len(header) + len(piece))
        struct.pack_into("!H", header, 6, flags | offset)
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, checksum(header))
        fragments.append(bytes(header) + piece)
        pos += len(piece)
    return fragments


def address_bytes(address: str) -> bytes:
    """The packed form of an IPv4 or IPv6 address string."""
    return ipaddress.ip_address(address).packed
