"""The pump's UDP GSO sends and GRO reads, framed against a recording socket (no
kernel needed), and the offload switch."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from daemon.childsa import ChildSaEntry, entry_from_event
from daemon.offload import OffloadMode, offload_mode
from daemon.pump import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    Pump,
    RawOrigin,
    _tun_tx_dropped,
)
from esp.sa import PARTS_PER_PACKET
from ikev2.events import Address
from testkit.dataplane import events
from tun import MemoryTun, memory_tun_pair
from tun.vnet import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_UDP_L4,
    PLAIN_HEADER,
    VnetHeader,
    coalesce,
    frame_packets,
)


class RecordingSocket:
    """Stands in for the port-4500 socket: records what the pump sends, replays
    what it is given to read."""

    family = socket.AF_INET

    def __init__(self, reads: list[tuple[bytes, list[tuple[int, int, bytes]]]] | None = None):
        self.sendmsgs: list[tuple[list[bytes], int]] = []
        self.sendtos: list[bytes] = []
        self.reads = list(reads or [])
        self.refuse_gso: int | None = None

    def fileno(self) -> int:
        return 99

    def sendmsg(self, buffers: list[bytes], ancillary: list[tuple[int, int, bytes]], flags: int,
                address: tuple[str, int]) -> int:  # fmt: skip
        if self.refuse_gso is not None:
            raise OSError(self.refuse_gso, "refused")
        ((level, kind, value),) = ancillary
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        self.sendmsgs.append((list(buffers), int.from_bytes(value, "little")))
        return sum(map(len, buffers))

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.sendtos.append(data)
        return len(data)

    def recvmsg(self, size: int, ancsize: int) -> tuple[bytes, list[Any], int, tuple[str, int]]:
        if not self.reads:
            raise BlockingIOError
        data, ancillary = self.reads.pop(0)
        return data, ancillary, 0, ("198.51.100.2", 4500)


@pytest.fixture
def tuns() -> Iterator[tuple[MemoryTun, MemoryTun]]:
    a, b = memory_tun_pair()
    yield a, b
    a.close()
    b.close()


def udp_pump(tun: MemoryTun, sock: RecordingSocket) -> tuple[Pump, ChildSaEntry]:
    event, _ = events(udp=True)
    entry = entry_from_event(event, 1500)
    pump = Pump(tun)
    pump.udp[entry.local] = sock  # type: ignore[assignment]
    return pump, entry


def as_parts(packets: list[bytes]) -> list[bytes]:
    """ESP packets cut as `EspSA.encapsulate_parts` cuts them (SPI | Sequence, IV,
    the rest)."""
    return [part for packet in packets for part in (packet[:8], packet[8:16], packet[16:])]


def datagrams(buffers: list[bytes]) -> list[bytes]:
    """The datagrams one GSO sendmsg carried: its buffers joined packet by packet."""
    step = PARTS_PER_PACKET
    return [b"".join(buffers[i : i + step]) for i in range(0, len(buffers), step)]


def test_equal_packets_leave_in_gso_sends_of_bounded_size(
    tuns: tuple[MemoryTun, MemoryTun],
) -> None:
    sock = RecordingSocket()
    pump, entry = udp_pump(tuns[0], sock)
    packets = [bytes([i % 256]) * 1400 for i in range(100)] + [b"t" * 300]
    assert pump.send(entry, as_parts(packets)) == len(packets)
    assert not sock.sendtos
    sent = [p for buffers, _ in sock.sendmsgs for p in datagrams(buffers)]
    assert sent == packets
    for buffers, size in sock.sendmsgs:
        assert size == 1400
        # A packet's parts go as separate buffers, never joined.
        assert len(buffers) % PARTS_PER_PACKET == 0
        assert len(buffers) <= PARTS_PER_PACKET * GSO_MAX_SEGMENTS
        assert sum(map(len, buffers)) <= GSO_MAX_BYTES
        # Every datagram but the last of a send has the segment size.
        sizes = [len(p) for p in datagrams(buffers)]
        assert all(n == size for n in sizes[:-1]) and sizes[-1] <= size
    assert pump.plane.counters["gso_sends"] == len(sock.sendmsgs)


def test_a_longer_packet_starts_a_new_send_and_a_lone_one_goes_plain(
    tuns: tuple[MemoryTun, MemoryTun],
) -> None:
    sock = RecordingSocket()
    pump, entry = udp_pump(tuns[0], sock)
    packets = [b"a" * 1000, b"b" * 1000, b"c" * 1200, b"d" * 1200, b"e" * 500, b"f" * 1300]
    assert pump.send(entry, as_parts(packets)) == 6
    assert [(len(datagrams(b)), s) for b, s in sock.sendmsgs] == [(2, 1000), (3, 1200)]
    assert [datagrams(b) for b, _ in sock.sendmsgs] == [packets[:2], packets[2:5]]
    assert sock.sendtos == [b"f" * 1300]


def test_refused_gso_falls_back_to_single_datagrams(tuns: tuple[MemoryTun, MemoryTun]) -> None:
    sock = RecordingSocket()
    sock.refuse_gso = errno.EIO
    pump, entry = udp_pump(tuns[0], sock)
    packets = [b"x" * 800] * 5
    assert pump.send(entry, as_parts(packets)) == 5
    assert sock.sendtos == packets
    sock.sendtos.clear()
    assert pump.send(entry, as_parts(packets)) == 5  # GSO stays off
    assert sock.sendtos == packets


def test_gro_reads_are_cut_at_the_size_the_kernel_gives(
    tuns: tuple[MemoryTun, MemoryTun],
) -> None:
    # A GRO read of three ESP datagrams (SPI unknown here: counted as no_sa), a
    # keepalive read without the cmsg, and an IKE message behind the marker.
    esp = [bytes.fromhex("0000abcd") + bytes([i]) * 96 for i in range(3)]
    esp[-1] = esp[-1][:60]
    size_cmsg = (SOL_UDP, UDP_GRO, (100).to_bytes(4, "little"))
    ike = bytes(4) + b"i" * 40
    sock = RecordingSocket([(b"".join(esp), [size_cmsg]), (b"\xff", []), (ike, [])])
    pump, _ = udp_pump(tuns[0], sock)
    received: list[bytes] = []
    pump.on_ike = lambda message, local, remote: received.append(message)
    pump._gro.add(sock.fileno())
    pump._read_nat(sock, ("198.51.100.1", 4500))  # type: ignore[arg-type]
    assert pump.plane.counters["gro_datagrams_read"] == 1
    assert pump.plane.drops["no_sa"] == 3
    assert pump.plane.counters["keepalives_received"] == 1
    assert received == [b"i" * 40]


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (None, OffloadMode.NO_TSO),
        ("all", OffloadMode.ALL),
        ("no-tso", OffloadMode.NO_TSO),
        ("off", OffloadMode.OFF),
        ("0", OffloadMode.OFF),
        ("bogus", OffloadMode.NO_TSO),
    ],
)
def test_offload_mode_from_the_environment(value: str | None, mode: OffloadMode) -> None:
    environ = {} if value is None else {"LOCKGATE_OFFLOAD": value}
    assert offload_mode(environ) is mode


def test_single_datagrams_keep_their_place_among_gro_runs(
    tuns: tuple[MemoryTun, MemoryTun],
) -> None:
    # The replay window wants each SA's packets in order: a lone ESP datagram read
    # between two GRO runs must not be processed before the first run.
    def esp(seq: int) -> bytes:
        return (0x1234).to_bytes(4, "big") + seq.to_bytes(4, "big") + b"e" * 40

    size_cmsg = (SOL_UDP, UDP_GRO, (48).to_bytes(4, "little"))
    sock = RecordingSocket(
        [
            (esp(1) + esp(2) + esp(3), [size_cmsg]),
            (esp(4), []),
            (esp(5) + esp(6), [size_cmsg]),
        ]
    )
    pump, _ = udp_pump(tuns[0], sock)
    seen: list[bytes] = []
    pump.plane.from_esp = lambda packets, origin=None: seen.extend(packets)  # type: ignore[method-assign]
    pump._gro.add(sock.fileno())
    pump._read_nat(sock, ("198.51.100.1", 4500))  # type: ignore[arg-type]
    assert seen == [esp(n) for n in range(1, 7)]


def _udp_datagrams(count: int, size: int) -> list[bytes]:
    """IPv4 UDP datagrams of one flow, DF set, consecutive IDs, UDP checksum 0."""
    out = []
    for i in range(count):
        udp = (40000).to_bytes(2, "big") + (5201).to_bytes(2, "big")
        udp += (8 + size).to_bytes(2, "big") + bytes(2) + bytes([i]) * size
        ip = bytes([0x45, 0]) + (20 + len(udp)).to_bytes(2, "big") + (7 + i).to_bytes(2, "big")
        ip += bytes([0x40, 0, 64, 17, 0, 0]) + bytes([192, 0, 2, 10, 203, 0, 113, 10])
        out.append(ip + udp)
    return out


@pytest.mark.parametrize("uso", [True, False], ids=["uso", "no-uso"])
def test_udp_datagrams_are_written_as_one_frame_only_where_the_tun_takes_uso(
    tuns: tuple[MemoryTun, MemoryTun], uso: bool
) -> None:
    near, far = tuns
    near.vnet_hdr = True  # type: ignore[attr-defined]
    near.uso_writes = uso  # type: ignore[attr-defined]
    pump = Pump(near)
    datagrams = _udp_datagrams(6, 1000)
    assert pump.write_tun(datagrams) == 6
    frames = far.read_batch()
    if uso:
        (frame,) = frames
        assert VnetHeader.decode(frame).gso_type == GSO_UDP_L4
        assert frame_packets(frame) == 6
        assert pump.plane.counters["tun_packets_coalesced"] == 5
    else:
        assert frames == [PLAIN_HEADER + d for d in datagrams]


def test_plain_tun_frames_are_unwrapped_in_order_around_super_packets(
    tuns: tuple[MemoryTun, MemoryTun],
) -> None:
    # Plain frames take the inlined path, a frame with a partial checksum or a TSO
    # super-packet goes through split_frame; a frame too short for its header is
    # counted as malformed. What reaches the data plane keeps the read order.
    near, far = tuns
    near.vnet_hdr = True  # type: ignore[attr-defined]
    pump = Pump(near)
    seen: list[list[bytes]] = []
    pump.plane.from_tun = lambda packets, partial: seen.append(list(packets))  # type: ignore[method-assign]
    pump.plane.from_tun_segments = lambda packets, partial: seen.append(["tso", partial, *packets])  # type: ignore[method-assign]
    first, second, third = _udp_datagrams(3, 100)
    partial = VnetHeader(F_NEEDS_CSUM, GSO_NONE, 28, 0, 20, 6).encode() + second
    tso = coalesce(_tcp_segments(3, 500))[0]
    for frame in (PLAIN_HEADER + first, partial, b"\x00" * 5, tso, PLAIN_HEADER + third):
        far.write(frame)
    pump._read_tun()
    assert seen[0][0] == first and len(seen[0]) == 2 and seen[0][1][:26] == second[:26]
    # The super-packet keeps its partial checksums for the data plane to decide.
    assert seen[1][:2] == ["tso", True] and len(seen[1]) == 5
    assert seen[2] == [third]
    assert pump.plane.drops["malformed"] == 1


def _tcp_segments(count: int, size: int) -> list[bytes]:
    """In-order full TCP segments (ACK only) of one IPv4 flow."""
    out = []
    for i in range(count):
        tcp = (40000).to_bytes(2, "big") + (5201).to_bytes(2, "big")
        tcp += (1000 + i * size).to_bytes(4, "big") + (5).to_bytes(4, "big")
        tcp += bytes([0x50, 0x10]) + (65535).to_bytes(2, "big") + bytes(4) + bytes([i]) * size
        ip = bytes([0x45, 0]) + (20 + len(tcp)).to_bytes(2, "big") + (7 + i).to_bytes(2, "big")
        ip += bytes([0x40, 0, 64, 6, 0, 0]) + bytes([192, 0, 2, 10, 203, 0, 113, 10])
        out.append(ip + tcp)
    return out


def test_tun_queue_drops_come_from_the_devices_line_in_proc_net_dev(tmp_path: Any) -> None:
    table = tmp_path / "dev"
    table.write_text(
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop\n"
        "    lo:  6438  59 0 0 0 0 0 0  6438  59 0 0 0 0 0 0\n"
        "lgtun0:123456789 2 3 4 5 6 7 8 9876543210 10 11 77 0 0 0 0\n"
    )
    assert _tun_tx_dropped("lgtun0", str(table)) == 77
    assert _tun_tx_dropped("lo", str(table)) == 0
    assert _tun_tx_dropped("absent", str(table)) == 0
    assert _tun_tx_dropped("lgtun0", str(tmp_path / "missing")) == 0


def test_status_has_no_kernel_drops_for_a_memory_tun(tuns: tuple[MemoryTun, MemoryTun]) -> None:
    pump = Pump(tuns[0])
    assert pump.plane.status()["kernel_drops"] == {}


def test_esp_of_an_unknown_spi_read_with_gro_is_reported_with_its_sender(
    tuns: tuple[MemoryTun, MemoryTun],
) -> None:
    """The SPI of a packet no SA has reaches the data plane's `on_unknown_spi` with the
    port-4500 addresses it came on, coalesced or single (RFC 7296 §2.21.4: the IKE
    endpoint may answer with INVALID_SPI)."""

    def esp(spi: int, seq: int) -> bytes:
        return spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + b"e" * 40

    size_cmsg = (SOL_UDP, UDP_GRO, (48).to_bytes(4, "little"))
    sock = RecordingSocket([(esp(0x1234, 1) + esp(0x1234, 2), [size_cmsg]), (esp(0x5678, 3), [])])
    pump, _ = udp_pump(tuns[0], sock)
    reported: list[tuple[int, Address, Address]] = []
    pump.plane.on_unknown_spi = lambda spi, local, remote: reported.append((spi, local, remote))
    pump._gro.add(sock.fileno())
    pump._read_nat(sock, ("198.51.100.1", 4500))  # type: ignore[arg-type]
    # One report per remote address per UNKNOWN_SPI_REPORT_INTERVAL: the first only.
    assert reported == [(0x1234, ("198.51.100.1", 4500), ("198.51.100.2", 4500))]
    assert pump.plane.counters["unknown_spi_reported"] == 1
    assert pump.plane.total_drops()["no_sa"] == 3


def test_raw_esp_origin_is_the_ip_header_source_on_the_ike_port() -> None:
    """Raw ESP has no ports: a hint about it goes where IKE does (UDP 500)."""
    esp = (0x9ABC).to_bytes(4, "big") + bytes(20)
    header = bytes([0x45, 0, 0, 48, 0, 0, 0, 0, 64, 50, 0, 0, 198, 51, 100, 2, 198, 51, 100, 1])
    origin = RawOrigin(("198.51.100.1", 500), [esp], [header + esp])
    assert origin(esp) == (("198.51.100.1", 500), ("198.51.100.2", 500))
    six = RawOrigin(("2001:db8::1", 500), [esp], ["2001:db8::2"])
    assert six(esp) == (("2001:db8::1", 500), ("2001:db8::2", 500))
    assert six(bytes(esp)[:-1] + b"x") is None
