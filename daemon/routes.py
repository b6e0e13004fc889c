"""Routes from the remote networks into the TUN device, counted per network.

Every installed CHILD SA routes its remote selectors' networks into the TUN, and
several SAs (a rekey's pair, two connections to one subnet) often share a network:
the route goes in with the first and out with the last. A connection with start =
"trap" (or re-armed by dpd_action "trap") routes its remote networks without any SA,
so that the first packet reaches the data plane's acquire callback and starts it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from daemon.childsa import ChildSaEntry
from daemon.netlink import LocalAddresses
from daemon.spd import IPNetwork
from tun import LinkError

log = logging.getLogger(__name__)

RouteKey = tuple[int, int, int]
"""(IP version, first address as an integer, prefix length): a routed network as a key.
An `ipaddress` network object costs some 350 octets with its cached attributes, and a
gateway keeps one per CHILD SA."""


class RouteOps(Protocol):
    """What the gateway needs to route remote networks into its TUN: a
    `tun.RouteSocket` (or a stand-in in tests)."""

    def add_route(self, destination: IPNetwork, ifname: str, *, source: str | None = None) -> None:
        """Route `destination` out of `ifname` (replacing a route to the same prefix)."""

    def remove_route(self, destination: IPNetwork, ifname: str) -> None:
        """Remove it; a route that is already gone is not an error."""


def _route_key(net: IPNetwork) -> RouteKey:
    return (net.version, int(net.network_address), net.prefixlen)


def _network_of(key: RouteKey) -> IPNetwork:
    version, first, prefix = key
    if version == 4:
        return ipaddress.IPv4Network((first, prefix))
    return ipaddress.IPv6Network((first, prefix))


class Routes:
    """The routes into the TUN device: one per network while an SA or a trap needs it.

    Until `attach` names the route socket and the device, it only counts (the
    bookkeeping tests run without either)."""

    def __init__(self) -> None:
        self.ops: RouteOps | None = None
        """Adds and removes the routes, on the event loop's thread."""
        self.ifname: str | None = None
        """The TUN device the routes point into."""
        self.local_addresses: LocalAddresses | None = None
        """Our addresses, for the route's source (`_source`)."""
        self.counts: dict[RouteKey, int] = {}
        """How many installed CHILD SAs route each remote network into the TUN."""
        self.traps: set[IPNetwork] = set()
        """Networks routed for a trap (no SA yet)."""

    def attach(
        self, ops: RouteOps, ifname: str, local_addresses: LocalAddresses | None = None
    ) -> None:
        """Route through `ops` into the device `ifname` from now on."""
        self.ops, self.ifname, self.local_addresses = ops, ifname, local_addresses

    def addresses_moved(self) -> None:
        """Our addresses may have changed: read them again for the next source."""
        if self.local_addresses is not None:
            self.local_addresses.invalidate()

    def add_for(self, entry: ChildSaEntry) -> None:
        """Route the remote networks of a CHILD SA that was just installed."""
        for ts in entry.remote_ts:
            for net in ts.networks():
                self._add_route(net, entry)

    def release_for(self, entry: ChildSaEntry) -> None:
        """Its CHILD SA is gone: remove the routes no other SA or trap needs."""
        for ts in entry.remote_ts:
            for net in ts.networks():
                self._release_route(net)

    def trap(self, net: IPNetwork) -> None:
        """Route `net` into the TUN without an SA (start = "trap")."""
        if net not in self.traps:
            self.traps.add(net)
            if _route_key(net) not in self.counts:
                self._add_route(net, None)

    def untrap(self, net: IPNetwork) -> None:
        """No trap needs `net` any more; its route stays while an SA uses it."""
        if net in self.traps:
            self.traps.discard(net)
            if _route_key(net) not in self.counts:
                self._remove_route(net)

    def remove_all(self) -> None:
        """Remove every route (the daemon is stopping)."""
        for net in {_network_of(key) for key in self.counts} | self.traps:
            self._remove_route(net)
        self.counts.clear()
        self.traps.clear()

    def _add_route(self, net: IPNetwork, entry: ChildSaEntry | None) -> None:
        if entry is not None:
            key = _route_key(net)
            count = self.counts[key] = self.counts.get(key, 0) + 1
            if count > 1 or net in self.traps:
                return
        ops, ifname = self.ops, self.ifname
        if ops is None or ifname is None:
            return
        # On this thread, at once: one rtnetlink message that the kernel answers inside
        # the send (tun.routes). A worker thread cost the event loop a GIL hand-over per
        # route when a thousand CHILD SAs came up together, and doing it here keeps
        # additions and removals in the order the SAs came and went.
        source = self._source(net.version, entry)
        try:
            ops.add_route(net, ifname, source=source)
            return
        except LinkError as exc:
            error = exc
        if source is not None:
            # The source address may have gone from its interface; route without it,
            # and read the addresses again next time.
            self.addresses_moved()
            with contextlib.suppress(LinkError):
                ops.add_route(net, ifname)
                return
        log.error("cannot route %s into %s: %s", net, ifname, error)

    def _release_route(self, net: IPNetwork) -> None:
        key = _route_key(net)
        count = self.counts.get(key, 0) - 1
        if count > 0:
            self.counts[key] = count
            return
        self.counts.pop(key, None)
        if net not in self.traps:
            self._remove_route(net)

    def _remove_route(self, net: IPNetwork) -> None:
        ops, ifname = self.ops, self.ifname
        if ops is None or ifname is None:
            return
        try:
            ops.remove_route(net, ifname)
        except LinkError as exc:
            log.warning("cannot remove the route to %s: %s", net, exc)

    def _source(self, version: int, entry: ChildSaEntry | None) -> str | None:
        """One of our addresses inside the local selectors, so traffic the gateway
        itself sends into the tunnel matches the policy (strongSwan does the same)."""
        local = self.local_addresses
        if local is None or entry is None:
            return None
        try:
            addresses = local.numbered()  # cached for a moment: one read serves many SAs
        except LinkError:
            return None
        selectors = [(ts.first, ts.last) for ts in entry.local_ts if ts.version == version]
        for address_version, value, text in addresses:
            if address_version == version:
                for first, last in selectors:
                    if first <= value <= last:
                        return text
        return None


PROC_SYS = "/proc/sys"
FORWARDING_SYSCTLS = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}
"""The sysctl that lets the host route each IP version between its interfaces."""


def forwarding_off(versions: Iterable[int], proc_sys: str = PROC_SYS) -> list[str]:
    """A warning for each IP version in `versions` that the host does not forward.

    The gateway routes its connections' traffic between the TUN device and the site's
    interface: with forwarding off the tunnel comes up, and then carries nothing to or
    from the hosts behind it. A sysctl that cannot be read is not reported."""
    warnings = []
    for version in sorted(set(versions)):
        name = FORWARDING_SYSCTLS[version]
        try:
            value = (Path(proc_sys) / name.replace(".", "/")).read_text().strip()
        except OSError:
            continue
        if value == "0":
            warnings.append(
                f"IP forwarding is off for IPv{version} ({name} = 0): the connections' "
                f"IPv{version} traffic will not reach the hosts behind this gateway"
            )
    return warnings
