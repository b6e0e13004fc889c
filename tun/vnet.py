"""The virtio-net header of a TUN opened with IFF_VNET_HDR, and the packet work it
makes possible: segmenting the TCP super-packets the kernel hands over (TSO), and
coalescing TCP segments into one super-packet for a single write (GRO-like).

Every read and write on such a TUN starts with `struct virtio_net_hdr` (10 octets,
host byte order, <linux/virtio_net.h>): what offload work is still to be done on the
packet that follows. Reading a super-packet and cutting it ourselves saves the kernel
one pass through its stack per segment; writing one super-packet for many received
segments saves the receiving stack the same (wireguard-go's `tun/offload_linux.go`
does both).

Checksums use the Internet checksum (RFC 1071): a one's-complement sum of 16-bit
words, which equals the octets read as one big-endian integer modulo 0xFFFF (2^16 is
1 modulo 0xFFFF), so Python's C big-integer code does the summing.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

VNET_HDR_LEN = 10
"""Octets of `struct virtio_net_hdr` before every packet."""

F_NEEDS_CSUM = 0x01
"""The checksum at csum_start + csum_offset still has to be completed."""
F_DATA_VALID = 0x02
"""The kernel already checked the checksum (receive side only)."""

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

_HEADER = struct.Struct("=BBHHHH")
PLAIN_HEADER = bytes(VNET_HDR_LEN)
"""The header of a packet that needs no offload work."""

_IPPROTO_TCP = 6
_IPPROTO_UDP = 17
_TCP_CSUM_OFFSET = 16
_UDP_CSUM_OFFSET = 6
# TCP flags (RFC 9293 §3.1).
_FIN, _SYN, _RST, _PSH, _ACK, _URG, _ECE, _CWR = 1, 2, 4, 8, 16, 32, 64, 128
_MAX_IP_PAYLOAD = 65535
MAX_COALESCED = 64
"""Most segments merged into one super-packet."""

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class VnetError(ValueError):
    """A frame from the TUN device that cannot be what its virtio-net header says."""


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """`struct virtio_net_hdr` (legacy layout, host byte order)."""

    flags: int = 0
    """F_NEEDS_CSUM and/or F_DATA_VALID."""
    gso_type: int = GSO_NONE
    """GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4 (optionally | GSO_ECN)."""
    hdr_len: int = 0
    """Octets of IP plus transport header (a hint)."""
    gso_size: int = 0
    """Payload octets per segment (the MSS) of a super-packet."""
    csum_start: int = 0
    """Where checksumming starts (the transport header)."""
    csum_offset: int = 0
    """Where, from csum_start, the checksum field is."""

    @classmethod
    def decode(cls, frame: bytes | memoryview) -> VnetHeader:
        if len(frame) < VNET_HDR_LEN:
            raise VnetError(f"frame of {len(frame)} octets has no virtio-net header")
        return cls(*_HEADER.unpack_from(frame))

    def encode(self) -> bytes:
        return _HEADER.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )


def ones_sum(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """One's-complement sum of ``data`` as 16-bit words, plus ``seed``, modulo 0xFFFF.

    An odd trailing octet counts as the high half of a last word (RFC 1071 §4.1).
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return (value + seed) % 0xFFFF


def checksum(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """The Internet checksum field for ``data`` (with its checksum field zero) and a
    pseudo-header sum ``seed``: never 0, so it is also right for UDP (RFC 768)."""
    return 0xFFFF - ones_sum(data, seed)


def pseudo_sum(packet: bytes | bytearray | memoryview, protocol: int, length: int) -> int:
    """Sum of the IPv4 or IPv6 pseudo-header (RFC 9293 §3.1, RFC 8200 §8.1)."""
    if packet[0] >> 4 == 4:
        addresses = int.from_bytes(packet[12:20], "big")
    else:
        addresses = int.from_bytes(packet[8:40], "big")
    return (addresses + protocol + length) % 0xFFFF


# ---- reading: what the kernel hands over --------------------------------------------


def split_frame(frame: bytes) -> list[bytes]:
    """The finished IP packets in one TUN read: the frame's packet with its checksum
    completed, or its TCP super-packet cut into segments of gso_size payload octets.

    Raises VnetError for a frame that contradicts its header (short, unknown GSO
    type, offsets outside the packet).
    """
    if len(frame) > VNET_HDR_LEN and not frame[0] & F_NEEDS_CSUM and frame[1] == GSO_NONE:
        return [frame[VNET_HDR_LEN:]]  # a finished packet: the common plain case
    header = VnetHeader.decode(frame)
    packet = frame[VNET_HDR_LEN:]
    gso = header.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if header.flags & F_NEEDS_CSUM:
            return [_complete_checksum(packet, header.csum_start, header.csum_offset)]
        return [packet]
    if gso in (GSO_TCPV4, GSO_TCPV6):
        return segment_tcp(packet, header.gso_size)
    if gso == GSO_UDP_L4:
        return segment_udp(packet, header.gso_size)
    raise VnetError(f"GSO type {header.gso_type} is not offered to the kernel")


def _complete_checksum(packet: bytes, start: int, offset: int) -> bytes:
    # The field holds the pseudo-header sum already; sum it with everything from
    # csum_start and store the complement (virtio spec §5.1.6.2).
    field = start + offset
    if start < 0 or field + 2 > len(packet):
        raise VnetError(f"checksum offsets {start}+{offset} outside a {len(packet)}-octet packet")
    value = checksum(memoryview(packet)[start:])
    return b"".join((packet[:field], _U16.pack(value), packet[field + 2 :]))


def _ip_layout(packet: bytes) -> tuple[int, int, int]:
    """(IP header length, transport protocol, IP version) of a plain packet."""
    if not packet:
        raise VnetError("empty packet")
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ip_len = (packet[0] & 0x0F) * 4
        if ip_len < 20:
            raise VnetError(f"IPv4 header length {ip_len}")
        return ip_len, packet[9], 4
    if version == 6 and len(packet) >= 40:
        return 40, packet[6], 6
    raise VnetError(f"not an IPv4/IPv6 packet (version {version}, {len(packet)} octets)")


def segment_tcp(packet: bytes, mss: int, *, partial: bool = False) -> list[bytes]:
    """Cut a TCP super-packet into segments of at most ``mss`` payload octets, each a
    valid IP packet with its own length, IPv4 ID and checksum, sequence number,
    TCP checksum; PSH and FIN stay on the last segment, CWR on the first only
    (as the kernel's own `tcp_gso_segment` does).

    With ``partial`` the TCP checksum field of each segment holds only its
    pseudo-header sum, as the kernel hands a CHECKSUM_PARTIAL packet over (virtio
    spec §5.1.6.2): no pass over the payload. Such segments are finished by whoever
    writes them with `partial_csum_header` (the receiving kernel); only
    `split_frame_partial` asks for them, for a kernel super-packet."""
    ip_len, protocol, version = _ip_layout(packet)
    if protocol != _IPPROTO_TCP:
        raise VnetError(f"TCP segmentation of protocol {protocol}")
    if len(packet) < ip_len + 20:
        raise VnetError("TCP super-packet shorter than its headers")
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    headers = ip_len + tcp_len
    if tcp_len < 20 or headers > len(packet) or mss <= 0:
        raise VnetError(f"bad TCP header length {tcp_len} or MSS {mss}")
    payload_len = len(packet) - headers
    if payload_len <= mss:
        # Nothing to cut, but the checksum may still be partial.
        if partial:
            return [_partial_tcp(packet, ip_len)]
        return [_finish_tcp(packet, ip_len)]
    # Every header field that changes per segment is kept out of the fixed parts;
    # their sums are added back per segment, so each segment costs one sum over its
    # payload (checksums are additive, RFC 1071 §2(B)).
    tcp = bytearray(packet[ip_len:headers])
    seq0 = _U32.unpack_from(tcp, 4)[0]
    flags = tcp[13]
    tcp[4:8] = b"\0\0\0\0"
    tcp[12:14] = b"\0\0"
    tcp[16:18] = b"\0\0"
    ports = bytes(tcp[0:4])
    ack = bytes(tcp[8:12])
    window = bytes(tcp[14:16])
    urgent_options = bytes(tcp[18:])
    doff = tcp_len << 10  # data offset in the high nibble of the flags word
    if version == 4:
        ip = bytearray(packet[:ip_len])
        ip_id = _U16.unpack_from(ip, 4)[0]
        ip[2:6] = b"\0\0\0\0"
        ip[10:12] = b"\0\0"
        ip_sum = ones_sum(ip)
        addresses = int.from_bytes(packet[12:20], "big")
        head = bytes(ip[0:2])
        middle = bytes(ip[6:10])
        tail = bytes(ip[12:])  # addresses and any options
    else:
        ip_id = ip_sum = 0
        addresses = int.from_bytes(packet[8:40], "big")
        head = packet[0:4]
        middle = packet[6:40]
        tail = b""
    tcp_sum = (ones_sum(tcp) + addresses + _IPPROTO_TCP + tcp_len) % 0xFFFF
    pack_v4 = _IPV4_SEGMENT.pack
    pack_v6 = _IPV6_SEGMENT.pack
    pack_tcp = _TCP_SEGMENT.pack
    middle_flags = flags & ~(_FIN | _PSH | _CWR)
    segments: list[bytes] = []
    append = segments.append
    last_start = headers + (payload_len - 1) // mss * mss
    for index, start in enumerate(range(headers, len(packet), mss)):
        chunk = packet[start : start + mss]
        size = len(chunk)
        seq = (seq0 + start - headers) & 0xFFFFFFFF
        if start == headers:
            word = doff | (flags & ~(_FIN | _PSH))
        elif start == last_start:
            word = doff | (flags & ~_CWR)
        else:
            word = doff | middle_flags
        if partial:
            # The pseudo-header sum alone (addresses, protocol, TCP length), not
            # complemented: what the completing side adds the segment to.
            field = (addresses + _IPPROTO_TCP + tcp_len + size) % 0xFFFF or 0xFFFF
        else:
            value = int.from_bytes(chunk, "big")
            if size & 1:
                value <<= 8
            total = (tcp_sum + size + (seq >> 16) + (seq & 0xFFFF) + word + value) % 0xFFFF
            field = 0xFFFF - total
        tcp_header = pack_tcp(ports, seq, ack, word, window, field) + urgent_options
        if version == 4:
            length = headers + size
            ident = (ip_id + index) & 0xFFFF
            ip_check = 0xFFFF - (ip_sum + length + ident) % 0xFFFF
            ip_header = pack_v4(head, length, ident, middle, ip_check) + tail
        else:
            ip_header = pack_v6(head, tcp_len + size, middle)
        append(b"".join((ip_header, tcp_header, chunk)))
    return segments


def segment_udp(packet: bytes, size: int) -> list[bytes]:
    """Cut a UDP super-packet (GSO_UDP_L4) into datagrams of ``size`` payload octets
    (the last may be shorter), each with its own lengths, IPv4 ID and checksums, as
    the kernel's `__udp_gso_segment` does. The data plane never asks the kernel for
    these (it writes them, `coalesce`); reading one is the rare, slow path."""
    ip_len, protocol, version = _ip_layout(packet)
    if protocol != _IPPROTO_UDP:
        raise VnetError(f"UDP segmentation of protocol {protocol}")
    headers = ip_len + 8
    if headers > len(packet) or size <= 0:
        raise VnetError(f"UDP super-packet of {len(packet)} octets, segment size {size}")
    ip = bytearray(packet[:ip_len])
    ports = packet[ip_len : ip_len + 4]
    ip_id = _U16.unpack_from(ip, 4)[0] if version == 4 else 0
    datagrams: list[bytes] = []
    for index, start in enumerate(range(headers, max(len(packet), headers + 1), size)):
        chunk = packet[start : start + size]
        udp_len = 8 + len(chunk)
        if version == 4:
            _U16.pack_into(ip, 2, ip_len + udp_len)
            _U16.pack_into(ip, 4, (ip_id + index) & 0xFFFF)
            ip[10:12] = b"\0\0"
            _U16.pack_into(ip, 10, checksum(ip))
        else:
            _U16.pack_into(ip, 4, udp_len)
        udp = ports + _U16.pack(udp_len) + b"\0\0"
        value = checksum(udp + chunk, pseudo_sum(ip, _IPPROTO_UDP, udp_len))
        datagrams.append(bytes(ip) + udp[:6] + _U16.pack(value) + chunk)
    return datagrams


# Segment headers with the changing fields separate (see `segment_tcp`); the TCP one
# stops before the urgent pointer, which travels with the options.
_IPV4_SEGMENT = struct.Struct("!2sHH4sH")
_IPV6_SEGMENT = struct.Struct("!4sH34s")
_TCP_SEGMENT = struct.Struct("!4sI4sH2sH")


def _finish_tcp(packet: bytes, ip_len: int) -> bytes:
    # A super-packet with one segment's worth of payload: its TCP checksum field
    # may hold only the pseudo-header part, so compute it in full.
    body = bytearray(packet[ip_len:])
    body[16:18] = b"\0\0"
    seed = pseudo_sum(packet, _IPPROTO_TCP, len(body))
    _U16.pack_into(body, 16, checksum(body, seed))
    return packet[:ip_len] + bytes(body)


def _partial_tcp(packet: bytes, ip_len: int) -> bytes:
    # One segment's worth: store the pseudo-header sum for its own length.
    length = len(packet) - ip_len
    field = pseudo_sum(packet, _IPPROTO_TCP, length) or 0xFFFF
    at = ip_len + _TCP_CSUM_OFFSET
    return b"".join((packet[:at], _U16.pack(field), packet[at + 2 :]))


def split_frame_partial(frame: bytes) -> tuple[list[bytes], bool]:
    """`split_frame` for a peer that completes TCP checksums itself: (packets, partial).

    Only TCP the kernel left unchecksummed (F_NEEDS_CSUM, the checksum where TCP's
    is) comes out with partial checksums, and then ``partial`` is True: a super-packet
    (GSO_TCPV4/GSO_TCPV6) cut into segments, or a single segment (an ACK, the short
    end of a write) as it came. Its payload was never checksummed by anyone, so
    leaving that to the receiving kernel adds no trust. Every other frame comes out
    as `split_frame` gives it, with its own checksum: a packet that arrived finished
    (forwarded, say) keeps the checksum its sender computed, right or wrong, and is
    never marked partial, so a corrupt one cannot be "repaired" downstream.
    """
    if len(frame) > VNET_HDR_LEN and frame[0] & F_NEEDS_CSUM:
        gso = frame[1] & ~GSO_ECN
        if gso in (GSO_TCPV4, GSO_TCPV6, GSO_NONE):
            header = VnetHeader.decode(frame)
            packet = frame[VNET_HDR_LEN:]
            ip_len, protocol, version = _ip_layout(packet)
            if (
                protocol == _IPPROTO_TCP
                and header.csum_start == ip_len
                and header.csum_offset == _TCP_CSUM_OFFSET
                and len(packet) >= ip_len + 20
            ):
                if gso != GSO_NONE:
                    return segment_tcp(packet, header.gso_size, partial=True), True
                # A single segment: its field already holds the kernel's pseudo-header
                # sum (virtio spec §5.1.6.2). Not a fragment (those are never partial).
                if version == 6 or not _U16.unpack_from(packet, 6)[0] & 0x3FFF:
                    return [packet], True
    return split_frame(frame), False


def partial_csum_header(packet: bytes | bytearray | memoryview) -> bytes:
    """The virtio-net header that writes ``packet``, a TCP segment carrying only its
    pseudo-header sum (`split_frame_partial`), with F_NEEDS_CSUM: the kernel (or the
    NIC) completes the checksum. Raises VnetError unless it is an unfragmented TCP
    packet whose TCP header lies inside it."""
    ip_len, protocol, version = _ip_layout(bytes(packet[:60]))
    if protocol != _IPPROTO_TCP:
        raise VnetError(f"partial checksum on protocol {protocol}")
    if version == 4 and _U16.unpack_from(packet, 6)[0] & 0x3FFF:
        raise VnetError("partial checksum on an IPv4 fragment")
    if len(packet) < ip_len + 20:
        raise VnetError("TCP segment shorter than its header")
    return _HEADER.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, ip_len, _TCP_CSUM_OFFSET)


def complete_partial_tcp(packet: bytes) -> bytes:
    """``packet``, a TCP segment carrying only its pseudo-header sum
    (`split_frame_partial`), with its checksum computed here: for a path that cannot
    leave it to a kernel (a peer without the agreement, a TUN without virtio-net
    headers). Raises VnetError unless it is a TCP packet long enough for its header."""
    ip_len, protocol, version = _ip_layout(packet)
    if protocol != _IPPROTO_TCP or len(packet) < ip_len + 20:
        raise VnetError(f"no TCP segment to complete (protocol {protocol})")
    if version == 4 and _U16.unpack_from(packet, 6)[0] & 0x3FFF:
        raise VnetError("no TCP segment to complete: an IPv4 fragment")
    return _complete_checksum(packet, ip_len, _TCP_CSUM_OFFSET)


def completed_tcp(packet: bytes) -> bytes:
    """`complete_partial_tcp`, or ``packet`` as it came when it is no TCP segment
    (`split_frame_partial` marks only TCP, so there is nothing to complete)."""
    try:
        return complete_partial_tcp(packet)
    except VnetError:
        return packet


def _partial_frame(packet: bytes) -> bytes:
    # A segment with a partial checksum, alone: F_NEEDS_CSUM asks the kernel to
    # finish it. One that cannot be marked goes as it is, as it would unmarked.
    try:
        return partial_csum_header(packet) + packet
    except VnetError:
        return PLAIN_HEADER + packet


def frame_packets(frame: bytes) -> int:
    """How many IP packets a frame we wrote stands for (a super-packet's segments)."""
    header = VnetHeader.decode(frame)
    if header.gso_type == GSO_NONE or header.gso_size == 0:
        return 1
    payload = len(frame) - VNET_HDR_LEN - header.hdr_len
    return max(1, -(-payload // header.gso_size))


# ---- writing: coalescing received segments ------------------------------------------


@dataclass(slots=True)
class _Group:
    """Segments (TCP) or datagrams (UDP) of one flow waiting to be written as one
    super-packet."""

    signature: bytes
    """What every merged packet must share besides the flow (see `coalesce`)."""
    first: bytes
    ip_len: int
    l4_len: int
    """Octets of the TCP header (options included), or 8 for UDP."""
    mss: int
    """Payload octets of the first packet: every one but the last has as many."""
    next_seq: int
    """TCP: the sequence number the next segment must have (UDP: unused)."""
    total: int
    """IP packet length of the super-packet so far."""
    payloads: list[bytes]
    psh: bool = False
    flow: bytes = b""
    """Addresses and ports, and for UDP the protocol too (the open groups' key)."""
    udp: bool = False


# What the next full segment of a TCP group repeats from its first one, by IP version:
# the leading octets up to the IPv4 ID or to the IPv6 addresses, the IPv4 flags to
# protocol (IPv6: nothing), and from the addresses through the TCP flags one run that
# holds the expected sequence number. IPv4 (IHL 5): 0-4, 6-10, 12-34; window 34,
# urgent pointer and options 38. IPv6: 0-8, -, 8-54; window 54, the rest 58. A UDP
# datagram repeats the same leading runs, and from the addresses through the UDP
# length (IPv4 12-26, IPv6 8-46): only the IPv4 ID and the checksums may differ.
_EXPECT4 = struct.Struct("!12sI5sB")
_EXPECT6 = struct.Struct("!36sI5sB")


@dataclass(slots=True)
class _Follower:
    """What the next packet must hold to extend a group: the fast path of
    `coalesce` compares these prefixes and nothing else."""

    length: int
    """Octets of a full packet (the group's first one's length)."""
    room: int
    """Full packets the group may still take (MAX_COALESCED, _MAX_IP_PAYLOAD)."""
    head: bytes
    middle: bytes
    flow_at: int
    expect: bytes
    """UDP: addresses through UDP length. TCP: set per segment by `expect_next`."""
    expect_next: struct.Struct | None = None
    """TCP: packs the addresses-to-flags run with the next sequence number."""
    ack_doff: bytes = b""
    window_at: int = 0
    window: bytes = b""
    tail_at: int = 0
    tail: bytes = b""


def _follower(group: _Group) -> _Follower:
    first, o = group.first, group.ip_len
    room = min(MAX_COALESCED - len(group.payloads), (_MAX_IP_PAYLOAD - group.total) // group.mss)
    v4 = o == 20
    head = first[0:4] if v4 else first[0:8]
    middle = first[6:10] if v4 else b""
    flow_at = 12 if v4 else 8
    if group.udp:
        return _Follower(len(first), room, head, middle, flow_at, first[flow_at : o + 6])
    return _Follower(
        len(first),
        room,
        head,
        middle,
        flow_at,
        b"",
        expect_next=_EXPECT4 if v4 else _EXPECT6,
        ack_doff=first[o + 8 : o + 13],
        window_at=o + 14,
        window=first[o + 14 : o + 16],
        tail_at=o + 18,
        tail=first[o + 18 : o + group.l4_len],
    )


def coalesce(
    packets: list[bytes], *, udp: bool = False, partial: Sequence[int] = ()
) -> list[bytes]:
    """TUN frames (virtio-net header first) for ``packets``: consecutive in-order
    segments of one TCP flow with equal payload sizes (the last may be shorter)
    become one super-packet the kernel cuts again only where it must; with ``udp``,
    so do consecutive equally long datagrams of one UDP flow (the last may be
    shorter), as a UDP segmentation offload frame (GSO_UDP_L4, which kernels take
    from 6.2). Every other packet goes alone behind a plain header. The order
    within each flow is kept.

    Merged segments must agree on everything the kernel's `tcp_gro_receive` asks to
    agree: addresses, ports, TOS, TTL, DF, acknowledgement, window and options (the
    timestamps); only ACK and PSH may be set; no IP options or fragments. Merged
    datagrams must agree on addresses, ports, TOS, TTL and DF, and end where their
    UDP length says. The super-packet carries a partial checksum for the kernel to
    finish (F_NEEDS_CSUM), as a virtio NIC's TSO packet does, and the kernel numbers
    the IPv4 IDs of the packets it cuts on from the first one's. The packets' own
    checksums are not checked here: they came inside ESP packets whose ICV was
    verified.

    ``partial`` lists the indexes of TCP segments that carry only their pseudo-header
    sum (marked so inside ESP by a lockgate peer, `esp.sa.NH_PARTIAL_CSUM`). Merged,
    they are like any other (the super-packet's checksum is partial anyway); one
    left alone goes behind `partial_csum_header`, so the kernel completes it.
    """
    # By identity: the loop below sees packets, not indexes.
    marked = {id(packets[i]) for i in partial} if partial else None
    frames: list[bytes | _Group] = []
    append = frames.append
    open_groups: dict[bytes, _Group] = {}
    unpack_u32 = _U32.unpack_from
    # The group the previous packet went to, its fields in locals: the common case,
    # the next full packet of that flow (for TCP with only ACK set), costs five
    # prefix comparisons (the IPv4 ID and checksum and the TCP or UDP checksum may
    # differ; a TCP sequence number is part of `expect`). Anything else takes the
    # general path, which finds the flow's group and compares its signature.
    last: _Group | None = None
    length = room = room0 = seq = mss = headers = flow_at = window_at = tail_at = -1
    head = middle = window = tail = flow = ack_doff = expect = b""
    expect_next: struct.Struct | None = None
    payloads: list[bytes] = []
    for packet in packets:
        if (
            len(packet) == length
            and room
            and packet.startswith(head)
            and packet.startswith(middle, 6)
            and packet.startswith(expect, flow_at)
            and packet.startswith(window, window_at)
            and packet.startswith(tail, tail_at)
        ):
            payloads.append(packet[headers:])
            room -= 1
            if expect_next is not None:
                seq = (seq + mss) & 0xFFFFFFFF
                expect = expect_next.pack(flow, seq, ack_doff, _ACK)
            continue
        if last is not None:
            # Back to the general path: the group's own fields catch up first.
            last.next_seq = seq
            last.total += (room0 - room) * mss
            last, length = None, -1
        n = len(packet)
        first = packet[0] if n > 28 else 0
        if first == 0x45:
            ip_len = 20
            protocol = packet[9]
            flow_key = packet[12:24]
            # TOS, DF/fragment fields, TTL must agree; MF or an offset: never merged.
            fixed = packet[1:2] + packet[6:9]
            mergeable = not (packet[6] & 0x3F or packet[7]) and (packet[2] << 8 | packet[3]) == n
        elif first >> 4 == 6 and n > 48:
            ip_len = 40
            protocol = packet[6]
            flow_key = packet[8:44]
            fixed = packet[0:4] + packet[7:8]
            mergeable = (packet[4] << 8 | packet[5]) == n - 40
        else:
            append(packet)
            continue
        if protocol == _IPPROTO_UDP and udp:
            flow_key += b"\x11"  # not the key of a TCP flow between the same ports
            group = open_groups.get(flow_key)
            size = n - ip_len - 8
            if not mergeable or size <= 0 or _U16.unpack_from(packet, ip_len + 4)[0] != n - ip_len:
                # A fragment, or octets after the datagram: alone, in order.
                if group is not None:
                    del open_groups[flow_key]
                append(packet)
                continue
            if (
                group is not None
                and size <= group.mss
                and group.signature == fixed
                and group.total + size <= _MAX_IP_PAYLOAD
                and len(group.payloads) < MAX_COALESCED
            ):
                group.payloads.append(packet[ip_len + 8 :])
                group.total += size
                if size < group.mss:
                    del open_groups[flow_key]  # a short datagram ends the super-packet
                    continue
            else:
                group = _Group(fixed, packet, ip_len, 8, size, 0, n, [packet[ip_len + 8 :]])
                group.flow, group.udp = flow_key, True
                append(group)
                open_groups[flow_key] = group
        elif protocol != _IPPROTO_TCP or n < ip_len + 20:
            append(packet)
            continue
        else:
            tcp_len = (packet[ip_len + 12] >> 4) * 4
            packet_headers = ip_len + tcp_len
            flags = packet[ip_len + 13]
            group = open_groups.get(flow_key)
            if (
                not mergeable
                or tcp_len < 20
                or packet_headers >= n
                or (flags | _PSH) != (_ACK | _PSH)
            ):
                # Control segment, bare ACK, options or fragments: alone, and it must
                # not overtake the flow's data held in an open group.
                if group is not None:
                    del open_groups[flow_key]
                append(packet)
                continue
            # Acknowledgement, window, urgent pointer and options must agree too.
            signature = (
                fixed + packet[ip_len + 8 : ip_len + 12] + packet[ip_len + 14 : ip_len + 16]
                + packet[ip_len + 18 : packet_headers]
            )  # fmt: skip
            packet_seq = unpack_u32(packet, ip_len + 4)[0]
            size = n - packet_headers
            if (
                group is not None
                and packet_seq == group.next_seq
                and size <= group.mss
                and group.signature == signature
                and group.total + size <= _MAX_IP_PAYLOAD
                and len(group.payloads) < MAX_COALESCED
            ):
                group.payloads.append(packet[packet_headers:])
                group.next_seq = (packet_seq + size) & 0xFFFFFFFF
                group.total += size
                if size < group.mss or flags & _PSH:
                    # A short or pushed segment ends the super-packet.
                    group.psh = bool(flags & _PSH)
                    del open_groups[flow_key]
                    continue
            else:
                group = _Group(
                    signature,
                    packet,
                    ip_len,
                    tcp_len,
                    size,
                    (packet_seq + size) & 0xFFFFFFFF,
                    n,
                    [packet[packet_headers:]],
                    flow=flow_key,
                )
                append(group)
                if flags & _PSH:
                    open_groups.pop(flow_key, None)
                    continue
                open_groups[flow_key] = group
        # The group takes more: its next full packet is the fast path's to find.
        follow = _follower(group)
        last, length, room, room0 = group, follow.length, follow.room, follow.room
        seq, mss, headers = group.next_seq, group.mss, group.ip_len + group.l4_len
        head, middle, flow_at, expect = follow.head, follow.middle, follow.flow_at, follow.expect
        window_at, window, tail_at, tail = (
            follow.window_at,
            follow.window,
            follow.tail_at,
            follow.tail,
        )
        flow, ack_doff, expect_next = group.flow, follow.ack_doff, follow.expect_next
        payloads = group.payloads
        if expect_next is not None:
            expect = expect_next.pack(flow, seq, ack_doff, _ACK)
    if last is not None:
        last.next_seq = seq
        last.total += (room0 - room) * mss
    out: list[bytes] = []
    for item in frames:
        if isinstance(item, bytes):
            alone = item
        elif len(item.payloads) == 1:
            alone = item.first
        else:
            out.append(_super_packet(item))
            continue
        if marked and id(alone) in marked:
            out.append(_partial_frame(alone))
        else:
            out.append(PLAIN_HEADER + alone)
    return out


def _super_packet(group: _Group) -> bytes:
    first, ip_len, l4_len = group.first, group.ip_len, group.l4_len
    ip_header = bytearray(first[:ip_len])
    l4_header = bytearray(first[ip_len : ip_len + l4_len])
    l4_total = group.total - ip_len
    if ip_len == 20:
        _U16.pack_into(ip_header, 2, group.total)
        ip_header[10:12] = b"\0\0"
        _U16.pack_into(ip_header, 10, checksum(ip_header))
    else:
        _U16.pack_into(ip_header, 4, l4_total)
    # A partial checksum: the pseudo-header sum, not complemented; the kernel adds
    # the rest (it does the same for its own TSO packets, `__tcp_v4_send_check`),
    # and for UDP swaps in each cut datagram's length (`__udp_gso_segment`).
    if group.udp:
        _U16.pack_into(l4_header, 4, l4_total)
        _U16.pack_into(l4_header, 6, pseudo_sum(first, _IPPROTO_UDP, l4_total))
        gso_type, csum_offset = GSO_UDP_L4, _UDP_CSUM_OFFSET
    else:
        if group.psh:
            l4_header[13] |= _PSH
        _U16.pack_into(l4_header, 16, pseudo_sum(first, _IPPROTO_TCP, l4_total))
        gso_type = GSO_TCPV4 if ip_len == 20 else GSO_TCPV6
        csum_offset = _TCP_CSUM_OFFSET
    header = _HEADER.pack(F_NEEDS_CSUM, gso_type, ip_len + l4_len, group.mss, ip_len, csum_offset)
    return b"".join((header, ip_header, l4_header, *group.payloads))
