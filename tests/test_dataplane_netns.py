"""The pump on real TUN devices and sockets, in namespaces, with hand-installed SAs.

No IKE here: each gateway gets the CHILD SA a negotiation would have produced (from
`ChildSaInstalled` events with mirrored keys), so this checks the data plane's I/O on
its own: TUN reads and writes, UDP 4500 and raw ESP sockets, routes, ICMP too-big,
IPv4 and IPv6 inner traffic, with ping and a hashed TCP transfer between the hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from netns import SiteToSite, in_namespace, ping, site_to_site, tcp_transfer, wait_for_ping

from daemon.childsa import entry_from_event
from daemon.offload import OffloadMode, open_tun
from daemon.pump import Pump
from testkit.dataplane import GW_A, GW_B, events
from tun import LinkManager, TunDevice

pytestmark = pytest.mark.netns


@dataclass
class GatewayPump:
    pump: Pump
    tun: TunDevice
    links: LinkManager


@contextlib.contextmanager
def pumps(
    topo: SiteToSite,
    udp: bool,
    suite: str = "aes128gcm16",
    offload: OffloadMode = OffloadMode.OFF,
) -> Iterator[list[GatewayPump]]:
    """Both gateways' pumps running on one loop in a background thread."""
    ev_a, ev_b = events(suite, udp=udp)
    gateways: list[GatewayPump] = []
    loop = asyncio.new_event_loop()
    thread: threading.Thread | None = None
    try:
        for ns, address, event, remote_nets in (
            (topo.gw_a, GW_A, ev_a, (topo.site_b.subnet4, topo.site_b.subnet6)),
            (topo.gw_b, GW_B, ev_b, (topo.site_a.subnet4, topo.site_a.subnet6)),
        ):
            with in_namespace(ns.name):
                tun = open_tun("lgtun0", offload)
                links = LinkManager()
                entry = entry_from_event(event, 1500)
                links.quiet_ipv6(tun.name)
                links.set_mtu(tun.name, entry.mtu)
                links.set_up(tun.name)
                for net in remote_nets:
                    links.add_route(net, tun.name)
                # High ports: the namespace is ours, but keep clear of a daemon's 500/4500.
                pump = Pump(
                    tun,
                    ike_port=event.local[1] + 10000,
                    nat_port=event.local[1],
                    offload=offload is not OffloadMode.OFF,
                )
                pump.open([address], raw_esp=not udp)
                pump.plane.install(entry)
            gateways.append(GatewayPump(pump, tun, links))

        def run() -> None:
            asyncio.set_event_loop(loop)
            for gw in gateways:
                gw.pump.start(loop)
            loop.run_forever()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield gateways
    finally:
        if thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        for gw in gateways:
            gw.pump.close()
            gw.tun.close()
            gw.links.close()
        loop.close()


@pytest.mark.parametrize("udp", [False, True], ids=["raw-esp", "udp-encap"])
def test_ping_and_tcp_transfer_over_the_pump(udp: bool) -> None:
    with site_to_site() as topo, pumps(topo, udp) as gateways:
        # The first IPv6 packets wait for neighbour discovery on the LANs.
        wait_for_ping(topo.host_a, topo.site_b.host6)
        ping(topo.host_a, topo.site_b.host4)
        ping(topo.host_a, topo.site_b.host6)
        ping(topo.host_b, topo.site_a.host4)
        result = tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host4, size=4 << 20)
        assert result.sent_sha256 == result.received_sha256
        result6 = tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host6, size=1 << 20)
        assert result6.sent_sha256 == result6.received_sha256
        sa = gateways[0].pump.plane.status()["sas"][0]
        assert sa["encap"] == ("udp" if udp else "esp")
        assert sa["packets_out"] > 1000 and sa["packets_in"] > 100
        assert gateways[0].pump.plane.total_drops().get("icv_failure", 0) == 0


def _reassembled(ns_run: str, topo: SiteToSite) -> int:
    # Ip ReasmReqds: outer fragments the gateway had to reassemble (RFC 791).
    gw = topo.gw_b if ns_run == "B" else topo.gw_a
    lines = [line.split() for line in gw.run("cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [line for line in lines if line and line[0] == "Ip:"][:2]
    return int(values[names.index("ReasmReqds")])


@pytest.mark.parametrize("mode", [OffloadMode.ALL, OffloadMode.NO_TSO], ids=["tso", "no-tso"])
@pytest.mark.parametrize("udp", [False, True], ids=["raw-esp", "udp-encap"])
def test_tcp_transfer_with_offloads(udp: bool, mode: OffloadMode) -> None:
    """TSO super-packets cut in Python (or not), coalesced TUN writes and (in UDP)
    GSO/GRO carry a hashed transfer both ways, with no outer fragments."""
    with site_to_site() as topo, pumps(topo, udp, offload=mode) as gateways:
        assert gateways[0].tun.vnet_hdr
        wait_for_ping(topo.host_a, topo.site_b.host6)
        ping(topo.host_a, topo.site_b.host4)
        result = tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host4, size=8 << 20)
        assert result.sent_sha256 == result.received_sha256
        back = tcp_transfer(topo.host_b, topo.host_a, topo.site_a.host6, size=2 << 20)
        assert back.sent_sha256 == back.received_sha256
        a, b = (gw.pump.plane for gw in gateways)
        assert (a.counters["tso_frames_read"] > 0) == (mode is OffloadMode.ALL)
        assert b.counters["tun_packets_coalesced"] > 0
        if udp:
            assert a.counters["gso_sends"] > 0
            assert b.counters["gro_datagrams_read"] > 0
        for plane in (a, b):
            drops = plane.total_drops()
            assert drops.get("icv_failure", 0) == 0 and drops.get("replay", 0) == 0
            assert drops.get("malformed", 0) == 0
        # ESP packets were cut to fit the path: nothing needed reassembly.
        assert _reassembled("A", topo) == 0 and _reassembled("B", topo) == 0


@pytest.mark.parametrize("offload", [OffloadMode.OFF, OffloadMode.ALL], ids=["plain", "offload"])
def test_oversized_ping_with_df_gets_fragmentation_needed(offload: OffloadMode) -> None:
    with site_to_site() as topo, pumps(topo, udp=True, offload=offload) as gateways:
        mtu = gateways[0].pump.plane.entries[1].mtu
        # Raise the TUN MTU above the SA's, so the kernel forwards an oversized packet
        # into the TUN and the pump itself must answer with ICMP.
        gateways[0].links.set_mtu(gateways[0].tun.name, 1500)
        proc = topo.host_a.run(
            "ping", "-n", "-c", "2", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1450",
            topo.site_b.host4, check=False,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        assert f"mtu = {mtu}" in out or f"mtu={mtu}" in out, out
        assert gateways[0].pump.plane.total_drops().get("too_big", 0) >= 1
        # A ping that fits still goes through.
        ping(topo.host_a, topo.site_b.host4, size=mtu - 28)


def test_kernel_drops_before_the_pump_reads_are_in_status() -> None:
    # Nothing reads: a flood into the pump's UDP 4500 socket overflows its receive
    # buffer, and packets routed into the TUN overflow its queue. Both show in the
    # data plane's status, by where they were lost.
    import socket

    from netns import Lab

    with Lab() as lab:
        ns = lab.namespace("kdrop")
        ns.ip("link", "set", "lo", "up")
        with in_namespace(ns.name):
            tun = open_tun("lgkdrop0", OffloadMode.NO_TSO)
            try:
                with LinkManager() as links:
                    links.quiet_ipv6(tun.name)
                    links.set_up(tun.name)
                    links.add_route("203.0.113.0/24", tun.name)
                pump = Pump(tun, ike_port=14500, nat_port=14501)
                pump.open(["127.0.0.1"], raw_esp=False)
                assert pump.plane.status()["kernel_drops"] == {}
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                    out.setblocking(False)
                    # 8 MiB of receive buffer, then drops; 2500 packets for a 2000 queue.
                    for _ in range(12000):
                        with contextlib.suppress(BlockingIOError):
                            out.sendto(b"\x01" * 1400, ("127.0.0.1", 14501))
                    for _ in range(2500):
                        with contextlib.suppress(BlockingIOError):
                            out.sendto(b"\x02" * 1000, ("203.0.113.5", 9))
                drops = pump.plane.status()["kernel_drops"]
                assert drops.keys() == {"udp_receive_buffer", "tun_queue"}
                assert drops["udp_receive_buffer"] > 1000 and drops["tun_queue"] >= 400
                pump.close()
            finally:
                tun.close()
