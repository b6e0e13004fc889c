"""A real TUN in a namespace: create, configure with netlink, move packets, remove."""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest
from netns import Lab, in_namespace

from tun import LinkError, LinkManager, RouteSocket, TunDevice, TunError

pytestmark = pytest.mark.netns


@pytest.fixture
def inside() -> Iterator[str]:
    """The test body runs (this thread only) inside a fresh namespace."""
    with Lab() as lab:
        ns = lab.namespace("tun")
        with in_namespace(ns.name):
            yield ns.name


def _checksum(data: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _udp4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # no UDP csum
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        1,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def _read_until(tun: TunDevice, match: bytes, timeout: float = 2.0) -> bytes:
    import select

    while select.select([tun.fileno()], [], [], timeout)[0]:
        for packet in tun.read_batch():
            if match in packet:
                return packet
    raise AssertionError("the kernel routed nothing matching into the TUN")


def test_tun_configured_by_netlink_carries_packets_both_ways(inside: str) -> None:
    with TunDevice.open("lgtest%d") as tun, LinkManager() as links:
        assert tun.name.startswith("lgtest")
        links.quiet_ipv6(tun.name)
        links.set_mtu(tun.name, 1400)
        links.add_address(tun.name, "192.0.2.1/24")
        links.add_address(tun.name, "192.0.2.1/24")  # idempotent
        links.add_address(tun.name, "2001:db8:a::1/64")
        links.set_up(tun.name)
        links.add_route("203.0.113.0/24", tun.name)
        links.add_route("2001:db8:b::/64", tun.name)
        assert links.mtu(tun.name) == 1400 and links.is_up(tun.name)
        assert ipaddress.ip_interface("192.0.2.1/24") in links.addresses(tun.name)
        assert ipaddress.ip_interface("2001:db8:a::1/64") in links.addresses(tun.name)
        # quiet_ipv6: no link-local address was generated.
        assert not any(a.ip.is_link_local for a in links.addresses(tun.name))
        links.add_route("198.51.100.0/24", tun.name, mtu=1300, metric=7, source="192.0.2.1")
        wan = ipaddress.ip_network("198.51.100.0/24")
        [narrow] = [r for r in links.routes(ifname=tun.name) if r.destination == wan]
        assert (narrow.mtu, narrow.metric, narrow.table) == (1300, 7, 254)
        dsts = {r.destination for r in links.routes(ifname=tun.name)}
        assert ipaddress.ip_network("203.0.113.0/24") in dsts
        assert ipaddress.ip_network("2001:db8:b::/64") in dsts

        # Kernel -> TUN: a datagram to the routed prefix comes out of the device.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.sendto(b"lockgate-outbound", ("203.0.113.5", 9999))
        packet = _read_until(tun, b"lockgate-outbound")
        assert packet[0] >> 4 == 4
        assert socket.inet_ntoa(packet[12:16]) == "192.0.2.1"
        assert socket.inet_ntoa(packet[16:20]) == "203.0.113.5"
        assert packet[9] == socket.IPPROTO_UDP

        # TUN -> kernel: a packet written to the device is delivered to a local socket.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind(("192.0.2.1", 0))
            sink.settimeout(2)
            port = sink.getsockname()[1]
            # Garbage (not IPv4/IPv6) is refused for that packet only; the device goes on.
            assert not tun.write(b"\x00\x01\x02")
            assert tun.write(_udp4("203.0.113.5", "192.0.2.1", 4444, port, b"lockgate-in"))
            data, addr = sink.recvfrom(100)
            assert (data, addr) == (b"lockgate-in", ("203.0.113.5", 4444))

        links.remove_route("203.0.113.0/24", tun.name)
        assert ipaddress.ip_network("203.0.113.0/24") not in {
            r.destination for r in links.routes(ifname=tun.name)
        }
        links.remove_route("203.0.113.0/24", tun.name)  # already gone is fine
        name = tun.name
    with LinkManager() as links:
        assert not links.exists(name)  # closing the last fd removed the interface


def _ip_route_show(prefix: str) -> str:
    """What `ip -4 route show PREFIX` prints in this namespace."""
    return subprocess.run(
        ["ip", "-4", "route", "show", prefix], capture_output=True, text=True, check=True
    ).stdout


def test_plain_routes_are_made_as_ip_shows_them_and_refused_when_present(inside: str) -> None:
    # A route without metric or MTU is one raw rtnetlink message (tun.link):
    # the same route as `ip route` shows it, EEXIST without replace, the right table.
    with TunDevice.open("lgtest%d") as tun, LinkManager() as links:
        links.add_address(tun.name, "192.0.2.1/24")
        links.set_up(tun.name)
        links.add_route("203.0.113.0/24", tun.name, source="192.0.2.1")
        links.add_route("2001:db8:b::/64", tun.name, table=220)
        shown = _ip_route_show("203.0.113.0/24")
        assert f"dev {tun.name}" in shown and "proto static" in shown and "src 192.0.2.1" in shown
        assert [r.destination for r in links.routes(table=220, ifname=tun.name)] == [
            ipaddress.ip_network("2001:db8:b::/64")
        ]
        with pytest.raises(LinkError, match=r"route 203\.0\.113\.0/24 dev .*: File exists") as err:
            links.add_route("203.0.113.0/24", tun.name, replace=False)
        assert err.value.errno == errno.EEXIST
        links.add_route("203.0.113.0/24", tun.name)  # replace (the default) overwrites
        shown = _ip_route_show("203.0.113.0/24")
        assert "src" not in shown and shown.count("203.0.113.0/24") == 1
        with pytest.raises(LinkError, match="no such interface 'nope0'"):
            links.add_route("198.51.100.0/24", "nope0")
        links.remove_route("203.0.113.0/24", tun.name)
        links.remove_route("2001:db8:b::/64", tun.name, table=220)
        assert not links.routes(ifname=tun.name, table=220)


def test_route_socket_removes_any_route_to_the_prefix_and_follows_a_recreated_link(
    inside: str,
) -> None:
    # The daemon's own route path (tun.routes), used from its event-loop thread.
    routes = RouteSocket()
    try:
        with TunDevice.open("lgtest%d") as tun:
            name = tun.name
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
            # A route someone else made (`ip route` uses protocol boot): removed all the
            # same, as `ip route del` would; a table above 255 lives in RTA_TABLE alone.
            subprocess.run(["ip", "route", "add", "203.0.113.0/24", "dev", name], check=True)
            routes.add_route(ipaddress.ip_network("2001:db8:b::/64"), name, table=1000)
            shown = subprocess.run(
                ["ip", "-6", "route", "show", "table", "1000"], capture_output=True, text=True
            ).stdout
            assert f"2001:db8:b::/64 dev {name} proto static" in shown
            routes.remove_route("203.0.113.0/24", name)
            routes.remove_route("2001:db8:b::/64", name, table=1000)
            assert _ip_route_show("203.0.113.0/24") == ""
            routes.remove_route("203.0.113.0/24", name)  # already gone is fine
            with pytest.raises(LinkError) as err:
                routes.remove_route("203.0.113.0/24", name, missing_ok=False)
            assert err.value.errno == errno.ESRCH
            old_index = routes.index(name)
        # The link is gone and made again under the same name with a new index: the
        # cached index is refused (ENODEV) and looked up once more.
        with TunDevice.open(name) as tun:
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
            routes.add_route("203.0.113.0/24", name)
            assert routes.index(name) != old_index
            assert f"dev {name}" in _ip_route_show("203.0.113.0/24")
    finally:
        routes.close()


def test_route_table_and_policy_rule(inside: str) -> None:
    with TunDevice.open("lgtest%d") as tun, LinkManager() as links:
        links.set_up(tun.name)
        links.add_route("203.0.113.0/24", tun.name, table=220)
        links.add_rule(220, 220)
        links.add_rule(220, 220)  # idempotent
        assert [r.destination for r in links.routes(table=220)] == [
            ipaddress.ip_network("203.0.113.0/24")
        ]
        assert sum(1 for r in links.rules() if (r.table, r.priority) == (220, 220)) == 1
        links.remove_rule(220, 220)
        assert not any(r.table == 220 for r in links.rules())
        links.remove_rule(220, 220)  # already gone is fine
        with pytest.raises(LinkError) as err:
            links.remove_rule(220, 220, missing_ok=False)
        assert err.value.errno is not None


def test_errors_are_typed(inside: str) -> None:
    with LinkManager() as links:
        with pytest.raises(LinkError, match="no such interface 'nope0'"):
            links.set_up("nope0")
        with pytest.raises(LinkError, match="MTU 100 out of range"):
            links.set_mtu("lo", 100)
    with (
        TunDevice.open("lgtest%d") as tun,
        pytest.raises(TunError, match="not opened with multi_queue"),
    ):
        tun.add_queue()
    closed = tun
    with pytest.raises(TunError, match="is closed"):
        closed.read()


def test_multi_queue_shares_one_interface(inside: str) -> None:
    with (
        TunDevice.open("lgmq%d", multi_queue=True) as first,
        first.add_queue() as second,
        LinkManager() as links,
    ):
        assert second.name == first.name
        assert first.fileno() != second.fileno()
        links.set_up(first.name)
        assert links.exists(first.name)


def test_vnet_hdr_prefixes_packets_and_accepts_offloads(inside: str) -> None:
    from tun import Offload
    from tun.device import VNET_HDR_LEN

    with TunDevice.open("lgvh%d", vnet_hdr=True) as tun, LinkManager() as links:
        assert tun.vnet_hdr
        tun.set_offload(Offload.CSUM | Offload.TSO4 | Offload.TSO6)
        links.quiet_ipv6(tun.name)
        links.add_address(tun.name, "192.0.2.1/24")
        links.set_up(tun.name)
        links.add_route("203.0.113.0/24", tun.name)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.sendto(b"lockgate-vnet", ("203.0.113.5", 9999))
        packet = _read_until(tun, b"lockgate-vnet")
        inner = packet[VNET_HDR_LEN:]
        assert inner[0] >> 4 == 4
        assert socket.inet_ntoa(inner[16:20]) == "203.0.113.5"
    with TunDevice.open("lgvh%d") as plain, pytest.raises(TunError, match="need vnet_hdr"):
        plain.set_offload(Offload.CSUM)


def test_a_coalesced_udp_write_arrives_as_the_datagrams(inside: str) -> None:
    from tun import Offload
    from tun.vnet import GSO_UDP_L4, VnetHeader, coalesce

    with TunDevice.open("lguso%d", vnet_hdr=True) as tun, LinkManager() as links:
        links.quiet_ipv6(tun.name)
        links.add_address(tun.name, "192.0.2.1/24")
        links.set_up(tun.name)
        # Kernels take UDP segmentation offload writes from 6.2 on; the probe leaves
        # the offloads as they were.
        release = tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2])
        assert tun.probe_uso_writes() == tun.uso_writes == (release >= (6, 2))
        assert tun.offload == Offload(0)
        if not tun.uso_writes:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind(("192.0.2.1", 7777))
            sent = [
                _udp4("192.0.2.99", "192.0.2.1", 5555, 7777, bytes([65 + i]) * size)
                for i, size in enumerate([1200] * 7 + [500])
            ]
            (frame,) = coalesce(sent, udp=True)
            assert VnetHeader.decode(frame).gso_type == GSO_UDP_L4
            assert tun.write(frame)
            sink.settimeout(2)
            got = [sink.recv(2000) for _ in sent]
        assert got == [packet[28:] for packet in sent]
    with TunDevice.open("lguso%d") as plain:
        assert not plain.probe_uso_writes()


def test_link_index_is_cached_and_relearned_when_the_link_is_recreated(
    inside: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LinkManager() as links:
        lookups: list[str] = []
        real_lookup = socket.if_nametoindex

        def counting_lookup(ifname: str) -> int:
            lookups.append(ifname)
            return real_lookup(ifname)

        monkeypatch.setattr(socket, "if_nametoindex", counting_lookup)
        with TunDevice.open("lgre0") as tun:
            links.set_up(tun.name)
            links.set_mtu(tun.name, 1400)
            links.add_route("203.0.113.0/24", tun.name)
            assert links.mtu(tun.name) == 1400 and links.is_up(tun.name)
            first = links.index(tun.name)
            assert lookups == ["lgre0"]  # one listing for five calls
        # Closing the last fd removed the link; one of the same name is another link.
        with TunDevice.open("lgre0") as tun:
            links.set_mtu(tun.name, 1300)
            second = links.index(tun.name)
            assert second != first
            assert links.mtu(tun.name) == 1300
            links.set_up(tun.name)
            links.add_route("203.0.113.0/24", tun.name)
            assert ipaddress.ip_network("203.0.113.0/24") in {
                r.destination for r in links.routes(ifname=tun.name)
            }
            links.remove_route("203.0.113.0/24", tun.name)
            assert lookups == ["lgre0", "lgre0"]
        links.remove_route("203.0.113.0/24", "lgre0")  # the link took its routes along
        with pytest.raises(LinkError, match="no such interface"):
            links.set_up("lgre0")
        assert ipaddress.ip_interface("127.0.0.1/8") in links.all_addresses()
