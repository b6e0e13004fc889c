"""The virtual addresses of one point-to-cloud server's clients.

The pool's first host is the server's own address (the TUN's, and `route-gateway` for
the pushed routes). A user with a static address (`lockgate user add --static-ip`)
always gets it, and no one else ever does. Others get back the address they had last
time if it is free (sticky: their sessions keep their address across reconnections
and the server's restarts when nothing else took it meanwhile), else the lowest free
address.

The same pool serves `client_pool6`: the addresses are IPv6 then, and the first host
(the prefix with host part 1) is the server's, as the first IPv4 host is; the prefix's last
address is kept out too, so both families hand out the same range of hosts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address
Address = IPv4 | IPv6
A = TypeVar("A", IPv4, IPv6)


class AddressPool(Generic[A]):
    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self.network = network
        first = int(network.network_address)
        last = int(network.broadcast_address)
        if network.max_prefixlen - network.prefixlen < 2:
            raise ValueError(f"client pool {network} leaves no address for clients")
        self._kind: type[A] = type(network.network_address)  # type: ignore[assignment]
        self.server: A = self._kind(first + 1)
        self._first, self._last = first + 2, last - 1
        self._leases: dict[A, object] = {}
        """Addresses in use, each with its owner (a token the caller chooses)."""
        self._reserved: dict[A, str] = {}
        """Static addresses by address, with the user they belong to."""
        self._sticky: dict[str, A] = {}
        self._low = self._first
        """Every address below it is leased or reserved: the search for the lowest
        free address starts here, so a login costs no scan over the clients before it
        (lowered by `release`, reset by `set_static`)."""

    def __contains__(self, address: object) -> bool:
        return isinstance(address, self._kind) and self._first <= int(address) <= self._last

    @property
    def in_use(self) -> int:
        return len(self._leases)

    @property
    def free(self) -> int:
        """Addresses no one holds and no other user has as a static one."""
        taken = len(self._leases) + sum(1 for a in self._reserved if a not in self._leases)
        return self._last - self._first + 1 - taken

    def set_static(self, statics: Mapping[str, Address]) -> None:
        """The users' static addresses (from the users file), replacing the old ones;
        those of the other family or outside the pool are left out."""
        self._reserved = {
            address: user
            for user, address in statics.items()
            if isinstance(address, self._kind) and address in self
        }
        self._low = self._first  # an address that is no longer reserved may be free

    def allocate(self, user: str, owner: object, static: Address | None = None) -> A | None:
        """An address for a session of `user` owned by `owner`; None when the pool is
        exhausted. A static address is handed out even when a session holds it: the
        caller ends that older session (a static address is one session at a time)."""
        if isinstance(static, self._kind) and static in self:
            self._leases[static] = owner
            return static
        sticky = self._sticky.get(user)
        if sticky is not None and sticky not in self._leases and self._free_for(sticky, user):
            address: A | None = sticky
        else:
            address = self._lowest_free()
        if address is not None:
            self._leases[address] = owner
            self._sticky[user] = address
        return address

    def _lowest_free(self) -> A | None:
        leases, reserved = self._leases, self._reserved
        for i in range(self._low, self._last + 1):
            address = self._kind(i)
            if address not in leases and address not in reserved:
                # Taken by the caller now: everything up to it is taken.
                self._low = i + 1
                return address
        self._low = self._last + 1
        return None

    def _free_for(self, address: A, user: str) -> bool:
        holder = self._reserved.get(address)
        return holder is None or holder == user

    def release(self, address: Address, owner: object) -> None:
        """`owner` gives `address` back (a no-op if another owner holds it now)."""
        if isinstance(address, self._kind) and self._leases.get(address) == owner:
            del self._leases[address]
            self._low = min(self._low, int(address))

    def carry_over(self, old: AddressPool[A]) -> list[tuple[A, object]]:
        """Take over `old`'s leases and sticky addresses (a reload changed the pool):
        those that are host addresses of this pool keep their owner and user; the
        leases returned, (address, owner), are outside it and were not taken."""
        stranded: list[tuple[A, object]] = []
        for address, owner in old._leases.items():
            if address in self:
                self._leases[address] = owner
            else:
                stranded.append((address, owner))
        self._sticky.update((u, a) for u, a in old._sticky.items() if a in self)
        return stranded

    def leases(self) -> list[tuple[A, object]]:
        """Every address in use with its owner."""
        return list(self._leases.items())

    def owner(self, address: Address) -> object | None:
        return self._leases.get(address) if isinstance(address, self._kind) else None


def occupancy(pools: Iterable[AddressPool[IPv4] | AddressPool[IPv6]]) -> str:
    """How full `pools` are, for the log line of a client that got no address."""
    return ", ".join(
        f"client pool {p.network} {'exhausted' if not p.free else 'has room'} ({p.in_use} in use)"
        for p in pools
    )
