"""Traffic selectors and their narrowing (RFC 7296 §2.9, §3.13.1), as pure functions.

A `TrafficSelector` is the semantic form (address range, IP protocol, port range);
the codec's TS payload carries the same fields on the wire. Narrowing intersects what
the peer proposed with what our configuration allows; an empty result is
TS_UNACCEPTABLE.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ikev2.addresses import parse_network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 7296 §3.13.1 TS Type.
TS_IPV4_ADDR_RANGE = 7
TS_IPV6_ADDR_RANGE = 8

_PROTOCOL_NAMES = {0: "any", 1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}


class TrafficSelectorError(ValueError):
    """A traffic selector that cannot exist (mixed families, start after end, bad port)."""


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One traffic selector: an address range, an IP protocol and a port range."""

    start_addr: IPAddress
    """First address of the range (inclusive)."""
    end_addr: IPAddress
    """Last address of the range (inclusive); same family as `start_addr`."""
    protocol: int = 0
    """IP protocol number; 0 means any protocol."""
    start_port: int = 0
    """First port (inclusive); 0..65535 with `end_port` 65535 means any port."""
    end_port: int = 65535
    """Last port (inclusive). RFC 7296 §3.13.1 uses start 65535 / end 0 for OPAQUE."""

    def __post_init__(self) -> None:
        if self.start_addr.version != self.end_addr.version:
            raise TrafficSelectorError(
                f"mixed address families in {self.start_addr}-{self.end_addr}"
            )
        if int(self.start_addr) > int(self.end_addr):
            raise TrafficSelectorError(
                f"range starts after it ends: {self.start_addr}-{self.end_addr}"
            )
        if not 0 <= self.protocol <= 255:
            raise TrafficSelectorError(f"IP protocol {self.protocol} out of range")
        for port in (self.start_port, self.end_port):
            if not 0 <= port <= 65535:
                raise TrafficSelectorError(f"port {port} out of range")

    @classmethod
    def from_network(
        cls,
        network: str | ipaddress.IPv4Network | ipaddress.IPv6Network,
        protocol: int = 0,
        ports: tuple[int, int] = (0, 65535),
    ) -> TrafficSelector:
        """The selector covering a subnet such as "192.0.2.0/24" (an address is a /32, /128)."""
        if isinstance(network, str):
            try:
                net = parse_network(network, strict=False)
            except ValueError as exc:
                raise TrafficSelectorError(f"not a subnet: {network!r}") from exc
        else:
            net = network
        return cls(net.network_address, net.broadcast_address, protocol, ports[0], ports[1])

    @classmethod
    def any(cls, version: int) -> TrafficSelector:
        """Everything of one address family (0.0.0.0/0 or ::/0)."""
        return cls.from_network("0.0.0.0/0" if version == 4 else "::/0")

    @property
    def ts_type(self) -> int:
        """TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE (§3.13.1)."""
        return TS_IPV4_ADDR_RANGE if self.start_addr.version == 4 else TS_IPV6_ADDR_RANGE

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.start_addr.version

    @property
    def is_opaque_ports(self) -> bool:
        """True for the OPAQUE port selector (start 65535, end 0; §3.13.1)."""
        return self.start_port == 65535 and self.end_port == 0

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The address range as the smallest list of CIDR networks (for routes and the SPD)."""
        return list(ipaddress.summarize_address_range(self.start_addr, self.end_addr))

    def contains(self, other: TrafficSelector) -> bool:
        """Whether `other` lies entirely within this selector (its intersection with
        this one is itself), checked without building the intersection."""
        return (
            self.version == other.version
            and int(self.start_addr) <= int(other.start_addr)
            and int(other.end_addr) <= int(self.end_addr)
            and self.protocol in (0, other.protocol)
            and _intersect_ports(self, other) == (other.start_port, other.end_port)
        )

    def contains_address(self, addr: IPAddress) -> bool:
        """Whether one address is in the address range (protocol and ports not considered)."""
        return addr.version == self.version and self.start_addr <= addr <= self.end_addr  # type: ignore[operator]

    def intersect(self, other: TrafficSelector) -> TrafficSelector | None:
        """The selector both allow, or None when they share nothing."""
        if self.version != other.version:
            return None
        start = max(int(self.start_addr), int(other.start_addr))
        end = min(int(self.end_addr), int(other.end_addr))
        if start > end:
            return None
        if self.protocol == 0:
            protocol = other.protocol
        elif other.protocol in (0, self.protocol):
            protocol = self.protocol
        else:
            return None
        ports = _intersect_ports(self, other)
        if ports is None:
            return None
        make = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        return TrafficSelector(make(start), make(end), protocol, ports[0], ports[1])

    def __str__(self) -> str:
        nets = self.networks()
        addr = str(nets[0]) if len(nets) == 1 else f"{self.start_addr}..{self.end_addr}"
        if self.protocol == 0 and (self.start_port, self.end_port) == (0, 65535):
            return addr
        proto = _PROTOCOL_NAMES.get(self.protocol, str(self.protocol))
        if (self.start_port, self.end_port) == (0, 65535):
            return f"{addr}[{proto}]"
        if self.is_opaque_ports:
            return f"{addr}[{proto}/OPAQUE]"
        port = (
            str(self.start_port)
            if self.start_port == self.end_port
            else f"{self.start_port}-{self.end_port}"
        )
        return f"{addr}[{proto}/{port}]"


def _intersect_ports(a: TrafficSelector, b: TrafficSelector) -> tuple[int, int] | None:
    # OPAQUE only matches OPAQUE or "any port" (RFC 7296 §3.13.1).
    if a.is_opaque_ports or b.is_opaque_ports:
        if a.is_opaque_ports and b.is_opaque_ports:
            return (65535, 0)
        other = b if a.is_opaque_ports else a
        return (65535, 0) if (other.start_port, other.end_port) == (0, 65535) else None
    start = max(a.start_port, b.start_port)
    end = min(a.end_port, b.end_port)
    return (start, end) if start <= end else None


def narrow(
    proposed: Sequence[TrafficSelector], allowed: Iterable[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """RFC 7296 §2.9: the parts of what the peer proposed that our configuration allows.

    Every allowed selector is intersected with every proposed one, duplicates dropped,
    order kept (configured order first). An empty result means TS_UNACCEPTABLE.
    """
    result: list[TrafficSelector] = []
    for mine in allowed:
        for theirs in proposed:
            common = mine.intersect(theirs)
            if common is not None and common not in result:
                result.append(common)
    return tuple(result)


def is_subset(chosen: Iterable[TrafficSelector], proposed: Sequence[TrafficSelector]) -> bool:
    """Whether every selector the responder chose lies within one we proposed (§2.9).

    An initiator must refuse a responder that widened its selectors.
    """
    return all(any(p.contains(c) for p in proposed) for c in chosen)


def format_selectors(selectors: Iterable[TrafficSelector]) -> str:
    """Selectors for a log line: "192.0.2.0/24 203.0.113.0/24[tcp/80]"."""
    return " ".join(str(ts) for ts in selectors) or "(none)"
