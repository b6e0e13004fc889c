"""The data plane's I/O: the TUN file descriptor and the UDP and raw ESP sockets.

The pump owns every socket the gateway uses on the wire: UDP 500 (IKE), UDP 4500
(IKE behind the non-ESP marker, ESP-in-UDP and keepalives, RFC 3948) and raw IP
protocol 50 for ESP without NAT. Reads are batched: each readable file descriptor
is drained up to `BATCH` packets before the batch goes through the data plane, so
the per-call overhead is paid once per batch (wireguard-go reads in batches too).
Sends that the kernel refuses (full buffer) are counted as drops, never retried:
IP is allowed to lose packets, and a gateway that blocks loses more.

Per-packet system calls are what a Python data plane spends most on, so the pump
uses the kernel's batching where it has it (see `daemon.offload`): UDP GSO sends a
run of equally long ESP packets in one `sendmsg` (UDP_SEGMENT), UDP GRO reads many
in one `recvmsg`, and a TUN device with virtio-net headers takes the received TCP
segments of a flow as one coalesced write and may hand over TSO super-packets,
which `tun.vnet` cuts.

Between two lockgates that agreed on it (`ikev2.tasks.ike_init`), the segments of a
super-packet (and single TCP segments the kernel left unchecksummed) leave with the
partial checksum the kernel left in them, marked inside ESP; the receiving pump
writes them with F_NEEDS_CSUM and its kernel completes them.
With `tso_auto` (`LOCKGATE_OFFLOAD=tso-lockgate`), TSO is on for a TUN exactly while
every CHILD SA that TUN sends into has that agreement (`DataPlane.on_tso`), so other
peers get single packets the kernel cut and checksummed, as before.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import functools
import logging
import socket
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from daemon.childsa import ChildSaEntry
from daemon.dataplane import AcquireHandler, DataPlane, Drop, UnknownSpiHandler
from daemon.offload import TUN_OFFLOADS
from esp.sa import PARTS_PER_PACKET
from esp.udpencap import MIN_ESP_LEN, NAT_KEEPALIVE, NON_ESP_MARKER, frame_ike
from ikev2.events import Address
from tun import Offload, PacketDevice, TunError
from tun.vnet import (
    F_NEEDS_CSUM,
    GSO_NONE,
    VNET_HDR_LEN,
    VnetError,
    coalesce,
    completed_tcp,
    frame_packets,
    split_frame_partial,
)

log = logging.getLogger(__name__)


BATCH = 64
"""Most packets (or super-packets) taken from one file descriptor before they are
processed."""
SOCKET_BUFFER = 4 * 1024 * 1024
"""Socket send/receive buffer we ask for, so bursts are not lost in the kernel."""
MAX_DATAGRAM = 65535

# <linux/udp.h>: UDP_SEGMENT sends one buffer as many equal datagrams (GSO);
# UDP_GRO lets the socket receive many as one buffer, cmsg UDP_GRO giving the size.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
"""UDP_MAX_SEGMENTS of older kernels: most datagrams in one GSO send."""
GSO_MAX_BYTES = 65000
"""Most payload octets in one GSO send (below 64 KiB minus IPv6 and UDP headers)."""
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_GSO_SIZE = struct.Struct("=H")  # the UDP_SEGMENT cmsg's value: a u16, host order

IkeReceiver = Callable[[bytes, Address, Address], None]
"""Gets every IKE message: (message without marker, local address, remote address)."""


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def grow_buffers(sock: socket.socket) -> None:
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
        # SO_RCVBUFFORCE (33) / SO_SNDBUFFORCE (32) pass the sysctl cap as root.
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def open_udp(address: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to ``address``:``port``.

    No SO_REUSEADDR: on Linux it lets a second UDP socket bind the same address and
    port, and the kernel then hands each datagram to only one of them. A second IKE
    daemon would silently take over half our peers; instead its bind fails here.
    UDP has no TIME_WAIT, so a restarted daemon binds at once without it.
    ``reuse_port`` (SO_REUSEPORT) is for `daemon.steering.open_steered_udp` only, whose
    group of sockets shares a port under a BPF program that picks the socket.
    """
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        else:
            # Our ESP packets are sized for the path; DF lets PMTU discovery tell us.
            sock.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
        grow_buffers(sock)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                errno.EADDRINUSE,
                f"UDP port {port} on {address} is in use by another process: another "
                "lockgate or IKE daemon (charon, pluto, iked) is probably running",
            ) from None
        # Name the port and address: a bare strerror ("Cannot assign requested
        # address") would not say which of the gateway's addresses is at fault.
        raise OSError(
            exc.errno, f"cannot bind UDP port {port} on {address}: {exc.strerror}"
        ) from None
    return sock


def claim_udp(addresses: Sequence[str], ports: Sequence[int]) -> dict[Address, socket.socket]:
    """Bind every (address, port), or none: the daemon claims its IKE and NAT-T ports
    before it creates anything else, so a second daemon on the same addresses fails
    here, having touched neither the TUN device nor the routes of the first. The
    sockets go to `Pump.open` (as `claimed`)."""
    claimed: dict[Address, socket.socket] = {}
    try:
        for address in addresses:
            for port in ports:
                if (address, port) not in claimed:
                    claimed[(address, port)] = open_udp(address, port)
    except OSError:
        for sock in claimed.values():
            sock.close()
        raise
    return claimed


def enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced datagrams on ``sock`` (UDP GRO, Linux 5.0); False if refused."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def open_raw_esp(address: str) -> socket.socket:
    """A non-blocking raw socket for IP protocol 50 bound to ``address`` (needs
    CAP_NET_RAW). IPv4 raw sockets deliver the IP header; IPv6 ones do not."""
    sock = socket.socket(_family(address), socket.SOCK_RAW, socket.IPPROTO_ESP)
    try:
        grow_buffers(sock)
        sock.bind((address, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class GroOrigin:
    """The `EspOrigin` of ESP read with UDP GRO: the read a packet came in."""

    __slots__ = ("_ends", "_esp", "_local", "_senders")

    def __init__(
        self, local: Address, esp: list[bytes], ends: list[int], senders: list[Address]
    ) -> None:
        self._local, self._esp, self._ends, self._senders = local, esp, ends, senders

    def __call__(self, packet: bytes) -> tuple[Address, Address] | None:
        try:
            index = self._esp.index(packet)
        except ValueError:
            return None
        peer = self._senders[bisect.bisect_right(self._ends, index)]
        return self._local, (peer[0], peer[1])


class RawOrigin:
    """The `EspOrigin` of raw ESP: the sender's address, and the IKE port on both
    sides (raw ESP has no ports; a hint about it goes where IKE does)."""

    __slots__ = ("_batch", "_local", "_sources")

    def __init__(self, local: Address, batch: list[bytes], sources: list[bytes | str]) -> None:
        self._local, self._batch, self._sources = local, batch, sources

    def __call__(self, packet: bytes) -> tuple[Address, Address] | None:
        try:
            source = self._sources[self._batch.index(packet)]
        except ValueError:
            return None
        if isinstance(source, bytes):
            source = socket.inet_ntop(socket.AF_INET, source[12:16])
        return self._local, (source, self._local[1])


@dataclass(slots=True)
class RouteTun:
    """A route-mode connection's TUN device as the pump reads and writes it."""

    tun: PacketDevice
    vnet: bool
    """Frames carry a virtio-net header (IFF_VNET_HDR)."""
    uso: bool
    """Writes may coalesce UDP datagrams (GSO_UDP_L4)."""
    deliver: Callable[..., None]
    """The data plane's entry for what it reads (`DataPlane.from_route_tun`): the
    packets, and whether they carry partial checksums."""


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
    on_acquire: AcquireHandler | None = None
    """Told about outbound packets no policy covers (the data plane's `on_acquire`)."""
    on_unknown_spi: UnknownSpiHandler | None = None
    """Told about inbound ESP of an unknown SPI (the data plane's `on_unknown_spi`)."""
    plane: DataPlane = field(init=False)
    """The data plane this pump feeds and transmits for (built here, because the pump
    is its `Transport`; its owner keeps a reference of its own)."""
    udp: dict[Address, socket.socket] = field(default_factory=dict)
    """UDP sockets by the local (address, port) they are bound to."""
    raw: dict[str, socket.socket] = field(default_factory=dict)
    """Raw ESP sockets by local address."""
    offload: bool = True
    """Use UDP GSO/GRO on port 4500 (when the kernel has them)."""
    route_tuns: dict[str, RouteTun] = field(default_factory=dict)
    """The route-mode connections' TUN devices by name (`add_route_tun`)."""
    tso_auto: bool = False
    """Turn TSO on a TUN on while every CHILD SA it sends into takes partial
    checksums, and off again otherwise (`set_tso`); else leave the device's
    offloads as its opener set them."""
    read_tun: bool = True
    """Read the TUN; False in the main process of data-plane workers, which read
    its queues themselves (`daemon.worker_gateway`)."""
    gro: bool = True
    """Ask for UDP GRO on port 4500 (with `offload`); False for a socket of a steered
    group, where a coalesced batch would go whole to its first datagram's worker."""
    _loop: asyncio.AbstractEventLoop | None = None
    _gso: bool = False
    _gro: set[int] = field(default_factory=set)
    _vnet: bool = False
    _uso: bool = False

    def __post_init__(self) -> None:
        self.plane = DataPlane(
            self,
            on_ike=self._ike_from_4500,
            on_acquire=self.on_acquire,
            on_unknown_spi=self.on_unknown_spi,
        )
        # A TUN with IFF_VNET_HDR: every frame carries a virtio-net header; and one
        # that takes UDP segmentation offload writes gets UDP datagrams coalesced.
        self._vnet = bool(getattr(self.tun, "vnet_hdr", False))
        self._uso = bool(getattr(self.tun, "uso_writes", False))
        self._gso = self.offload
        self.plane.kernel_drops = self.kernel_drops
        self.plane.on_tso = self.set_tso

    # ---- set-up --------------------------------------------------------------------

    def open(
        self,
        addresses: list[str],
        raw_esp: bool = True,
        claimed: dict[Address, socket.socket] | None = None,
    ) -> None:
        """Bind UDP 500 and 4500 (and raw ESP unless disabled) on every local address;
        the sockets of `claimed` (`claim_udp`) are taken over instead of bound again."""
        claimed = claimed or {}
        for address in addresses:
            for port in (self.ike_port, self.nat_port):
                if (address, port) not in self.udp:
                    sock = claimed.pop((address, port), None)
                    if sock is None:
                        sock = open_udp(address, port)
                    self._add_udp((address, port), sock)
            if raw_esp and address not in self.raw:
                try:
                    self.raw[address] = open_raw_esp(address)
                except PermissionError:
                    log.warning(
                        "no raw ESP socket on %s (needs CAP_NET_RAW): "
                        "only UDP-encapsulated ESP will work",
                        address,
                    )

    def adopt(self, udp: dict[Address, socket.socket], raw: dict[str, socket.socket]) -> None:
        """Take sockets opened elsewhere instead of binding any: a data-plane worker
        gets its port-4500 and raw ESP sockets from the main process, which keeps
        port 500 and the IKE endpoint. Call before `start`."""
        for local, sock in udp.items():
            sock.setblocking(False)
            self._add_udp(local, sock)
        for address, sock in raw.items():
            sock.setblocking(False)
            self.raw[address] = sock

    def _add_udp(self, local: Address, sock: socket.socket) -> None:
        self.udp[local] = sock
        if local[1] == self.nat_port and self.offload and self.gro and enable_gro(sock):
            self._gro.add(sock.fileno())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading every file descriptor on ``loop``."""
        self._loop = loop
        if self.read_tun:
            loop.add_reader(self.tun.fileno(), self._read_tun)
        for (address, port), sock in self.udp.items():
            local = (address, port)
            if port == self.nat_port:
                loop.add_reader(sock.fileno(), self._read_nat, sock, local)
            else:
                loop.add_reader(sock.fileno(), self._read_ike, sock, local)
        for address, sock in self.raw.items():
            loop.add_reader(sock.fileno(), self._read_raw, sock, address)
        for route in self.route_tuns.values():
            loop.add_reader(route.tun.fileno(), self._read_route_tun, route)

    def add_route_tun(self, tun: PacketDevice) -> None:
        """Read and write a route-mode connection's TUN device too: what it gives goes
        to the data plane as that TUN's (`DataPlane.from_route_tun`), and
        `write_tun` with its name writes to it. The device stays its opener's."""
        name = tun.name
        self.remove_route_tun(name)
        route = RouteTun(
            tun,
            bool(getattr(tun, "vnet_hdr", False)),
            bool(getattr(tun, "uso_writes", False)),
            functools.partial(self.plane.from_route_tun, name),
        )
        self.route_tuns[name] = route
        if self.plane.tso_wanted(name):
            self.set_tso(name, True)
        if self._loop is not None:
            self._loop.add_reader(tun.fileno(), self._read_route_tun, route)

    def set_tso(self, interface: str | None, on: bool) -> None:
        """With `tso_auto`, let the TUN (the gateway's, or the route-mode one named
        `interface`) hand over TSO super-packets, or stop it. Super-packets already
        queued are still read and cut (`DataPlane.from_tun_segments` decides per
        super-packet), so the switch needs no synchronisation with the reader."""
        if not self.tso_auto:
            return
        if interface is None:
            tun = self.tun
        else:
            route = self.route_tuns.get(interface)
            if route is None:
                return
            tun = route.tun
        set_offload = getattr(tun, "set_offload", None)
        if set_offload is None or not getattr(tun, "vnet_hdr", False):
            return
        try:
            set_offload(TUN_OFFLOADS if on else Offload(0))
        except TunError as exc:
            log.info("TUN segmentation offload not switched %s: %s", "on" if on else "off", exc)
            return
        log.info(
            "TSO on %s %s: %s",
            tun.name,
            "on" if on else "off",
            "every peer it sends to takes partial checksums"
            if on
            else "a peer without partial checksums",
        )

    def forget_route_tun(self, name: str) -> None:
        """`remove_route_tun`, for a caller that closes the device itself."""
        self.remove_route_tun(name)

    def remove_route_tun(self, name: str) -> PacketDevice | None:
        """Stop reading the route-mode TUN `name`; returns it (not closed)."""
        route = self.route_tuns.pop(name, None)
        if route is None:
            return None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(ValueError, OSError, TunError):
                loop.remove_reader(route.tun.fileno())
        return route.tun

    def close(self) -> None:
        """Stop reading and close every socket (the TUN device belongs to its opener)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(ValueError, OSError, TunError):
                loop.remove_reader(self.tun.fileno())
            for route in self.route_tuns.values():
                with contextlib.suppress(ValueError, OSError, TunError):
                    loop.remove_reader(route.tun.fileno())
            for sock in (*self.udp.values(), *self.raw.values()):
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(sock.fileno())
        for sock in (*self.udp.values(), *self.raw.values()):
            sock.close()
        self._gro.clear()
        self.udp.clear()
        self.raw.clear()
        self._loop = None

    def kernel_drops(self) -> dict[str, int]:
        """Packets the kernel dropped on their way to the pump, by where: a full
        receive buffer of our UDP or raw ESP sockets (SO_MEMINFO's drop count; the
        UDP ones are also nstat's UdpRcvbufErrors) and a full TUN queue (the TUN
        device's transmit drops in /proc/net/dev: the kernel could not queue a
        packet for us to read). Only what was dropped since the sockets opened and
        the device appeared, and only the reasons with drops."""
        out: dict[str, int] = {}
        for kind, socks in (("udp_receive_buffer", self.udp), ("raw_receive_buffer", self.raw)):
            total = sum(_socket_drops(sock) for sock in socks.values())
            if total:
                out[kind] = total
        queue = _tun_tx_dropped(self.tun.name) + sum(
            _tun_tx_dropped(name) for name in self.route_tuns
        )
        if queue:
            out["tun_queue"] = queue
        return out

    # ---- readers -------------------------------------------------------------------

    def _read_tun(self) -> None:
        plane = self.plane
        self._read_device(self.tun, self._vnet, plane.from_tun, plane.from_tun_segments)

    def _read_route_tun(self, route: RouteTun) -> None:
        # The segments of a super-packet take the same way as single packets: the
        # TUN's one CHILD SA, no lookup to save.
        self._read_device(route.tun, route.vnet, route.deliver, route.deliver)

    def _read_device(
        self,
        tun: PacketDevice,
        vnet: bool,
        deliver: Callable[[list[bytes], bool], None],
        deliver_segments: Callable[[list[bytes], bool], None],
    ) -> None:
        try:
            batch = tun.read_batch(BATCH)
        except TunError as exc:
            log.error("reading the TUN device %s failed: %s", tun.name, exc)
            return
        if not batch:
            return
        if not vnet:
            deliver(batch, False)
            return
        # Each super-packet is sealed on its own; what the read sealed leaves in
        # one send per SA.
        plane = self.plane
        plane.hold_sends()
        try:
            self._cut_frames(batch, deliver, deliver_segments)
        finally:
            plane.release_sends()

    def _cut_frames(
        self,
        batch: list[bytes],
        deliver: Callable[[list[bytes], bool], None],
        deliver_segments: Callable[[list[bytes], bool], None],
    ) -> None:
        # Super-packets (TSO) are cut here and go on as one flow's segments, with
        # the kernel's partial checksums: the data plane completes them unless the
        # SA's peer does (`split_frame_partial`). Single packets are gathered in
        # runs in between, finished ones apart from those the kernel left partial
        # (TCP; other protocols' are completed here), in order, so nothing of one
        # flow overtakes another part of it.
        plane = self.plane
        singles: list[bytes] = []
        marked = False  # `singles` are TCP segments with partial checksums
        for frame in batch:
            # The common frame, inlined: a finished packet behind a header that asks
            # for nothing (no partial checksum, no segmentation).
            if len(frame) > VNET_HDR_LEN and not frame[0] & F_NEEDS_CSUM and frame[1] == GSO_NONE:
                if marked:
                    deliver(singles, True)
                    singles, marked = [], False
                singles.append(frame[VNET_HDR_LEN:])
                continue
            try:
                packets, partial = split_frame_partial(frame)
            except VnetError as exc:
                log.debug("unusable TUN frame: %s", exc)
                plane.drops[Drop.MALFORMED.value] += 1
                continue
            if len(packets) == 1:
                if singles and marked != partial:
                    deliver(singles, marked)
                    singles = []
                marked = partial
                singles.append(packets[0])
                continue
            if singles:
                deliver(singles, marked)
                singles = []
            plane.counters["tso_frames_read"] += 1
            deliver_segments(packets, partial)
        if singles:
            deliver(singles, marked)

    def _read_nat(self, sock: socket.socket, local: Address) -> None:
        if sock.fileno() in self._gro:
            self._read_nat_gro(sock, local)
            return
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

    def _read_nat_gro(self, sock: socket.socket, local: Address) -> None:
        # With UDP GRO one read may hold many datagrams of one sender, all of the
        # size the UDP_GRO cmsg gives except perhaps the last. Runs that are all
        # ESP (`esp.udpencap.classify`'s ESP test, inline because it runs per chunk)
        # go straight to the ESP path; anything else is classified one by one.
        datagrams: list[tuple[bytes, Address, Address]] = []
        esp: list[bytes] = []
        # Where each read's ESP ends in `esp`, and its sender: asked only about
        # packets of an unknown SPI (`GroOrigin`).
        ends: list[int] = []
        senders: list[Address] = []
        recvmsg = sock.recvmsg
        marker = NON_ESP_MARKER
        for _ in range(BATCH):
            try:
                data, ancillary, _flags, peer = recvmsg(MAX_DATAGRAM, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            size = 0
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                    size = int.from_bytes(value[:4], sys.byteorder)
            if size <= 0 or size >= len(data):
                # One datagram. ESP keeps its place among the runs (the replay
                # window wants each SA's packets in order); the rest is classified.
                if len(data) >= MIN_ESP_LEN and data[:4] != marker:
                    esp.append(data)
                    ends.append(len(esp))
                    senders.append(peer)
                else:
                    datagrams.append((data, local, (peer[0], peer[1])))
                continue
            self.plane.counters["gro_datagrams_read"] += 1
            chunks = [data[offset : offset + size] for offset in range(0, len(data), size)]
            if len(chunks[-1]) >= MIN_ESP_LEN and all(chunk[:4] != marker for chunk in chunks):
                esp += chunks
                ends.append(len(esp))
                senders.append(peer)
            else:
                remote = (peer[0], peer[1])
                datagrams += [(chunk, local, remote) for chunk in chunks]
        if datagrams:
            self.plane.from_udp(datagrams)
        if esp:
            self.plane.from_esp(esp, GroOrigin(local, esp, ends, senders))

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

    def _read_raw(self, sock: socket.socket, address: str) -> None:
        batch: list[bytes] = []
        # The sender of each packet, for those of an unknown SPI (`RawOrigin`): the
        # IPv4 header as read, IPv6's from recvfrom (its raw sockets strip the header).
        sources: list[bytes | str] = []
        if sock.family == socket.AF_INET:
            for _ in range(BATCH):
                try:
                    packet = sock.recv(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                # IPv4 raw sockets hand over the IP header; ESP starts after it.
                if len(packet) < 20:
                    continue
                batch.append(packet[(packet[0] & 0x0F) * 4 :])
                sources.append(packet)
        else:
            for _ in range(BATCH):
                try:
                    packet, peer = sock.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                batch.append(packet)
                sources.append(peer[0])
        if batch:
            self.plane.from_esp(batch, RawOrigin((address, self.ike_port), batch, sources))

    def _ike_from_4500(self, message: bytes, local: Address, remote: Address) -> None:
        if self.on_ike is not None:
            self.on_ike(message, local, remote)

    # ---- Transport -----------------------------------------------------------------

    def send(self, entry: ChildSaEntry, parts: list[bytes]) -> int:
        """Send one SA's ESP packets, in UDP or raw as the SA says.

        ``parts`` holds each packet as `PARTS_PER_PACKET` octet strings, as
        `EspSA.encapsulate_parts` gives them; returns how many packets left.
        """
        if entry.udp_encap:
            sock = self.udp.get(entry.local)
            target: tuple[str, int] = entry.remote
            if sock is not None and self._gso and len(parts) > PARTS_PER_PACKET:
                return self._send_gso(sock, target, parts)
        else:
            sock = self.raw.get(entry.local[0])
            target = (entry.remote[0], 0)
        if sock is None:
            return 0
        return _send_each(sock, target, parts)

    def _send_gso(self, sock: socket.socket, target: tuple[str, int], parts: list[bytes]) -> int:
        # Runs of equally long ESP packets (a cut TCP super-packet gives exactly
        # that) leave in one sendmsg; the kernel cuts them at the size in the
        # UDP_SEGMENT cmsg, and a shorter last one is allowed. The segments are
        # cut by length, not by iovec, so each packet's parts go as they are and
        # are never joined here.
        sendmsg = sock.sendmsg
        sizes = _packet_sizes(parts)
        sent = 0
        i, n = 0, len(sizes)
        while i < n:
            size = total = sizes[i]
            j = i + 1
            limit = min(n, i + GSO_MAX_SEGMENTS)
            while j < limit:
                length = sizes[j]
                if length > size or total + length > GSO_MAX_BYTES:
                    break
                total += length
                j += 1
                if length < size:
                    break
            run = parts[i * PARTS_PER_PACKET : j * PARTS_PER_PACKET]
            if j - i == 1:
                sent += _send_each(sock, target, run)
                i = j
                continue
            try:
                sendmsg(run, [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))], 0, target)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT):
                    # No GSO on this path: send one by one from now on.
                    log.info("UDP GSO refused (%s); sending datagrams one by one", exc.strerror)
                    self._gso = False
                    return sent + _send_each(sock, target, parts[i * PARTS_PER_PACKET :])
                if exc.errno == errno.EMSGSIZE:
                    log.debug("ESP packets of %d octets exceed the path MTU", size)
            else:
                sent += j - i
                self.plane.counters["gso_sends"] += 1
            i = j
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

    def write_tun(
        self, packets: list[bytes], interface: str | None = None, partial: Sequence[int] = ()
    ) -> int:
        """Write plaintext packets to the gateway's TUN device, or to the route-mode
        TUN `interface` (TCP segments of one flow as one super-packet when the device
        takes virtio-net headers). The packets at the indexes `partial` carry only
        their pseudo-header checksum sum: the kernel completes them (F_NEEDS_CSUM),
        or, on a TUN without virtio-net headers, this does."""
        if interface is None:
            tun, vnet, uso = self.tun, self._vnet, self._uso
        else:
            route = self.route_tuns.get(interface)
            if route is None:
                return 0
            tun, vnet, uso = route.tun, route.vnet, route.uso
        try:
            if not vnet:
                if partial:
                    packets = _completed(packets, partial)
                return tun.write_batch(packets)
            frames = coalesce(packets, udp=uso, partial=partial)
            if len(frames) < len(packets):
                self.plane.counters["tun_packets_coalesced"] += len(packets) - len(frames)
            write = tun.write
            refused = 0
            for frame in frames:
                if not write(frame):
                    refused += frame_packets(frame)
        except TunError as exc:
            log.error("writing to the TUN device %s failed: %s", tun.name, exc)
            return 0
        return len(packets) - refused

    def send_datagram(self, message: bytes, local: Address, remote: Address) -> bool:
        """Send an IKE message of the endpoint from ``local``. From the NAT port it goes
        behind the non-ESP marker, as the port's receive side expects (RFC 3948 §2.2,
        RFC 7296 §2.23); from the IKE port bare."""
        sock = self.udp.get(local)
        if sock is None:
            log.warning("no socket on %s[%d] to send IKE from", local[0], local[1])
            return False
        payload = frame_ike(message) if local[1] == self.nat_port else message
        try:
            sock.sendto(payload, remote)
        except OSError as exc:
            log.warning("sending IKE to %s[%d] failed: %s", remote[0], remote[1], exc.strerror)
            return False
        return True


SO_MEMINFO = 55
"""<asm-generic/socket.h>: a socket's memory counters, SK_MEMINFO_VARS u32s."""
_SK_MEMINFO = struct.Struct("=9I")
_SK_MEMINFO_DROPS = 8


def _socket_drops(sock: socket.socket) -> int:
    """Packets dropped on ``sock`` for a full receive buffer (SK_MEMINFO_DROPS)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _SK_MEMINFO.size)
    except OSError:
        return 0
    if len(raw) < _SK_MEMINFO.size:
        return 0
    return int(_SK_MEMINFO.unpack_from(raw)[_SK_MEMINFO_DROPS])


def _tun_tx_dropped(name: str, path: str = "/proc/net/dev") -> int:
    """The transmit drops of interface ``name`` in this network namespace (0 if it
    has none there)."""
    try:
        with open(path, encoding="ascii", errors="replace") as table:
            for line in table:
                label, sep, fields = line.partition(":")
                if sep and label.strip() == name:
                    return int(fields.split()[11])  # 8 receive columns, then tx drop
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def _completed(packets: list[bytes], partial: Sequence[int]) -> list[bytes]:
    """``packets`` with the partial checksums at ``partial`` computed (a TUN that
    takes no F_NEEDS_CSUM)."""
    out = list(packets)
    for i in partial:
        out[i] = completed_tcp(out[i])
    return out


def _packets(parts: list[bytes]) -> Iterator[tuple[bytes, ...]]:
    """The parts of each packet in `EspSA.encapsulate_parts` output, grouped
    (`PARTS_PER_PACKET` a packet)."""
    step = PARTS_PER_PACKET
    return zip(*(parts[i::step] for i in range(step)), strict=True)


def _packet_sizes(parts: list[bytes]) -> list[int]:
    """The length of each packet in `EspSA.encapsulate_parts` output."""
    return [len(a) + len(b) + len(c) for a, b, c in _packets(parts)]


def _send_each(sock: socket.socket, target: tuple[str, int], parts: list[bytes]) -> int:
    # One datagram per packet: joining its parts costs less than a sendmsg of
    # several buffers per packet.
    sendto = sock.sendto
    sent = 0
    for packet in map(b"".join, _packets(parts)):
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
