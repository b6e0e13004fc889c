"""SPD, SAD and the inner-packet helpers they rely on."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.packet import (
    OPAQUE_PORT,
    checksum,
    flow_of,
    fragment_ipv4,
    may_fragment,
    too_big_reply,
)
from daemon.sad import Sad, SpiInUse
from daemon.spd import Policy, SelectorError, Spd, TrafficSelector, selectors_from_networks
from testkit.dataplane import ipv4 as dataplane_ipv4
from testkit.dataplane import ipv6 as dataplane_ipv6


def ipv4(src: str, dst: str, proto: int = 17, payload: bytes = b"", df: bool = True) -> bytes:
    """test_dataplane's IPv4 builder with the protocol before the payload and IP ID 1."""
    return dataplane_ipv4(src, dst, payload, proto, df=df, ident=1)


def ipv6(src: str, dst: str, proto: int = 17, payload: bytes = b"") -> bytes:
    """test_dataplane's IPv6 builder with the protocol before the payload."""
    return dataplane_ipv6(src, dst, payload, proto)


def udp(sport: int, dport: int, data: bytes = b"x") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


# --- packet.flow_of ----------------------------------------------------------------


def test_flow_of_ipv4_udp_reads_addresses_and_ports() -> None:
    flow = flow_of(ipv4("192.0.2.1", "203.0.113.9", 17, udp(1234, 53)))
    assert flow == (
        4,
        int(ipaddress.IPv4Address("192.0.2.1")),
        int(ipaddress.IPv4Address("203.0.113.9")),
        17,
        1234,
        53,
    )


def test_flow_of_ipv6_icmp_uses_type_and_code_as_port() -> None:
    flow = flow_of(ipv6("2001:db8:1::1", "2001:db8:2::1", 58, bytes([128, 0, 0, 0])))
    assert flow is not None
    assert flow[0] == 6 and flow[3] == 58
    assert flow[4] == flow[5] == 128 << 8


def test_flow_of_non_first_fragment_has_opaque_ports() -> None:
    packet = bytearray(ipv4("192.0.2.1", "203.0.113.9", 17, udp(1, 2)))
    packet[6:8] = struct.pack("!H", 0x0001)  # fragment offset 8 bytes
    flow = flow_of(packet)
    assert flow is not None and flow[4] == flow[5] == OPAQUE_PORT


@pytest.mark.parametrize(
    "packet", [b"", b"\x45", b"\x45" + bytes(10), b"\x60" + bytes(30), b"\x75" + bytes(40)]
)
def test_flow_of_rejects_short_or_unknown_packets(packet: bytes) -> None:
    assert flow_of(packet) is None


@settings(max_examples=200)
@given(st.binary(max_size=80))
def test_flow_of_never_raises_on_random_bytes(data: bytes) -> None:
    flow_of(data)
    too_big_reply(data, 1400)


# --- packet.too_big_reply ----------------------------------------------------------


def test_too_big_reply_ipv4_is_fragmentation_needed_with_mtu() -> None:
    original = ipv4("192.0.2.1", "203.0.113.9", 6, bytes(1500))
    reply = too_big_reply(original, 1400, source=ipaddress.IPv4Address("192.0.2.254").packed)
    assert reply is not None
    assert checksum(reply[:20]) == 0
    assert reply[9] == 1  # ICMP
    assert reply[12:16] == ipaddress.IPv4Address("192.0.2.254").packed
    assert reply[16:20] == ipaddress.IPv4Address("192.0.2.1").packed
    icmp = reply[20:]
    assert (icmp[0], icmp[1]) == (3, 4)
    assert struct.unpack("!H", icmp[6:8])[0] == 1400
    assert checksum(icmp) == 0
    assert icmp[8:] == original[:28]


def test_too_big_reply_ipv6_is_packet_too_big_with_valid_checksum() -> None:
    original = ipv6("2001:db8:1::1", "2001:db8:2::1", 6, bytes(1600))
    reply = too_big_reply(original, 1300)
    assert reply is not None
    assert reply[6] == 58
    src, dst = reply[8:24], reply[24:40]
    assert dst == original[8:24] and src == original[24:40]
    icmp = reply[40:]
    assert icmp[0] == 2 and struct.unpack("!I", icmp[4:8])[0] == 1300
    assert len(reply) <= 1280
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    assert checksum(pseudo + icmp) == 0


def test_too_big_reply_ipv6_never_advertises_below_minimum_mtu() -> None:
    reply = too_big_reply(ipv6("2001:db8::1", "2001:db8::2", 17, bytes(1400)), 1000)
    assert reply is not None
    assert struct.unpack("!I", reply[44:48])[0] == 1280


def test_no_too_big_reply_about_an_icmp_error() -> None:
    error = ipv4("192.0.2.1", "203.0.113.9", 1, bytes([3, 1, 0, 0]) + bytes(1500))
    echo = ipv4("192.0.2.1", "203.0.113.9", 1, bytes([8, 0, 0, 0]) + bytes(1500))
    assert too_big_reply(error, 1400) is None
    assert too_big_reply(echo, 1400) is not None


# --- packet.fragment_ipv4 ----------------------------------------------------------


def test_fragment_ipv4_splits_and_reassembles() -> None:
    payload = bytes(range(256)) * 8
    original = ipv4("192.0.2.1", "203.0.113.9", 17, payload, df=False)
    assert may_fragment(original)
    fragments = fragment_ipv4(original, 576)
    assert fragments is not None and len(fragments) > 1
    data = b""
    for i, frag in enumerate(fragments):
        assert len(frag) <= 576
        assert checksum(frag[:20]) == 0
        flags_offset = struct.unpack("!H", frag[6:8])[0]
        assert (flags_offset & 0x1FFF) * 8 == len(data)
        assert bool(flags_offset & 0x2000) == (i < len(fragments) - 1)
        data += frag[20:]
    assert data == payload


def test_may_fragment_respects_df() -> None:
    assert not may_fragment(ipv4("192.0.2.1", "203.0.113.9", df=True))
    assert not may_fragment(ipv6("2001:db8::1", "2001:db8::2"))


# --- spd ---------------------------------------------------------------------------


def test_selector_rejects_bad_ranges() -> None:
    with pytest.raises(SelectorError):
        TrafficSelector(4, 10, 5)
    with pytest.raises(SelectorError):
        TrafficSelector(4, 0, 1 << 32)
    with pytest.raises(SelectorError):
        TrafficSelector.from_range("192.0.2.1", "2001:db8::1")
    with pytest.raises(SelectorError):
        TrafficSelector(4, 0, 1, first_port=10, last_port=9)


def test_selector_str_and_networks() -> None:
    ts = TrafficSelector.from_network("192.0.2.0/24")
    assert str(ts) == "192.0.2.0/24"
    assert ts.networks() == [ipaddress.ip_network("192.0.2.0/24")]
    ranged = TrafficSelector.from_range("192.0.2.1", "192.0.2.2", 6, (80, 80))
    assert str(ranged) == "192.0.2.1-192.0.2.2[6/80-80]"


def test_spd_picks_most_specific_policy() -> None:
    spd: Spd[str] = Spd()
    spd.add(
        Policy(
            selectors_from_networks(["192.0.2.0/24"]),
            selectors_from_networks(["203.0.113.0/24"]),
            "wide",
        )
    )
    spd.add(
        Policy(
            selectors_from_networks(["192.0.2.0/24"]),
            selectors_from_networks(["203.0.113.128/25"]),
            "narrow",
        )
    )
    hit_narrow = spd.lookup(ipv4("192.0.2.5", "203.0.113.200", 17, udp(1, 2)))
    hit_wide = spd.lookup(ipv4("192.0.2.5", "203.0.113.20", 17, udp(1, 2)))
    miss = spd.lookup(ipv4("192.0.2.5", "198.51.100.1", 17, udp(1, 2)))
    wrong_source = spd.lookup(ipv4("198.51.100.7", "203.0.113.20", 17, udp(1, 2)))
    assert hit_narrow is not None and hit_narrow.target == "narrow"
    assert hit_wide is not None and hit_wide.target == "wide"
    assert miss is None and wrong_source is None


def test_spd_protocol_and_port_selectors() -> None:
    spd: Spd[str] = Spd()
    any_policy = Policy(
        selectors_from_networks(["192.0.2.0/24"]),
        selectors_from_networks(["203.0.113.0/24"]),
        "any",
    )
    dns_only = Policy(
        selectors_from_networks(["192.0.2.0/24"]),
        (TrafficSelector.from_network("203.0.113.0/24", 17, (53, 53)),),
        "dns",
    )
    spd.add(any_policy)
    spd.add(dns_only)
    dns = spd.lookup(ipv4("192.0.2.5", "203.0.113.1", 17, udp(4000, 53)))
    other = spd.lookup(ipv4("192.0.2.5", "203.0.113.1", 17, udp(4000, 54)))
    assert dns is not None and dns.target == "dns"
    assert other is not None and other.target == "any"
    # A non-first fragment has no ports: only the any-port policy may take it.
    frag = bytearray(ipv4("192.0.2.5", "203.0.113.1", 17, udp(4000, 53)))
    frag[6:8] = struct.pack("!H", 0x0002)
    frag_hit = spd.lookup(frag)
    assert frag_hit is not None and frag_hit.target == "any"


def test_spd_ipv6_and_mixed_families() -> None:
    spd: Spd[str] = Spd()
    spd.add(
        Policy(
            selectors_from_networks(["192.0.2.0/24", "2001:db8:1::/64"]),
            selectors_from_networks(["203.0.113.0/24", "2001:db8:2::/64"]),
            "both",
        )
    )
    v6 = spd.lookup(ipv6("2001:db8:1::5", "2001:db8:2::9", 58, bytes([128, 0, 0, 0])))
    v4 = spd.lookup(ipv4("192.0.2.5", "203.0.113.9"))
    cross = spd.lookup(ipv6("2001:db8:1::5", "2001:db8:3::9"))
    assert v6 is not None and v6.target == "both"
    assert v4 is not None and v4.target == "both"
    assert cross is None


def test_spd_remove_and_rekey_order() -> None:
    spd: Spd[str] = Spd()
    local = selectors_from_networks(["192.0.2.0/24"])
    remote = selectors_from_networks(["203.0.113.0/24"])
    old = Policy(local, remote, "old")
    new = Policy(local, remote, "new")
    spd.add(old)
    spd.add(new)
    packet = ipv4("192.0.2.5", "203.0.113.9")
    first = spd.lookup(packet)
    assert first is not None and first.target == "old"
    assert spd.remove(old)
    assert not spd.remove(old)
    second = spd.lookup(packet)
    assert second is not None and second.target == "new"
    assert len(spd) == 1


def test_policy_allows_inbound_only_inside_selectors() -> None:
    policy = Policy(
        selectors_from_networks(["192.0.2.0/24"]),
        selectors_from_networks(["203.0.113.0/24"]),
        "sa",
    )
    assert policy.allows_inbound(ipv4("203.0.113.9", "192.0.2.5"))
    assert not policy.allows_inbound(ipv4("198.51.100.9", "192.0.2.5"))  # spoofed source
    assert not policy.allows_inbound(ipv4("203.0.113.9", "198.51.100.5"))
    assert not policy.allows_inbound(b"\x45garbage")


def test_spd_rejects_policy_without_selectors() -> None:
    spd: Spd[str] = Spd()
    with pytest.raises(SelectorError):
        spd.add(Policy((), selectors_from_networks(["203.0.113.0/24"]), "x"))


# --- sad ---------------------------------------------------------------------------


def test_sad_lookup_add_remove() -> None:
    sad: Sad[str] = Sad()
    sad.add(0xC0FFEE01, "a")
    sad.add(0xC0FFEE02, "b")
    assert sad.lookup(0xC0FFEE01) == "a"
    assert sad.lookup(0xDEAD) is None
    with pytest.raises(SpiInUse):
        sad.add(0xC0FFEE01, "c")
    with pytest.raises(ValueError):
        sad.add(0, "zero")
    assert sad.remove(0xC0FFEE01) == "a"
    assert sad.remove(0xC0FFEE01) is None
    assert 0xC0FFEE02 in sad and len(sad) == 1


def test_opaque_port_selector_matches_only_packets_without_ports() -> None:
    opaque = TrafficSelector.from_network("203.0.113.0/24", 17, (65535, 0))
    assert opaque.opaque and str(opaque) == "203.0.113.0/24[17/OPAQUE]"
    policy = Policy(selectors_from_networks(["192.0.2.0/24"]), (opaque,), "opaque")
    spd: Spd[str] = Spd()
    spd.add(policy)
    whole = ipv4("192.0.2.5", "203.0.113.1", 17, udp(4000, 53))
    frag = bytearray(whole)
    frag[6:8] = struct.pack("!H", 0x0002)
    assert spd.lookup(whole) is None
    assert spd.lookup(frag) is policy


def test_spd_preferred_policy_goes_ahead_of_its_equals_only() -> None:
    spd: Spd[str] = Spd()
    local = selectors_from_networks(["192.0.2.0/24"])
    spd.add(Policy(local, selectors_from_networks(["203.0.113.0/24"]), "old"))
    spd.add(Policy(local, selectors_from_networks(["203.0.113.0/25"]), "narrow"))
    spd.add(Policy(local, selectors_from_networks(["203.0.113.0/24"]), "new"), preferred=True)
    wide = spd.lookup(ipv4("192.0.2.5", "203.0.113.200"))
    narrow = spd.lookup(ipv4("192.0.2.5", "203.0.113.20"))
    assert wide is not None and wide.target == "new"
    assert narrow is not None and narrow.target == "narrow"  # specificity still rules


def test_spd_rejects_a_policy_installed_twice() -> None:
    spd: Spd[str] = Spd()
    policy = Policy(
        selectors_from_networks(["192.0.2.0/24"]), selectors_from_networks(["203.0.113.0/24"]), "p"
    )
    spd.add(policy)
    with pytest.raises(SelectorError):
        spd.add(policy)
    assert len(spd) == 1 and spd.remove(policy) and len(spd) == 0
    assert spd.lookup(ipv4("192.0.2.5", "203.0.113.9")) is None


# Prefixes of the documentation /24s: (prefix length 24..27, which subnet of that size).
_subnet = st.integers(24, 27).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, 2 ** (n - 24) - 1))
)


def _net(base: str, subnet: tuple[int, int]) -> str:
    length, index = subnet
    first = int(ipaddress.IPv4Address(base)) + (index << (32 - length))
    return f"{ipaddress.IPv4Address(first)}/{length}"


def _lookups(spd: Spd[str], probes: list[tuple[int, int]]) -> list[str | None]:
    found = []
    for src, dst in probes:
        policy = spd.lookup(ipv4(f"192.0.2.{src}", f"203.0.113.{dst}"))
        found.append(policy.target if policy is not None else None)
    return found


@settings(max_examples=40, deadline=None)
@given(
    pairs=st.lists(st.tuples(_subnet, _subnet), min_size=1, max_size=12, unique=True),
    data=st.data(),
)
def test_spd_insertion_order_does_not_change_lookups(
    pairs: list[tuple[tuple[int, int], tuple[int, int]]], data: st.DataObject
) -> None:
    # Distinct (local, remote) prefix pairs never tie: two prefixes of one length are
    # equal or disjoint, so only specificity decides, never the order of installation.
    policies = [
        Policy(
            selectors_from_networks([_net("192.0.2.0", local)]),
            selectors_from_networks([_net("203.0.113.0", remote)]),
            f"{_net('192.0.2.0', local)}=={_net('203.0.113.0', remote)}",
        )
        for local, remote in pairs
    ]
    probes = data.draw(
        st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=16)
    )
    in_order: Spd[str] = Spd()
    for policy in policies:
        in_order.add(policy)
    shuffled: Spd[str] = Spd()
    for policy in data.draw(st.permutations(policies)):
        shuffled.add(policy)
    assert _lookups(shuffled, probes) == _lookups(in_order, probes)
    # Removing some policies leaves the same lookups as never having added them.
    gone = data.draw(st.sets(st.sampled_from(range(len(policies)))))
    rebuilt: Spd[str] = Spd()
    for i, policy in enumerate(policies):
        if i in gone:
            assert shuffled.remove(policy)
        else:
            rebuilt.add(policy)
    assert len(shuffled) == len(policies) - len(gone)
    assert _lookups(shuffled, probes) == _lookups(rebuilt, probes)


def test_spd_lookup_matches_a_linear_most_specific_search() -> None:
    # The reference: among matching policies the narrowest remote, then local range,
    # then the oldest; ties and a removal in the middle included.
    spd: Spd[str] = Spd()
    installed: list[Policy[str]] = []
    for i, (local, remote) in enumerate(
        [("24", "24"), ("25", "24"), ("24", "26"), ("24", "24"), ("26", "26"), ("25", "24")]
    ):
        policy = Policy(
            selectors_from_networks([f"192.0.2.0/{local}"]),
            selectors_from_networks([f"203.0.113.0/{remote}"]),
            f"p{i}",
        )
        spd.add(policy)
        installed.append(policy)
    assert spd.remove(installed[1])
    installed.pop(1)
    for src, dst in [(5, 9), (200, 9), (5, 100), (200, 200), (5, 40)]:
        packet = ipv4(f"192.0.2.{src}", f"203.0.113.{dst}")
        matching = [
            p
            for p in installed
            if p.local[0].first <= int(ipaddress.IPv4Address(f"192.0.2.{src}")) <= p.local[0].last
            and p.remote[0].first
            <= int(ipaddress.IPv4Address(f"203.0.113.{dst}"))
            <= p.remote[0].last
        ]
        expected = min(
            matching,
            key=lambda p: (p.remote[0].size, p.local[0].size, installed.index(p)),
            default=None,
        )
        assert spd.lookup(packet) is expected
