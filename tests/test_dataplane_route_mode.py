"""Route-mode CHILD SAs in the data plane, in memory: a TUN per connection.

Whatever a route-mode connection's TUN gives goes into that connection's CHILD SA (no
SPD lookup: routing chose the TUN), and what the SA opens is written to that TUN;
policy-mode SAs keep the gateway's TUN and the SPD beside them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from daemon.childsa import ChildSaEntry, entry_from_event
from daemon.dataplane import DataPlane, Drop
from daemon.pump import Pump
from ikev2.events import ChildSaInstalled
from ikev2.ts import TrafficSelector as IkeTs
from testkit.dataplane import Wire, echo_request, events, ipv4, ipv6
from tun import memory_tun_pair

ANY = (IkeTs.from_network("0.0.0.0/0"), IkeTs.from_network("::/0"))


def route_events(uid: int, child: str = "vpc") -> tuple[ChildSaInstalled, ChildSaInstalled]:
    a, b = events("aes128gcm16", udp=False, uid=uid)
    changes = {"child": child, "local_ts": ANY, "remote_ts": ANY}
    return dataclasses.replace(a, **changes), dataclasses.replace(b, **changes)  # type: ignore[arg-type]


@dataclass
class Gateways:
    a: DataPlane
    b: DataPlane
    wire_a: Wire
    wire_b: Wire

    def a_sends(self, interface: str | None, packets: list[bytes]) -> None:
        if interface is None:
            self.a.from_tun(packets)
        else:
            self.a.from_route_tun(interface, packets)
        esp = list(self.wire_a.esp)
        self.wire_a.esp.clear()
        self.b.from_esp(esp)


def install(
    gw: Gateways, pair: tuple[ChildSaInstalled, ChildSaInstalled], interface: str | None
) -> tuple[ChildSaEntry, ChildSaEntry]:
    ea, eb = entry_from_event(pair[0]), entry_from_event(pair[1])
    ea.interface = eb.interface = interface
    preferred = pair[0].rekey_of is not None
    gw.a.install(ea, preferred=preferred)
    gw.b.install(eb, preferred=preferred)
    return ea, eb


def gateways() -> Gateways:
    wire_a, wire_b = Wire(), Wire()
    return Gateways(DataPlane(wire_a), DataPlane(wire_b), wire_a, wire_b)


def test_a_route_tun_sends_anything_into_its_sa_and_the_peer_writes_to_its_tun() -> None:
    gw = gateways()
    install(gw, events("aes128gcm16", udp=False, uid=1), None)  # policy beside it
    install(gw, route_events(2), "lg-vpc")
    # Any destination: the selectors are everything, routing chose the TUN.
    anywhere = [
        ipv4("198.51.100.99", "203.0.113.88", echo_request(1), proto=1),
        ipv6("2001:db8:ff::1", "2001:db8:1234::5", echo_request(2), proto=58),
    ]
    gw.a_sends("lg-vpc", anywhere)
    assert gw.wire_b.tuns() == {"lg-vpc": anywhere}
    # The policy SA still takes its subnets' traffic from the gateway's TUN.
    policy = [ipv4("192.0.2.10", "203.0.113.10", echo_request(3), proto=1)]
    gw.a_sends(None, policy)
    assert gw.wire_b.tun(None) == policy
    [sa_policy, sa_route] = gw.a.status()["sas"]
    assert (sa_policy["packets_out"], sa_route["packets_out"]) == (1, 2)
    assert sa_route["interface"] == "lg-vpc" and sa_policy["interface"] is None


def test_the_route_sa_is_not_in_the_spd() -> None:
    gw = gateways()
    install(gw, events("aes128gcm16", udp=False, uid=1), None)
    install(gw, route_events(2), "lg-vpc")
    # Outside the policy's subnets, from the gateway's TUN: no policy, although a
    # route-mode SA with 0.0.0.0/0 is installed.
    gw.a_sends(None, [ipv4("192.0.2.10", "198.51.100.88", echo_request(1), proto=1)])
    assert gw.a.total_drops() == {Drop.NO_POLICY.value: 1}
    assert gw.wire_b.tuns() == {}


def test_a_route_tun_without_an_sa_drops_and_counts() -> None:
    gw = gateways()
    install(gw, route_events(2), "lg-vpc")
    gw.a_sends("lg-other", [ipv4("192.0.2.20", "203.0.113.20", echo_request(1), proto=1)])
    assert gw.a.total_drops() == {Drop.NO_POLICY.value: 1}


def test_a_rekey_moves_the_route_tun_to_the_new_sa_and_removal_of_the_last_stops_it() -> None:
    gw = gateways()
    old_a, _old_b = install(gw, route_events(2), "lg-vpc")
    new = tuple(dataclasses.replace(e, rekey_of=2) for e in route_events(3))
    new_a, _new_b = install(gw, new, "lg-vpc")  # type: ignore[arg-type]
    packet = ipv4("192.0.2.20", "203.0.113.30", echo_request(1), proto=1)
    gw.a_sends("lg-vpc", [packet])
    assert (old_a.outbound.packet_count, new_a.outbound.packet_count) == (0, 1)
    gw.a.remove(new_a.unique_id)
    gw.a_sends("lg-vpc", [packet])
    assert old_a.outbound.packet_count == 1  # the one left takes over
    gw.a.remove(old_a.unique_id)
    gw.a_sends("lg-vpc", [packet])
    assert gw.a.total_drops()[Drop.NO_POLICY.value] == 1
    assert gw.a.route_interfaces() == []
    assert gw.wire_b.tun("lg-vpc") == [packet, packet]


def test_narrower_selectors_in_route_mode_are_still_enforced() -> None:
    gw = gateways()
    a, b = events("aes128gcm16", udp=False, uid=4)  # 192.0.2.0/24 === 203.0.113.0/24, v4 and v6
    install(gw, (a, b), "lg-vpc")
    inside = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    outside = ipv4("192.0.2.10", "198.51.100.88", echo_request(2), proto=1)
    gw.a_sends("lg-vpc", [inside, outside])
    assert gw.wire_b.tuns() == {"lg-vpc": [inside]}
    assert gw.a.total_drops() == {Drop.NO_POLICY.value: 1}


def test_too_big_from_a_route_tun_is_answered_into_that_tun() -> None:
    gw = gateways()
    [entry, _] = install(gw, route_events(2), "lg-vpc")
    big = ipv4("192.0.2.20", "203.0.113.30", bytes(entry.mtu + 100), proto=17, df=True)
    gw.a_sends("lg-vpc", [big])
    [reply] = gw.wire_a.tun("lg-vpc")
    assert reply[9] == 1 and reply[20] == 3 and reply[21] == 4  # ICMP frag needed
    assert entry.drops[Drop.TOO_BIG.value] == 1


def test_the_pump_reads_and_writes_each_route_tun() -> None:
    gateway_tun, _kernel = memory_tun_pair("lockgate0", "kernel0")
    route_tun, route_kernel = memory_tun_pair("lg-vpc", "kernel-vpc")
    pump = Pump(gateway_tun)
    pump.add_route_tun(route_tun)
    a, _b = route_events(2)
    entry = entry_from_event(a)
    entry.interface = "lg-vpc"
    pump.plane.install(entry)
    packet = ipv4("192.0.2.20", "203.0.113.30", echo_request(1), proto=1)
    route_kernel.write(packet)
    pump._read_route_tun(pump.route_tuns["lg-vpc"])
    # Sealed for the SA (the pump has no socket here, so the send is a counted drop).
    assert entry.outbound.packet_count == 1
    assert entry.drops[Drop.SEND_FAILED.value] == 1
    assert pump.write_tun([packet], "lg-vpc") == 1
    assert route_kernel.read() == packet
    assert pump.write_tun([packet], "lg-gone") == 0
    assert pump.remove_route_tun("lg-vpc") is route_tun
    assert pump.route_tuns == {}
    for end in (gateway_tun, _kernel, route_tun, route_kernel):
        end.close()
