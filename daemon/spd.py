"""The Security Policy Database: which CHILD SA carries an outbound packet.

A CHILD SA covers the traffic its traffic selectors describe (RFC 7296 §2.9,
RFC 4301 §4.4.1): a set of local selectors (our side) and remote selectors (the
peer's). An outbound packet goes to the SA whose local selectors contain its source
and whose remote selectors contain its destination; when several match, the most
specific one wins (smallest remote range, then smallest local range), like a
longest-prefix match in a routing table.

Inbound, the same policy answers whether a decrypted packet was allowed to come
through that SA (RFC 4301 §5.2 step 4): the SA's peer must not inject traffic for
addresses it did not negotiate.

The SPD is generic over what a policy points to, so the pump can route to a slot
whose current outbound SA changes at rekey without touching the SPD.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from daemon.packet import OPAQUE_PORT, Flow, flow_of

T = TypeVar("T")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAX_ADDRESS = {4: (1 << 32) - 1, 6: (1 << 128) - 1}


class SelectorError(ValueError):
    """A traffic selector that cannot describe any traffic (bad range, bad port)."""


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One traffic selector (RFC 7296 §3.13.1), as integers for fast matching."""

    version: int
    """IP version: 4 or 6."""
    first: int
    """Lowest address of the range, as an integer."""
    last: int
    """Highest address of the range, as an integer (inclusive)."""
    protocol: int = 0
    """IP protocol number; 0 means any protocol."""
    first_port: int = 0
    """Lowest port (for ICMP: type<<8|code)."""
    last_port: int = 65535
    """Highest port, inclusive."""

    def __post_init__(self) -> None:
        if self.version not in _MAX_ADDRESS:
            raise SelectorError(f"IP version must be 4 or 6, not {self.version}")
        if not 0 <= self.first <= self.last <= _MAX_ADDRESS[self.version]:
            raise SelectorError("address range is empty or out of bounds")
        if not 0 <= self.protocol <= 255:
            raise SelectorError(f"protocol {self.protocol} is not an IP protocol number")
        if not self.opaque and not 0 <= self.first_port <= self.last_port <= 65535:
            raise SelectorError("port range is empty or out of bounds")

    @classmethod
    def from_network(
        cls, network: str | IPNetwork, protocol: int = 0, ports: tuple[int, int] = (0, 65535)
    ) -> TrafficSelector:
        """A selector for a whole subnet such as ``192.0.2.0/24``."""
        net = ipaddress.ip_network(network, strict=False) if isinstance(network, str) else network
        return cls(
            net.version,
            int(net.network_address),
            int(net.broadcast_address),
            protocol,
            ports[0],
            ports[1],
        )

    @classmethod
    def from_range(
        cls,
        start: str | IPAddress,
        end: str | IPAddress,
        protocol: int = 0,
        ports: tuple[int, int] = (0, 65535),
    ) -> TrafficSelector:
        """A selector for an address range, the form IKEv2 carries on the wire."""
        first = ipaddress.ip_address(start)
        last = ipaddress.ip_address(end)
        if first.version != last.version:
            raise SelectorError(f"range {first}-{last} mixes IPv4 and IPv6")
        return cls(first.version, int(first), int(last), protocol, ports[0], ports[1])

    @property
    def any_port(self) -> bool:
        """True when the selector covers every port."""
        return self.first_port == 0 and self.last_port == 65535

    def covers_everything(self) -> bool:
        """True for 0.0.0.0/0 or ::/0, any protocol, any port."""
        return (
            self.first == 0
            and self.last == _MAX_ADDRESS[self.version]
            and not self.protocol
            and self.any_port
        )

    @property
    def opaque(self) -> bool:
        """True for the OPAQUE selector (start 65535, end 0, RFC 7296 §3.13.1): it
        matches only packets whose ports cannot be read."""
        return self.first_port == 65535 and self.last_port == 0

    @property
    def size(self) -> int:
        """How many addresses the range holds (smaller is more specific)."""
        return self.last - self.first + 1

    def networks(self) -> list[IPNetwork]:
        """The range as the fewest CIDR networks, for installing routes."""
        cls = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        return list(ipaddress.summarize_address_range(cls(self.first), cls(self.last)))

    def matches(self, version: int, address: int, protocol: int, port: int) -> bool:
        """True when one endpoint of a packet (address and port) falls in this selector."""
        if version != self.version or not self.first <= address <= self.last:
            return False
        if self.protocol and protocol != self.protocol:
            return False
        if port == OPAQUE_PORT:
            return self.any_port or self.opaque
        return self.first_port <= port <= self.last_port

    def __str__(self) -> str:
        nets = self.networks()
        text = str(nets[0]) if len(nets) == 1 else f"{nets[0][0]}-{nets[-1][-1]}"
        if self.protocol:
            text += f"[{self.protocol}"
            if self.opaque:
                text += "/OPAQUE"
            elif not self.any_port:
                text += f"/{self.first_port}-{self.last_port}"
            text += "]"
        return text


@dataclass(slots=True)
class Policy(Generic[T]):
    """The selectors of one CHILD SA and what its outbound traffic is handed to."""

    local: tuple[TrafficSelector, ...]
    """Our side's selectors (source of outbound packets)."""
    remote: tuple[TrafficSelector, ...]
    """The peer's side's selectors (destination of outbound packets)."""
    target: T
    """What carries matching outbound packets (an SA or a slot holding one)."""
    name: str = ""
    """A label for logs and status (the `[peers.NAME]` of its SA)."""

    def allows_outbound(self, flow: Flow) -> bool:
        """True if a packet with ``flow`` leaving through this SA is covered."""
        version, src, dst, proto, sport, dport = flow
        return any(ts.matches(version, src, proto, sport) for ts in self.local) and any(
            ts.matches(version, dst, proto, dport) for ts in self.remote
        )

    def allows_inbound(self, packet: bytes | bytearray | memoryview) -> bool:
        """True if a decrypted packet arriving on this SA is covered (RFC 4301 §5.2)."""
        flow = flow_of(packet)
        if flow is None:
            return False
        version, src, dst, proto, sport, dport = flow
        return any(ts.matches(version, src, proto, sport) for ts in self.remote) and any(
            ts.matches(version, dst, proto, dport) for ts in self.local
        )


_FALLBACK_RANK = 1 << 62
"""Added to a fallback policy's rank: more than any count of policies added."""

_SortKey = tuple[int, int, int, int, int, int]
"""How `Spd` orders its entries: see `_Entry.sort_key`."""


@dataclass(slots=True)
class _Entry(Generic[T]):
    local: TrafficSelector
    remote: TrafficSelector
    policy: Policy[T]
    rank: int

    def sort_key(self) -> _SortKey:
        # Most specific first: narrow remote range, narrow local range, a named
        # protocol before "any", narrow port ranges before wide ones; among equals,
        # the lowest rank (see `Spd.add`).
        return (
            self.remote.size,
            self.local.size,
            0 if self.remote.protocol else 1,
            self.remote.last_port - self.remote.first_port,
            self.local.last_port - self.local.first_port,
            self.rank,
        )


@dataclass
class Spd(Generic[T]):
    """Outbound policies, most specific first.

    Adding and removing cost a binary search and a list insertion per entry rather
    than a re-sort or a scan of every policy: a gateway setting up a thousand CHILD
    SAs at once would otherwise spend quadratic time here.
    """

    _entries: list[_Entry[T]] = field(default_factory=list)
    """Every (local, remote) selector pair of every policy, in lookup order."""
    _keys: list[_SortKey] = field(default_factory=list)
    """``_entries[i].sort_key()`` for each i, kept beside them for `bisect`."""
    _policies: dict[int, Policy[T]] = field(default_factory=dict)
    """Installed policies by ``id()`` (policies compare by identity), in the order
    they were added."""
    _policy_entries: dict[int, list[_Entry[T]]] = field(default_factory=dict)
    """Each installed policy's entries, by the policy's ``id()``, for `remove`."""
    _added: int = 0

    def add(self, policy: Policy[T], *, preferred: bool = False, fallback: bool = False) -> None:
        """Install ``policy``; a more specific policy shadows a wider one.

        Among equally specific policies the older one wins, so an SA installed beside
        its predecessor (a rekey answered by us) does not take traffic before the
        peer can decrypt it; ``preferred`` puts the new one ahead of its equals
        instead (a rekey we started: the peer installed it before answering,
        RFC 7296 §2.8). ``fallback`` puts it behind every equal that is not a
        fallback, whenever either was added (a data-plane worker's hand-off to the
        worker that owns another SA of the same selectors: its own SA wins).
        """
        if not policy.local or not policy.remote:
            raise SelectorError("a policy needs at least one local and one remote selector")
        if id(policy) in self._policies:
            raise SelectorError("this policy is already installed")
        self._added += 1
        rank = -self._added if preferred else self._added
        if fallback:
            rank += _FALLBACK_RANK
        entries: list[_Entry[T]] = []
        for local in policy.local:
            for remote in policy.remote:
                if local.version == remote.version:
                    entry = _Entry(local, remote, policy, rank)
                    key = entry.sort_key()
                    # bisect_right: after equal keys, as the stable sort this replaces
                    # kept a policy's own selector pairs in their written order.
                    at = bisect.bisect_right(self._keys, key)
                    self._keys.insert(at, key)
                    self._entries.insert(at, entry)
                    entries.append(entry)
        self._policies[id(policy)] = policy
        self._policy_entries[id(policy)] = entries

    def remove(self, policy: Policy[T]) -> bool:
        """Remove ``policy`` (by identity); False if it was not installed."""
        if self._policies.pop(id(policy), None) is None:
            return False
        for entry in self._policy_entries.pop(id(policy)):
            key = entry.sort_key()
            at = bisect.bisect_left(self._keys, key)
            # Entries with equal keys belong to one policy (the rank is per policy):
            # find this very entry among them.
            while self._entries[at] is not entry:
                at += 1
            del self._keys[at]
            del self._entries[at]
        return True

    def lookup(self, packet: bytes | bytearray | memoryview) -> Policy[T] | None:
        """The most specific policy covering an outbound packet, or ``None``."""
        flow = flow_of(packet)
        if flow is None:
            return None
        return self.lookup_flow(flow)

    def lookup_flow(self, flow: Flow) -> Policy[T] | None:
        """Like ``lookup`` for an already parsed flow."""
        version, src, dst, proto, sport, dport = flow
        for entry in self._entries:
            remote = entry.remote
            # Inline the cheap address test before the full match: most entries miss.
            if remote.version != version or not remote.first <= dst <= remote.last:
                continue
            if remote.matches(version, dst, proto, dport) and entry.local.matches(
                version, src, proto, sport
            ):
                return entry.policy
        return None

    def __iter__(self) -> Iterator[Policy[T]]:
        return iter(list(self._policies.values()))

    def __len__(self) -> int:
        return len(self._policies)


def selectors_from_networks(networks: Iterable[str | IPNetwork]) -> tuple[TrafficSelector, ...]:
    """Selectors for a list of subnets, as the configuration writes them."""
    return tuple(TrafficSelector.from_network(net) for net in networks)
