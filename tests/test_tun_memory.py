"""The in-memory TUN pair and the device's pure helpers: no root needed."""

from __future__ import annotations

import select

import pytest

from tun import MemoryTun, PacketDevice, TunError, memory_tun_pair
from tun.device import IFF_NO_PI, IFF_TUN, ifreq, validate_ifname


def _as_device(dev: PacketDevice) -> PacketDevice:
    return dev  # mypy-level check that MemoryTun satisfies the protocol


def test_pair_moves_whole_packets_both_ways() -> None:
    a, b = memory_tun_pair()
    with a, b:
        assert a.write(b"\x45" + b"x" * 99)
        assert a.write(b"\x45" + b"y" * 1399)
        assert b.write(b"\x60" + b"z" * 9)
        assert b.read() == b"\x45" + b"x" * 99
        assert b.read() == b"\x45" + b"y" * 1399
        assert b.read() is None  # empty: non-blocking, no exception
        assert a.read() == b"\x60" + b"z" * 9
        assert a.read() is None


def test_batches_keep_order_and_respect_the_limit() -> None:
    a, b = memory_tun_pair()
    with a, b:
        packets = [bytes([0x45, i]) * 10 for i in range(10)]
        assert a.write_batch(packets) == 10
        assert b.read_batch(max_packets=4) == packets[:4]
        assert b.read_batch() == packets[4:]
        assert b.read_batch() == []


def test_read_size_truncates_like_a_tun() -> None:
    a, b = memory_tun_pair()
    with a, b:
        a.write(b"\x45" * 100)
        assert b.read(10) == b"\x45" * 10
        assert b.read() is None  # the rest of that packet is gone, as with a TUN


def test_fileno_is_pollable() -> None:
    a, b = memory_tun_pair()
    with a, b:
        assert select.select([b.fileno()], [], [], 0)[0] == []
        a.write(b"\x45" * 20)
        assert select.select([b.fileno()], [], [], 1)[0] == [b.fileno()]


def test_full_queue_refuses_instead_of_blocking() -> None:
    a, b = memory_tun_pair(buffer=16 * 1024)
    with a, b:
        packet = b"\x45" * 1400
        taken = a.write_batch([packet] * 1000)
        assert 0 < taken < 1000
        assert not a.write(packet)
        assert len(b.read_batch(max_packets=2000)) == taken
        assert a.write(packet)  # room again once the reader drained it


def test_empty_packet_is_refused() -> None:
    a, b = memory_tun_pair()
    with a, b:
        assert not a.write(b"")
        assert b.read() is None


def test_closed_end_raises_and_peer_sees_nothing() -> None:
    a, b = memory_tun_pair("left", "right")
    assert isinstance(_as_device(a), MemoryTun)
    a.close()
    a.close()  # idempotent
    assert a.closed
    with pytest.raises(TunError, match="left is closed"):
        a.write(b"\x45")
    with pytest.raises(TunError, match="left is closed"):
        a.read()
    with pytest.raises(TunError):
        a.fileno()
    assert b.read() is None
    assert not b.write(b"\x45" * 20)  # nobody on the other side
    b.close()


def test_ifreq_layout() -> None:
    raw = ifreq("lockgate%d", IFF_TUN | IFF_NO_PI)
    assert len(raw) == 40  # sizeof(struct ifreq) on Linux
    assert raw[:16] == b"lockgate%d" + b"\0" * 6
    assert raw[16:18] == (IFF_TUN | IFF_NO_PI).to_bytes(2, "little")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "1 to 15 characters"),
        ("a" * 16, "1 to 15 characters"),
        ("bad name", "no spaces"),
        ("a/b", "no spaces"),
        ("tün0", "non-ASCII"),
    ],
)
def test_bad_interface_names_are_refused(name: str, reason: str) -> None:
    with pytest.raises(TunError, match=reason):
        validate_ifname(name)


def test_longest_name_is_accepted() -> None:
    assert validate_ifname("a" * 15) == b"a" * 15
