"""The Linux TUN device: `/dev/net/tun`, IFF_TUN | IFF_NO_PI, non-blocking.

Each read returns one IP packet and each write takes one (no packet-information
prefix). With `vnet_hdr`, every packet is preceded by a 10-octet virtio-net header and
`set_offload` may let the kernel hand over TCP super-packets (GSO); that is for a later
offload path, off by default. With `multi_queue`, `add_queue` opens more queues on the
same interface so several readers can share the load: the kernel sends each flow out
of one queue, chosen by the flow's hash over the queues attached (tun_select_queue).
A supervisor keeps every queue's fd, hands a worker process its copy (`from_fd` on the
worker's side), and detaches the queue of a worker that died (`detach_queue`) so no
flow waits in a queue nobody reads, until its successor is started (`attach_queue`).

Opening a TUN needs CAP_NET_ADMIN in the current network namespace. The interface
disappears when its last queue is closed (it is not made persistent).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Sequence

from tun.base import MAX_PACKET
from tun.errors import TunError

log = logging.getLogger(__name__)

_TUN_PATH = "/dev/net/tun"
# <linux/if_tun.h>: _IOW('T', 202, int) and friends.
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETQUEUE = 0x400454D9
SIOCSIFTXQLEN = 0x8943  # <linux/sockios.h>: set an interface's transmit queue length
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200  # TUNSETQUEUE: put a detached queue back in use
IFF_DETACH_QUEUE = 0x0400  # TUNSETQUEUE: take a queue out of use, keeping its fd
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16  # including the terminating NUL
VNET_HDR_LEN = 10  # struct virtio_net_hdr, the default TUNSETVNETHDRSZ

# A write the kernel refuses for this packet only; the device itself is fine.
_PACKET_REFUSED = frozenset(
    {errno.EAGAIN, errno.EINVAL, errno.EIO, errno.ENOBUFS, errno.EMSGSIZE, errno.EFAULT}
)


class Offload(enum.IntFlag):
    """TUNSETOFFLOAD flags (<linux/if_tun.h>): what the kernel may hand over unsplit."""

    CSUM = 0x01
    TSO4 = 0x02
    TSO6 = 0x04
    TSO_ECN = 0x08
    USO4 = 0x20
    USO6 = 0x40


def validate_ifname(name: str) -> bytes:
    """The interface name as the kernel wants it, or TunError saying why not.

    A ``%d`` in the name lets the kernel pick the number (``lockgate%d`` -> lockgate0).
    """
    raw = name.encode("ascii", errors="replace")
    if not name or len(raw) >= IFNAMSIZ:
        raise TunError(f"interface name {name!r}: must be 1 to {IFNAMSIZ - 1} characters")
    if not name.isascii() or any(c.isspace() or c in "/:" for c in name):
        raise TunError(f"interface name {name!r}: no spaces, '/', ':' or non-ASCII allowed")
    return raw


def ifreq(name: str, flags: int) -> bytes:
    """struct ifreq for TUNSETIFF and TUNSETQUEUE: the name (NUL padded) and the flags
    (a short)."""
    return struct.pack("16sH22x", validate_ifname(name), flags)


class TunDevice:
    """One queue of an open TUN interface. Create it with `TunDevice.open`."""

    def __init__(self, fd: int, name: str, flags: int) -> None:
        self._fd = fd
        self._name = name
        self.flags = flags
        """The IFF_* flags it was opened with."""
        self.offload = Offload(0)
        """What `set_offload` last let the kernel hand over unfinished."""
        self.uso_writes = False
        """Writes may be UDP segmentation offload frames (GSO_UDP_L4); see
        `probe_uso_writes`."""
        self.attached = True
        """The kernel sends packets out of this queue (see `detach_queue`)."""

    @classmethod
    def open(
        cls,
        name: str = "lockgate%d",
        *,
        multi_queue: bool = False,
        vnet_hdr: bool = False,
    ) -> TunDevice:
        """Create (or attach to) TUN interface `name` in the current network namespace."""
        flags = IFF_TUN | IFF_NO_PI
        if multi_queue:
            flags |= IFF_MULTI_QUEUE
        if vnet_hdr:
            flags |= IFF_VNET_HDR
        request = ifreq(name, flags)
        try:
            fd = os.open(_TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(f"cannot open {_TUN_PATH}: {exc.strerror}") from exc
        try:
            reply = fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as exc:
            os.close(fd)
            hint = " (needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
            raise TunError(f"cannot create TUN {name!r}: {exc.strerror}{hint}") from exc
        actual = reply[:IFNAMSIZ].split(b"\0", 1)[0].decode("ascii")
        log.debug("opened TUN %s (flags %#x)", actual, flags)
        return cls(fd, actual, flags)

    @classmethod
    def from_fd(cls, fd: int, name: str, flags: int) -> TunDevice:
        """A queue opened elsewhere: in a worker process, the fd its supervisor passed
        (``pass_fds``) with the name and the `flags` of the queue's TunDevice. The
        fd is made non-blocking (the queue's reads and writes rely on it); closing this
        TunDevice closes only this process's copy. The queue is taken to be attached:
        a supervisor attaches a detached one before handing it over."""
        validate_ifname(name)
        if not flags & IFF_TUN:
            raise TunError(f"{name}: flags {flags:#x} are not a TUN's")
        try:
            os.set_blocking(fd, False)
        except OSError as exc:
            raise TunError(f"{name}: fd {fd}: {exc.strerror}") from exc
        return cls(fd, name, flags)

    def detach_queue(self) -> None:
        """Take this queue out of the interface's use (TUNSETQUEUE, IFF_DETACH_QUEUE):
        the kernel spreads flows over the other queues and drops what waited in this
        one (__tun_detach), so reads find nothing until `attach_queue`. The
        interface stays up; at least one queue must remain attached for it to carry
        packets."""
        self._set_queue(IFF_DETACH_QUEUE)
        self.attached = False

    def attach_queue(self) -> None:
        """Put a queue `detach_queue` took out back in use (TUNSETQUEUE,
        IFF_ATTACH_QUEUE; needs CAP_NET_ADMIN unless the interface has an owner)."""
        self._set_queue(IFF_ATTACH_QUEUE)
        self.attached = True

    def _set_queue(self, flag: int) -> None:
        if not self.flags & IFF_MULTI_QUEUE:
            raise TunError(f"{self._name} was not opened with multi_queue")
        try:
            fcntl.ioctl(self.fileno(), TUNSETQUEUE, ifreq(self._name, flag))
        except OSError as exc:
            what = "attach" if flag == IFF_ATTACH_QUEUE else "detach"
            raise TunError(f"{self._name}: cannot {what} the queue: {exc.strerror}") from exc

    def add_queue(self) -> TunDevice:
        """Another queue of this multi-queue interface (its own fd, same packets split)."""
        if not self.flags & IFF_MULTI_QUEUE:
            raise TunError(f"{self._name} was not opened with multi_queue")
        return TunDevice.open(
            self._name, multi_queue=True, vnet_hdr=bool(self.flags & IFF_VNET_HDR)
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def vnet_hdr(self) -> bool:
        """Packets carry a virtio-net header first (IFF_VNET_HDR)."""
        return bool(self.flags & IFF_VNET_HDR)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise TunError(f"TUN {self._name} is closed")
        return self._fd

    def set_offload(self, offload: Offload) -> None:
        """Let the kernel pass checksum-less or segmentation offloaded packets.

        Only meaningful with `vnet_hdr` (the header says what is still to be done).
        """
        if not self.vnet_hdr:
            raise TunError(f"{self._name}: offloads need vnet_hdr")
        try:
            fcntl.ioctl(self.fileno(), TUNSETOFFLOAD, int(offload))
        except OSError as exc:
            raise TunError(f"{self._name}: TUNSETOFFLOAD {offload!r}: {exc.strerror}") from exc
        self.offload = offload

    def probe_uso_writes(self) -> bool:
        """Find out (and remember in `uso_writes`) whether the kernel takes UDP
        segmentation offload frames in writes.

        Kernels learned both at once (Linux 6.2): GSO_UDP_L4 in the virtio-net header
        of a write, and USO4/USO6 in TUNSETOFFLOAD, which older ones refuse. So asking
        for USO and putting the previous offloads back tells, without a packet.
        """
        self.uso_writes = False
        if not self.vnet_hdr:
            return False
        previous = self.offload
        try:
            self.set_offload(previous | Offload.CSUM | Offload.USO4 | Offload.USO6)
        except TunError:
            return False
        self.set_offload(previous)
        self.uso_writes = True
        return True

    def set_queue_length(self, packets: int) -> None:
        """Let the kernel hold up to ``packets`` packets for us to read (its
        txqueuelen; the TUN driver's default of 500 drops bursts from fast senders
        whenever a reader falls briefly behind)."""
        request = struct.pack("16si20x", validate_ifname(self._name), packets)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                fcntl.ioctl(sock.fileno(), SIOCSIFTXQLEN, request)
        except OSError as exc:
            raise TunError(f"{self._name}: txqueuelen {packets}: {exc.strerror}") from exc

    def read(self, size: int = MAX_PACKET) -> bytes | None:
        try:
            return os.read(self.fileno(), size)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise TunError(f"read from {self._name}: {exc.strerror}") from exc

    def read_batch(self, max_packets: int = 64, size: int = MAX_PACKET) -> list[bytes]:
        # `read` inlined: this loop runs once per packet on the data path.
        fd = self.fileno()
        read = os.read
        packets: list[bytes] = []
        append = packets.append
        try:
            for _ in range(max_packets):
                append(read(fd, size))
        except BlockingIOError:
            pass
        except OSError as exc:
            if not packets:
                raise TunError(f"read from {self._name}: {exc.strerror}") from exc
        return packets

    def write(self, packet: bytes) -> bool:
        try:
            os.write(self.fileno(), packet)
        except OSError as exc:
            if exc.errno in _PACKET_REFUSED:
                log.debug("%s refused a %d-octet packet: %s", self._name, len(packet), exc)
                return False
            raise TunError(f"write to {self._name}: {exc.strerror}") from exc
        return True

    def write_batch(self, packets: Sequence[bytes]) -> int:
        # `write` inlined: this loop runs once per packet on the data path.
        fd = self.fileno()
        write = os.write
        written = 0
        for packet in packets:
            try:
                write(fd, packet)
            except OSError as exc:
                if exc.errno in _PACKET_REFUSED:
                    log.debug("%s refused a %d-octet packet: %s", self._name, len(packet), exc)
                    continue
                raise TunError(f"write to {self._name}: {exc.strerror}") from exc
            written += 1
        return written

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
            log.debug("closed TUN %s", self._name)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"TunDevice({self._name!r}, {state}, flags={self.flags:#x})"
