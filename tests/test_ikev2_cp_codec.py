"""Configuration attribute values (RFC 7296 §3.15.1, RFC 8598): layouts, round-trips,
and wrong lengths refused with the codec's error type."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.codec import ConfigAttribute, Configuration
from ikev2.codec.cp import CpValue, decode_attribute, encode_attribute
from ikev2.constants import CfgType
from ikev2.constants import CpAttributeType as A
from ikev2.errors import InvalidSyntax

EXAMPLES = settings(max_examples=100, deadline=None)

ip4 = st.ip_addresses(v=4).map(lambda a: ipaddress.IPv4Address(int(a)))
ip6 = st.ip_addresses(v=6).map(lambda a: ipaddress.IPv6Address(int(a)))
values: st.SearchStrategy[tuple[A, CpValue]] = st.one_of(
    st.tuples(st.sampled_from([A.INTERNAL_IP4_ADDRESS, A.INTERNAL_IP4_DNS]), ip4),
    st.tuples(
        st.just(A.INTERNAL_IP4_NETMASK),
        st.integers(0, 32).map(lambda n: ipaddress.IPv4Network(f"0.0.0.0/{n}").netmask),
    ),
    st.tuples(st.just(A.INTERNAL_IP6_DNS), ip6),
    st.tuples(
        st.just(A.INTERNAL_IP6_ADDRESS),
        st.tuples(ip6, st.integers(0, 128)).map(lambda t: ipaddress.IPv6Interface(t)),
    ),
    st.tuples(
        st.just(A.INTERNAL_IP4_SUBNET),
        st.tuples(ip4, st.integers(0, 32)).map(lambda t: ipaddress.IPv4Network(t, strict=False)),
    ),
    st.tuples(
        st.just(A.INTERNAL_IP6_SUBNET),
        st.tuples(ip6, st.integers(0, 128)).map(lambda t: ipaddress.IPv6Network(t, strict=False)),
    ),
    st.tuples(
        st.just(A.INTERNAL_DNS_DOMAIN),
        st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,3}", fullmatch=True),
    ),
)


def test_layouts_rfc7296_3_15_1() -> None:
    assert encode_attribute(A.INTERNAL_IP4_ADDRESS) == ConfigAttribute(1, b"")
    sub = encode_attribute(A.INTERNAL_IP4_SUBNET, ipaddress.IPv4Network("203.0.113.0/24"))
    assert sub.value == bytes([203, 0, 113, 0, 255, 255, 255, 0])
    six = encode_attribute(A.INTERNAL_IP6_ADDRESS, ipaddress.IPv6Interface("2001:db8::5/64"))
    assert six.value == ipaddress.IPv6Address("2001:db8::5").packed + bytes([64])
    domain = encode_attribute(A.INTERNAL_DNS_DOMAIN, "corp.example.net")
    assert domain == ConfigAttribute(25, b"corp.example.net")
    payload = Configuration(CfgType.CFG_REPLY, (sub, domain))
    assert payload.encode_body()[:4] == bytes([2, 0, 0, 0])
    assert Configuration.decode_body(payload.encode_body()) == payload
    assert decode_attribute(ConfigAttribute(A.INTERNAL_IP4_DNS, b"")) is None


@EXAMPLES
@given(values)
def test_values_round_trip(item: tuple[A, CpValue]) -> None:
    kind, value = item
    assert decode_attribute(encode_attribute(kind, value)) == value


@EXAMPLES
@given(
    st.sampled_from(
        [
            A.INTERNAL_IP4_ADDRESS,
            A.INTERNAL_IP4_NETMASK,
            A.INTERNAL_IP4_DNS,
            A.INTERNAL_IP6_ADDRESS,
            A.INTERNAL_IP6_DNS,
            A.INTERNAL_IP4_SUBNET,
            A.INTERNAL_IP6_SUBNET,
            A.INTERNAL_DNS_DOMAIN,
            A.APPLICATION_VERSION,
        ]
    ),
    st.binary(max_size=40),
)
def test_random_values_raise_only_invalid_syntax(kind: A, data: bytes) -> None:
    with contextlib.suppress(InvalidSyntax):
        decode_attribute(ConfigAttribute(kind, data))


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (A.INTERNAL_IP4_ADDRESS, bytes(5)),
        (A.INTERNAL_IP6_ADDRESS, bytes(16)),
        (A.INTERNAL_IP6_ADDRESS, bytes(16) + bytes([129])),
        (A.INTERNAL_IP4_SUBNET, bytes(4) + bytes([255, 0, 255, 0])),
        (A.INTERNAL_DNS_DOMAIN, b"\xff"),
    ],
)
def test_bad_values_are_invalid_syntax(kind: A, data: bytes) -> None:
    with pytest.raises(InvalidSyntax):
        decode_attribute(ConfigAttribute(kind, data))
