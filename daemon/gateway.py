"""The gateway daemon's lifecycle: configuration, TUN, sockets, the IKE endpoint and
the data plane, wired together on one asyncio (uvloop) loop.

Life of a tunnel: the IKE endpoint (sans-I/O, `ikev2.endpoint`) negotiates; its
asyncio adapter (`daemon.ike`) feeds it the IKE messages the pump (`daemon.pump`)
reads, sends what it produces, runs its timer and hands its events to
`daemon.events`, which installs and removes CHILD SAs in the data plane and routes
(`daemon.routes`) and applies a dead peer's dpd_action. This module starts and stops
all of that, adds and drops peers (a `[peers.NAME]`) and their connections (a
`[connections.NAME]`), initiates them with back-off and answers trapped packets.
SIGTERM deletes every SA (the peer gets a Delete), removes routes and the TUN device,
and exits 0. A reload (SIGHUP) is in `daemon.reload`, the control socket's commands
in `daemon.commands`, status in `daemon.status`, the volume and liveness checks in
`daemon.lifetimes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conf import ConfigError
from conf.ike import endpoint_config, ike_connections
from conf.load import load_config
from conf.model import Config
from conf.toml_tables import TomlTables
from daemon.childsa import ChildSaEntry
from daemon.commands import handle_request
from daemon.control import ControlError, ControlServer
from daemon.dataplane import DataPlane
from daemon.diagnosis import Diagnosis
from daemon.events import handle_event, refuse_child
from daemon.ike import IkeDriver
from daemon.ikev2_ra import IkeRaServer
from daemon.ikev2_ra import servers as ikev2_ra_servers
from daemon.lifetimes import SEQUENCE_CHECK_INTERVAL, VOLUME_CHECK_INTERVAL, Lifetimes
from daemon.metrics import EventCounts, MetricsServer, registry_for
from daemon.mtu import path_mtu, tun_mtu
from daemon.netlink import LinkWorker, LocalAddresses
from daemon.offload import OffloadMode, offload_mode, open_tun
from daemon.peers import (
    ConnectionState,
    IkeSaInfo,
    PeerState,
    acquire,
    resolve,
    retry_delay,
)
from daemon.pump import Pump, claim_udp
from daemon.reload import log_config_warnings, one_line, reload
from daemon.route_mode import RouteLinks
from daemon.routes import PROC_SYS, Routes, forwarding_off
from daemon.sdnotify import Notifier, setup_logging
from daemon.ssl_vpn import RemoteAccess
from daemon.status import VERSION, gateway_status, status_line, status_summary
from daemon.worker_gateway import (
    CounterMirror,
    WorkerFds,
    add_queues,
    open_worker_sockets,
    replace_lost,
    total_drops,
)
from daemon.worker_pool import WorkerPool
from ikev2.config import ChildConfig
from ikev2.config import ConnectionConfig as PeerConfig
from ikev2.endpoint import Endpoint
from ikev2.errors import IkeError
from ikev2.events import Address, Event
from ikev2.sa import IkeSa
from ikev2.sa_types import IkeSaState
from ikev2.ts import format_selectors
from tun import LinkError, PacketDevice, RouteSocket, TunDevice, TunError

if TYPE_CHECKING:
    from daemon.console.app import Console

__all__ = ["Gateway", "GatewayError", "run_daemon"]

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 3.0
"""Seconds SIGTERM waits for the peers to acknowledge our Deletes."""
HOUSEKEEPING_INTERVAL = 1.0
GC_THRESHOLDS = (10_000, 20, 20)
"""The cyclic collector's generation thresholds once started (Python's default: 700, 10,
10)."""
INBOUND_LINGER = 2.0
"""Seconds a deleted CHILD SA still decrypts packets already on their way (see
`DataPlane.remove`)."""
CHILD_REQUEST_SPACING = 10.0
"""Seconds before asking again for a CHILD SA that was requested and has not come."""


class GatewayError(Exception):
    """The daemon cannot start (TUN, sockets, control socket); the message says why."""


class Gateway:
    """One running daemon."""

    def __init__(self, config_path: str, *, socket_path: str | None = None) -> None:
        self.config_path = config_path
        self.socket_override = socket_path
        self.config: Config | None = None
        self.toml = TomlTables()
        """The file's TOML tables as last parsed: a reload parses only those that
        changed (most of a reload's cost was tomllib)."""
        self.peers: dict[str, PeerState] = {}
        """`[peers.NAME]` sections by NAME."""
        self.connections: dict[str, ConnectionState] = {}
        """`[connections.NAME]` sections by NAME (CHILD SA configurations)."""
        self.ike_sas: dict[int, IkeSaInfo] = {}
        """Announced IKE SAs by id (change it through `remember_ike_sa` and
        `forget_ike_sa`, which keep `_ike_sas_of` in step)."""
        self._ike_sas_of: dict[str, dict[int, IkeSaInfo]] = {}
        """The same IKE SAs grouped by peer: per-peer questions (is it up, is it still
        connecting) are asked per SA set up and must not scan every IKE SA."""
        self.notifier = Notifier()
        self.started_at = time.monotonic()
        self.routes = Routes()
        """The routes into the TUN device, counted per network."""
        self.route_links = RouteLinks()
        """The interfaces of the route-mode connections (`daemon.route_mode`)."""
        self.path_mtus: dict[str, int] = {}
        """The path MTU towards each peer address (for the CHILD SAs' inner MTU)."""
        self.tun: TunDevice | None = None
        self._links: LinkWorker | None = None
        self._route_socket: RouteSocket | None = None
        self.pump: Pump | None = None
        """The sockets and the TUN file descriptor (`_use_pump`)."""
        self.plane: DataPlane | None = None
        """The pump's data plane: the installed CHILD SAs, SPD and SAD."""
        self.endpoint: Endpoint | None = None
        self.ike: IkeDriver | None = None
        """Runs the endpoint on the loop (`_use_endpoint`)."""
        self._control: ControlServer | None = None
        self._claimed: dict[tuple[str, int], socket.socket] = {}
        """The UDP sockets bound at start, until the pump takes them over."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self.shutting_down = False
        self.lifetimes = Lifetimes()
        """The CHILD SAs' volume lifetimes, and the liveness their traffic proves."""
        self.proc_sys = PROC_SYS
        """Where the forwarding sysctls are read (`forwarding_warnings`)."""
        self.remote_access = RemoteAccess()
        """The point-to-cloud servers (`[remote_access.NAME]`, `daemon.ssl_vpn`)."""
        self.ikev2_ra: IkeRaServer | None = None
        """The ikev2 point-to-cloud server on the IKE endpoint (`daemon.ikev2_ra`)."""
        self._ikev2_ra_connection: PeerConfig | None = None
        self.diagnosis = Diagnosis()
        """The last failure of each connection, for `lockgate explain` (`daemon.diagnosis`)."""
        self.event_counts = EventCounts()
        """IKE SA setups, failures and rekeys, for the metrics (`daemon.metrics`)."""
        self._metrics: MetricsServer | None = None
        self.console: Console | None = None
        """The web console (`[console]`, `daemon.console`), if configured."""
        self.workers: WorkerPool | None = None
        """The data-plane worker processes (`[gateway] workers` > 1); None: this process
        forwards (`daemon.worker_gateway`)."""
        self._worker_fds: WorkerFds | None = None
        self.mirror_counters: Callable[[], None] = lambda: None
        """Brings the shadow entries' counters up to the workers' last report
        (`worker_gateway.CounterMirror`); nothing to do with one process."""
        self.reloads = 0
        """Reloads handled (SIGHUP or `lockgate reload`), failed ones included: a client
        that sent SIGHUP learns from the status summary when the reload has run."""

    # ---- start and stop --------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; 0 after a clean shutdown, 1 if start-up failed."""
        self.loop = asyncio.get_running_loop()
        try:
            self.config = load_config(self.config_path, tables=self.toml)
        except ConfigError as exc:
            log.error("%s", exc)
            return 1
        log_config_warnings(self.config)
        try:
            await self._start(self.config)
        except ConfigError as exc:
            # Raised while building the IKE settings from a file that loaded: the key
            # is in the message; no traceback.
            log.error("cannot start: %s", one_line(exc))
            await self._teardown()
            return 1
        except (GatewayError, TunError, LinkError, ControlError, OSError) as exc:
            log.error("cannot start: %s", exc)
            await self._teardown()
            return 1
        for sig, action in (
            (signal.SIGTERM, self._stopping.set),
            (signal.SIGINT, self._stopping.set),
            (signal.SIGHUP, self._reload_from_signal),
        ):
            self.loop.add_signal_handler(sig, action)
        # Everything built so far (modules, netlink sessions, the configuration) lives
        # as long as the daemon: keep it out of the cyclic collector's full passes. A
        # full pass over it took about 60 ms, long enough to stall a burst of IKE
        # setups; SAs made later are collected as usual.
        gc.collect()
        gc.freeze()
        # Fewer young-generation passes: garbage here is freed by reference counting
        # (the code makes few cycles), and at the default threshold of 700 allocations
        # a burst of 100 IKE SA setups paid 17 passes, about 3% of the initiator's CPU.
        gc.set_threshold(*GC_THRESHOLDS)
        if self.ike is not None:
            self.ike.refill_keys()
        for warning in self.forwarding_warnings():
            log.warning("%s", warning)
        housekeeping = self.loop.create_task(self._housekeeping())
        volume_watch = self.loop.create_task(self._watch_volume())
        self.notifier.notify(READY=1, STATUS=status_line(self))
        log.info("lockgate %s ready (pid %d)", VERSION, os.getpid())
        await self._stopping.wait()
        log.info("shutting down: deleting every SA")
        self.notifier.notify(STOPPING=1, STATUS="deleting SAs")
        await self._shutdown_ike()
        housekeeping.cancel()
        volume_watch.cancel()
        await self._teardown()
        # systemctl status shows a stopped unit's last STATUS: not "deleting SAs".
        self.notifier.notify(STATUS="stopped")
        log.info("stopped")
        return 0

    async def _start(self, config: Config) -> None:
        gateway = config.gateway
        # The IKE settings first: a configuration the core cannot use fails before
        # anything is created (TUN, sockets, control socket).
        ikes = ike_connections(config)
        endpoint_settings = endpoint_config(config)
        workers = gateway.workers
        if workers > 1:
            # One CHILD SA pair per worker with a lockgate peer (RFC 9611), our inbound
            # SPIs chosen so that spi % workers names the worker.
            endpoint_settings = dataclasses.replace(endpoint_settings, resources=workers)
        ra_servers = ikev2_ra_servers(config)
        if ra_servers:
            self.ikev2_ra = ra_servers[0]
            self.ikev2_ra.attach(self)
            self._ikev2_ra_connection = self.ikev2_ra.connection(config)
        addresses = [str(a) for a in gateway.addresses]
        # Then the IKE and NAT-T ports on every address, before anything is created: a
        # second daemon on our addresses (or this configuration started twice) stops
        # here with the port and address named, and leaves the first one's TUN device,
        # routes and control socket alone.
        try:
            if workers > 1:
                # Port 500 first, bound alone: a second daemon stops there, and never
                # joins the SO_REUSEPORT group of port 4500.
                self._claimed = claim_udp(addresses, (gateway.ike_port,))
                self._worker_fds = open_worker_sockets(addresses, gateway.nat_port, workers)
                self._claimed.update(self._worker_fds.main_udp)
                self._worker_fds.main_udp = {}
            else:
                self._claimed = claim_udp(addresses, (gateway.ike_port, gateway.nat_port))
        except OSError as exc:
            # open_udp's message names the port and address: show it whole.
            raise GatewayError(exc.strerror or str(exc)) from exc
        for peer in config.peers.values():
            if peer.address is not None:
                self.path_mtus[str(peer.address)] = path_mtu(str(peer.address))
        mtu = tun_mtu(config, self.path_mtus)
        offload = offload_mode()
        self.tun = open_tun(gateway.interface, offload, multi_queue=workers > 1)
        self._links = LinkWorker()
        self._route_socket = RouteSocket()
        name = self.tun.name
        self.routes.attach(self._route_socket, name, LocalAddresses(self._links))
        self._links.run(lambda links: links.quiet_ipv6(name))
        self._links.run(lambda links: links.set_mtu(name, mtu))
        self._links.run(lambda links: links.set_up(name))
        log.info("TUN device %s up, MTU %d", self.tun.name, mtu)

        pump = self._use_pump(
            self.tun,
            ike_port=gateway.ike_port,
            nat_port=gateway.nat_port,
            offload=offload is not OffloadMode.OFF,
        )
        # "tso-lockgate": TSO only while every peer of a TUN completes partial
        # checksums (`Pump.set_tso`); "all" keeps it on for every peer.
        pump.tso_auto = offload is OffloadMode.TSO_LOCKGATE
        claimed, self._claimed = self._claimed, {}
        if workers > 1:
            # The workers read the TUN and the ESP; this process only IKE and
            # keepalives (index 0 of the steered group, which must not coalesce:
            # a GRO batch goes whole to its first datagram's socket).
            pump.read_tun = False
            pump.gro = False
        try:
            pump.open(addresses, raw_esp=workers == 1, claimed=claimed)
        except OSError as exc:
            raise GatewayError(f"cannot bind the IKE/ESP sockets: {exc.strerror}") from exc
        pump.start(asyncio.get_running_loop())
        if workers > 1:
            self._start_workers(workers, offload is not OffloadMode.OFF, gateway.log_level)
        log.info(
            "listening on %s, UDP %d and %d%s",
            ", ".join(addresses),
            gateway.ike_port,
            gateway.nat_port,
            " and raw ESP" if pump.raw else "",
        )
        # Route-mode connections: a TUN each, read by the same pump, down until the
        # connection's CHILD SA is installed.
        self.route_links.attach(
            lambda ifname: open_tun(ifname, offload),
            self._links,
            mtu=mtu,
            on_open=pump.add_route_tun,
            on_close=pump.forget_route_tun,
        )
        self.route_links.sync(config, self.is_up)
        # Partial checksums inside ESP are offered where the TUN takes F_NEEDS_CSUM
        # writes (virtio-net headers), so the kernel completes what we receive.
        endpoint_settings = dataclasses.replace(
            endpoint_settings, partial_csum=bool(getattr(self.tun, "vnet_hdr", False))
        )
        self._use_endpoint(Endpoint([*ikes, *self.ra_connections()], config=endpoint_settings))
        path = self.socket_override or str(gateway.control_socket)
        self._control = ControlServer(path, self._handle_request)
        await self._control.start()
        if config.metrics is not None:
            self._metrics = MetricsServer(
                registry_for(self), config.metrics.host, config.metrics.port
            )
            try:
                await self._metrics.start()
            except OSError as exc:
                raise GatewayError(
                    f"metrics.listen: cannot listen on {config.metrics.host} port "
                    f"{config.metrics.port}: {exc.strerror}"
                ) from exc
        # The point-to-cloud servers: their own TUNs and ports, after the gateway's.
        await self.remote_access.start(config, self._links)
        if config.console is not None:
            # Imported only when configured: a gateway without a console never loads
            # the HTTP server.
            from daemon.console.app import Console

            self.console = Console(self, config.console)
            await self.console.start(Path(self.config_path))
        for ike in ikes:
            self.add_peer(ike)

    def _start_workers(self, workers: int, offload: bool, log_level: str) -> None:
        """Start the data-plane workers on the TUN's queues and the steered sockets."""
        fds, tun = self._worker_fds, self.tun
        if fds is None or tun is None:
            raise RuntimeError("the workers' sockets and the TUN are opened first")
        try:
            add_queues(tun, fds, workers)
        except TunError as exc:
            raise GatewayError(
                f"gateway.workers: no queue of {tun.name} per worker: {exc}"
            ) from exc
        try:
            self.workers = self._make_pool(workers, fds, offload, log_level)
        except OSError as exc:
            raise GatewayError(f"gateway.workers: cannot start {workers} workers: "
                               f"{exc.strerror or exc}") from exc  # fmt: skip
        if self.plane is not None:
            self.mirror_counters = CounterMirror(self.plane, self.workers)
        self.workers.start()
        log.info("%d data-plane workers started (pids %s)", workers,
                 ", ".join(map(str, self.workers.pids())))  # fmt: skip

    def _make_pool(self, workers: int, fds: WorkerFds, offload: bool, log_level: str) -> WorkerPool:
        return WorkerPool(
            workers,
            tuns=fds.queues,
            udp=fds.udp,
            raw=fds.raw,
            loop=asyncio.get_running_loop(),
            on_ike=self._on_ike,
            on_unknown_spi=self._on_esp_spi_unknown,
            on_acquire=self._on_acquire,
            on_worker_lost=self._on_worker_lost,
            on_install_failed=self._on_install_failed,
            offload=offload,
            log_level=log_level,
        )

    def data_plane_drops(self) -> Counter[str]:
        """Packets the data plane dropped, by reason: this process's, or with workers
        theirs too (`worker_gateway.total_drops`)."""
        if self.plane is None:
            return Counter()
        if self.workers is not None:
            return total_drops(self.plane, self.workers)
        return self.plane.total_drops()

    def _on_worker_lost(self, index: int, unique_ids: list[int]) -> None:
        if self.endpoint is None or self.shutting_down:
            return
        if replace_lost(self.endpoint, index, unique_ids):
            self.service()

    def _on_install_failed(self, index: int, unique_id: int, reason: str) -> None:
        """A worker could not take a CHILD SA (its own or a forward entry), so part
        of the traffic would go nowhere: the SA is deleted (`events.refuse_child`)."""
        entry = self.plane.entries.get(unique_id) if self.plane is not None else None
        if entry is None or self.shutting_down:
            return  # deleted meanwhile
        refuse_child(
            self, unique_id, entry.connection, entry.ike_sa_id, f"worker {index}: {reason}"
        )
        # Not called from the IKE driver's service: send the Delete now, not with
        # the next IKE packet or timer.
        self.service()

    def _use_pump(
        self, tun: PacketDevice, *, ike_port: int = 500, nat_port: int = 4500, offload: bool = True
    ) -> Pump:
        """Read and write through a pump on `tun`, whose data plane hands IKE messages
        from port 4500 and outbound packets without a policy to this gateway."""
        pump = Pump(
            tun,
            ike_port=ike_port,
            nat_port=nat_port,
            on_ike=self._on_ike,
            on_acquire=self._on_acquire,
            on_unknown_spi=self._on_esp_spi_unknown,
            offload=offload,
        )
        self.pump, self.plane = pump, pump.plane
        return pump

    def _use_endpoint(self, endpoint: Endpoint) -> IkeDriver:
        """Run `endpoint` on the loop, sending through the pump (`_use_pump` first)."""
        if self.pump is None:
            raise GatewayError("the IKE endpoint needs the pump's sockets")
        self.endpoint = endpoint
        self.ike = IkeDriver(endpoint, self.pump.send_datagram, self._handle_event, loop=self.loop)
        return self.ike

    async def _shutdown_ike(self) -> None:
        ike = self.ike
        if ike is None:
            return
        self.shutting_down = True
        for peer in self.peers.values():
            self.cancel_retry(peer)
        # Wait (bounded) for the peers to acknowledge; retransmissions run meanwhile.
        left = await ike.close(SHUTDOWN_GRACE)
        if left:
            log.warning("%d IKE SA(s) did not confirm the delete in time", left)

    async def _teardown(self) -> None:
        if self.console is not None:
            await self.console.close()
        await self.remote_access.close()
        if self.ike is not None:
            self.ike.stop()
        for peer in self.peers.values():
            self.cancel_retry(peer)
        if self.plane is not None:
            for entry in list(self.plane.entries.values()):
                self.uninstall(entry.unique_id, "shutting down", linger=0.0)
        if self.workers is not None:
            self.workers.close()
        if self._worker_fds is not None:
            self._worker_fds.close()
        if self.pump is not None:
            self.pump.close()
        self.route_links.close_all()
        for sock in self._claimed.values():
            sock.close()
        self._claimed.clear()
        self.routes.remove_all()
        if self._route_socket is not None:
            self._route_socket.close()
        if self._control is not None:
            await self._control.close()
        if self._metrics is not None:
            await self._metrics.close()
        if self.tun is not None:
            self.tun.close()  # the interface goes with its last file descriptor
        if self._links is not None:
            self._links.close()

    # ---- peers and connections --------------------------------------------------------

    def add_peer(self, ike: PeerConfig) -> None:
        self.peers[ike.name] = PeerState(ike)
        for child in ike.children:
            self.add_connection(ike, child)
        if self._peer_wanted(ike.name):
            self.initiate(self.peers[ike.name])

    def add_connection(self, ike: PeerConfig, child: ChildConfig) -> ConnectionState:
        """A `[connections.NAME]` under the peer `ike`: its state, and its trap."""
        state = ConnectionState(child.name, ike.name, child, wanted=child.start == "initiate")
        self.connections[child.name] = state
        # Formatting selectors costs, and a reload adds thousands of connections.
        if log.isEnabledFor(logging.INFO):
            log.info(
                "connection %s: %s === %s, peer %s (%s), start %s",
                child.name,
                format_selectors(child.local_ts),
                format_selectors(child.remote_ts),
                ike.name,
                ike.remote_address or "%any",
                child.start,
            )
        if child.start == "trap":
            self.arm_trap(child)
        return state

    def arm_trap(self, child: ChildConfig) -> None:
        """Route the remote subnets into the TUN without an SA, so the first packet
        reaches `_on_acquire` and starts the connection."""
        for ts in child.remote_ts:
            for net in ts.networks():
                self.routes.trap(net)

    def disarm_trap(self, child: ChildConfig) -> None:
        """No trap needs the remote subnets of `child` any more (the routes of its SAs
        stay while those are installed)."""
        for ts in child.remote_ts:
            for net in ts.networks():
                self.routes.untrap(net)

    def drop_peer(self, name: str, reason: str) -> int:
        """Forget a peer and its connections; delete its IKE SAs. Returns how many."""
        peer = self.peers.pop(name, None)
        if peer is None:
            return 0
        self.cancel_retry(peer)
        for child in peer.config.children:
            state = self.connections.pop(child.name, None)
            if state is not None:
                resolve(state.waiters, f"connection {child.name}: {reason}", ok=False)
            self.disarm_trap(child)
        if self.endpoint is None:
            return 0
        return self.endpoint.delete_connection(name, time.monotonic(), reason)

    def _peer_wanted(self, peer: str) -> bool:
        # The peer's own children, not every connection: a reload adds each of
        # thousands of peers through here.
        state = self.peers.get(peer)
        if state is None:
            return False
        return any(
            (conn := self.connections.get(child.name)) is not None
            and conn.peer == peer
            and conn.wanted
            for child in state.config.children
        )

    def installed(self, connection: str) -> list[ChildSaEntry]:
        if self.plane is None:
            return []
        return self.plane.entries_of_connection(connection)  # indexed, not scanned

    def is_up(self, connection: str) -> bool:
        return self.plane is not None and self.plane.has_connection(connection)

    def connections_of(self, peer: str) -> list[ConnectionState]:
        """The `[connections.NAME]` under one peer (from its configuration, so the
        cost is that peer's connections, not every connection of the gateway)."""
        state = self.peers.get(peer)
        if state is None:
            return []
        return [
            conn
            for child in state.config.children
            if (conn := self.connections.get(child.name)) is not None and conn.peer == peer
        ]

    def remember_ike_sa(self, info: IkeSaInfo) -> None:
        self.ike_sas[info.event.ike_sa_id] = info
        self._ike_sas_of.setdefault(info.event.connection, {})[info.event.ike_sa_id] = info

    def forget_ike_sa(self, ike_sa_id: int) -> IkeSaInfo | None:
        info = self.ike_sas.pop(ike_sa_id, None)
        if info is not None:
            group = self._ike_sas_of.get(info.event.connection)
            if group is not None:
                group.pop(ike_sa_id, None)
                if not group:
                    del self._ike_sas_of[info.event.connection]
        return info

    def ike_sa_infos(self, peer: str) -> list[IkeSaInfo]:
        """The peer's announced IKE SAs, oldest first."""
        return list(self._ike_sas_of.get(peer, {}).values())

    def initiate(self, peer: PeerState) -> None:
        endpoint = self.endpoint
        peer.retry = None
        if endpoint is None or self.shutting_down:
            return
        name = peer.config.name
        if peer.config.remote_address is None:
            log.warning("peer %s is %%any: it must initiate, we cannot", name)
            return
        if self.ike_sa_count(name):
            return
        log.info(
            "peer %s: initiating IKE SA to %s for %s",
            name,
            peer.config.remote_address,
            peer.config.children[0].name,
        )
        try:
            endpoint.initiate(name, time.monotonic())
        except IkeError as exc:
            log.error("peer %s: cannot initiate: %s", name, exc)
            return
        self.service()

    def established_ike_sa(self, peer: str) -> IkeSa | None:
        """The peer's IKE SA in use: one the core announced (a rekey's candidate SA is
        not, until IkeSaRekeyed) and that is still established."""
        endpoint = self.endpoint
        if endpoint is None:
            return None
        for ike_sa_id in self._ike_sas_of.get(peer, {}):
            sa = endpoint.ike_sa(ike_sa_id)
            if sa is not None and sa.state is IkeSaState.ESTABLISHED:
                return sa
        return None

    def create_child(self, state: ConnectionState, sa: IkeSa) -> None:
        """Ask for one more CHILD SA under an established IKE SA (RFC 7296 §1.3.1)."""
        now = time.monotonic()
        if state.requested_at is not None and now - state.requested_at < CHILD_REQUEST_SPACING:
            return  # one is on its way
        state.requested_at = now
        log.info("connection %s: requesting its CHILD SA from %s", state.name, state.peer)
        try:
            sa.create_child(state.config, now)
        except IkeError as exc:
            log.error("connection %s: cannot request a CHILD SA: %s", state.name, exc)
            return
        self.service()

    def ike_sa_count(self, peer: str) -> int:
        endpoint = self.endpoint
        if endpoint is None:
            return 0
        return endpoint.ike_sa_count(peer)  # indexed by connection in the endpoint

    def schedule_retry(self, peer: PeerState, *, at_once: bool = False) -> None:
        """Initiate the peer again after the back-off (`retry_delay`), or `at_once`:
        an attempt that does not count as a failed one, so if it fails the back-off
        starts from its first delay."""
        name = peer.config.name
        if not self._peer_wanted(name) or self.shutting_down or peer.retry is not None:
            return
        if at_once:
            delay = 0.0
            log.info("peer %s: retrying at once", name)
        else:
            delay = retry_delay(peer.attempts)
            peer.attempts += 1
            log.info("peer %s: retrying in %.0f s", name, delay)
        if self.loop is not None:
            peer.retry = self.loop.call_later(delay, self.initiate, peer)

    @staticmethod
    def cancel_retry(peer: PeerState) -> None:
        if peer.retry is not None:
            peer.retry.cancel()
            peer.retry = None

    # ---- the IKE driver's and the data plane's callbacks ------------------------------

    def _on_ike(self, message: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        if self.ike is not None:
            self.ike.message_received(message, local, remote)

    def _on_esp_spi_unknown(self, spi: int, local: Address, remote: Address) -> None:
        if self.ike is not None:
            self.ike.esp_spi_unknown(spi, local, remote)

    def service(self) -> None:
        """Let the IKE endpoint act on what changed (`IkeDriver.service`)."""
        if self.ike is not None:
            self.ike.service()

    def _handle_event(self, event: Event) -> None:
        """React to one event of the IKE core (`daemon.events`)."""
        handle_event(self, event)

    def _on_acquire(self, packet: bytes) -> None:
        """An outbound packet no policy covers (`daemon.peers.acquire`)."""
        acquire(self, packet)

    def uninstall(self, unique_id: int, reason: str, linger: float = INBOUND_LINGER) -> None:
        plane = self.plane
        if plane is None:
            return
        if self.workers is not None:
            # Its last reported counters, for the log line and the retired totals; its
            # drops stay the worker's (`total_drops` adds those up), not counted twice.
            self.mirror_counters()
            self.workers.remove(unique_id, linger)
            shadow = plane.entries.get(unique_id)
            if shadow is not None:
                shadow.drops.clear()
        entry = plane.remove(unique_id, linger=linger)
        if entry is None:
            return
        if entry.interface is None:
            self.routes.release_for(entry)
        else:
            # Down with its last CHILD SA (not at a rekey: the new one is in already).
            self.route_links.follow(entry.connection, self.is_up(entry.connection))
        log.info(
            "connection %s: CHILD SA #%d removed (%s) after %d packets in, %d out",
            entry.connection,
            unique_id,
            reason,
            entry.inbound.packet_count,
            entry.outbound.packet_count,
        )

    # ---- reload -----------------------------------------------------------------------

    def _reload_from_signal(self) -> None:
        log.info("SIGHUP: reloading %s", self.config_path)
        with contextlib.suppress(ControlError):
            self.reload()  # a failure is logged there

    def reload(self) -> str:
        """Re-read the file and apply what changed (`daemon.reload`)."""
        return reload(self)

    def ra_connections(self) -> list[PeerConfig]:
        """The ikev2 server's IKE connection (for new IKE SAs; a reload replaces it)."""
        return [] if self._ikev2_ra_connection is None else [self._ikev2_ra_connection]

    def use_ikev2_ra(self, server: IkeRaServer | None, connection: PeerConfig | None) -> None:
        """A reload's ikev2 server (None: none any more) and its IKE connection; the
        caller hands the endpoint the connections next."""
        self.ikev2_ra, self._ikev2_ra_connection = server, connection
        if server is not None:
            server.attach(self)

    def forwarding_warnings(self) -> list[str]:
        """Why the host would not route the connections' traffic: forwarding off for
        an IP version they carry (`daemon.routes.forwarding_off`)."""
        versions = {
            ts.version
            for state in self.connections.values()
            for ts in (*state.config.local_ts, *state.config.remote_ts)
        }
        return forwarding_off(versions, self.proc_sys)

    # ---- control ----------------------------------------------------------------------

    async def _handle_request(self, request: dict[str, Any]) -> Any:
        """Answer one control socket request (`daemon.commands`)."""
        return await handle_request(self, request)

    # ---- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything `lockgate status` shows, JSON-ready (`daemon.status`)."""
        return gateway_status(self)

    def status_summary(self) -> dict[str, Any]:
        """Counts only (`{"command": "status", "summary": true}`), see `daemon.status`."""
        return status_summary(self)

    async def _housekeeping(self) -> None:
        interval = self.notifier.watchdog_interval
        step = min(interval, HOUSEKEEPING_INTERVAL) if interval else HOUSEKEEPING_INTERVAL
        last_watchdog = 0.0
        while not self._stopping.is_set():
            await asyncio.sleep(step)
            now = time.monotonic()
            if interval and now - last_watchdog >= interval:
                self.notifier.notify(WATCHDOG=1)
                last_watchdog = now
            # A lost timer would stall retransmissions: run the endpoint regardless.
            self.service()
            if self.ike is not None and not self.ike.refilling:
                self.ike.refill_keys()
            self._report_liveness(now)
            if self.plane is not None:
                self.plane.expire_lingering()
            self.remote_access.housekeeping()
            if self.ikev2_ra is not None:
                self.ikev2_ra.poll_users()

    async def _watch_volume(self) -> None:
        last_full = time.monotonic()
        while not self._stopping.is_set():
            await asyncio.sleep(VOLUME_CHECK_INTERVAL)
            now = time.monotonic()
            every = now - last_full >= SEQUENCE_CHECK_INTERVAL
            if every:
                last_full = now
            self._enforce_volume_lifetimes(every=every)

    def _enforce_volume_lifetimes(self, *, every: bool = False) -> None:
        """Tell the core of CHILD SAs at a soft or hard volume limit (`Lifetimes.enforce`)."""
        endpoint, plane = self.endpoint, self.plane
        self.mirror_counters()
        if (
            endpoint is not None
            and plane is not None
            and self.lifetimes.enforce(endpoint, plane, every=every)
        ):
            self.service()

    def _report_liveness(self, now: float) -> None:
        """Tell the IKE SAs whose peers sent ESP (`Lifetimes.report_liveness`)."""
        if self.endpoint is not None and self.plane is not None:
            self.mirror_counters()
            self.lifetimes.report_liveness(self.endpoint, self.plane, now)


def run_daemon(config_path: str, *, socket_path: str | None = None, log_level: str | None) -> int:
    """`lockgate daemon`: run the gateway on uvloop until SIGTERM; the exit status."""
    level = log_level or os.environ.get("LOCKGATE_LOG_LEVEL")
    if level is None:
        # The file may name a level; an unreadable file is reported by run() itself.
        try:
            level = load_config(config_path).gateway.log_level
        except ConfigError:
            level = "info"
    setup_logging(level)
    gateway = Gateway(config_path, socket_path=socket_path)
    try:
        import uvloop

        runner: Callable[[Any], int] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        runner = asyncio.run
    return runner(gateway.run())
