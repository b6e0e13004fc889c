"""The point-to-cloud SSL servers: OpenVPN clients dial in (`[remote_access.NAME]`).

`RemoteAccess` is the gateway's room for them: it starts one `SslVpnServer` per
section with protocol "ssl" once the gateway's own ports are bound, polls the users
files from the gateway's housekeeping (and at each login), answers `lockgate clients`
and `disconnect`, applies a reload's changed sections, and stops them at teardown.
The protocol lives in `ovpn/` (sans-I/O); who may connect and reach what in
`daemon.p2c_auth`.

Each server has a TUN of its own (`<interface>p<N>`, e.g. lockgate0p0) carrying the
server's address, the pool's first host, with the pool's prefix (and the same from
`client_pool6`): the kernel routes the pools into it, and every packet read from it
belongs to one of this server's clients.
Sharing the ESP data plane's TUN would have made its hot path dispatch every packet
between ESP and OpenVPN by destination, and let one server's policy mistakes reach the
other's; with a TUN per server, each server's policy sees only its own packets, and
the kernel's routing between the TUNs is what joins a client to a site-to-site tunnel.

The data path enforces, on every packet a client sends (counted drops, by reason):
its own virtual address of the packet's IP version as the source (the core:
`data_spoofed_source`, or `data_link_local` for the IPv6 link-local traffic a
client's kernel sends by itself), and as the destination only what its lease allows
(`policy_destination`), other clients only with `client_to_client = true`
(`policy_client_to_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from conf.model import Config, GatewayConfig, RemoteAccessConfig
from daemon.control import ControlError
from daemon.p2c_auth import Lease, P2cAuthenticator, UsersFile
from daemon.pump import grow_buffers
from ovpn.packet import Opcode, PacketError, StreamDeframer, frame
from ovpn.server import Server
from ovpn.session import (
    AuthDecision,
    AuthPending,
    AuthRequest,
    ClientAuthenticated,
    ClientAuthFailed,
    ServerSession,
    SessionSettings,
)
from ovpn.tls import server_context
from ovpn.tls_crypt import TlsCrypt, parse_static_key
from tun import LinkManager, TunDevice, TunError
from tun.vnet import VnetError, coalesce, split_frame

if TYPE_CHECKING:
    from daemon.netlink import LinkWorker

log = logging.getLogger(__name__)

AUTH_WORKERS = 2
"""Threads that check passwords (scrypt: 16 MiB and some 50 ms each)."""
SHUTDOWN_LINGER = 0.3
"""Seconds the servers' last words (RESTART to every client) get to leave at shutdown."""
UDP_BATCH = 64
"""Datagrams read per wake-up of a UDP socket before their sessions are flushed."""
MAX_DATAGRAM = 65535
_DATA_V2_OPCODE = Opcode.DATA_V2


class UdpRemote:
    """A UDP client: the socket it came in on and its address."""

    __slots__ = ("_hash", "host", "port", "socket")

    def __init__(self, socket: int, host: str, port: int) -> None:
        self.socket, self.host, self.port = socket, host, port
        self._hash = hash((socket, host, port))  # looked up once per datagram

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UdpRemote) and (self.socket, self.host, self.port) == (
            other.socket,
            other.host,
            other.port,
        )

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class TcpRemote:
    """One TCP connection: the `remote` its session is keyed by (by identity)."""

    __slots__ = ("host", "port", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.host, self.port = str(peer[0]), int(peer[1])

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _tls_crypt(path: Path | None) -> TlsCrypt | None:
    return None if path is None else TlsCrypt(parse_static_key(path.read_text()), server=True)


class SslVpnServer:
    """One `[remote_access.NAME]` server with protocol "ssl": sockets, TUN, sessions."""

    def __init__(
        self,
        config: RemoteAccessConfig,
        gateway: GatewayConfig,
        tun: TunDevice,
        executor: ThreadPoolExecutor,
    ) -> None:
        certificate = config.certificate or gateway.certificate
        private_key = config.private_key or gateway.private_key
        if certificate is None or private_key is None:
            raise ControlError(
                f"remote_access.{config.name}: needs a certificate and private_key "
                "(its own or [gateway]'s)"
            )
        client_ca = (
            str(config.client_ca) if config.auth == "certificate" and config.client_ca else None
        )
        settings = SessionSettings(
            server_context(str(certificate), str(private_key), client_ca),
            ciphers=config.ciphers,
            tls_crypt=_tls_crypt(config.tls_crypt_key),
            tcp=config.transport == "tcp",
        )
        self.config = config
        self.name = config.name
        self.tun = tun
        self._vnet = bool(getattr(tun, "vnet_hdr", False))
        """The TUN takes virtio-net headers: a client's TCP segments go to the kernel
        coalesced, one write per flow and batch (`tun.vnet`), as the ESP path does."""
        self._executor = executor
        self.users = UsersFile(config.users)
        self.auth = P2cAuthenticator(
            config, self.users.users, submit=self._submit, deliver=self._deliver
        )
        self.server = Server(
            settings,
            self._authenticate,
            random=os.urandom,
            max_sessions=config.max_connections,
            on_end=self._ended,
        )
        self.drops: Counter[str] = Counter()
        """Policy drops, and the drops of sessions that ended (live ones are added in
        `status`)."""
        self._pool_net = int(config.client_pool.network_address)
        self._pool_mask = int(config.client_pool.netmask)
        self._server_ip = int(self.auth.pool.server)
        pool6 = self.auth.pool6
        # No pool6: no client has an IPv6 address, and the mask 0 never matches a
        # network of 1 (so every IPv6 destination is a policy question only).
        self._pool6 = (
            (int(pool6.network.network_address), int(pool6.network.netmask), int(pool6.server))
            if pool6 is not None
            else (1, 0, 0)
        )
        self._udp: list[socket.socket] = []
        self._udp_remotes: list[dict[tuple[str, int], UdpRemote]] = []
        """Per UDP socket, the remote of each established session by (host, port): a
        data packet finds its session without a new `UdpRemote` (forgotten in `_ended`)."""
        self._tcp: list[asyncio.Server] = []
        self._wake = asyncio.Event()
        self._timers: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- start and stop ----------------------------------------------------------------

    async def start(self, addresses: list[str]) -> None:
        loop = self._loop = asyncio.get_running_loop()
        port, tcp = self.config.port, self.config.transport == "tcp"
        for address in addresses:
            try:
                if tcp:
                    srv = await loop.create_server(partial(_TcpClient, self), address, port)
                    self._tcp.append(srv)
                else:
                    sock = _udp_socket(address, port)
                    loop.add_reader(sock.fileno(), self._udp_readable, len(self._udp))
                    self._udp.append(sock)
                    self._udp_remotes.append({})
            except OSError as exc:
                raise ControlError(
                    f"remote_access.{self.name}: cannot listen on {address} "
                    f"{self.config.transport.upper()} {port}: {exc.strerror}"
                ) from None
        loop.add_reader(self.tun.fileno(), self._tun_readable)
        self._timers = loop.create_task(self._run_timers())
        log.info(
            "ssl-vpn %s: listening on %s %s %d, pool %s on %s, %d user(s)",
            self.name,
            ", ".join(addresses),
            self.config.transport.upper(),
            port,
            self.config.client_pool,
            self.tun.name,
            len(self.users.users),
        )

    async def close(self) -> None:
        """Tell every client to come back later (RESTART), then close everything."""
        now = time.monotonic()
        for session in list(self.server.sessions.values()):
            if session.established:
                session.disconnect(now, restart=True, reason="server shutting down")
                self._flush(session)
        if self.server.sessions:
            await asyncio.sleep(SHUTDOWN_LINGER)
        if self._timers is not None:
            self._timers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timers
        for remote, session in list(self.server.sessions.items()):
            self.server.remove(remote, "server shut down")
            del session
        if self._loop is not None:
            self._loop.remove_reader(self.tun.fileno())
        for srv in self._tcp:
            srv.close()
        for sock in self._udp:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self.tun.close()

    # -- inputs --------------------------------------------------------------------------

    def _udp_readable(self, index: int) -> None:
        # Drain the socket, then flush each session once: one TUN batch and one wake-up
        # per burst instead of per datagram.
        recvfrom = self._udp[index].recvfrom
        receive = self.server.receive
        remotes = self._udp_remotes[index]
        now = time.monotonic()
        touched: dict[int, ServerSession] = {}
        for _ in range(UDP_BATCH):
            try:
                data, peer = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error from a client that went away
            key = (peer[0], peer[1])
            remote = remotes.get(key)
            if remote is None:
                remote = UdpRemote(index, str(peer[0]), int(peer[1]))
            session = receive(data, remote, now)
            if session is not None:
                touched[id(session)] = session
                if key not in remotes and session.established:
                    # The object the session is keyed by: found by identity from now on.
                    remotes[key] = cast(UdpRemote, session.remote)
        for session in touched.values():
            self._flush(session)

    def _tcp_data(self, remote: TcpRemote, packets: list[bytes]) -> None:
        """The packets one read of a client's TCP stream completed."""
        now = time.monotonic()
        session = None
        for packet in packets:
            got = self.server.receive(packet, remote, now)
            if got is not session and session is not None:
                self._flush(session)
            session = got
        if session is not None:
            self._flush(session)

    def _tun_readable(self) -> None:
        now = time.monotonic()
        touched: dict[int, ServerSession] = {}
        batch = self.tun.read_batch()
        if self._vnet:
            batch = self._unframe(batch)
        for packet in batch:
            session = self.server.route_from_tun(packet, now)
            if session is not None:
                touched[id(session)] = session
        for session in touched.values():
            self._flush(session)

    async def _run_timers(self) -> None:
        while True:
            deadline = self.server.next_timer()
            delay = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, 1.0))
            for session in self.server.handle_timer(time.monotonic()):
                self._flush(session)

    # -- authentication off the loop ---------------------------------------------------------

    def _submit(self, check: Callable[[], bool], done: Callable[[bool], None]) -> None:
        loop = self._loop or asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, check)

        def finished(f: asyncio.Future[bool]) -> None:
            ok = not f.cancelled() and f.exception() is None and f.result()
            done(ok)

        future.add_done_callback(finished)

    def _deliver(
        self, remote: object, session_id: bytes, key_id: int, decision: AuthDecision
    ) -> None:
        session = self.server.sessions.get(remote)
        now = time.monotonic()
        if (
            session is None
            or session.session_id != session_id
            or not session.complete_auth(key_id, decision, now)
        ):
            if decision.accepted:
                self.auth.release(session_id)  # the session went while we checked
            return
        self._flush(session)

    # -- outputs -----------------------------------------------------------------------------

    def _flush(self, session: ServerSession) -> None:
        out = self.server.collect(session, time.monotonic())
        remote = session.remote
        to_client = out.to_client
        if to_client:
            if isinstance(remote, TcpRemote):
                remote.transport.write(b"".join([frame(p) for p in to_client]))
            elif isinstance(remote, UdpRemote) and remote.socket < len(self._udp):
                self._send_udp(self._udp[remote.socket], to_client, (remote.host, remote.port))
        if out.to_tun:
            passed = self._permitted(session, out.to_tun)
            if passed:
                self._write_tun(passed)
        for event in out.events:
            if isinstance(event, ClientAuthenticated):
                push = session.push
                address6 = push.address6 if push is not None else None
                log.info(
                    "ssl-vpn %s: %s connected from %s as %s (%s, %s)",
                    self.name,
                    event.username,
                    remote,
                    event.address.ip if address6 is None else f"{event.address.ip}, {address6.ip}",
                    event.cipher,
                    self.config.transport,
                )
            elif isinstance(event, ClientAuthFailed):
                log.info(
                    "ssl-vpn %s: login of %r from %s refused: %s",
                    self.name,
                    event.username,
                    remote,
                    event.reason,
                )
        # The timers only need a fresh look when this flush could have brought one
        # forward: control traffic (retransmissions, handshake and close deadlines) or
        # an event. Data only ever moves the keepalive deadlines later.
        if out.events or not session.established or _has_control(to_client):
            self._wake.set()

    def _send_udp(
        self, sock: socket.socket, packets: list[bytes], address: tuple[str, int]
    ) -> None:
        sendto = sock.sendto
        for packet in packets:
            try:
                sendto(packet, address)
            except (BlockingIOError, InterruptedError):
                self.drops["udp_send_full"] += 1
            except OSError:
                self.drops["udp_send_error"] += 1

    def _unframe(self, frames: list[bytes]) -> list[bytes]:
        """The IP packets of TUN reads behind virtio-net headers."""
        packets: list[bytes] = []
        for tun_frame in frames:
            try:
                packets += split_frame(tun_frame)
            except VnetError:
                self.drops["tun_bad_frame"] += 1
        return packets

    def _write_tun(self, packets: list[bytes]) -> None:
        if not self._vnet:
            self.tun.write_batch(packets)
            return
        write = self.tun.write
        try:
            for tun_frame in coalesce(packets):
                write(tun_frame)
        except TunError as exc:
            log.error("ssl-vpn %s: writing to %s failed: %s", self.name, self.tun.name, exc)

    def _permitted(self, session: ServerSession, packets: list[bytes]) -> list[bytes]:
        """The client's packets its policy lets through (the core checked the source)."""
        lease = self.auth.leases.get(session.session_id)
        if lease is None:
            self.drops["policy_no_lease"] += len(packets)
            return []
        passed: list[bytes] = []
        for packet in packets:
            # The core let only IPv4 and IPv6 packets with the client's source through.
            if packet[0] >> 4 == 4:
                allowed = lease.allowed
                pool_net, pool_mask, server_ip = self._pool_net, self._pool_mask, self._server_ip
                dst = int.from_bytes(packet[16:20], "big")
            else:
                allowed = lease.allowed6
                pool_net, pool_mask, server_ip = self._pool6
                dst = int.from_bytes(packet[24:40], "big")
            if any(dst & mask == net for net, mask in allowed):
                passed.append(packet)
            elif dst & pool_mask == pool_net and dst != server_ip:
                if self.config.client_to_client:
                    passed.append(packet)
                else:
                    self.drops["policy_client_to_client"] += 1
            else:
                self.drops["policy_destination"] += 1
        return passed

    def _ended(self, session: ServerSession) -> None:
        """The core forgot a session: its address goes back, one log line, TCP closes."""
        self.drops.update(session.drops)
        lease = self.auth.release(session.session_id)
        if lease is not None:
            log.info(
                "ssl-vpn %s: %s (%s) from %s disconnected: %s; %d bytes in, %d out, %.0f s",
                self.name,
                lease.user,
                _virtual_ips(lease),
                session.remote,
                session.close_reason,
                session.bytes_in,
                session.bytes_out,
                time.time() - lease.since,
            )
        else:
            log.debug(
                "ssl-vpn %s: unauthenticated session from %s ended: %s",
                self.name,
                session.remote,
                session.close_reason,
            )
        remote = session.remote
        if isinstance(remote, TcpRemote) and self._loop is not None:
            # After this flush's last packets are written.
            self._loop.call_soon(remote.transport.close)
        elif isinstance(remote, UdpRemote) and remote.socket < len(self._udp_remotes):
            remotes = self._udp_remotes[remote.socket]
            if remotes.get((remote.host, remote.port)) is remote:
                del remotes[(remote.host, remote.port)]

    # -- operations ------------------------------------------------------------------------

    def poll_users(self, *, defer: bool = False) -> None:
        """Re-read the users file if it changed; end the sessions it no longer allows
        (with `defer`, once the packet being handled is done with)."""
        if not self.users.poll():
            return
        ends = self.auth.users_changed(self.users.users)
        log.info("ssl-vpn %s: users file re-read, %d user(s)", self.name, len(self.users.users))
        for lease, restart, reason in ends:
            end = partial(self._end, lease, restart=restart, reason=reason)
            if defer and self._loop is not None:
                self._loop.call_soon(end)
            else:
                end()

    def _authenticate(self, request: AuthRequest) -> AuthDecision | AuthPending:
        """A login sees the users file as it is now: a user added a moment ago (between
        two housekeeping polls) is not refused as unknown. A stat per login."""
        if not request.renegotiation:
            self.poll_users(defer=True)
        return self.auth(request)

    def _end(self, lease: Lease, *, restart: bool, reason: str) -> None:
        session = self.server.sessions.get(lease.remote)
        if session is None or session.session_id != lease.session_id:
            self.auth.release(lease.session_id)
            return
        log.info(
            "ssl-vpn %s: ending the session of %s from %s: %s",
            self.name,
            lease.user,
            lease.remote,
            reason,
        )
        session.disconnect(time.monotonic(), restart=restart, reason=reason)
        self._flush(session)

    def disconnect(self, user: str) -> int:
        """End every session of `user` (HALT: the client does not come back)."""
        leases = self.auth.sessions_of(user)
        for lease in leases:
            self._end(lease, restart=False, reason="disconnected by the operator")
        return len(leases)

    def clients(self) -> list[dict[str, Any]]:
        out = []
        for lease in self.auth.leases.values():
            session = self.server.sessions.get(lease.remote)
            if session is None or session.session_id != lease.session_id:
                continue
            out.append(
                {
                    "server": self.name,
                    "protocol": "ssl",
                    "user": lease.user,
                    "virtual_ip": _virtual_ips(lease),
                    "remote": str(lease.remote),
                    "since": datetime.datetime.fromtimestamp(lease.since, datetime.UTC)
                    .isoformat(timespec="seconds")
                    .replace("+00:00", "Z"),
                    "bytes_in": session.bytes_in,
                    "bytes_out": session.bytes_out,
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        drops = self.drops + self.server.drops
        for session in self.server.sessions.values():
            drops.update(session.drops)
        sessions = self.server.sessions.values()
        return {
            "name": self.name,
            "protocol": "ssl",
            "transport": self.config.transport,
            "port": self.config.port,
            "interface": self.tun.name,
            "pool": ", ".join(
                str(p) for p in (self.config.client_pool, self.config.client_pool6) if p
            ),
            "clients": len(self.auth.leases),
            "max_connections": self.config.max_connections,
            "handshaking": sum(1 for s in sessions if not s.established),
            "users": len(self.users.users),
            "refusals": dict(sorted(self.auth.refusals.items())),
            "drops": dict(sorted(drops.items())),
        }


def _virtual_ips(lease: Lease) -> str:
    """A client's virtual addresses as `lockgate clients` and the log show them."""
    if lease.address6 is None:
        return str(lease.address)
    return f"{lease.address}, {lease.address6}"


def _has_control(packets: list[bytes]) -> bool:
    """Whether any of these packets for a client is a control packet (not P_DATA_V2)."""
    data = _DATA_V2_OPCODE
    return any(p[0] >> 3 != data for p in packets)


def _udp_socket(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on `address`:`port`, with large buffers (a burst from
    a fast client must not overflow the default 208 KiB before the loop reads it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        grow_buffers(sock)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _TcpClient(asyncio.Protocol):
    """One client's TCP connection: cut into packets, handed to the server per read."""

    def __init__(self, server: SslVpnServer) -> None:
        self.server = server
        self.deframer = StreamDeframer()
        self.remote: TcpRemote | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        self.remote = TcpRemote(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        remote = self.remote
        if remote is None:
            return
        try:
            packets = self.deframer.feed(data)
        except PacketError:
            self.server.server.drops["tcp_framing"] += 1
            remote.transport.close()
            return
        if packets:
            self.server._tcp_data(remote, packets)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.remote is not None:
            self.server.server.remove(self.remote, "connection closed")
            self.remote.transport.close()


def _bring_up(
    links: LinkManager,
    *,
    name: str,
    address: ipaddress.IPv4Interface,
    address6: ipaddress.IPv6Interface | None = None,
) -> None:
    links.quiet_ipv6(name)
    links.add_address(name, address)
    if address6 is not None:
        links.add_address(name, address6)
    links.set_up(name)


def interface_name(gateway: GatewayConfig, index: int) -> str:
    """The TUN of the `index`th SSL server: the gateway's interface name with p<N>."""
    suffix = f"p{index}"
    return gateway.interface[: 15 - len(suffix)] + suffix


class RemoteAccess:
    """The gateway's point-to-cloud servers."""

    def __init__(self) -> None:
        self.servers: dict[str, SslVpnServer] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._index: dict[str, int] = {}
        """Each server's TUN number (`interface_name`), kept across reloads."""
        self._reloading: asyncio.Task[None] | None = None
        self._links: LinkWorker | None = None

    async def start(self, config: Config, links: LinkWorker) -> None:
        """Start a server per `[remote_access.NAME]` with protocol "ssl"."""
        self._links = links
        for index, ra in enumerate(config.remote_access.values()):
            self._index[ra.name] = index
        for ra in config.remote_access.values():
            await self._start_one(ra, config, links)

    async def _start_one(self, ra: RemoteAccessConfig, config: Config, links: LinkWorker) -> None:
        if ra.protocol != "ssl":
            return  # IKEv2 servers run in the IKE endpoint (daemon/ikev2_ra.py)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(AUTH_WORKERS, thread_name_prefix="p2c-auth")
        name = interface_name(config.gateway, self._tun_index(ra.name))
        tun = TunDevice.open(name, vnet_hdr=True)
        try:
            server = SslVpnServer(ra, config.gateway, tun, self._executor)
            address = ipaddress.IPv4Interface((server.auth.pool.server, ra.client_pool.prefixlen))
            pool6 = server.auth.pool6
            address6 = (
                ipaddress.IPv6Interface((pool6.server, pool6.network.prefixlen))
                if pool6 is not None
                else None
            )
            links.run(partial(_bring_up, name=name, address=address, address6=address6))
        except BaseException:
            tun.close()
            raise
        self.servers[ra.name] = server
        try:
            await server.start([str(a) for a in config.gateway.addresses])
        except BaseException:
            del self.servers[ra.name]
            await server.close()
            raise

    def _tun_index(self, server: str) -> int:
        """The server's TUN number: its own if it has one, else the lowest free."""
        if server not in self._index:
            taken = set(self._index.values())
            self._index[server] = min(set(range(len(taken) + 1)) - taken)
        return self._index[server]

    def reload(self, config: Config) -> str:
        """Apply a reloaded configuration's `[remote_access.*]`: a server whose section
        is gone stops (its clients are told to come back later: RESTART, and find
        nothing until it returns), a new one starts, a changed one restarts (its clients
        reconnect by themselves, to the new settings); the others, and their sessions,
        are untouched. The users files need no reload: they are watched. The stops
        and starts run on the loop after this returns, each in order, so that a port
        one server frees is free for the next; a server that cannot start is logged.
        Returns the words for `lockgate reload`'s answer (none without servers)."""
        old = {name: server.config for name, server in self.servers.items()}
        new = {n: ra for n, ra in config.remote_access.items() if ra.protocol == "ssl"}
        removed = [n for n in old if n not in new]
        added = [n for n in new if n not in old]
        changed = [n for n in new if n in old and new[n] != old[n]]
        links = self._links
        if links is not None and (removed or added or changed):
            previous = self._reloading
            self._reloading = asyncio.get_running_loop().create_task(
                self._apply(previous, removed, changed, added, config, links)
            )
        if not old and not new:
            return ""
        unchanged = len(new) - len(added) - len(changed)
        return (
            f"; remote-access servers {len(added)} added, {len(changed)} changed, "
            f"{len(removed)} removed, {unchanged} unchanged"
        )

    async def _apply(
        self,
        previous: asyncio.Task[None] | None,
        removed: list[str],
        changed: list[str],
        added: list[str],
        config: Config,
        links: LinkWorker,
    ) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        for name in removed + changed:
            server = self.servers.pop(name, None)
            if name in removed:
                self._index.pop(name, None)
            if server is not None:
                log.info("reload: remote-access server %s %s, stopping it", name,
                         "removed" if name in removed else "changed")  # fmt: skip
                await server.close()
        for name in changed + added:
            try:
                await self._start_one(config.remote_access[name], config, links)
            except (ControlError, OSError) as exc:
                self._index.pop(name, None)
                log.error("reload: remote-access server %s cannot start: %s", name, exc)

    def housekeeping(self) -> None:
        for server in self.servers.values():
            server.poll_users()

    async def close(self) -> None:
        if self._reloading is not None:
            with contextlib.suppress(Exception):
                await self._reloading
        servers, self.servers = list(self.servers.values()), {}
        for server in servers:
            await server.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def clients(self) -> list[dict[str, Any]]:
        return [client for server in self.servers.values() for client in server.clients()]

    def disconnect(self, server: object, user: object) -> str:
        if not isinstance(server, str) or server not in self.servers:
            known = ", ".join(sorted(self.servers)) or "none"
            raise ControlError(f"no remote access server named {server!r} (running: {known})")
        if not isinstance(user, str) or not user:
            raise ControlError("disconnect needs a user name")
        count = self.servers[server].disconnect(user)
        return f"{server}: {count} session(s) of {user} ended"

    def status(self) -> list[dict[str, Any]]:
        return [server.status() for server in self.servers.values()]
