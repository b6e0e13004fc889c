"""Steering in a real kernel: a port-4500 SO_REUSEPORT group under the reuseport
program puts each datagram on the socket the SPI rule names, and the workers' raw ESP
filters divide protocol-50 packets between them. Two namespaces joined by a veth; the
peer sends, the gateway's sockets receive."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from netns import Lab, in_namespace

from daemon.pump import SOL_UDP, UDP_GRO, UDP_SEGMENT, open_raw_esp
from daemon.steering import attach_raw_esp_filter, open_steered_udp

pytestmark = pytest.mark.netns

GW4, PEER4 = "192.0.2.1", "192.0.2.2"
GW6, PEER6 = "2001:db8:5::1", "2001:db8:5::2"
NAT_PORT = 4500
SPIS = [1, 2, 3, 4, 5, 6, 0x100, 0x101, 0xC0FFEE, 0x8000_0000, 0xFFFF_FFFF]
PER_SPI = 8  # datagrams sent for each SPI: all of them must land on one socket
WAIT = 20.0  # seconds for what was sent to arrive (a loaded machine; never a measure)


@dataclass
class Pair:
    gw: str
    peer: str


@pytest.fixture
def pair() -> Iterator[Pair]:
    with Lab() as lab:
        gw, peer = lab.namespace("gw"), lab.namespace("peer")
        lab.veth(gw, "gw0", peer, "peer0")
        for ns, ifname, v4, v6 in ((gw, "gw0", GW4, GW6), (peer, "peer0", PEER4, PEER6)):
            ns.ip("addr", "add", f"{v4}/24", "dev", ifname)
            ns.ip("addr", "add", f"{v6}/64", "dev", ifname, "nodad")
        yield Pair(gw.name, peer.name)


def _rule(datagram: bytes, workers: int) -> int:
    """The group index the steering rule names (RFC 3948 §2.2, §2.3; RFC 4303 §2.1)."""
    if len(datagram) < 4 or datagram[:4] == b"\0\0\0\0":
        return 0
    return 1 + int.from_bytes(datagram[:4], "big") % workers


def _collect(socks: list[socket.socket], expected: int) -> list[list[bytes]]:
    """What each socket received, waiting until ``expected`` packets arrived in all."""
    got: list[list[bytes]] = [[] for _ in socks]
    deadline = time.monotonic() + WAIT
    while sum(map(len, got)) < expected and time.monotonic() < deadline:
        readable, _, _ = select.select(socks, [], [], 0.5)
        for sock in readable:
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                got[socks.index(sock)].append(data)
    return got


def _header_len(ipv4_packet: bytes) -> int:
    return (ipv4_packet[0] & 0x0F) * 4


def _udp_cases() -> list[bytes]:
    ike = b"\0\0\0\0" + b"IKE-header-and-payloads"
    cases = [ike, ike + b"2", b"\xff", b"", b"\x01\x02\x03"]
    for spi in SPIS:
        cases += [struct.pack("!II", spi, seq) + b"esp" for seq in range(1, PER_SPI + 1)]
    return cases


@pytest.mark.parametrize(
    ("workers", "family"), [(2, "ipv4"), (3, "ipv4"), (2, "ipv6"), (3, "ipv6")]
)
def test_reuseport_group_puts_each_datagram_on_the_socket_of_the_rule(
    pair: Pair, workers: int, family: str
) -> None:
    gw, peer = (GW4, PEER4) if family == "ipv4" else (GW6, PEER6)
    af = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    with in_namespace(pair.gw):
        group = open_steered_udp(gw, NAT_PORT, workers)
    try:
        assert len(group) == 1 + workers
        assert all(s.getsockname()[1] == NAT_PORT for s in group)
        cases = _udp_cases()
        with in_namespace(pair.peer), socket.socket(af, socket.SOCK_DGRAM) as sender:
            sender.bind((peer, NAT_PORT))  # one 4-tuple for all, as between two gateways
            for datagram in cases:
                sender.sendto(datagram, (gw, NAT_PORT))
        got = _collect(group, len(cases))
        assert sorted(d for received in got for d in received) == sorted(cases)
        for index, received in enumerate(got):
            assert [_rule(d, workers) for d in received] == [index] * len(received), index
        assert all(got), "every socket of the group gets its share"
        for spi in SPIS:
            holders = {
                i
                for i, received in enumerate(got)
                for d in received
                if d[:4] == struct.pack("!I", spi)
            }
            assert len(holders) == 1, f"SPI {spi:#x} landed on {holders}"  # fmt: skip
        assert got[0].count(b"\xff") == 1 and got[0].count(b"") == 1
    finally:
        for sock in group:
            sock.close()


def _raw_sender(af: socket.AddressFamily, ip_options: bytes) -> socket.socket:
    sender = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_ESP)
    if ip_options:
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ip_options)
    return sender


@pytest.mark.parametrize(
    ("family", "ip_options"),
    [("ipv4", b""), ("ipv4", b"\x01\x01\x01\x00"), ("ipv6", b"")],
    ids=["ipv4", "ipv4-options", "ipv6"],
)
def test_raw_esp_filters_give_each_worker_exactly_its_spis(
    pair: Pair, family: str, ip_options: bytes
) -> None:
    workers = 2
    gw = GW4 if family == "ipv4" else GW6
    af = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    with in_namespace(pair.gw):
        raws = [open_raw_esp(gw) for _ in range(workers)]
    try:
        for worker, sock in enumerate(raws):
            attach_raw_esp_filter(sock, worker, workers)
        packets = [struct.pack("!II", spi, seq) + b"esp" for spi in SPIS for seq in (1, 2)]
        short = b"\x01\x02\x03"  # no room for an SPI: worker 0 counts it
        with in_namespace(pair.peer), _raw_sender(af, ip_options) as sender:
            for packet in [*packets, short]:
                sender.sendto(packet, (gw, 0))
        got = _collect(raws, len(packets) + 1)
        if af == socket.AF_INET:
            # An IPv4 raw socket delivers the IP header, longer by the options if any:
            # the filter found the SPI behind it either way.
            lengths = {_header_len(p) for received in got for p in received}
            assert lengths == {20 + len(ip_options)}
            got = [[p[_header_len(p) :] for p in received] for received in got]
        for worker, received in enumerate(got):
            mine = [p for p in packets if int.from_bytes(p[:4], "big") % workers == worker]
            if worker == 0:
                mine.append(short)
            assert sorted(received) == sorted(mine), worker
    finally:
        for sock in raws:
            sock.close()


def _send_udp(pair: Pair, datagrams: list[bytes], *, segment: int = 0) -> None:
    """From the peer's port 4500 to the gateway's; with ``segment``, all in one UDP GSO
    send of equally long segments (UDP_SEGMENT), which crosses the veth whole."""
    with in_namespace(pair.peer), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((PEER4, NAT_PORT))
        if segment:
            gso = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
            sender.sendmsg([b"".join(datagrams)], gso, 0, (GW4, NAT_PORT))
        else:
            for datagram in datagrams:
                sender.sendto(datagram, (GW4, NAT_PORT))


def test_closing_a_socket_of_the_group_moves_the_last_one_into_its_index(pair: Pair) -> None:
    # Why the main process keeps every socket of the group open: the kernel fills a
    # closed socket's slot with the last one (reuseport_detach_sock).
    with in_namespace(pair.gw):
        main, worker0, worker1 = open_steered_udp(GW4, NAT_PORT, 2)
    try:
        worker0.close()
        even = [struct.pack("!II", 2, seq) for seq in range(PER_SPI)]  # index 1: worker 0's
        _send_udp(pair, even)
        got = _collect([main, worker1], len(even))
        assert got == [[], even], "worker 1's socket took index 1 and worker 0's SPIs"
    finally:
        main.close()
        worker1.close()


def test_a_coalesced_batch_goes_whole_to_its_first_segment_s_socket(pair: Pair) -> None:
    # Why steered sockets keep UDP GRO off, and why a sender's GSO batch carries one
    # SA: the program sees only a batch's first segment, and every segment of it is
    # queued to the socket that one names.
    with in_namespace(pair.gw):
        group = open_steered_udp(GW4, NAT_PORT, 2)
    try:
        assert all(s.getsockopt(SOL_UDP, UDP_GRO) == 0 for s in group)
        size = 64
        batch = [struct.pack("!I", spi).ljust(size, b"\0") for spi in (1, 2, 3, 4)]
        _send_udp(pair, batch, segment=size)
        got = _collect(group, len(batch))
        assert got == [[], [], batch], "all on worker 1's socket (SPI 1), SPIs 2 and 4 too"
    finally:
        for sock in group:
            sock.close()
