"""The data plane's I/O: the TUN file descriptor and the UDP and raw ESP sockets.

The pump owns every socket the gateway uses on the wire: UDP 500 (IKE), UDP 4500
(IKE behind the non-ESP marker, ESP-in-UDP and keepalives, RFC 3948) and raw IP
protocol 50 for ESP without NAT. Reads are batched: each readable file descriptor
is drained up to `BATCH` packets before the batch goes through the data plane, so
the per-call overhead is paid once per batch (wireguard-go reads in batches too).
Sends that the kernel refuses (full buffer) are counted as drops, never retried:
IP is allowed to lose packets, and a gateway that blocks loses more.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.childsa import ChildSaEntry
from daemon.dataplane import DataPlane
from esp.udpencap import NAT_KEEPALIVE
from ikev2.events import Address
from tun import PacketDevice, TunError

log = logging.getLogger(__name__)

BATCH = 64
"""Most packets taken from one file descriptor before they are processed."""
SOCKET_BUFFER = 4 * 1024 * 1024
"""Socket send/receive buffer we ask for, so bursts are not lost in the kernel."""
MAX_DATAGRAM = 65535

IkeReceiver = Callable[[bytes, Address, Address], None]
"""Gets every IKE message: (message without marker, local address, remote address)."""


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _grow_buffers(sock: socket.socket) -> None:
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
        # SO_RCVBUFFORCE (33) / SO_SNDBUFFORCE (32) pass the sysctl cap as root.
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def open_udp(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``address``:``port``."""
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        else:
            # Our ESP packets are sized for the path; DF lets PMTU discovery tell us.
            sock.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
        _grow_buffers(sock)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def open_raw_esp(address: str) -> socket.socket:
    """A non-blocking raw socket for IP protocol 50 bound to ``address`` (needs
    CAP_NET_RAW). IPv4 raw sockets deliver the IP header; IPv6 ones do not."""
    sock = socket.socket(_family(address), socket.SOCK_RAW, socket.IPPROTO_ESP)
    try:
        _grow_buffers(sock)
        sock.bind((address, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Pump:
    """Reads and writes the gateway's file descriptors on an asyncio (uvloop) loop,
    and is the data plane's `Transport`."""

    tun: PacketDevice
    """The TUN device (or an in-memory one in tests)."""
    ike_port: int = 500
    """Port of plain IKE."""
    nat_port: int = 4500
    """Port of IKE with the non-ESP marker, ESP-in-UDP and keepalives."""
    on_ike: IkeReceiver | None = None
    """Receiver of IKE messages from either port."""
    plane: DataPlane = field(init=False)
    """The data plane this pump feeds."""
    udp: dict[Address, socket.socket] = field(default_factory=dict)
    """UDP sockets by the local (address, port) they are bound to."""
    raw: dict[str, socket.socket] = field(default_factory=dict)
    """Raw ESP sockets by local address."""
    _loop: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        self.plane = DataPlane(self, on_ike=self._ike_from_4500)

    # ---- set-up --------------------------------------------------------------------

    def open(self, addresses: list[str], raw_esp: bool = True) -> None:
        """Bind UDP 500 and 4500 (and raw ESP unless disabled) on every local address."""
        for address in addresses:
            for port in (self.ike_port, self.nat_port):
                if (address, port) not in self.udp:
                    self.udp[(address, port)] = open_udp(address, port)
            if raw_esp and address not in self.raw:
                try:
                    self.raw[address] = open_raw_esp(address)
                except PermissionError:
                    log.warning(
                        "no raw ESP socket on %s (needs CAP_NET_RAW): "
                        "only UDP-encapsulated ESP will work",
                        address,
                    )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading every file descriptor on ``loop``."""
        self._loop = loop
        loop.add_reader(self.tun.fileno(), self._read_tun)
        for (address, port), sock in self.udp.items():
            local = (address, port)
            if port == self.nat_port:
                loop.add_reader(sock.fileno(), self._read_nat, sock, local)
            else:
                loop.add_reader(sock.fileno(), self._read_ike, sock, local)
        for sock in self.raw.values():
            loop.add_reader(sock.fileno(), self._read_raw, sock)

    def close(self) -> None:
        """Stop reading and close every socket (the TUN device belongs to its opener)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(ValueError, OSError, TunError):
                loop.remove_reader(self.tun.fileno())
            for sock in (*self.udp.values(), *self.raw.values()):
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(sock.fileno())
        for sock in (*self.udp.values(), *self.raw.values()):
            sock.close()
        self.udp.clear()
        self.raw.clear()
        self._loop = None

    # ---- readers -------------------------------------------------------------------

    def _read_tun(self) -> None:
        try:
            batch = self.tun.read_batch(BATCH)
        except TunError as exc:
            log.error("reading the TUN device failed: %s", exc)
            return
        if batch:
            self.plane.from_tun(batch)

    def _read_nat(self, sock: socket.socket, local: Address) -> None:
        batch: list[tuple[bytes, Address, Address]] = []
        recvfrom = sock.recvfrom
        for _ in range(BATCH):
            try:
                payload, peer = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error queued on the socket; the next read proceeds
            batch.append((payload, local, (peer[0], peer[1])))
        if batch:
            self.plane.from_udp(batch)

    def _read_ike(self, sock: socket.socket, local: Address) -> None:
        for _ in range(BATCH):
            try:
                message, peer = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if self.on_ike is not None:
                self.on_ike(message, local, (peer[0], peer[1]))

    def _read_raw(self, sock: socket.socket) -> None:
        batch: list[bytes] = []
        ipv4 = sock.family == socket.AF_INET
        for _ in range(BATCH):
            try:
                packet = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if ipv4:
                # IPv4 raw sockets hand over the IP header; ESP starts after it.
                if len(packet) < 20:
                    continue
                packet = packet[(packet[0] & 0x0F) * 4 :]
            batch.append(packet)
        if batch:
            self.plane.from_esp(batch)

    def _ike_from_4500(self, message: bytes, local: Address, remote: Address) -> None:
        if self.on_ike is not None:
            self.on_ike(message, local, remote)

    # ---- Transport -----------------------------------------------------------------

    def send(self, entry: ChildSaEntry, packets: list[bytes]) -> int:
        """Send one SA's ESP packets, in UDP or raw as the SA says."""
        if entry.udp_encap:
            sock = self.udp.get(entry.local)
            target: tuple[str, int] = entry.remote
        else:
            sock = self.raw.get(entry.local[0])
            target = (entry.remote[0], 0)
        if sock is None:
            return 0
        sendto = sock.sendto
        sent = 0
        for packet in packets:
            try:
                sendto(packet, target)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    log.debug("ESP packet of %d octets exceeds the path MTU", len(packet))
                continue
            sent += 1
        return sent

    def send_keepalive(self, local: Address, remote: Address) -> bool:
        """Send one NAT keepalive from ``local`` (our port 4500)."""
        sock = self.udp.get(local)
        if sock is None:
            return False
        try:
            sock.sendto(NAT_KEEPALIVE, remote)
        except OSError:
            return False
        return True

    def write_tun(self, packets: list[bytes]) -> int:
        """Write plaintext packets to the TUN device."""
        try:
            return self.tun.write_batch(packets)
        except TunError as exc:
            log.error("writing to the TUN device failed: %s", exc)
            return 0

    def send_datagram(self, payload: bytes, local: Address, remote: Address) -> bool:
        """Send a UDP payload from ``local`` as is (the IKE endpoint adds the non-ESP
        marker itself on the NAT port)."""
        sock = self.udp.get(local)
        if sock is None:
            log.warning("no socket on %s[%d] to send IKE from", local[0], local[1])
            return False
        try:
            sock.sendto(payload, remote)
        except OSError as exc:
            log.warning("sending IKE to %s[%d] failed: %s", remote[0], remote[1], exc.strerror)
            return False
        return True
