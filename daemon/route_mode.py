"""Route-based connections: a TUN device per connection that follows its CHILD SA.

A connection with ``mode = "route"`` is an interface of its own (`interface`, by
default "lg-" + its name). Its selectors are everything (0.0.0.0/0 and ::/0 unless
configured), so routing decides what enters the tunnel: the static `routes` below, or
what a routing daemon (BIRD, FRR) learns over the inside addresses. The data plane
sends whatever the interface gives into the connection's CHILD SA and writes what
that SA opens to the interface (`DataPlane.from_route_tun`).

The interface follows the tunnel: it is administratively down while the connection
has no installed CHILD SA (before it comes up, after DPD declared the peer dead, after
a hard expiry) and up while it has one. Down rather than carrier off: with the link
down the kernel removes every route through it at once (a route over a link without
carrier stays, marked "linkdown", and keeps attracting traffic unless
``ignore_routes_with_linkdown`` is set), so a standby route of a higher metric takes
over, and a routing daemon sees the interface go and drops its sessions over it
without waiting for a hold timer. A rekey installs the new CHILD SA before the old
one goes (RFC 7296 §2.8), so the interface never goes down for one.

When it comes up the inside addresses are (re)added (the kernel drops IPv6 addresses
of a link that goes down, unless ``keep_addr_on_down``), then the static routes with
`route_metric`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from conf.model import Config, ConnectionConfig
from tun import LinkError, LinkManager, PacketDevice, TunError

log = logging.getLogger(__name__)


class LinkRunner(Protocol):
    """Runs netlink calls: a `daemon.netlink.LinkWorker` (or a stand-in in tests)."""

    def run(self, call: Callable[[LinkManager], object]) -> object: ...


TunOpener = Callable[[str], PacketDevice]
"""Opens (creates) the TUN device of a given name."""


@dataclass
class RouteLink:
    """One route-mode connection's interface."""

    config: ConnectionConfig
    """The connection (its interface, inside addresses, routes, metric)."""
    tun: PacketDevice
    """Its TUN device (the interface goes when it is closed)."""
    up: bool = False
    """Whether the interface is up (the connection has an installed CHILD SA)."""

    @property
    def name(self) -> str:
        return self.tun.name


def _settings(conn: ConnectionConfig) -> tuple[object, ...]:
    return (conn.interface, conn.inside_address, conn.inside_address6, conn.routes,
            conn.route_metric)  # fmt: skip


class RouteLinks:
    """The interfaces of the route-mode connections, by connection name.

    `attach` gives it the means (a TUN opener, the netlink worker, what to do with a
    new or closed TUN); until then `sync` only keeps the configuration, so the
    bookkeeping can be tested without devices."""

    def __init__(self) -> None:
        self.links: dict[str, RouteLink] = {}
        """Route-mode connections' interfaces by connection name."""
        self._open: TunOpener | None = None
        self._runner: LinkRunner | None = None
        self._mtu = 1400
        self._on_open: Callable[[PacketDevice], None] | None = None
        self._on_close: Callable[[str], None] | None = None

    def attach(
        self,
        open_tun: TunOpener,
        runner: LinkRunner,
        *,
        mtu: int,
        on_open: Callable[[PacketDevice], None],
        on_close: Callable[[str], None],
    ) -> None:
        """Create devices with `open_tun`, configure them through `runner`; `on_open`
        and `on_close` tell the pump about a TUN to read (or to stop reading)."""
        self._open, self._runner, self._mtu = open_tun, runner, mtu
        self._on_open, self._on_close = on_open, on_close

    def interface_of(self, connection: str) -> str | None:
        """The interface of a route-mode connection; None for a policy-mode one."""
        link = self.links.get(connection)
        return link.name if link is not None else None

    def sync(self, config: Config, is_up: Callable[[str], bool]) -> None:
        """Make the interfaces match `config` (at start and at each reload): create
        those of new route-mode connections, close those of connections gone or now
        policy-based, and apply changed addresses, routes or metric (a renamed
        interface is made anew). `is_up` says whether a connection has an installed
        CHILD SA: a new interface comes up at once if it has."""
        wanted = {c.name: c for c in config.connections.values() if c.mode == "route"}
        for name in [n for n in self.links if n not in wanted]:
            self._close(name)
        for name, conn in wanted.items():
            link = self.links.get(name)
            if link is not None and link.config.interface != conn.interface:
                self._close(name)
                link = None
            if link is None:
                self._create(conn)
            elif _settings(link.config) != _settings(conn):
                old, link.config = link.config, conn
                if link.up:
                    self._apply_change(link, old)
            self.follow(name, is_up(name))

    def follow(self, connection: str, installed: bool) -> None:
        """The connection has (`installed`) or has no CHILD SA any more: bring its
        interface up or down to match (nothing for a policy-mode connection)."""
        link = self.links.get(connection)
        if link is None or link.up == installed:
            return
        if installed:
            self._up(link)
        else:
            self._down(link)

    def close_all(self) -> None:
        """Close every interface (the daemon is stopping)."""
        for name in list(self.links):
            self._close(name)

    # ---- the devices ---------------------------------------------------------------

    def _create(self, conn: ConnectionConfig) -> None:
        if self._open is None or conn.interface is None:
            return
        try:
            tun = self._open(conn.interface)
        except TunError as exc:
            log.error("connection %s: cannot create interface %s: %s",
                      conn.name, conn.interface, exc)  # fmt: skip
            return
        name, mtu = tun.name, self._mtu

        def prepare(links: LinkManager) -> None:
            links.quiet_ipv6(name)
            links.set_mtu(name, mtu)

        try:
            self._run(prepare)
        except LinkError as exc:
            log.warning("connection %s: interface %s: %s", conn.name, name, exc)
        self.links[conn.name] = RouteLink(conn, tun)
        if self._on_open is not None:
            self._on_open(tun)
        log.info("connection %s: route-based on interface %s (down until its CHILD SA is up)",
                 conn.name, name)  # fmt: skip

    def _close(self, connection: str) -> None:
        link = self.links.pop(connection, None)
        if link is None:
            return
        if self._on_close is not None:
            self._on_close(link.name)
        link.tun.close()  # the interface and its routes go with its last descriptor
        log.info("connection %s: interface %s removed", connection, link.name)

    def _up(self, link: RouteLink) -> None:
        conn, name = link.config, link.name
        link.up = True

        def up(links: LinkManager) -> None:
            links.set_up(name)
            for address in (conn.inside_address, conn.inside_address6):
                if address is not None:
                    links.add_address(name, address)
            for net in conn.routes:
                links.add_route(net, name, metric=conn.route_metric)

        try:
            self._run(up)
        except LinkError as exc:
            log.error("connection %s: cannot bring interface %s up: %s", conn.name, name, exc)
            return
        log.info("connection %s: interface %s up%s", conn.name, name,
                 f", routes {', '.join(map(str, conn.routes))} metric {conn.route_metric}"
                 if conn.routes else "")  # fmt: skip

    def _down(self, link: RouteLink) -> None:
        name = link.name
        link.up = False
        try:
            self._run(lambda links: links.set_down(name))
        except LinkError as exc:
            log.error("connection %s: cannot take interface %s down: %s",
                      link.config.name, name, exc)  # fmt: skip
            return
        log.info("connection %s: interface %s down (no CHILD SA)", link.config.name, name)

    def _apply_change(self, link: RouteLink, old: ConnectionConfig) -> None:
        """A reload changed the addresses, routes or metric of an interface that is up:
        take away what is gone, then add everything as at `_up`."""
        conn, name = link.config, link.name

        def change(links: LinkManager) -> None:
            for net in old.routes:
                if net not in conn.routes or old.route_metric != conn.route_metric:
                    links.remove_route(net, name)
            for field in ("inside_address", "inside_address6"):
                address = getattr(old, field)
                if address is not None and address != getattr(conn, field):
                    links.remove_address(name, address)

        with contextlib.suppress(LinkError):
            self._run(change)
        self._up(link)

    def _run(self, call: Callable[[LinkManager], object]) -> None:
        if self._runner is not None:
            self._runner.run(call)

    def status(self, connection: str) -> dict[str, object] | None:
        """The interface part of a connection's status (None: policy mode)."""
        link = self.links.get(connection)
        if link is None:
            return None
        return {"interface": link.name, "interface_up": link.up}
