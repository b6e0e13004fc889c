"""An in-memory TUN pair for tests that need no root.

Each end behaves like `TunDevice`: one packet per read and write, non-blocking, a
pollable `fileno()`. Underneath is a Unix SOCK_SEQPACKET socket pair, which keeps
packet boundaries and has a bounded kernel buffer, so a full queue refuses writes the
way a full TUN queue does, and an asyncio loop can `add_reader` it like the real one.
What one end writes, the other end reads: end A plays "the kernel's side of the TUN"
for end B and vice versa.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from tun.base import MAX_PACKET
from tun.errors import TunError


class MemoryTun:
    """One end of an in-memory packet pipe with the TUN device's interface."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._name = name
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        if self._closed:
            raise TunError(f"memory TUN {self._name} is closed")
        return self._sock.fileno()

    def read(self, size: int = MAX_PACKET) -> bytes | None:
        if self._closed:
            raise TunError(f"memory TUN {self._name} is closed")
        try:
            data = self._sock.recv(size)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise TunError(f"read from {self._name}: {exc.strerror}") from exc
        # A SOCK_SEQPACKET recv of b"" means the other end closed: nothing more to read.
        return data or None

    def read_batch(self, max_packets: int = 64, size: int = MAX_PACKET) -> list[bytes]:
        packets: list[bytes] = []
        while len(packets) < max_packets:
            packet = self.read(size)
            if packet is None:
                break
            packets.append(packet)
        return packets

    def write(self, packet: bytes) -> bool:
        if self._closed:
            raise TunError(f"memory TUN {self._name} is closed")
        if not packet:
            return False  # a TUN refuses empty writes too
        try:
            self._sock.send(packet)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            return False
        except OSError as exc:
            raise TunError(f"write to {self._name}: {exc.strerror}") from exc
        return True

    def write_batch(self, packets: Sequence[bytes]) -> int:
        return sum(1 for packet in packets if self.write(packet))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()

    def __enter__(self) -> MemoryTun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryTun({self._name!r}{', closed' if self._closed else ''})"


def memory_tun_pair(
    name_a: str = "memtun0", name_b: str = "memtun1", *, buffer: int | None = None
) -> tuple[MemoryTun, MemoryTun]:
    """Two connected ends. `buffer` caps each direction's queue in octets."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if buffer is not None:
        for sock in (a, b):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    return MemoryTun(a, name_a), MemoryTun(b, name_b)
