"""Each connection's traffic rate, sampled from the counters the data plane keeps.

Every SAMPLE_INTERVAL the bytes each CHILD SA carried since the last sample are added
up per connection (an SA installed since then counts from zero, one removed counts no
more), so a rekey, which starts new SAs at zero, is no dip in the rate. The last hour of
rates is kept for the overview's sparklines. Sampling reads counters only: it costs the
data plane nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

SAMPLE_INTERVAL = 10.0
HISTORY = 360
"""Samples kept: one hour at SAMPLE_INTERVAL."""


@dataclass
class Rate:
    """One connection's latest rate and its history, in bytes per second."""

    rate_in: float = 0.0
    rate_out: float = 0.0
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))


@dataclass
class Traffic:
    """The rates of every connection, updated by `sample`."""

    rates: dict[str, Rate] = field(default_factory=dict)
    _last: dict[int, tuple[int, int]] = field(default_factory=dict)
    _at: float | None = None

    def sample(
        self, counts: Iterable[tuple[int, str, int, int]], connections: Iterable[str], now: float
    ) -> None:
        """Take a sample: `counts` has each installed CHILD SA's unique id, connection,
        and bytes in and out so far; `connections` names every configured connection."""
        moved: dict[str, list[int]] = {name: [0, 0] for name in connections}
        seen: dict[int, tuple[int, int]] = {}
        for unique_id, connection, octets_in, octets_out in counts:
            octets = (octets_in, octets_out)
            before = self._last.get(unique_id, (0, 0))
            seen[unique_id] = octets
            total = moved.setdefault(connection, [0, 0])
            total[0] += max(0, octets[0] - before[0])
            total[1] += max(0, octets[1] - before[1])
        self._last = seen
        elapsed = None if self._at is None else now - self._at
        self._at = now
        for name in list(self.rates):
            if name not in moved:
                del self.rates[name]
        if not elapsed or elapsed <= 0:
            return
        for name, (octets_in, octets_out) in moved.items():
            rate = self.rates.setdefault(name, Rate())
            rate.rate_in, rate.rate_out = octets_in / elapsed, octets_out / elapsed
            rate.history.append(rate.rate_in + rate.rate_out)
