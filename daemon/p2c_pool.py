"""The virtual addresses of one point-to-cloud server's clients.

The pool's first host is the server's own address (the TUN's, and `route-gateway` for
the pushed routes). A user with a static address (`lockgate user add --static-ip`)
always gets it, and no one else ever does. Others get back the address they had last
time if it is free (sticky: their sessions keep their address across reconnections
and the server's restarts when nothing else took it meanwhile), else the lowest free
address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

IPv4 = ipaddress.IPv4Address


class AddressPool:
    def __init__(self, network: ipaddress.IPv4Network) -> None:
        self.network = network
        first = int(network.network_address)
        last = int(network.broadcast_address)
        if network.prefixlen >= 31:
            raise ValueError(f"client pool {network} leaves no address for clients")
        self.server = IPv4(first + 1)
        self._first, self._last = first + 2, last - 1
        self._leases: dict[IPv4, object] = {}
        """Addresses in use, each with its owner (a token the caller chooses)."""
        self._reserved: dict[IPv4, str] = {}
        """Static addresses by address, with the user they belong to."""
        self._sticky: dict[str, IPv4] = {}

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4) and self._first <= int(address) <= self._last

    @property
    def in_use(self) -> int:
        return len(self._leases)

    def set_static(self, statics: Mapping[str, IPv4]) -> None:
        """The users' static addresses (from the users file), replacing the old ones."""
        self._reserved = {address: user for user, address in statics.items() if address in self}

    def allocate(self, user: str, owner: object, static: IPv4 | None = None) -> IPv4 | None:
        """An address for a session of `user` owned by `owner`; None when the pool is
        exhausted. A static address is handed out even when a session holds it: the
        caller ends that older session (a static address is one session at a time)."""
        if static is not None and static in self:
            self._leases[static] = owner
            return static
        sticky = self._sticky.get(user)
        if sticky is not None and sticky not in self._leases and self._free_for(sticky, user):
            address: IPv4 | None = sticky
        else:
            address = next(
                (
                    a
                    for i in range(self._first, self._last + 1)
                    if (a := IPv4(i)) not in self._leases and a not in self._reserved
                ),
                None,
            )
        if address is not None:
            self._leases[address] = owner
            self._sticky[user] = address
        return address

    def _free_for(self, address: IPv4, user: str) -> bool:
        holder = self._reserved.get(address)
        return holder is None or holder == user

    def release(self, address: IPv4, owner: object) -> None:
        """`owner` gives `address` back (a no-op if another owner holds it now)."""
        if self._leases.get(address) is owner:
            del self._leases[address]

    def owner(self, address: IPv4) -> object | None:
        return self._leases.get(address)
