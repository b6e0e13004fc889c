"""The CHILD SAs' volume lifetimes, and the liveness their traffic proves.

Only the data plane counts packets and octets, so only it can tell the IKE core that
a CHILD SA reached its soft or hard byte/packet limit (RFC 4301 §4.4.2.1) or the end
of its sequence space, and that ESP from a peer just proved it alive (RFC 7296 §2.4).
The gateway asks `Lifetimes` every VOLUME_CHECK_INTERVAL and once a second.
"""

from __future__ import annotations

import logging
import time

from daemon.childsa import ChildSaEntry
from daemon.dataplane import DataPlane
from esp.sa import LifetimeState
from ikev2.endpoint import Endpoint
from ikev2.errors import IkeError

log = logging.getLogger(__name__)

VOLUME_CHECK_INTERVAL = 0.1
"""Seconds between looks at the CHILD SAs' byte/packet counters. The rekey at 90% of a
volume limit must start before the last 10% are used up: checked only once a second, a
small limit at a high packet rate went past the hard limit before the rekey began. Only
CHILD SAs with such a limit are looked at this often."""
SEQUENCE_CHECK_INTERVAL = 10.0
"""Seconds between looks at every CHILD SA, for the end of its sequence space: the soft
mark leaves 1/16 of the 32-bit space (2^28 packets), minutes even at a million packets
a second. Walking a thousand SAs ten times a second cost the loop 2% of a core."""


def _has_volume_limit(entry: ChildSaEntry) -> bool:
    """True when either ESP SA of the entry has a byte or packet limit."""
    return any(
        limit is not None
        for life in (entry.outbound.lifetime, entry.inbound.lifetime)
        for limit in (life.soft_bytes, life.hard_bytes, life.soft_packets, life.hard_packets)
    )


class Lifetimes:
    """Which CHILD SAs to look at for their volume, and what the core was told."""

    def __init__(self) -> None:
        self.inbound_seen: dict[int, int] = {}
        """Inbound packet counts at the last liveness report, by CHILD SA."""
        self.rekeying: set[int] = set()
        """CHILD SAs the core was asked to rekey (soft limit)."""
        self.volume_limited: set[int] = set()
        """CHILD SAs (unique ids) with a byte or packet limit: checked every
        VOLUME_CHECK_INTERVAL; the others only every SEQUENCE_CHECK_INTERVAL."""
        self.deleting: set[int] = set()
        """CHILD SAs the core was told are used up (hard limit)."""

    def watch(self, entry: ChildSaEntry) -> None:
        """A CHILD SA was installed: look at it often if it has a volume limit."""
        if _has_volume_limit(entry):
            self.volume_limited.add(entry.unique_id)

    def enforce(self, endpoint: Endpoint, plane: DataPlane, *, every: bool = False) -> bool:
        """Rekey CHILD SAs past their soft byte/packet limit (90% of `life_bytes` /
        `life_packets`, or near the end of their sequence space), delete those at the
        hard one: only the data plane counts packets, so only it can tell the core
        (RFC 4301 §4.4.2.1 soft and hard lifetimes). Looks at the SAs that have a
        byte/packet limit, or with `every` at all of them. True if it told the core
        anything (the caller then services the endpoint)."""
        now = time.monotonic()
        acted = False
        entries = plane.entries
        self.volume_limited &= entries.keys()
        if every:
            candidates = list(entries.items())
        else:
            candidates = [(uid, entries[uid]) for uid in self.volume_limited]
        for uid, entry in candidates:
            states = {entry.outbound.lifetime_state(), entry.inbound.lifetime_state()}
            if LifetimeState.SOFT not in states and LifetimeState.HARD not in states:
                continue
            try:
                if LifetimeState.HARD in states and uid not in self.deleting:
                    self.deleting.add(uid)
                    log.info(
                        "connection %s: CHILD SA #%d used up its volume", entry.connection, uid
                    )
                    endpoint.child_limit_reached(uid, now, hard=True)
                elif LifetimeState.SOFT in states and uid not in self.rekeying:
                    self.rekeying.add(uid)
                    log.info("connection %s: CHILD SA #%d due for rekeying (volume)",
                             entry.connection, uid)  # fmt: skip
                    endpoint.child_limit_reached(uid, now, hard=False)
                else:
                    continue
                acted = True
            except IkeError as exc:
                log.warning("connection %s: CHILD SA #%d: %s", entry.connection, uid, exc)
        self.rekeying &= plane.entries.keys()
        self.deleting &= plane.entries.keys()
        return acted

    def report_liveness(self, endpoint: Endpoint, plane: DataPlane, now: float) -> None:
        """ESP from the peer proves it alive: tell its IKE SA, so DPD stays quiet
        while traffic flows (RFC 7296 §2.4 asks for checks only when nothing came)."""
        seen = self.inbound_seen
        current: dict[int, int] = {}
        for uid, entry in plane.entries.items():
            count = entry.inbound.packet_count
            if count:  # SAs that never received stay out: at idle the map is empty
                current[uid] = count
                if count != seen.get(uid, 0):
                    endpoint.heard_from_peer(entry.ike_sa_id, now)
        self.inbound_seen = current
