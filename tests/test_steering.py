"""The steering programs, run by a classic-BPF interpreter (no kernel, no root): the
reuseport program names the socket the SPI rule gives, and the workers' raw ESP
filters divide protocol-50 packets between them. tests/test_steering_netns.py runs
the same programs in the kernel. And a steered group's port, on loopback."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.pump import open_udp
from daemon.steering import (
    DROP_PACKET,
    FIRST_WORKER_INDEX,
    MAIN_INDEX,
    open_steered_udp,
    pack_program,
    raw_esp_filter,
    reuseport_program,
    worker_of_spi,
)
from testkit import cbpf

SPIS = [1, 2, 3, 0x100, 0x101, 0x102, 0xC0FFEE, 0x8000_0001, 0xFFFF_FFFE, 0xFFFF_FFFF]
IKE_HEADER = bytes(range(28))  # what follows the non-ESP marker; its content is IKE's


def _esp(spi: int, seq: int = 1) -> bytes:
    return struct.pack("!II", spi, seq) + b"\xab" * 16


def _ipv4(payload: bytes, options: bytes = b"") -> bytes:
    ihl = (20 + len(options)) // 4
    return (
        struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload), 1, 0,
                    64, socket.IPPROTO_ESP, 0, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
        + options
        + payload
    )  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_reuseport_program_gives_ike_and_keepalives_to_main(workers: int) -> None:
    program = reuseport_program(workers)
    not_esp = [b"", b"\xff", b"\x01\x02\x03", b"\x00\x00\x00\x00", b"\x00" * 4 + IKE_HEADER]
    for datagram in not_esp:
        assert cbpf.run(program, datagram) == MAIN_INDEX == 0, datagram


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_reuseport_program_gives_esp_to_the_spi_s_worker(workers: int) -> None:
    program = reuseport_program(workers)
    for spi in SPIS:
        index = cbpf.run(program, _esp(spi))
        assert index == 1 + spi % workers == FIRST_WORKER_INDEX + worker_of_spi(spi, workers)
        # Only the first four octets count: the sequence number or a bare SPI alike.
        assert cbpf.run(program, _esp(spi, seq=0xFFFF_FFFF)) == index
        assert cbpf.run(program, struct.pack("!I", spi)) == index
    assert {cbpf.run(program, _esp(spi)) for spi in range(1, 1 + 4 * workers)} == set(
        range(1, 1 + workers)
    )


@given(st.binary(max_size=64), st.integers(1, 16))
def test_reuseport_program_is_the_rule_for_any_datagram(datagram: bytes, workers: int) -> None:
    spi = int.from_bytes(datagram[:4], "big")
    expected = 0 if len(datagram) < 4 or spi == 0 else 1 + spi % workers
    assert cbpf.run(reuseport_program(workers), datagram) == expected


def _keepers(packet: bytes, workers: int, family: socket.AddressFamily) -> list[int]:
    return [
        w
        for w in range(workers)
        if cbpf.run(raw_esp_filter(w, workers, family), packet) != DROP_PACKET
    ]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("options", [b"", b"\x01\x01\x01\x00", b"\x01" * 7 + b"\x00"])
def test_raw_filter_ipv4_keeps_each_spi_at_its_worker_only(workers: int, options: bytes) -> None:
    # The SPI's offset follows the IPv4 header's length (IHL 5, 6 and 7 here).
    for spi in SPIS:
        packet = _ipv4(_esp(spi), options)
        assert _keepers(packet, workers, socket.AF_INET) == [spi % workers]
        kept = cbpf.run(raw_esp_filter(spi % workers, workers, socket.AF_INET), packet)
        assert kept >= len(packet)  # the whole packet, not a prefix


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_raw_filter_ipv6_reads_the_spi_at_offset_zero(workers: int) -> None:
    for spi in SPIS:
        assert _keepers(_esp(spi), workers, socket.AF_INET6) == [spi % workers]
    # An IPv4 filter would take these octets for an IP header (0x45: IHL 5) and read
    # the SPI 20 octets in: the family matters.
    looks_like_ipv4 = _esp(0x4500_0002)
    assert _keepers(looks_like_ipv4, 2, socket.AF_INET6) == [0]
    assert _keepers(looks_like_ipv4, 2, socket.AF_INET) == [0xABAB_ABAB % 2]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_raw_filter_gives_a_packet_too_short_for_an_spi_to_worker_0(workers: int) -> None:
    assert _keepers(_ipv4(b"\x01\x02\x03"), workers, socket.AF_INET) == [0]
    assert _keepers(_ipv4(b""), workers, socket.AF_INET) == [0]
    assert _keepers(b"\x01\x02", workers, socket.AF_INET6) == [0]


@given(st.integers(0, 0xFFFF_FFFF), st.integers(1, 8), st.integers(0, 10))
def test_raw_filters_partition_every_spi(spi: int, workers: int, option_words: int) -> None:
    packet = _ipv4(_esp(spi), b"\x01" * (4 * option_words))
    assert _keepers(packet, workers, socket.AF_INET) == [spi % workers]
    assert _keepers(_esp(spi), workers, socket.AF_INET6) == [spi % workers]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        reuseport_program(0)
    with pytest.raises(ValueError, match=r"worker 2 is not one of 0\.\.1"):
        raw_esp_filter(2, 2, socket.AF_INET)
    with pytest.raises(ValueError, match="worker -1"):
        raw_esp_filter(-1, 2, socket.AF_INET6)
    with pytest.raises(ValueError, match="address family"):
        raw_esp_filter(0, 2, socket.AF_UNIX)
    with pytest.raises(ValueError, match="at least 1"):
        worker_of_spi(5, 0)


def test_packed_program_is_the_kernel_s_struct_sock_filter_array() -> None:
    program = reuseport_program(3)
    packed = pack_program(program)
    assert len(packed) == 8 * len(program)
    assert list(struct.iter_unpack("=HBBI", packed)) == program


def test_interpreter_refuses_what_it_does_not_know() -> None:
    with pytest.raises(cbpf.UnknownOpcode):
        cbpf.run([(0x45, 0, 0, 0), (0x06, 0, 0, 0)], b"")  # BPF_JMP|BPF_JSET|BPF_K
    with pytest.raises(ValueError, match="end with a return"):
        cbpf.run([(0x00, 0, 0, 0)], b"")
    with pytest.raises(ValueError, match="past the end"):
        cbpf.run([(0x15, 5, 0, 0), (0x06, 0, 0, 0)], b"")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_steered_group_is_refused_on_a_port_another_process_holds() -> None:
    port = _free_port()
    holder = open_udp("127.0.0.1", port)  # e.g. charon, without SO_REUSEPORT
    try:
        with pytest.raises(OSError, match=f"UDP port {port} on 127.0.0.1 is in use"):
            open_steered_udp("127.0.0.1", port, 2)
    finally:
        holder.close()
    group = open_steered_udp("127.0.0.1", port, 2)
    try:
        # ...and the group keeps others out the same way.
        with pytest.raises(OSError, match="is in use"):
            open_udp("127.0.0.1", port)
        assert [s.getsockname() for s in group] == [("127.0.0.1", port)] * 3
        assert all(not s.getblocking() for s in group)
    finally:
        for sock in group:
            sock.close()
