"""Traffic selectors and their narrowing (RFC 7296 §2.9), plus identities of ikev2.config."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.config import ConfigError, Identity, IdKind
from ikev2.ts import (
    TrafficSelector,
    TrafficSelectorError,
    format_selectors,
    is_subset,
    narrow,
)

TS = TrafficSelector.from_network


def test_from_network_covers_the_subnet() -> None:
    ts = TS("192.0.2.0/24")
    assert ts.start_addr == ipaddress.ip_address("192.0.2.0")
    assert ts.end_addr == ipaddress.ip_address("192.0.2.255")
    assert (ts.protocol, ts.start_port, ts.end_port) == (0, 0, 65535)
    assert ts.ts_type == 7
    assert TS("2001:db8::/64").ts_type == 8
    assert str(ts) == "192.0.2.0/24"


def test_invalid_selectors_are_typed_errors() -> None:
    with pytest.raises(TrafficSelectorError):
        TS("not-a-subnet")
    with pytest.raises(TrafficSelectorError):
        TrafficSelector(ipaddress.ip_address("192.0.2.9"), ipaddress.ip_address("192.0.2.1"))
    with pytest.raises(TrafficSelectorError):
        TrafficSelector(ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1"))
    with pytest.raises(TrafficSelectorError):
        TS("192.0.2.0/24", ports=(0, 70000))


def test_narrowing_a_wider_proposal_to_our_subnet() -> None:
    # The peer proposes 0.0.0.0/0; we allow only 203.0.113.0/24: §2.9 narrows to ours.
    assert narrow([TS("0.0.0.0/0")], [TS("203.0.113.0/24")]) == (TS("203.0.113.0/24"),)


def test_narrowing_keeps_a_narrower_proposal() -> None:
    assert narrow([TS("203.0.113.64/26")], [TS("203.0.113.0/24")]) == (TS("203.0.113.64/26"),)


def test_narrowing_disjoint_selectors_is_empty() -> None:
    assert narrow([TS("198.51.100.0/24")], [TS("203.0.113.0/24")]) == ()
    assert narrow([TS("2001:db8::/32")], [TS("203.0.113.0/24")]) == ()


def test_narrowing_protocols_and_ports() -> None:
    tcp80 = TS("192.0.2.0/24", protocol=6, ports=(80, 80))
    assert narrow([tcp80], [TS("192.0.2.0/25")]) == (TS("192.0.2.0/25", 6, (80, 80)),)
    udp = TS("192.0.2.0/24", protocol=17)
    assert narrow([udp], [tcp80]) == ()
    ports = TS("192.0.2.0/24", protocol=6, ports=(1000, 2000))
    assert narrow([ports], [TS("192.0.2.0/24", 6, (1500, 3000))]) == (
        TS("192.0.2.0/24", 6, (1500, 2000)),
    )


def test_opaque_ports_match_only_any_or_opaque() -> None:
    opaque = TS("192.0.2.0/24", protocol=17, ports=(65535, 0))
    assert opaque.is_opaque_ports
    assert narrow([opaque], [TS("192.0.2.0/24")]) == (opaque,)
    assert narrow([opaque], [TS("192.0.2.0/24", 17, (53, 53))]) == ()


def test_is_subset_refuses_a_widened_answer() -> None:
    proposed = [TS("192.0.2.0/25")]
    assert is_subset([TS("192.0.2.0/26")], proposed)
    assert not is_subset([TS("192.0.2.0/24")], proposed)
    assert not is_subset([TS("192.0.2.0/25"), TS("203.0.113.0/24")], proposed)


def test_format_selectors() -> None:
    text = format_selectors([TS("192.0.2.0/24"), TS("203.0.113.0/24", 6, (80, 80))])
    assert text == "192.0.2.0/24 203.0.113.0/24[tcp/80]"
    assert format_selectors([]) == "(none)"


_v4 = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector:
    a, b = sorted((draw(_v4), draw(_v4)))
    p1, p2 = sorted((draw(st.integers(0, 65535)), draw(st.integers(0, 65535))))
    return TrafficSelector(a, b, draw(st.sampled_from([0, 6, 17])), p1, p2)


@settings(max_examples=150)
@given(selectors(), selectors())
def test_intersection_is_symmetric_and_contained(a: TrafficSelector, b: TrafficSelector) -> None:
    common = a.intersect(b)
    assert common == b.intersect(a)
    if common is not None:
        assert a.contains(common) and b.contains(common)
        assert narrow([a], [b]) == (common,)
    else:
        assert narrow([a], [b]) == ()


# --- identities (ikev2.config.Identity) ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "data"),
    [
        ("198.51.100.1", IdKind.IPV4, bytes([198, 51, 100, 1])),
        ("2001:db8::1", IdKind.IPV6, ipaddress.ip_address("2001:db8::1").packed),
        ("gw.example.net", IdKind.FQDN, b"gw.example.net"),
        ("@gw.example.net", IdKind.FQDN, b"gw.example.net"),
        ("admin@example.net", IdKind.RFC822, b"admin@example.net"),
        ("@#0a0b", IdKind.KEY_ID, b"\x0a\x0b"),
    ],
)
def test_identity_parse(text: str, kind: IdKind, data: bytes) -> None:
    ident = Identity.parse(text)
    assert (ident.kind, ident.data) == (kind, data)
    assert Identity.from_wire(ident.id_type, ident.data) == ident


def test_identity_dn_matches_strongswan_order_and_round_trips_to_text() -> None:
    # strongSwan writes "C=CH, O=Example, CN=gw": C is the first RDN of the DER SEQUENCE.
    ident = Identity.parse("C=CH, O=Example, CN=gw.example.net")
    assert ident.kind is IdKind.DN
    assert ident.data.startswith(bytes.fromhex("3038310b3009060355040613024348"))
    assert str(ident) == "C=CH, O=Example, CN=gw.example.net"


def test_identity_errors() -> None:
    with pytest.raises(ConfigError):
        Identity.parse("")
    with pytest.raises(ConfigError):
        Identity.parse("gw.exämple.net")
    with pytest.raises(ConfigError):
        Identity.from_wire(1, b"\x01\x02")
    with pytest.raises(ConfigError):
        Identity.from_wire(200, b"x")


_port_ranges = st.one_of(
    st.sampled_from([(0, 65535), (65535, 0), (80, 80)]),
    st.tuples(st.integers(0, 100), st.integers(0, 100)).map(lambda pair: tuple(sorted(pair))),
)


@st.composite
def mixed_selectors(draw: st.DrawFn) -> TrafficSelector:
    # Small ranges of both families, OPAQUE and "any" ports: containment happens often.
    v4 = draw(st.booleans())
    make = ipaddress.IPv4Address if v4 else ipaddress.IPv6Address
    base = 0xC0000200 if v4 else 0x20010DB8 << 96  # 192.0.2.0, 2001:db8::
    low, high = sorted((draw(st.integers(0, 15)), draw(st.integers(0, 15))))
    start_port, end_port = draw(_port_ranges)
    protocol = draw(st.sampled_from([0, 6, 17]))
    return TrafficSelector(make(base + low), make(base + high), protocol, start_port, end_port)


@settings(max_examples=300)
@given(mixed_selectors(), mixed_selectors())
def test_contains_is_intersection_equals_other(a: TrafficSelector, b: TrafficSelector) -> None:
    # contains() checks the fields directly; it must agree with its definition, for
    # unrelated selectors (mostly not contained) and for the intersection (contained).
    assert a.contains(b) == (a.intersect(b) == b)
    assert a.contains(a)
    common = a.intersect(b)
    if common is not None:
        assert a.contains(common) and b.contains(common)
