"""Key exchange key pairs made ahead of need, while the daemon has nothing else to do.

Making an X25519 key pair costs some 50 us, about a twentieth of what an initiator
spends on one IKE SA; a burst of setups (a reload, a restart of the peer) pays it for
every SA at the worst moment. The pool keeps a bounded stock per group, filled by
`fill` when the caller is idle, and `take` hands each pair out once: RFC 7296 §2.12
allows reusing a private value for several exchanges, lockgate never does.

Nothing is made unless `fill` is called, so a core that is never told it is idle (the
tests with a seeded source) draws its keys from the source exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from ikev2.crypto.dh import GROUPS, KeyExchange
from ikev2.crypto.rng import RandomSource

STOCK_PER_GROUP = 128
"""Pairs kept per group: a burst of a hundred setups takes none of its keys' time; a
pair (an X25519 one) holds some 200 octets."""


class KeyPool:
    """Key pairs per group, each handed out once."""

    __slots__ = ("_rng", "_stock", "_wanted", "per_group")

    def __init__(self, rng: RandomSource, per_group: int = STOCK_PER_GROUP) -> None:
        self._rng = rng
        self.per_group = per_group
        """How many pairs `fill` keeps of each wanted group."""
        self._wanted: tuple[int, ...] = ()
        self._stock: dict[int, list[KeyExchange]] = {}

    def want(self, groups: Iterable[int]) -> None:
        """Keep pairs of these groups (implemented ones) from now on; pairs of groups
        no longer wanted are dropped."""
        self._wanted = tuple(dict.fromkeys(g for g in groups if g in GROUPS))
        self._stock = {g: self._stock.get(g, []) for g in self._wanted}

    def missing(self) -> int:
        """How many pairs `fill` would still make."""
        return sum(self.per_group - len(stock) for stock in self._stock.values())

    def fill(self, budget: int) -> int:
        """Make up to `budget` pairs, the emptiest group first; returns how many are
        still missing afterwards."""
        for _ in range(budget if self._stock else 0):
            group, stock = min(self._stock.items(), key=lambda item: len(item[1]))
            if len(stock) >= self.per_group:
                break
            stock.append(KeyExchange.generate(group, self._rng))
        return self.missing()

    def take(self, group: int) -> KeyExchange:
        """A pair of `group` that was never handed out: from the stock, else made now."""
        stock = self._stock.get(group)
        if stock:
            return stock.pop()
        return KeyExchange.generate(group, self._rng)

    def stock(self, group: int) -> int:
        """Pairs of `group` in stock."""
        return len(self._stock.get(group, ()))
