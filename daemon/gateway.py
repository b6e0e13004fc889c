"""The gateway daemon: configuration, TUN, sockets, the IKE endpoint and the data
plane, wired together on one asyncio (uvloop) loop.

Life of a tunnel: the IKE endpoint (sans-I/O, `ikev2.endpoint`) negotiates; the
daemon feeds it the datagrams the pump reads, sends what it produces, runs its timer
and reacts to its events. `ChildSaInstalled` becomes two `EspSA`s, an SPD policy,
an SAD entry and routes to the remote subnets through the TUN device;
`ChildSaDeleted` takes them away again. `IkeSaRekeyed` swaps the IKE SA shown in
status and the one the CHILD SAs answer to; an IKE SA that ends because its peer is
dead gets the connection's dpd_action (clear, restart with back-off, or re-arm a
trap). SIGHUP reloads the file and touches only connections whose settings changed;
SIGTERM deletes every SA (the peer gets a Delete), removes routes and the TUN
device, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from conf import ConfigError as ConfigLoadError
from conf.ike import endpoint_config, ike_connections
from conf.load import load_config
from conf.model import Config
from conf.toml_tables import TomlTables
from daemon.childsa import ChildSaEntry, entry_from_event, selector_from_ike
from daemon.control import ControlError, ControlServer
from daemon.mtu import path_mtu, tun_mtu
from daemon.netlink import LinkWorker, LocalAddresses
from daemon.offload import OffloadMode, offload_mode, open_tun
from daemon.packet import flow_of
from daemon.pump import Pump
from daemon.sdnotify import Notifier, setup_logging
from daemon.spd import IPNetwork
from esp.errors import EspConfigError
from esp.sa import LifetimeState
from ikev2.config import ChildConfig
from ikev2.config import ConfigError as IkeConfigError
from ikev2.config import ConnectionConfig as IkeConnection
from ikev2.endpoint import Endpoint
from ikev2.errors import IkeError
from ikev2.events import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaInstalled,
    DeleteCause,
    Event,
    IkeSaAddressChanged,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    NatKeepaliveDue,
)
from ikev2.sa import IkeSa, IkeSaState
from ikev2.ts import format_selectors
from tun import LinkError, RouteSocket, TunDevice, TunError

__all__ = ["ConfigLoadError", "Gateway", "load_config", "run_daemon"]

log = logging.getLogger("lockgate")

VERSION = "0.1.0"
SHUTDOWN_GRACE = 3.0
"""Seconds SIGTERM waits for the peers to acknowledge our Deletes."""
RETRY_DELAYS = (2.0, 4.0, 8.0, 15.0, 30.0)
"""Back-off between attempts of a connection that should be up but failed."""
UP_TIMEOUT = 20.0
"""How long `lockgate up` waits for the CHILD SA before answering."""
HOUSEKEEPING_INTERVAL = 1.0
VOLUME_CHECK_INTERVAL = 0.1
"""Seconds between looks at the CHILD SAs' byte/packet counters. The rekey at 90% of a
volume limit must start before the last 10% are used up: checked only once a second, a
small limit at a high packet rate went past the hard limit before the rekey began. Only
CHILD SAs with such a limit are looked at this often."""
GC_THRESHOLDS = (10_000, 20, 20)
"""The cyclic collector's generation thresholds once started (Python's default: 700, 10,
10)."""
SEQUENCE_CHECK_INTERVAL = 10.0
"""Seconds between looks at every CHILD SA, for the end of its sequence space: the soft
mark leaves 1/16 of the 32-bit space (2^28 packets), minutes even at a million packets
a second. Walking a thousand SAs ten times a second cost the loop 2% of a core."""
INBOUND_LINGER = 2.0
"""Seconds a deleted CHILD SA still decrypts packets already on their way (see
`DataPlane.remove`)."""
KEY_POOL_STEP = 0.002
"""Seconds of making key exchange pairs ahead (Endpoint.prepare_keys) per turn of the
event loop, so datagrams arriving meanwhile wait little: some 40 X25519 pairs, or one
MODP pair (a millisecond or two each)."""
KEY_POOL_IDLE = 0.2
"""Seconds without an IKE datagram before key pairs are made ahead: during a burst of
setups they would only compete with it."""
CHILD_REQUEST_SPACING = 10.0
"""Seconds before asking again for a CHILD SA that was requested and has not come."""
EXPIRED_CAUSES = frozenset({DeleteCause.LIMIT_REACHED, DeleteCause.EXPIRED})
"""ChildSaDeleted causes of a CHILD SA that reached a hard limit before a rekey
replaced it: a connection that should be up then needs a new one."""


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


def _has_volume_limit(entry: ChildSaEntry) -> bool:
    """True when either ESP SA of the entry has a byte or packet limit."""
    return any(
        limit is not None
        for life in (entry.outbound.lifetime, entry.inbound.lifetime)
        for limit in (life.soft_bytes, life.hard_bytes, life.soft_packets, life.hard_packets)
    )


def _route_key(net: IPNetwork) -> RouteKey:
    return (net.version, int(net.network_address), net.prefixlen)


def _network_of(key: RouteKey) -> IPNetwork:
    version, first, prefix = key
    if version == 4:
        return ipaddress.IPv4Network((first, prefix))
    return ipaddress.IPv6Network((first, prefix))


class GatewayError(Exception):
    """The daemon cannot start (TUN, sockets, control socket); the message says why."""


@dataclass(slots=True)
class IkeSaInfo:
    """What `status` shows about an established IKE SA (from its event)."""

    event: IkeSaEstablished
    """The event that announced it (after a rekey: with the new SA's id, SPIs, suite)."""
    established_at: float = field(default_factory=time.monotonic)
    """Monotonic time of establishment (or of the rekey that made it)."""
    rekeyed_from: int | None = None
    """The IKE SA it replaced in a rekey (RFC 7296 §2.18), if any."""


@dataclass
class PeerState:
    """One IKE connection: a peer gateway and the CHILD SAs configured under it."""

    config: IkeConnection
    """What the IKE core runs (named after the `[peers.NAME]` section)."""
    attempts: int = 0
    """Failed attempts in a row (for the back-off)."""
    retry: asyncio.TimerHandle | None = None
    """The scheduled next attempt, if any."""
    last_error: str = ""
    """Why the last attempt failed."""
    ike_waiters: list[asyncio.Future[str]] = field(default_factory=list)
    """`lockgate rekey --ike` calls waiting for the new IKE SA."""


@dataclass
class ConnectionState:
    """One `[connections.NAME]`: a CHILD SA configuration under a peer's IKE SA."""

    name: str
    """The connection (and CHILD SA) name the operator wrote."""
    peer: str
    """Name of the IKE connection (the peer) it belongs to."""
    child: ChildConfig
    """Its CHILD SA settings."""
    wanted: bool
    """True if it should be up (start = initiate, or `lockgate up`)."""
    last_error: str = ""
    """Why it last failed to come up."""
    requested_at: float | None = None
    """When we last asked for its CHILD SA under an existing IKE SA (not yet there)."""
    waiters: list[asyncio.Future[str]] = field(default_factory=list)
    """`lockgate up` calls waiting for the outcome."""
    carried_by: int | None = None
    """The IKE SA its CHILD SA is (or was, when that IKE SA died) under: a dead peer's
    dpd_action applies to the connections that were up with it."""
    trapped: bool = False
    """Re-armed by dpd_action "trap": like start = "trap", the next matching packet
    initiates it again."""


def _one_line(exc: Exception) -> str:
    """A configuration error on one log line: conf's ConfigError lists each problem
    on a line of its own when there are several."""
    problems = getattr(exc, "problems", ())
    if len(problems) > 1:
        return "; ".join(str(p) for p in problems)
    return str(exc)


def _resolve(waiters: list[asyncio.Future[str]], outcome: str, ok: bool) -> None:
    """Answer every waiting control request with `outcome` (an error unless `ok`)."""
    for waiter in waiters:
        if not waiter.done():
            if ok:
                waiter.set_result(outcome)
            else:
                waiter.set_exception(ControlError(outcome))
    waiters.clear()


class Gateway:
    """One running daemon."""

    def __init__(self, config_path: str, *, socket_path: str | None = None) -> None:
        self.config_path = config_path
        self.socket_override = socket_path
        self.config: Config | None = None
        self._toml = TomlTables()
        """The file's TOML tables as last parsed: a reload parses only those that
        changed (most of a reload's cost was tomllib)."""
        self.peers: dict[str, PeerState] = {}
        """IKE connections by peer name."""
        self.connections: dict[str, ConnectionState] = {}
        """`[connections.NAME]` sections by NAME (CHILD SA configurations)."""
        self.ike_sas: dict[int, IkeSaInfo] = {}
        """Announced IKE SAs by id (change it through `_remember_ike_sa` and
        `_forget_ike_sa`, which keep `_ike_sas_of` in step)."""
        self._ike_sas_of: dict[str, dict[int, IkeSaInfo]] = {}
        """The same IKE SAs grouped by peer: per-peer questions (is it up, is it still
        connecting) are asked per SA set up and must not scan every IKE SA."""
        self.notifier = Notifier()
        self.started_at = time.monotonic()
        self._routes: dict[RouteKey, int] = {}
        """How many installed CHILD SAs route each remote network into the TUN."""
        self._trap_routes: set[IPNetwork] = set()
        self._path_mtus: dict[str, int] = {}
        self._tun: TunDevice | None = None
        self._links: LinkWorker | None = None
        self._route_ops: RouteOps | None = None
        """Adds and removes the routes into the TUN, on the event loop's thread."""
        self._local_addresses: LocalAddresses | None = None
        self._pump: Pump | None = None
        self._endpoint: Endpoint | None = None
        self._control: ControlServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        """The endpoint timer `_timer` is armed for (meaningful while `_timer` is set)."""
        self._stopping = asyncio.Event()
        self._shutting_down = False
        self._inbound_seen: dict[int, int] = {}
        self._rekeying: set[int] = set()
        self._volume_limited: set[int] = set()
        """CHILD SAs (unique ids) with a byte or packet limit: checked every
        VOLUME_CHECK_INTERVAL; the others only every SEQUENCE_CHECK_INTERVAL."""
        self._deleting: set[int] = set()
        self._last_ike_at = 0.0
        """When the last IKE datagram arrived (monotonic): key pairs are made ahead
        only after KEY_POOL_IDLE of quiet."""
        self._key_refill: asyncio.Handle | None = None
        self._reloads = 0
        """Reloads handled (SIGHUP or `lockgate reload`), failed ones included: a client
        that sent SIGHUP learns from the status summary when the reload has run."""

    # ---- start and stop --------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; 0 after a clean shutdown, 1 if start-up failed."""
        self._loop = asyncio.get_running_loop()
        try:
            self.config = load_config(self.config_path, tables=self._toml)
        except ConfigLoadError as exc:
            log.error("%s", exc)
            return 1
        try:
            await self._start(self.config)
        except IkeConfigError as exc:
            # Raised while building the IKE settings from a file that loaded (conf's
            # ConfigError is a subclass): the key is in the message; no traceback.
            log.error("cannot start: %s", _one_line(exc))
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
            self._loop.add_signal_handler(sig, action)
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
        self._refill_keys()
        housekeeping = self._loop.create_task(self._housekeeping())
        volume_watch = self._loop.create_task(self._watch_volume())
        self.notifier.notify(READY=1, STATUS=self._status_line())
        log.info("lockgate %s ready (pid %d)", VERSION, os.getpid())
        await self._stopping.wait()
        log.info("shutting down: deleting every SA")
        self.notifier.notify(STOPPING=1, STATUS="deleting SAs")
        await self._shutdown_ike()
        housekeeping.cancel()
        volume_watch.cancel()
        await self._teardown()
        log.info("stopped")
        return 0

    async def _start(self, config: Config) -> None:
        gateway = config.gateway
        # The IKE settings first: a configuration the core cannot use fails before
        # anything is created (TUN, sockets, control socket).
        ikes = ike_connections(config)
        endpoint_settings = endpoint_config(config)
        addresses = [str(a) for a in gateway.addresses]
        for peer in config.peers.values():
            if peer.address is not None:
                self._path_mtus[str(peer.address)] = path_mtu(str(peer.address))
        mtu = tun_mtu(config, self._path_mtus)
        offload = offload_mode()
        self._tun = open_tun(gateway.interface, offload)
        self._links = LinkWorker()
        self._local_addresses = LocalAddresses(self._links)
        self._route_ops = RouteSocket()
        name = self._tun.name
        self._links.run(lambda links: links.quiet_ipv6(name))
        self._links.run(lambda links: links.set_mtu(name, mtu))
        self._links.run(lambda links: links.set_up(name))
        log.info("TUN device %s up, MTU %d", self._tun.name, mtu)

        self._pump = Pump(
            self._tun,
            ike_port=gateway.ike_port,
            nat_port=gateway.nat_port,
            on_ike=self._on_ike,
            offload=offload is not OffloadMode.OFF,
        )
        try:
            self._pump.open(addresses, raw_esp=True)
        except OSError as exc:
            raise GatewayError(f"cannot bind the IKE/ESP sockets: {exc.strerror}") from exc
        self._pump.plane.on_acquire = self._on_acquire
        self._pump.start(asyncio.get_running_loop())
        log.info(
            "listening on %s, UDP %d and %d%s",
            ", ".join(addresses),
            gateway.ike_port,
            gateway.nat_port,
            " and raw ESP" if self._pump.raw else "",
        )
        self._endpoint = Endpoint(ikes, config=endpoint_settings)
        path = self.socket_override or str(gateway.control_socket)
        self._control = ControlServer(path, self._handle_request)
        await self._control.start()
        for ike in ikes:
            self._add_peer(ike)

    async def _shutdown_ike(self) -> None:
        endpoint = self._endpoint
        if endpoint is None:
            return
        self._shutting_down = True
        for peer in self.peers.values():
            self._cancel_retry(peer)
        endpoint.close(time.monotonic())
        self._service()
        # Wait (bounded) for the peers to acknowledge; retransmissions run meanwhile.
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while endpoint.ike_sas() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self._service()
        if endpoint.ike_sas():
            log.warning("%d IKE SA(s) did not confirm the delete in time", len(endpoint.ike_sas()))

    async def _teardown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._key_refill is not None:
            self._key_refill.cancel()
        for peer in self.peers.values():
            self._cancel_retry(peer)
        if self._pump is not None:
            for entry in list(self._pump.plane.entries.values()):
                self._uninstall(entry.unique_id, "shutting down", linger=0.0)
            self._pump.close()
        for net in {_network_of(key) for key in self._routes} | self._trap_routes:
            self._remove_route(net)
        self._routes.clear()
        self._trap_routes.clear()
        if isinstance(self._route_ops, RouteSocket):
            self._route_ops.close()
        if self._control is not None:
            await self._control.close()
        if self._tun is not None:
            self._tun.close()  # the interface goes with its last file descriptor
        if self._links is not None:
            self._links.close()

    # ---- peers and connections --------------------------------------------------------

    def _add_peer(self, ike: IkeConnection) -> None:
        self.peers[ike.name] = PeerState(ike)
        for child in ike.children:
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
                self._arm_trap(child)
        if self._peer_wanted(ike.name):
            self._initiate(self.peers[ike.name])

    def _arm_trap(self, child: ChildConfig) -> None:
        """Route the remote subnets into the TUN without an SA, so the first packet
        reaches `_on_acquire` and starts the connection."""
        for ts in child.remote_ts:
            for net in ts.networks():
                if net not in self._trap_routes:
                    self._trap_routes.add(net)
                    if _route_key(net) not in self._routes:
                        self._add_route(net, None)

    def _drop_peer(self, name: str, reason: str) -> int:
        """Forget a peer and its connections; delete its IKE SAs. Returns how many."""
        peer = self.peers.pop(name, None)
        if peer is None:
            return 0
        self._cancel_retry(peer)
        for child in peer.config.children:
            state = self.connections.pop(child.name, None)
            if state is not None:
                self._resolve_waiters(state, f"connection {child.name}: {reason}", ok=False)
            for ts in child.remote_ts:
                for net in ts.networks():
                    if net in self._trap_routes:
                        self._trap_routes.discard(net)
                        if _route_key(net) not in self._routes:
                            self._remove_route(net)
        if self._endpoint is None:
            return 0
        return self._endpoint.delete_connection(name, time.monotonic(), reason)

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

    def _installed(self, connection: str) -> list[ChildSaEntry]:
        if self._pump is None:
            return []
        return self._pump.plane.entries_of_child(connection)  # indexed, not scanned

    def _is_up(self, connection: str) -> bool:
        return self._pump is not None and self._pump.plane.has_child(connection)

    def _connections_of(self, peer: str) -> list[ConnectionState]:
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

    def _remember_ike_sa(self, info: IkeSaInfo) -> None:
        self.ike_sas[info.event.ike_sa_id] = info
        self._ike_sas_of.setdefault(info.event.connection, {})[info.event.ike_sa_id] = info

    def _forget_ike_sa(self, ike_sa_id: int) -> IkeSaInfo | None:
        info = self.ike_sas.pop(ike_sa_id, None)
        if info is not None:
            group = self._ike_sas_of.get(info.event.connection)
            if group is not None:
                group.pop(ike_sa_id, None)
                if not group:
                    del self._ike_sas_of[info.event.connection]
        return info

    def _ike_sa_infos(self, peer: str) -> list[IkeSaInfo]:
        """The peer's announced IKE SAs, oldest first."""
        return list(self._ike_sas_of.get(peer, {}).values())

    def _initiate(self, peer: PeerState) -> None:
        endpoint = self._endpoint
        peer.retry = None
        if endpoint is None or self._shutting_down:
            return
        name = peer.config.name
        if peer.config.remote_address is None:
            log.warning("peer %s is %%any: it must initiate, we cannot", name)
            return
        if self._ike_sa_count(name):
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
        self._service()

    def _established_ike_sa(self, peer: str) -> IkeSa | None:
        """The peer's IKE SA in use: one the core announced (a rekey's candidate SA is
        not, until IkeSaRekeyed) and that is still established."""
        endpoint = self._endpoint
        if endpoint is None:
            return None
        for ike_sa_id in self._ike_sas_of.get(peer, {}):
            sa = endpoint.ike_sa(ike_sa_id)
            if sa is not None and sa.state is IkeSaState.ESTABLISHED:
                return sa
        return None

    def _create_child(self, state: ConnectionState, sa: IkeSa) -> None:
        """Ask for one more CHILD SA under an established IKE SA (RFC 7296 §1.3.1)."""
        now = time.monotonic()
        if state.requested_at is not None and now - state.requested_at < CHILD_REQUEST_SPACING:
            return  # one is on its way
        state.requested_at = now
        log.info("connection %s: requesting its CHILD SA from %s", state.name, state.peer)
        try:
            sa.create_child(state.child, now)
        except IkeError as exc:
            log.error("connection %s: cannot request a CHILD SA: %s", state.name, exc)
            return
        self._service()

    def _ike_sa_count(self, peer: str) -> int:
        endpoint = self._endpoint
        if endpoint is None:
            return 0
        return endpoint.ike_sa_count(peer)  # indexed by connection in the endpoint

    def _schedule_retry(self, peer: PeerState) -> None:
        name = peer.config.name
        if not self._peer_wanted(name) or self._shutting_down or peer.retry is not None:
            return
        delay = RETRY_DELAYS[min(peer.attempts, len(RETRY_DELAYS) - 1)]
        peer.attempts += 1
        log.info("peer %s: retrying in %.0f s", name, delay)
        if self._loop is not None:
            peer.retry = self._loop.call_later(delay, self._initiate, peer)

    @staticmethod
    def _cancel_retry(peer: PeerState) -> None:
        if peer.retry is not None:
            peer.retry.cancel()
            peer.retry = None

    @staticmethod
    def _resolve_waiters(state: ConnectionState, outcome: str, ok: bool) -> None:
        _resolve(state.waiters, outcome, ok)

    @staticmethod
    def _resolve_ike_waiters(peer: PeerState, outcome: str, ok: bool) -> None:
        _resolve(peer.ike_waiters, outcome, ok)

    # ---- the IKE endpoint -------------------------------------------------------------

    def _on_ike(self, message: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        if self._endpoint is None:
            return
        self._last_ike_at = now = time.monotonic()
        try:
            self._endpoint.receive_message(message, local, remote, now)
        except Exception:
            # The core turns bad input into typed errors itself; anything escaping is
            # a bug, and one hostile datagram must not stop the gateway for everyone.
            log.exception("IKE message from %s[%d] caused an internal error", *remote)
        self._service()

    def _service(self) -> None:
        """Run due timers, send what the endpoint wants sent, handle its events, and
        re-arm the timer: the whole asyncio adapter of a sans-I/O core."""
        endpoint, pump = self._endpoint, self._pump
        if endpoint is None or pump is None:
            return
        now = time.monotonic()
        timer = endpoint.get_timer()
        if timer is not None and timer <= now:
            endpoint.handle_timer(now)
        for payload, local, remote in endpoint.datagrams_to_send(now):
            pump.send_datagram(payload, local, remote)
        for event in endpoint.events():
            self._handle_event(event)
        # Handling events may have produced more to send (a retry, a delete).
        for payload, local, remote in endpoint.datagrams_to_send(now):
            pump.send_datagram(payload, local, remote)
        self._arm_timer()

    def _arm_timer(self) -> None:
        endpoint, loop = self._endpoint, self._loop
        timer = endpoint.get_timer() if endpoint is not None and loop is not None else None
        if self._timer is not None:
            if timer is None or timer >= self._timer_at:
                # Armed for that time or earlier: most datagrams leave the timer where
                # it was or move it later (an answer stops a retransmission timer), and
                # an early wake-up only runs `_service`, which arms for what is then
                # due. A burst of setups paid a cancel and a new handle per datagram.
                return
            self._timer.cancel()
            self._timer = None
        if timer is not None and loop is not None:
            delay = max(0.0, timer - time.monotonic())
            self._timer = loop.call_later(delay, self._on_timer)
            self._timer_at = timer

    def _refill_keys(self) -> None:
        """Make key exchange pairs ahead of need, for KEY_POOL_STEP per turn of the
        loop, while no IKE datagram came for KEY_POOL_IDLE (housekeeping starts it
        again)."""
        self._key_refill = None
        endpoint, loop = self._endpoint, self._loop
        if endpoint is None or loop is None or self._shutting_down:
            return
        now = time.monotonic()
        if now - self._last_ike_at < KEY_POOL_IDLE:
            return
        deadline = now + KEY_POOL_STEP
        while (missing := endpoint.prepare_keys(1)) > 0 and time.monotonic() < deadline:
            pass
        if missing > 0:
            self._key_refill = loop.call_soon(self._refill_keys)

    def _on_timer(self) -> None:
        self._timer = None  # fired: the next `_arm_timer` must arm again, same time or not
        self._service()

    def _handle_event(self, event: Event) -> None:
        handler = self._EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_ike_established(self, event: IkeSaEstablished) -> None:
        self._remember_ike_sa(IkeSaInfo(event))
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            "peer %s: IKE SA #%d established with %s (%s), %s, %s[%d] <-> %s[%d]%s",
            event.connection,
            event.ike_sa_id,
            event.remote_id,
            "we initiated" if event.initiator else "peer initiated",
            event.suite,
            event.local[0],
            event.local[1],
            event.remote[0],
            event.remote[1],
            f"; ESP in UDP: {event.udp_encap_reason}" if event.udp_encap_reason else "",
        )

    def _on_ike_deleted(self, event: IkeSaDeleted) -> None:
        self._forget_ike_sa(event.ike_sa_id)
        log.info("peer %s: IKE SA #%d deleted (%s)",
                 event.connection, event.ike_sa_id, event.reason)  # fmt: skip
        peer = self.peers.get(event.connection)
        if peer is None:
            return
        self._resolve_ike_waiters(peer, f"peer {peer.config.name}: {event.reason}", ok=False)
        if self._shutting_down:
            return
        if event.cause is DeleteCause.DEAD_PEER:
            # Liveness checks went unanswered (RFC 7296 §2.4): dpd_action applies.
            self._apply_dpd_action(peer, event)
        else:
            # Deleted by the peer, or expired: connections that should be up come back.
            self._schedule_retry(peer)

    def _apply_dpd_action(self, peer: PeerState, event: IkeSaDeleted) -> None:
        """The peer stopped answering liveness checks (RFC 7296 §2.4): do what its
        connections' dpd_action says with those that were up under the dead IKE SA."""
        action = peer.config.dpd_action
        name = peer.config.name
        lost = [
            c for c in self._connections_of(name) if c.carried_by == event.ike_sa_id or c.wanted
        ]
        peer.last_error = event.reason
        for state in lost:
            state.carried_by = None
            state.last_error = event.reason
        names = ", ".join(c.name for c in lost) or "none"
        if action == "restart" and peer.config.remote_address is not None:
            log.info("peer %s is dead; dpd_action restart: initiating again (%s)", name, names)
            for state in lost:
                state.wanted = True
            peer.attempts = 0
            self._schedule_retry(peer)
        elif action == "trap":
            log.info("peer %s is dead; dpd_action trap: traffic restarts %s", name, names)
            for state in lost:
                state.wanted = False
                state.trapped = True
                self._arm_trap(state.child)
        else:
            if action == "restart":
                log.warning("peer %s is dead and %%any: it must initiate again", name)
            else:
                log.info("peer %s is dead; dpd_action clear: %s stay down", name, names)
            for state in lost:
                state.wanted = False

    def _on_ike_rekeyed(self, event: IkeSaRekeyed) -> None:
        """The IKE SA was replaced (RFC 7296 §2.18): status shows the new one, and the
        CHILD SAs that moved along now answer to it."""
        old = self._forget_ike_sa(event.ike_sa_id)
        sa = self._endpoint.ike_sa(event.new_ike_sa_id) if self._endpoint is not None else None
        if old is not None:
            announced = dataclasses.replace(
                old.event,
                ike_sa_id=event.new_ike_sa_id,
                spi_i=event.spi_i,
                spi_r=event.spi_r,
                suite=event.suite,
                initiator=sa.initiator if sa is not None else old.event.initiator,
            )
            self._remember_ike_sa(IkeSaInfo(announced, rekeyed_from=event.ike_sa_id))
        if self._pump is not None:
            self._pump.plane.move_to_ike_sa(event.ike_sa_id, event.new_ike_sa_id)
        for state in self._connections_of(event.connection):
            if state.carried_by == event.ike_sa_id:
                state.carried_by = event.new_ike_sa_id
        log.info(
            "peer %s: IKE SA #%d rekeyed, #%d replaces it (%s, SPIs %016x_i %016x_r)",
            event.connection,
            event.ike_sa_id,
            event.new_ike_sa_id,
            event.suite,
            event.spi_i,
            event.spi_r,
        )
        peer = self.peers.get(event.connection)
        if peer is not None:
            self._resolve_ike_waiters(
                peer,
                f"peer {event.connection}: IKE SA #{event.ike_sa_id} rekeyed, "
                f"#{event.new_ike_sa_id} replaces it",
                ok=True,
            )

    def _on_address_changed(self, event: IkeSaAddressChanged) -> None:
        """Send ESP where the IKE SA now talks to: behind a NAT the peer's mapping may
        change, and the IKE SA follows authenticated messages; without one, the move to
        port 4500 (RFC 7296 §2.23)."""
        info = self.ike_sas.get(event.ike_sa_id)
        if info is not None:
            info.event = dataclasses.replace(info.event, local=event.local, remote=event.remote)
        if self._pump is None:
            return
        for entry in self._pump.plane.entries_of_ike_sa(event.ike_sa_id):
            if entry.udp_encap:
                log.info(
                    "connection %s: peer moved to %s[%d]; ESP follows",
                    entry.child,
                    event.remote[0],
                    event.remote[1],
                )
                entry.local, entry.remote = event.local, event.remote

    def _on_ike_failed(self, event: IkeSaFailed) -> None:
        log.warning(
            "peer %s: IKE SA #%d failed: %s",
            event.connection or "(none)",
            event.ike_sa_id,
            event.reason,
        )
        peer = self.peers.get(event.connection)
        if peer is None:
            return
        peer.last_error = event.reason
        for state in self._connections_of(event.connection):
            state.last_error = event.reason
            self._resolve_waiters(state, f"{state.name}: {event.reason}", ok=False)
        self._schedule_retry(peer)

    def _on_child_installed(self, event: ChildSaInstalled) -> None:
        pump = self._pump
        if pump is None:
            return
        try:
            entry = entry_from_event(event, self._path_mtus.get(event.remote[0], 1500))
            # At a rekey we started, the peer installed the new SA before it answered,
            # and it drops the old inbound SA when our Delete arrives: send on the new
            # one at once. The peer of a rekey keeps the old one until that Delete
            # (RFC 7296 §2.8).
            pump.plane.install(entry, preferred=event.rekey_of is not None and event.initiator)
        except (EspConfigError, ValueError) as exc:
            log.error("connection %s: cannot install CHILD SA: %s", event.child, exc)
            return
        if _has_volume_limit(entry):
            self._volume_limited.add(entry.unique_id)
        for ts in entry.remote_ts:
            for net in ts.networks():
                self._add_route(net, entry)
        # Formatting selectors costs, and thousands of CHILD SAs may come at once.
        if log.isEnabledFor(logging.INFO):
            log.info(
                "connection %s: CHILD SA #%d installed%s: %s === %s, %s, SPIs in %08x out "
                "%08x, %s, inner MTU %d",
                event.child,
                event.unique_id,
                f" (rekeys #{event.rekey_of})" if event.rekey_of is not None else "",
                format_selectors(event.local_ts),
                format_selectors(event.remote_ts),
                entry.inbound.suite.name,
                entry.spi_in,
                entry.spi_out,
                f"ESP in UDP to {event.remote[0]}[{event.remote[1]}]"
                if event.udp_encap
                else f"raw ESP to {event.remote[0]}",
                entry.mtu,
            )
        peer = self.peers.get(event.connection)
        if peer is not None:
            peer.attempts = 0
            peer.last_error = ""
        state = self.connections.get(event.child)
        if state is not None:
            state.last_error = ""
            state.requested_at = None
            state.carried_by = event.ike_sa_id
            outcome = (
                f"connection {event.child}: rekeyed, CHILD SA #{event.unique_id} replaces "
                f"#{event.rekey_of}"
                if event.rekey_of is not None
                else f"connection {event.child} is up"
            )
            self._resolve_waiters(state, outcome, ok=True)
        self.notifier.notify(STATUS=self._status_line())

    def _on_child_deleted(self, event: ChildSaDeleted) -> None:
        self._uninstall(event.unique_id, event.reason)
        state = self.connections.get(event.child)
        endpoint = self._endpoint
        ike = endpoint.ike_sa(event.ike_sa_id) if endpoint is not None else None
        ike_alive = ike is not None and ike.state is not IkeSaState.DELETED
        if state is not None and ike_alive and not self._is_up(state.name):
            # Deleted on its own (down, peer's Delete, volume): not lost with its IKE SA.
            state.carried_by = None
            if (
                ike is not None
                and state.wanted
                and event.cause in EXPIRED_CAUSES
                and ike.state is IkeSaState.ESTABLISHED
            ):
                # A hard limit came before the rekey finished (RFC 4301 §4.4.2.1): the
                # connection should stay up, so negotiate a fresh CHILD SA under the
                # same IKE SA, after the events being handled now.
                log.info("connection %s: CHILD SA expired unreplaced; requesting a new one",
                         state.name)  # fmt: skip
                state.requested_at = None
                if self._loop is not None:
                    self._loop.call_soon(self._create_child, state, ike)
                else:
                    self._create_child(state, ike)
        self.notifier.notify(STATUS=self._status_line())

    def _on_child_failed(self, event: ChildSaFailed) -> None:
        state = self.connections.get(event.child)
        if state is not None:
            log.warning("connection %s: CHILD SA failed: %s", event.child, event.reason)
            state.last_error = event.reason
            self._resolve_waiters(state, f"{event.child}: {event.reason}", ok=False)
            return
        # The peer asked for selectors that match none of our connections (the core
        # names no CHILD configuration): say which peer, and keep it on the peer so
        # `lockgate status` shows it on each of its connections.
        reason = f"CHILD SA refused: {event.reason}"
        log.warning("peer %s: %s", self._peer_label(event.connection, event.ike_sa_id), reason)
        peer = self.peers.get(event.connection)
        if peer is not None:
            peer.last_error = reason

    def _peer_label(self, peer: str, ike_sa_id: int) -> str:
        """'dc1 (198.51.100.2)': the peer's name and the address its IKE SA talks to."""
        info = self.ike_sas.get(ike_sa_id)
        if info is not None:
            return f"{peer} ({info.event.remote[0]})"
        state = self.peers.get(peer)
        address = state.config.remote_address if state is not None else None
        return f"{peer} ({address or '%any'})"

    def _on_keepalive_due(self, event: NatKeepaliveDue) -> None:
        if self._pump is not None:
            self._pump.plane.send_keepalive(event.local, event.remote)

    _EVENT_HANDLERS: dict[type[Event], Callable[[Gateway, Any], None]] = {
        IkeSaEstablished: _on_ike_established,
        IkeSaDeleted: _on_ike_deleted,
        IkeSaRekeyed: _on_ike_rekeyed,
        IkeSaAddressChanged: _on_address_changed,
        IkeSaFailed: _on_ike_failed,
        ChildSaInstalled: _on_child_installed,
        ChildSaDeleted: _on_child_deleted,
        ChildSaFailed: _on_child_failed,
        NatKeepaliveDue: _on_keepalive_due,
    }

    def _uninstall(self, unique_id: int, reason: str, linger: float = INBOUND_LINGER) -> None:
        pump = self._pump
        if pump is None:
            return
        entry = pump.plane.remove(unique_id, linger=linger)
        if entry is None:
            return
        for ts in entry.remote_ts:
            for net in ts.networks():
                self._release_route(net)
        log.info(
            "connection %s: CHILD SA #%d removed (%s) after %d packets in, %d out",
            entry.child,
            unique_id,
            reason,
            entry.inbound.packet_count,
            entry.outbound.packet_count,
        )

    # ---- routes -----------------------------------------------------------------------

    def _add_route(self, net: IPNetwork, entry: ChildSaEntry | None) -> None:
        if entry is not None:
            key = _route_key(net)
            count = self._routes[key] = self._routes.get(key, 0) + 1
            if count > 1 or net in self._trap_routes:
                return
        ops, tun = self._route_ops, self._tun
        if ops is None or tun is None:
            return
        # On this thread, at once: one rtnetlink message that the kernel answers inside
        # the send (tun.routes). A worker thread cost the event loop a GIL hand-over per
        # route when a thousand CHILD SAs came up together, and doing it here keeps
        # additions and removals in the order the SAs came and went.
        source = self._route_source(net.version, entry)
        try:
            ops.add_route(net, tun.name, source=source)
            return
        except LinkError as exc:
            error = exc
        if source is not None:
            # The source address may have gone from its interface; route without it,
            # and read the addresses again next time.
            if self._local_addresses is not None:
                self._local_addresses.invalidate()
            with contextlib.suppress(LinkError):
                ops.add_route(net, tun.name)
                return
        log.error("cannot route %s into %s: %s", net, tun.name, error)

    def _release_route(self, net: IPNetwork) -> None:
        key = _route_key(net)
        count = self._routes.get(key, 0) - 1
        if count > 0:
            self._routes[key] = count
            return
        self._routes.pop(key, None)
        if net not in self._trap_routes:
            self._remove_route(net)

    def _remove_route(self, net: IPNetwork) -> None:
        ops, tun = self._route_ops, self._tun
        if ops is None or tun is None:
            return
        try:
            ops.remove_route(net, tun.name)
        except LinkError as exc:
            log.warning("cannot remove the route to %s: %s", net, exc)

    def _route_source(self, version: int, entry: ChildSaEntry | None) -> str | None:
        """One of our addresses inside the local selectors, so traffic the gateway
        itself sends into the tunnel matches the policy (strongSwan does the same)."""
        local = self._local_addresses
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

    # ---- acquire (start = "trap") ----------------------------------------------------

    def _on_acquire(self, packet: bytes) -> None:
        flow = flow_of(packet)
        if flow is None:
            return
        version, src, dst, proto, sport, dport = flow
        for state in self.connections.values():
            child = state.child
            if child.start != "trap" and not state.trapped:
                continue
            local = tuple(selector_from_ike(ts) for ts in child.local_ts)
            remote = tuple(selector_from_ike(ts) for ts in child.remote_ts)
            if any(ts.matches(version, src, proto, sport) for ts in local) and any(
                ts.matches(version, dst, proto, dport) for ts in remote
            ):
                peer = self.peers.get(state.peer)
                if peer is None or peer.retry is not None:
                    return
                sa = self._established_ike_sa(state.peer)
                if sa is not None:
                    # The peer's IKE SA exists (for another connection): add ours to it.
                    state.wanted = True
                    self._create_child(state, sa)
                elif not self._ike_sa_count(state.peer):
                    log.info("connection %s: outbound traffic triggers it", state.name)
                    state.wanted = True
                    self._initiate(peer)
                return

    # ---- reload -----------------------------------------------------------------------

    def _reload_from_signal(self) -> None:
        log.info("SIGHUP: reloading %s", self.config_path)
        try:
            self.reload()
        except ControlError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)

    def reload(self) -> str:
        """Re-read the file; touch only peers whose settings (or connections) changed.

        A peer's connections share its IKE SA, so a change to one of them renegotiates
        that peer; other peers keep their SAs untouched.
        """
        self._reloads += 1
        try:
            new = load_config(self.config_path, tables=self._toml)
            new_list = ike_connections(new)
        except ConfigLoadError as exc:
            raise ControlError(str(exc)) from None
        old = self.config
        if old is None or self._endpoint is None:
            raise ControlError("the daemon is not running")
        if new.gateway != old.gateway:
            log.warning(
                "[gateway] changed: addresses, ports, the TUN and the COOKIE/half-open "
                "settings need a restart"
            )
        old_ike = {name: peer.config for name, peer in self.peers.items()}
        new_ike = {c.name: c for c in new_list}
        removed = [n for n in old_ike if n not in new_ike]
        added = [n for n in new_ike if n not in old_ike]
        changed = [n for n in new_ike if n in old_ike and new_ike[n] != old_ike[n]]
        for name in removed + changed:
            count = self._drop_peer(name, "configuration changed")
            log.info("reload: peer %s %s (%d IKE SA(s) deleted)",
                     name, "removed" if name in removed else "changed", count)  # fmt: skip
        self._service()
        self._endpoint.set_connections(new_list)
        for peer in new.peers.values():
            if peer.address is not None and str(peer.address) not in self._path_mtus:
                self._path_mtus[str(peer.address)] = path_mtu(str(peer.address))
        self.config = new
        if self._local_addresses is not None:
            # The [gateway] addresses may have moved with the new file.
            self._local_addresses.invalidate()
        for name in changed + added:
            self._add_peer(new_ike[name])
        unchanged = len(new_ike) - len(changed) - len(added)
        summary = (
            f"reloaded: peers {len(added)} added, {len(changed)} changed, "
            f"{len(removed)} removed, {unchanged} unchanged"
        )
        log.info("%s", summary)
        self.notifier.notify(STATUS=self._status_line())
        return summary

    # ---- control ----------------------------------------------------------------------

    async def _handle_request(self, request: dict[str, Any]) -> Any:
        command = request["command"]
        if command == "status":
            return self.status_summary() if request.get("summary") else self.status()
        if command == "reload":
            return self.reload()
        if command == "rekey" and request.get("ike"):
            return await self._rekey_ike(request.get("name"))
        if command in ("up", "down", "rekey"):
            name = request.get("name")
            if not isinstance(name, str) or name not in self.connections:
                known = ", ".join(sorted(self.connections)) or "none"
                raise ControlError(f"no connection named {name!r} (configured: {known})")
            state = self.connections[name]
            if command == "up":
                return await self._up(state)
            if command == "down":
                return self._down(state)
            return await self._rekey(state)
        raise ControlError(f"unknown command {command!r}")

    async def _up(self, state: ConnectionState) -> str:
        name = state.name
        if self._is_up(name):
            return f"connection {name} is already up"
        peer = self.peers[state.peer]
        state.wanted = True
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        sa = self._established_ike_sa(state.peer)
        if sa is not None:
            state.requested_at = None
            self._create_child(state, sa)
        elif not self._ike_sa_count(state.peer):
            if peer.config.remote_address is None:
                state.waiters.remove(waiter)
                raise ControlError(f"connection {name}: the peer is %any; it must initiate")
            peer.attempts = 0
            self._cancel_retry(peer)
            self._initiate(peer)
        # else: the IKE SA is being set up and brings this CHILD SA along.
        try:
            return await asyncio.wait_for(waiter, UP_TIMEOUT)
        except TimeoutError:
            raise ControlError(
                f"connection {name}: not up after {UP_TIMEOUT:.0f} s (still trying)"
            ) from None

    def _connecting(self, peer: str) -> bool:
        # The core holds an IKE SA with the peer that it has not announced yet.
        return self._ike_sa_count(peer) > len(self._ike_sas_of.get(peer, ()))

    def _down(self, state: ConnectionState) -> str:
        endpoint = self._endpoint
        if endpoint is None:
            raise ControlError("the daemon is not running")
        state.wanted = False
        now = time.monotonic()
        peer = self.peers[state.peer]
        others = [c for c in self._connections_of(state.peer) if c.name != state.name]
        if not any(self._is_up(c.name) for c in others):
            # Nothing else uses the peer's IKE SA: delete it with its CHILD SAs.
            self._cancel_retry(peer)
            count = endpoint.delete_connection(state.peer, now, "deleted by operator")
            self._service()
            return f"connection {state.name}: deleted (and {count} IKE SA(s) with {state.peer})"
        entries = self._installed(state.name)
        for entry in entries:
            with contextlib.suppress(IkeError):
                endpoint.delete_child(entry.unique_id, now, "deleted by operator")
        self._service()
        return f"connection {state.name}: {len(entries)} CHILD SA(s) deleted"

    async def _rekey(self, state: ConnectionState) -> str:
        endpoint = self._endpoint
        if endpoint is None:
            raise ControlError("the daemon is not running")
        entries = self._installed(state.name)
        if not entries:
            raise ControlError(f"connection {state.name} has no CHILD SA to rekey")
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        now = time.monotonic()
        for entry in entries:
            try:
                endpoint.rekey_child(entry.unique_id, now)
            except IkeError as exc:
                state.waiters.remove(waiter)
                raise ControlError(f"connection {state.name}: cannot rekey: {exc}") from None
        self._service()
        try:
            return await asyncio.wait_for(waiter, UP_TIMEOUT)
        except TimeoutError:
            raise ControlError(
                f"connection {state.name}: rekey not finished after {UP_TIMEOUT:.0f} s"
            ) from None

    async def _rekey_ike(self, name: object) -> str:
        """`lockgate rekey --ike NAME`: rekey the IKE SA that carries connection NAME
        (or of peer NAME); its CHILD SAs move to the new IKE SA untouched (§2.8)."""
        endpoint = self._endpoint
        if endpoint is None:
            raise ControlError("the daemon is not running")
        if isinstance(name, str) and name in self.connections:
            peer_name = self.connections[name].peer
        elif isinstance(name, str) and name in self.peers:
            peer_name = name
        else:
            known = ", ".join(sorted(self.connections)) or "none"
            raise ControlError(f"no connection named {name!r} (configured: {known})")
        sa = self._established_ike_sa(peer_name)
        if sa is None:
            raise ControlError(f"peer {peer_name} has no established IKE SA to rekey")
        peer = self.peers[peer_name]
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        peer.ike_waiters.append(waiter)
        try:
            endpoint.rekey_ike_sa(sa.ike_sa_id, time.monotonic())
        except IkeError as exc:
            peer.ike_waiters.remove(waiter)
            raise ControlError(f"peer {peer_name}: cannot rekey the IKE SA: {exc}") from None
        self._service()
        try:
            return await asyncio.wait_for(waiter, UP_TIMEOUT)
        except TimeoutError:
            raise ControlError(
                f"peer {peer_name}: IKE rekey not finished after {UP_TIMEOUT:.0f} s"
            ) from None

    # ---- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything `lockgate status` shows, JSON-ready."""
        now = time.monotonic()
        pump = self._pump
        plane = pump.plane.status() if pump is not None else {"sas": [], "drops": {}}
        connections = []
        # The IKE SAs of a peer and whether a connection is up come from indexes, so
        # the status of N connections costs O(N), not a scan of every SA per connection
        # (a thousand-SA gateway answered status polls in seconds).
        for name, state in self.connections.items():
            peer = self.peers[state.peer]
            ikes = self._ike_sa_infos(state.peer)
            if self._is_up(name):
                phase = "up"
            elif self._ike_sa_count(state.peer) > len(ikes):
                # Like `_connecting`: the core holds an IKE SA not yet announced.
                phase = "connecting"
            elif peer.retry is not None and state.wanted:
                phase = "waiting to retry"
            elif state.child.start == "trap" or state.trapped:
                phase = "trap (on traffic)"
            elif state.child.start == "wait":
                phase = "waiting for the peer"
            else:
                phase = "down"
            remote_id = peer.config.remote_id
            connections.append(
                {
                    "name": name,
                    "peer": state.peer,
                    "state": phase,
                    "start": state.child.start,
                    "remote": peer.config.remote_address or "%any",
                    "remote_id": str(remote_id) if remote_id is not None else "%any",
                    "local_ts": [str(ts) for ts in state.child.local_ts],
                    "remote_ts": [str(ts) for ts in state.child.remote_ts],
                    "last_error": state.last_error or peer.last_error,
                    "ike_sas": [
                        {
                            "id": info.event.ike_sa_id,
                            "spi_i": f"{info.event.spi_i:016x}",
                            "spi_r": f"{info.event.spi_r:016x}",
                            "rekeyed_from": info.rekeyed_from,
                            "suite": info.event.suite,
                            "local": f"{info.event.local[0]}[{info.event.local[1]}]",
                            "remote": f"{info.event.remote[0]}[{info.event.remote[1]}]",
                            "remote_id": info.event.remote_id,
                            "initiator": info.event.initiator,
                            "nat": info.event.nat_local or info.event.nat_remote,
                            "udp_encap": info.event.udp_encap_reason,
                            "age": round(now - info.established_at, 1),
                        }
                        for info in ikes
                    ],
                }
            )
        return {
            "daemon": {
                "version": VERSION,
                "pid": os.getpid(),
                "uptime": round(now - self.started_at, 1),
                "config": str(Path(self.config_path).resolve()),
                "interface": self._tun.name if self._tun is not None else None,
            },
            "connections": connections,
            **plane,
            # Received IKE datagrams dropped by the endpoint, by reason (issue 8).
            "ike_drops": (
                {str(reason): count for reason, count in sorted(self._endpoint.drops.items())}
                if self._endpoint is not None
                else {}
            ),
        }

    def status_summary(self) -> dict[str, Any]:
        """Counts only (`{"command": "status", "summary": true}`): what a monitor or a
        benchmark polls while thousands of SAs come up, at O(1) cost instead of the
        full status's O(N) (which would slow the very event loop setting them up)."""
        endpoint, pump = self._endpoint, self._pump
        return {
            "daemon": {"version": VERSION, "pid": os.getpid()},
            "connections": len(self.connections),
            "ike_sas": len(self.ike_sas),
            "ike_sas_in_core": endpoint.ike_sa_total() if endpoint is not None else 0,
            "child_sas": len(pump.plane.entries) if pump is not None else 0,
            "reloads": self._reloads,
        }

    def _status_line(self) -> str:
        sas = len(self._pump.plane.entries) if self._pump is not None else 0
        return f"{len(self.connections)} connection(s), {sas} CHILD SA(s) installed"

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
            self._service()
            if self._key_refill is None:
                self._refill_keys()
            self._report_liveness(now)
            if self._pump is not None:
                self._pump.plane.expire_lingering()

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
        """Rekey CHILD SAs past their soft byte/packet limit (90% of `life_bytes` /
        `life_packets`, or near the end of their sequence space), delete those at the
        hard one: only the data plane counts packets, so only it can tell the core
        (RFC 4301 §4.4.2.1 soft and hard lifetimes). Looks at the SAs that have a
        byte/packet limit, or with `every` at all of them."""
        endpoint, pump = self._endpoint, self._pump
        if endpoint is None or pump is None:
            return
        now = time.monotonic()
        acted = False
        entries = pump.plane.entries
        self._volume_limited &= entries.keys()
        if every:
            candidates = list(entries.items())
        else:
            candidates = [(uid, entries[uid]) for uid in self._volume_limited]
        for uid, entry in candidates:
            states = {entry.outbound.lifetime_state(), entry.inbound.lifetime_state()}
            if LifetimeState.SOFT not in states and LifetimeState.HARD not in states:
                continue
            try:
                if LifetimeState.HARD in states and uid not in self._deleting:
                    self._deleting.add(uid)
                    log.info("connection %s: CHILD SA #%d used up its volume", entry.child, uid)
                    endpoint.child_limit_reached(uid, now, hard=True)
                elif LifetimeState.SOFT in states and uid not in self._rekeying:
                    self._rekeying.add(uid)
                    log.info("connection %s: CHILD SA #%d due for rekeying (volume)",
                             entry.child, uid)  # fmt: skip
                    endpoint.child_limit_reached(uid, now, hard=False)
                else:
                    continue
                acted = True
            except IkeError as exc:
                log.warning("connection %s: CHILD SA #%d: %s", entry.child, uid, exc)
        self._rekeying &= pump.plane.entries.keys()
        self._deleting &= pump.plane.entries.keys()
        if acted:
            self._service()

    def _report_liveness(self, now: float) -> None:
        """ESP from the peer proves it alive: tell its IKE SA, so DPD stays quiet
        while traffic flows (RFC 7296 §2.4 asks for checks only when nothing came)."""
        endpoint, pump = self._endpoint, self._pump
        if endpoint is None or pump is None:
            return
        seen = self._inbound_seen
        current: dict[int, int] = {}
        for uid, entry in pump.plane.entries.items():
            count = entry.inbound.packet_count
            if count:  # SAs that never received stay out: at idle the map is empty
                current[uid] = count
                if count != seen.get(uid, 0):
                    endpoint.heard_from_peer(entry.ike_sa_id, now)
        self._inbound_seen = current


def run_daemon(config_path: str, *, socket_path: str | None = None, log_level: str | None) -> int:
    """`lockgate daemon`: run the gateway on uvloop until SIGTERM; the exit status."""
    level = log_level or os.environ.get("LOCKGATE_LOG_LEVEL")
    if level is None:
        # The file may name a level; an unreadable file is reported by run() itself.
        try:
            level = load_config(config_path).gateway.log_level
        except ConfigLoadError:
            level = "info"
    setup_logging(level)
    gateway = Gateway(config_path, socket_path=socket_path)
    try:
        import uvloop

        runner: Callable[[Any], int] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        runner = asyncio.run
    return runner(gateway.run())
