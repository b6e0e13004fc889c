"""IP addresses and prefixes read from text, as the family the text shows, and cached.

`ipaddress.ip_address` and `ip_network` try IPv4 first and pay for an exception on
every IPv6 value; a reload of a thousand peers reads the same addresses, subnets and
identities again. The objects are immutable, so one parse serves every caller.
"""

from __future__ import annotations

import functools
import ipaddress

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IpAddress:
    """`text` as an IPv4 or IPv6 address; ValueError if it is not one."""
    return ipaddress.IPv6Address(text) if ":" in text else ipaddress.IPv4Address(text)


@functools.lru_cache(maxsize=8192)
def parse_network(text: str, strict: bool = True) -> IpNetwork:
    """`text` as an IPv4 or IPv6 prefix ("192.0.2.0/24"; an address is a /32, /128).
    With `strict`, host bits set are a ValueError, as in `ipaddress`."""
    kind = ipaddress.IPv6Network if ":" in text else ipaddress.IPv4Network
    return kind(text, strict=strict)


_ADDRESS_CHARS = frozenset("0123456789abcdefABCDEF.:")


def address_or_none(text: str) -> IpAddress | None:
    """`text` as an IP address (an IPv6 one may carry a scope), or None."""
    try:
        if "%" in text:  # an IPv6 address with a scope (fe80::1%eth0)
            return ipaddress.ip_address(text)
        if not text or not _ADDRESS_CHARS.issuperset(text):
            return None  # a name, a DN, an e-mail address: no exception to pay for
        return parse_address(text)
    except ValueError:
        return None
