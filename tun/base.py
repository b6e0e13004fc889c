"""What the data plane needs from a packet device, real or in memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Largest packet a TUN read can return: an IP packet is at most 64 KiB (plus the
# 10-octet virtio-net header when IFF_VNET_HDR is on).
MAX_PACKET = 65535 + 10


class PacketDevice(Protocol):
    """A non-blocking device that moves whole IP packets, one per read or write.

    Implemented by `TunDevice` (the kernel's TUN) and `MemoryTun` (tests). `fileno()`
    is pollable, so an event loop can wait for readability with `add_reader`.
    """

    @property
    def name(self) -> str:
        """Interface name (e.g. ``lockgate0``)."""
        ...

    def fileno(self) -> int:
        """The pollable file descriptor."""
        ...

    def read(self, size: int = MAX_PACKET) -> bytes | None:
        """One packet, or None when none is waiting."""
        ...

    def read_batch(self, max_packets: int = 64, size: int = MAX_PACKET) -> list[bytes]:
        """Up to `max_packets` packets that are waiting now (possibly none)."""
        ...

    def write(self, packet: bytes) -> bool:
        """Hand one packet over; False if it was refused (queue full, not IP)."""
        ...

    def write_batch(self, packets: Sequence[bytes]) -> int:
        """Write each packet; return how many were taken (refused ones are skipped)."""
        ...

    def close(self) -> None:
        """Release the device; idempotent."""
        ...
