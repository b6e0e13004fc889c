"""Linux TUN devices and their links, addresses and routes (via pyroute2), plus an
in-memory TUN pair for tests that need no root."""

from tun.base import MAX_PACKET, PacketDevice
from tun.device import Offload, TunDevice
from tun.errors import LinkError, TunError
from tun.link import LinkManager, Route, Rule
from tun.memory import MemoryTun, memory_tun_pair
from tun.routes import RouteSocket

__all__ = [
    "MAX_PACKET",
    "LinkError",
    "LinkManager",
    "MemoryTun",
    "Offload",
    "PacketDevice",
    "Route",
    "RouteSocket",
    "Rule",
    "TunDevice",
    "TunError",
    "memory_tun_pair",
]
