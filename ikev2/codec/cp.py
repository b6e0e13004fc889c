"""The values of configuration attributes (RFC 7296 §3.15.1, RFC 8598 §4).

`ikev2.codec.payloads.Configuration` carries attributes as (type, octets). These
functions turn the types a remote-access server hands out into Python values and
back: addresses, netmasks, subnets and DNS domains. An empty value (a CFG_REQUEST
asking for any) is None; a length the RFC does not allow is `InvalidSyntax`.
"""

from __future__ import annotations

import ipaddress

from ikev2.codec.payloads import ConfigAttribute
from ikev2.constants import CpAttributeType
from ikev2.errors import InvalidSyntax

CpValue = (
    ipaddress.IPv4Address
    | ipaddress.IPv6Address
    | ipaddress.IPv4Network
    | ipaddress.IPv6Network
    | ipaddress.IPv6Interface
    | str
)
"""A decoded attribute value."""

_A = CpAttributeType
_IP4 = frozenset({_A.INTERNAL_IP4_ADDRESS, _A.INTERNAL_IP4_NETMASK, _A.INTERNAL_IP4_DNS})
_IP6 = frozenset({_A.INTERNAL_IP6_DNS})
_SUBNETS = frozenset({_A.INTERNAL_IP4_SUBNET, _A.INTERNAL_IP6_SUBNET})
_DOMAIN_MAX = 255


def encode_attribute(attr_type: CpAttributeType, value: CpValue | None = None) -> ConfigAttribute:
    """An attribute of `attr_type` with `value` (None: empty, as a request asks)."""
    if value is None:
        return ConfigAttribute(attr_type)
    match attr_type, value:
        case (
            (_A.INTERNAL_IP4_ADDRESS | _A.INTERNAL_IP4_NETMASK | _A.INTERNAL_IP4_DNS),
            (ipaddress.IPv4Address()),
        ):
            return ConfigAttribute(attr_type, value.packed)
        case _A.INTERNAL_IP6_DNS, ipaddress.IPv6Address():
            return ConfigAttribute(attr_type, value.packed)
        case _A.INTERNAL_IP6_ADDRESS, ipaddress.IPv6Interface():
            # §3.15.1: the address and its prefix length, 17 octets.
            return ConfigAttribute(attr_type, value.ip.packed + bytes([value.network.prefixlen]))
        case _A.INTERNAL_IP4_SUBNET, ipaddress.IPv4Network():
            return ConfigAttribute(attr_type, value.network_address.packed + value.netmask.packed)
        case _A.INTERNAL_IP6_SUBNET, ipaddress.IPv6Network():
            return ConfigAttribute(
                attr_type, value.network_address.packed + bytes([value.prefixlen])
            )
        case _A.INTERNAL_DNS_DOMAIN, str():
            data = value.encode("ascii")
            if not 0 < len(data) <= _DOMAIN_MAX:
                raise ValueError(f"DNS domain {value!r} is empty or too long")
            return ConfigAttribute(attr_type, data)
    raise ValueError(f"no {attr_type.name} attribute with value {value!r}")


def decode_attribute(attr: ConfigAttribute) -> CpValue | None:
    """The value of an attribute of a type in `CpAttributeType` that carries one."""
    data, kind = attr.value, attr.attr_type
    if not data:
        return None
    if kind in _IP4:
        return ipaddress.IPv4Address(_exactly(data, 4, kind))
    if kind in _IP6:
        return ipaddress.IPv6Address(_exactly(data, 16, kind))
    if kind == _A.INTERNAL_IP6_ADDRESS:
        data = _exactly(data, 17, kind)
        return ipaddress.IPv6Interface((data[:16], _prefix(data[16], 128)))
    if kind in _SUBNETS:
        if kind == _A.INTERNAL_IP4_SUBNET:
            data = _exactly(data, 8, kind)
            try:
                mask = str(ipaddress.IPv4Address(data[4:]))
                return ipaddress.IPv4Network((data[:4], mask), strict=False)
            except ValueError as exc:
                raise InvalidSyntax(f"INTERNAL_IP4_SUBNET with a bad netmask: {exc}") from None
        data = _exactly(data, 17, kind)
        return ipaddress.IPv6Network((data[:16], _prefix(data[16], 128)), strict=False)
    if kind == _A.INTERNAL_DNS_DOMAIN:
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidSyntax("INTERNAL_DNS_DOMAIN is not ASCII") from None
    raise InvalidSyntax(f"configuration attribute {kind} has no value we read")


def _exactly(data: bytes, size: int, kind: int) -> bytes:
    if len(data) != size:
        raise InvalidSyntax(f"configuration attribute {kind} has {len(data)} octets, not {size}")
    return data


def _prefix(value: int, bits: int) -> int:
    if value > bits:
        raise InvalidSyntax(f"prefix length {value} longer than {bits}")
    return value


__all__ = ["CpValue", "decode_attribute", "encode_attribute"]
