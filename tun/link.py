"""Links, addresses, routes and policy rules over netlink (pyroute2, no `ip` commands).

Everything acts on the current network namespace of the process: the daemon runs
inside `ip netns exec`, so that is the right one. pyroute2's synchronous `IPRoute`
drives a private asyncio loop per call, so a `LinkManager` cannot be used from a
thread whose event loop is running: give it a thread of its own there.

Kernel refusals become `LinkError` with the errno; removals can be told to accept
"already gone".
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tun.errors import LinkError
from tun.routes import GONE, MAIN_TABLE, RouteSocket, as_network

log = logging.getLogger(__name__)

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


T = TypeVar("T")


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _address_of(msg: Any) -> IpInterface:
    """The address and prefix of one RTM_NEWADDR message."""
    return ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")


@dataclass(frozen=True)
class Route:
    """A route as the kernel reports it (only the fields lockgate manages)."""

    destination: IpNetwork
    """The destination prefix."""
    ifindex: int | None
    """Output interface index, if any."""
    table: int
    """Routing table number (254 is `main`)."""
    mtu: int | None = None
    """Route MTU (`ip route ... mtu N`), if set."""
    metric: int | None = None
    """Route metric (priority), if set."""


@dataclass(frozen=True)
class Rule:
    """A policy routing rule: packets go to `table` at `priority`."""

    table: int
    """Routing table the rule selects."""
    priority: int | None
    """Rule priority (lower is earlier)."""
    family: int
    """AF_INET or AF_INET6."""


class LinkManager:
    """A netlink session for one network namespace (the process's current one)."""

    def __init__(self) -> None:
        try:
            self._ipr: Any = IPRoute()
        except OSError as exc:
            raise LinkError(f"cannot open a netlink socket: {exc}") from exc
        self._routes = RouteSocket()
        """Plain routes, and the interface indexes by name that every call here uses."""

    def close(self) -> None:
        self._routes.close()
        self._ipr.close()

    def __enter__(self) -> LinkManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Any, *args: Any, missing_ok: bool = False, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except NetlinkError as exc:
            if missing_ok and exc.code in GONE:
                log.debug("%s: already gone", what)
                return None
            raise LinkError(
                f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}", exc.code
            ) from exc

    # --- links ---------------------------------------------------------------------------

    def index(self, ifname: str) -> int:
        """The interface index of `ifname`, or LinkError if there is none.

        Cached by name (the route socket's cache); `_on_link` forgets an index the
        kernel no longer knows (the link was deleted, or deleted and made again under
        the same name)."""
        return self._routes.index(ifname)

    def _on_link(self, ifname: str, call: Callable[[int], T]) -> T:
        """``call(index of ifname)``; if the kernel answers that this index is gone,
        look the name up again and retry once (the link may have been recreated)."""
        cached = self._routes.knows(ifname)
        try:
            return call(self.index(ifname))
        except LinkError as exc:
            if exc.errno != errno.ENODEV:
                raise
            self._routes.forget(ifname)
            if not cached:
                raise
        return call(self.index(ifname))

    def _get_links(self, index: int) -> Any:
        [link] = self._call(f"get link {index}", self._ipr.get_links, index)
        return link

    def exists(self, ifname: str) -> bool:
        return bool(self._ipr.link_lookup(ifname=ifname))

    def set_up(self, ifname: str) -> None:
        self._on_link(
            ifname,
            lambda i: self._call(f"set {ifname} up", self._ipr.link, "set", index=i, state="up"),
        )

    def set_down(self, ifname: str) -> None:
        self._on_link(
            ifname,
            lambda i: self._call(
                f"set {ifname} down", self._ipr.link, "set", index=i, state="down"
            ),
        )

    def set_mtu(self, ifname: str, mtu: int) -> None:
        # 1280 is IPv6's minimum link MTU (RFC 8200 §5); below it IPv6 stops working.
        if not 576 <= mtu <= 65535:
            raise LinkError(f"{ifname}: MTU {mtu} out of range 576..65535", errno.EINVAL)
        self._on_link(
            ifname,
            lambda i: self._call(
                f"set {ifname} mtu {mtu}", self._ipr.link, "set", index=i, mtu=mtu
            ),
        )

    def mtu(self, ifname: str) -> int:
        return int(self._on_link(ifname, self._get_links).get("mtu"))

    def quiet_ipv6(self, ifname: str) -> None:
        """No link-local address, router solicitations or MLD reports on `ifname`.

        A TUN carries only tunnelled traffic; without this the kernel sends its own
        IPv6 housekeeping into it, which the data plane would have to drop. Call before
        `set_up`. Global IPv6 addresses added later still work.
        """
        self.index(ifname)  # LinkError if there is no such interface
        # addr_gen_mode 1: IN6_ADDR_GEN_MODE_NONE (no automatic link-local address).
        for key, value in (("addr_gen_mode", "1"), ("accept_ra", "0"), ("autoconf", "0")):
            path = f"/proc/sys/net/ipv6/conf/{ifname}/{key}"
            try:
                with open(path, "w") as f:
                    f.write(value)
            except FileNotFoundError:
                return  # IPv6 disabled in this kernel or namespace: nothing to quiet
            except OSError as exc:
                raise LinkError(f"{ifname}: cannot set {key}: {exc.strerror}", exc.errno) from exc

    def is_up(self, ifname: str) -> bool:
        return bool(self._on_link(ifname, self._get_links)["flags"] & 1)  # IFF_UP

    def delete_link(self, ifname: str, *, missing_ok: bool = True) -> None:
        """Remove an interface (a TUN also goes when its last fd closes)."""
        self._routes.forget(ifname)  # a link made again under this name is another
        if not self.exists(ifname):
            if missing_ok:
                return
            raise LinkError(f"no such interface {ifname!r}", errno.ENODEV)
        self._call(
            f"delete {ifname}",
            self._ipr.link,
            "del",
            index=self.index(ifname),
            missing_ok=missing_ok,
        )
        self._routes.forget(ifname)

    # --- addresses -----------------------------------------------------------------------

    def add_address(self, ifname: str, address: str | IpInterface) -> None:
        """Add `address` (``192.0.2.1/24``, ``2001:db8::1/64``); already there is fine."""
        iface = ipaddress.ip_interface(address)
        kw: dict[str, Any] = {}
        if iface.version == 6:
            # Usable at once: no duplicate address detection on a point-to-point TUN.
            kw["flags"] = 0x02  # IFA_F_NODAD

        def add(index: int) -> None:
            try:
                self._ipr.addr(
                    "add",
                    index=index,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                    family=_family(iface.version),
                    **kw,
                )
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise LinkError(f"add address {iface} to {ifname}: {exc}", exc.code) from exc

        self._on_link(ifname, add)

    def remove_address(
        self, ifname: str, address: str | IpInterface, *, missing_ok: bool = True
    ) -> None:
        iface = ipaddress.ip_interface(address)
        self._call(
            f"remove address {iface} from {ifname}",
            self._ipr.addr,
            "del",
            index=self.index(ifname),
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            family=_family(iface.version),
            missing_ok=missing_ok,
        )

    def addresses(self, ifname: str) -> list[IpInterface]:
        return [_address_of(msg) for msg in self._ipr.get_addr(index=self.index(ifname))]

    def all_addresses(self) -> list[IpInterface]:
        """Every address of every interface, in one netlink dump (not one per link)."""
        return [_address_of(msg) for msg in self._call("list addresses", self._ipr.get_addr)]

    # --- routes --------------------------------------------------------------------------

    def add_route(
        self,
        destination: str | IpNetwork,
        ifname: str,
        *,
        table: int = MAIN_TABLE,
        source: str | None = None,
        metric: int | None = None,
        mtu: int | None = None,
        replace: bool = True,
    ) -> None:
        """Route `destination` out of `ifname` (in `table`). With `replace` an existing
        route to the same prefix is overwritten instead of failing."""
        net = as_network(destination)
        if metric is None and mtu is None:
            # The common case (one route per CHILD SA): one raw rtnetlink message.
            self._routes.add_route(net, ifname, table=table, source=source, replace=replace)
            return
        kw: dict[str, Any] = {"dst": str(net), "table": table, "family": _family(net.version)}
        if source is not None:
            kw["prefsrc"] = source
        if metric is not None:
            kw["priority"] = metric
        if mtu is not None:
            kw["metrics"] = {"mtu": mtu}
        self._on_link(
            ifname,
            lambda i: self._call(
                f"route {net} dev {ifname} table {table}",
                self._ipr.route,
                "replace" if replace else "add",
                oif=i,
                **kw,
            ),
        )

    def remove_route(
        self,
        destination: str | IpNetwork,
        ifname: str | None = None,
        *,
        table: int = MAIN_TABLE,
        missing_ok: bool = True,
    ) -> None:
        net = as_network(destination)
        if ifname is not None:
            try:
                self._routes.remove_route(net, ifname, table=table, missing_ok=missing_ok)
            except LinkError as exc:
                if exc.errno != errno.ENODEV:
                    raise
            return  # (ENODEV: the interface is gone and took its routes with it)
        kw: dict[str, Any] = {"dst": str(net), "table": table, "family": _family(net.version)}
        self._call(
            f"remove route {net} table {table}", self._ipr.route, "del", **kw, missing_ok=missing_ok
        )

    def routes(self, *, table: int = MAIN_TABLE, ifname: str | None = None) -> list[Route]:
        """Routes with a destination prefix in `table` (optionally only via `ifname`)."""
        oif = self.index(ifname) if ifname is not None else None
        found: list[Route] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._ipr.get_routes(family=family, table=table):
                dst = msg.get("RTA_DST")
                if dst is None or msg.get("RTA_TABLE", msg["table"]) != table:
                    continue
                route_oif = msg.get("RTA_OIF")
                if oif is not None and route_oif != oif:
                    continue
                net = as_network(f"{dst}/{msg['dst_len']}")
                metrics = msg.get("RTA_METRICS")
                mtu = metrics.get("RTAX_MTU") if metrics is not None else None
                found.append(Route(net, route_oif, table, mtu, msg.get("RTA_PRIORITY")))
        return found

    # --- policy rules --------------------------------------------------------------------

    def add_rule(self, table: int, priority: int, *, version: int = 4) -> None:
        """`ip rule add priority P lookup T`; already there is fine."""
        if any(r.table == table and r.priority == priority for r in self.rules(version=version)):
            return
        self._call(
            f"add rule priority {priority} table {table}",
            self._ipr.rule,
            "add",
            table=table,
            priority=priority,
            family=_family(version),
        )

    def remove_rule(
        self, table: int, priority: int, *, version: int = 4, missing_ok: bool = True
    ) -> None:
        self._call(
            f"remove rule priority {priority} table {table}",
            self._ipr.rule,
            "del",
            table=table,
            priority=priority,
            family=_family(version),
            missing_ok=missing_ok,
        )

    def rules(self, *, version: int = 4) -> list[Rule]:
        family = _family(version)
        return [
            Rule(int(msg.get("FRA_TABLE", msg["table"])), msg.get("FRA_PRIORITY"), family)
            for msg in self._ipr.get_rules(family=family)
        ]
