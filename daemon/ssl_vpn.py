"""The asyncio adapter for one OpenVPN-compatible server (`ovpn.server.Server`).

It owns the sockets and the TUN; the protocol lives in `ovpn/`. Every input (a UDP
datagram, TCP bytes, a TUN packet, a timer) goes to the server, then `_flush` sends
what the touched session has to say. Over TCP each connection is its own `remote`.

`python -m daemon.ssl_vpn` runs one server with users from the command line; the
namespace tests use it until the configuration (`[remote_access.*]`) wires the
server into the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import signal
import time
from dataclasses import dataclass, field

from ovpn.packet import PacketError, StreamDeframer, frame
from ovpn.push import PushOptions
from ovpn.server import Server
from ovpn.session import (
    AuthDecision,
    AuthRequest,
    ClientAuthenticated,
    ClientAuthFailed,
    ClientDisconnected,
    ServerSession,
    SessionSettings,
)
from ovpn.tls import server_context
from ovpn.tls_crypt import TlsCrypt, parse_static_key
from tun import LinkManager, TunDevice

log = logging.getLogger(__name__)


class _TcpClient:
    """One TCP connection: the `remote` its session is keyed by."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.label = f"tcp:{peer[0]}:{peer[1]}" if peer else "tcp:?"

    def __repr__(self) -> str:
        return self.label


class SslVpnServer:
    def __init__(self, server: Server, tun: TunDevice) -> None:
        self.server = server
        self.tun = tun
        self._udp: asyncio.DatagramTransport | None = None
        self._wake = asyncio.Event()

    # -- inputs ----------------------------------------------------------------------

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        session = self.server.receive(data, addr, time.monotonic())
        if session is not None:
            self._flush(session)

    async def tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _TcpClient(writer)
        deframer = StreamDeframer()
        try:
            while data := await reader.read(65536):
                try:
                    packets = deframer.feed(data)
                except PacketError:
                    self.server.drops["tcp_framing"] += 1
                    break
                for packet in packets:
                    session = self.server.receive(packet, client, time.monotonic())
                    if session is not None:
                        self._flush(session)
        except (ConnectionError, OSError):
            pass
        finally:
            self.server.remove(client)
            writer.close()

    def tun_readable(self) -> None:
        now = time.monotonic()
        touched: dict[int, ServerSession] = {}
        for packet in self.tun.read_batch():
            session = self.server.route_from_tun(packet, now)
            if session is not None:
                touched[id(session)] = session
        for session in touched.values():
            self._flush(session)

    async def timers(self) -> None:
        while True:
            deadline = self.server.next_timer()
            delay = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, 1.0))
            for session in self.server.handle_timer(time.monotonic()):
                self._flush(session)

    # -- outputs ---------------------------------------------------------------------

    def _flush(self, session: ServerSession) -> None:
        out = self.server.collect(session, time.monotonic())
        remote = session.remote
        for packet in out.to_client:
            if isinstance(remote, _TcpClient):
                remote.writer.write(frame(packet))
            elif self._udp is not None:
                self._udp.sendto(packet, remote)  # type: ignore[arg-type]
        if out.to_tun:
            self.tun.write_batch(out.to_tun)
        for event in out.events:
            if isinstance(event, ClientAuthenticated):
                log.info(
                    "ssl-vpn: %s connected from %s as %s (%s)",
                    event.username,
                    remote,
                    event.address.ip,
                    event.cipher,
                )
            elif isinstance(event, ClientAuthFailed):
                log.info(
                    "ssl-vpn: login of %r from %s refused: %s", event.username, remote, event.reason
                )
            elif isinstance(event, ClientDisconnected):
                log.info(
                    "ssl-vpn: %s from %s disconnected: %s (in %d, out %d bytes; drops %s)",
                    session.username,
                    remote,
                    event.reason,
                    session.bytes_in,
                    session.bytes_out,
                    dict(session.drops),
                )
                if isinstance(remote, _TcpClient):
                    remote.writer.close()
        self._wake.set()

    async def serve(self, address: str, port: int, *, tcp: bool, udp: bool) -> None:
        loop = asyncio.get_running_loop()
        adapter = self

        class _Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                adapter.datagram(data, addr)

        servers: list[asyncio.Server] = []
        if udp:
            transport, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(address, port))
            self._udp = transport
        if tcp:
            servers.append(await asyncio.start_server(self.tcp_client, address, port))
        loop.add_reader(self.tun.fileno(), self.tun_readable)
        log.info("ssl-vpn: listening on %s port %d", address, port)
        try:
            await self.timers()
        finally:
            loop.remove_reader(self.tun.fileno())
            for srv in servers:
                srv.close()
            if self._udp is not None:
                self._udp.close()


# --- A stand-alone server for the namespace tests ---------------------------------


@dataclass
class StaticUsers:
    """Users and passwords given on the command line, addresses handed out in order."""

    passwords: dict[str, str] = field(repr=False)
    pool: ipaddress.IPv4Network
    routes: tuple[ipaddress.IPv4Network, ...]
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    _leases: dict[str, ipaddress.IPv4Address] = field(default_factory=dict)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return next(self.pool.hosts())

    def __call__(self, request: AuthRequest) -> AuthDecision:
        expected = self.passwords.get(request.username)
        if expected is None or not hmac.compare_digest(
            expected.encode(), request.password.encode()
        ):
            return AuthDecision(False, "wrong user name or password")
        address = self._leases.get(request.username)
        if address is None:
            hosts = self.pool.hosts()
            next(hosts)  # the gateway's
            taken = set(self._leases.values())
            address = next(a for a in hosts if a not in taken)
            self._leases[request.username] = address
        push = PushOptions(
            ipaddress.IPv4Interface(f"{address}/{self.pool.prefixlen}"),
            self.gateway,
            self.routes,
            self.dns,
        )
        return AuthDecision(True, push=push)


def _load_tls_crypt(path: str) -> TlsCrypt:
    with open(path) as f:
        return TlsCrypt(parse_static_key(f.read()), server=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=1194)
    parser.add_argument("--transport", choices=["tcp", "udp", "both"], default="both")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca")
    parser.add_argument("--pool", required=True, type=ipaddress.IPv4Network)
    parser.add_argument("--route", action="append", type=ipaddress.IPv4Network, default=[])
    parser.add_argument("--dns", action="append", type=ipaddress.IPv4Address, default=[])
    parser.add_argument("--cipher", action="append", default=[])
    parser.add_argument("--users-file", required=True, help="lines of USER:PASSWORD")
    parser.add_argument("--tun", default="lgovpn0")
    parser.add_argument("--renegotiate", type=float)
    parser.add_argument("--tls-crypt", help="an OpenVPN static key file (--genkey tls-crypt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    passwords: dict[str, str] = {}
    with open(args.users_file) as f:
        for line in f:
            user, sep, password = line.rstrip("\n").partition(":")
            if sep:
                passwords[user] = password
    users = StaticUsers(passwords, args.pool, tuple(args.route), tuple(args.dns))
    settings = SessionSettings(
        server_context(args.cert, args.key, args.client_ca),
        ciphers=tuple(args.cipher) or SessionSettings.ciphers,
        renegotiate_seconds=args.renegotiate,
        tls_crypt=_load_tls_crypt(args.tls_crypt) if args.tls_crypt else None,
    )
    tun = TunDevice.open(args.tun)
    with LinkManager() as links:
        links.add_address(
            tun.name, ipaddress.IPv4Interface(f"{users.gateway}/{args.pool.prefixlen}")
        )
        links.set_up(tun.name)
    adapter = SslVpnServer(Server(settings, users, random=os.urandom), tun)

    async def run() -> None:
        task = asyncio.ensure_future(
            adapter.serve(
                args.listen,
                args.port,
                tcp=args.transport in {"tcp", "both"},
                udp=args.transport in {"udp", "both"},
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("ssl-vpn: stopped; drops %s", dict(adapter.server.drops))

    asyncio.run(run())
    tun.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
