"""The IKE endpoint: every IKE SA of one daemon, behind one sans-I/O interface.

It routes each received message to its IKE SA by SPI (RFC 7296 §2.6: an SA is
identified by our own SPI), creates a responder SA for an IKE_SA_INIT request that
matches a configured connection, and gathers the datagrams, events and timers of all
of them. Like the IKE SA it never touches a socket or a clock.

Order of outputs: a datagram queued after an event is held back until that event
has been taken with `next_event()`. So the ChildSaInstalled of a new CHILD SA always
reaches the caller before the message that lets the peer use it (RFC 7296 §2.8),
whichever order the caller polls in.

Cost: nothing here visits every IKE SA per call. An SA tells the endpoint when it may
have output or a new timer (`IkeSa.on_change`), so polling collects only those SAs
(a dirty set); timers sit in a heap whose stale entries are skipped when they surface
(lazy invalidation); SAs are indexed by SPI, connection, peer and CHILD SA. With
thousands of IKE SAs a poll with nothing to do costs the same as with one.

A peer that restarted lost its SAs (RFC 7296 §2.21.4). As that peer, the endpoint
answers a protected request for an IKE SA it does not know with an unprotected
INVALID_IKE_SPI, and an ESP packet of an unknown SPI that the data plane reports
(`esp_spi_unknown`) with the unprotected INVALID_SPI of §1.5, both rate-limited
(`AnswerLimit`). As the other side, it takes such a notify as a hint, never as
proof: nothing is deleted or answered; the IKE SA checks its peer's liveness at once
on a short schedule, at most once per `HINT_INTERVAL`.

UDP port 4500 carries IKE behind a 4-octet non-ESP marker, ESP and NAT keepalives
(RFC 3948 §2.2-2.3). That framing is the daemon's in both directions (`esp.udpencap`):
`receive_message` takes a bare IKE message, the marker already stripped, and the
datagrams to send are bare IKE messages too, with the local port they leave from; the
daemon puts the marker in front of those that leave from port 4500.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

from ikev2.codec import (
    IkeHeader,
    Message,
    Notify,
    decode_header,
    decode_message,
    decode_payloads,
    encode_message,
)
from ikev2.config import ConnectionConfig
from ikev2.constants import (
    IKE_HEADER_LEN,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from ikev2.cookies import CookieJar, CookiePolicy
from ikev2.crypto.key_pool import KeyPool
from ikev2.crypto.rng import RandomSource, SystemRandom
from ikev2.errors import IkeError, InvalidMajorVersion, LocalProtocolError
from ikev2.events import Address, ChildSaDeleted, ChildSaInstalled, Event
from ikev2.identity import Identity
from ikev2.proposals import dh_group, parse_esp_proposal, parse_ike_proposal
from ikev2.sa import IkeSa
from ikev2.sa_data import SaContext
from ikev2.sa_types import Datagram, IkeDropReason, IkeSaState

log = logging.getLogger(__name__)

HINT_INTERVAL = 10.0
"""Seconds during which an IKE SA acts on no further hint that its peer restarted
(an unprotected INVALID_SPI or INVALID_IKE_SPI, §2.21.4). Longer than the fast
liveness check a hint starts (3.5 s, `ikev2.sa.HINT_CHECK_DELAYS`), so checks never
overlap: a forged flood costs at most one empty INFORMATIONAL exchange per IKE SA
per interval, and every further hint is only counted."""

UNPROTECTED_ADDRESS_INTERVAL = 1.0
"""Seconds between two unprotected answers (INVALID_IKE_SPI, or the INVALID_SPI
hint) to one address. A peer whose SAs we lost keeps sending ESP and retransmitting,
so one answer a second reaches it at once; more would only serve a reflector."""

UNPROTECTED_PER_SECOND = 20
"""Unprotected answers per second to all addresses together (§2.21.4: "a node needs
to limit the rate"): a flood with spoofed sources draws at most this many small
datagrams a second, while a restarted gateway still tells 20 peers a second (the
others find out by their own liveness checks)."""

K = TypeVar("K", bound=Hashable)


def _first_groups(connections: Collection[ConnectionConfig]) -> list[int]:
    """The key exchange groups of each connection's first IKE and ESP proposal: what
    our IKE_SA_INITs and PFS rekeys use, and what a responder most often selects."""
    texts = {c.ike_proposals[0]: parse_ike_proposal for c in connections if c.ike_proposals}
    for conn in connections:
        for child in conn.children:
            if child.esp_proposals:
                texts[child.esp_proposals[0]] = parse_esp_proposal
    groups = []
    for text, parse in texts.items():
        try:
            groups.append(dh_group(parse(text)))
        except IkeError:
            continue  # the connection itself reports it when used
    return [g for g in groups if g]


@functools.lru_cache(maxsize=1024)
def _ip(text: str) -> IpAddress:
    """An address string parsed once (bounded cache): every IKE_SA_INIT names our
    address and the peer's again, and parsing them cost more than the lookup."""
    return ipaddress.ip_address(text)


class _SaIndex(Generic[K]):
    """IKE SAs grouped by a key that may change during an SA's life (the responder
    picks its connection in IKE_AUTH; the peer's identity is known only then).

    A key with one SA (the common case for the peer's identity) holds the SA itself,
    not a one-entry dict: some 230 octets less per IKE SA in a busy index."""

    __slots__ = ("_groups", "_key_of")

    def __init__(self) -> None:
        self._groups: dict[K, IkeSa | dict[int, IkeSa]] = {}
        self._key_of: dict[int, K] = {}

    def put(self, sa: IkeSa, key: K) -> None:
        """File `sa` under `key` (moving it if it was under another)."""
        old = self._key_of.get(sa.ike_sa_id)
        if old == key and old is not None:
            return
        self.remove(sa)
        self._key_of[sa.ike_sa_id] = key
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = sa
        elif isinstance(group, dict):
            group[sa.ike_sa_id] = sa
        else:
            self._groups[key] = {group.ike_sa_id: group, sa.ike_sa_id: sa}

    def remove(self, sa: IkeSa) -> None:
        """Forget `sa`."""
        old = self._key_of.pop(sa.ike_sa_id, None)
        if old is None:
            return
        group = self._groups.get(old)
        if group is sa:
            del self._groups[old]
        elif isinstance(group, dict):
            group.pop(sa.ike_sa_id, None)
            if len(group) == 1:
                (self._groups[old],) = group.values()
            elif not group:
                del self._groups[old]

    def get(self, key: K) -> list[IkeSa]:
        """The SAs under `key`, oldest first."""
        group = self._groups.get(key)
        if group is None:
            return []
        return list(group.values()) if isinstance(group, dict) else [group]

    def count(self, key: K) -> int:
        """How many SAs are under `key`."""
        group = self._groups.get(key)
        if group is None:
            return 0
        return len(group) if isinstance(group, dict) else 1


class AnswerLimit:
    """The rate limits of unprotected answers: at most one per `address_interval` to
    an address, and at most `per_second` in any second overall (RFC 7296 §2.21.4).

    Memory stays bounded whatever the sources: an address is remembered only once it
    got an answer, at most `per_second` a second, and forgotten after the interval.
    """

    def __init__(
        self,
        per_second: int = UNPROTECTED_PER_SECOND,
        address_interval: float = UNPROTECTED_ADDRESS_INTERVAL,
    ) -> None:
        self.per_second = per_second
        self.address_interval = address_interval
        self._recent: deque[float] = deque()
        """When the answers of the last second went."""
        self._by_address: dict[IpAddress, float] = {}
        """When each address got its last answer (pruned as it grows)."""

    def allow(self, address: IpAddress, now: float) -> bool:
        """Whether an answer to `address` may go now (and if so, count it as sent)."""
        last = self._by_address.get(address)
        if last is not None and now - last < self.address_interval:
            return False
        recent = self._recent
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        if len(recent) >= self.per_second:
            return False
        recent.append(now)
        if len(self._by_address) >= 4 * self.per_second:
            self._by_address = {
                a: t for a, t in self._by_address.items() if now - t < self.address_interval
            }
        self._by_address[address] = now
        return True


@dataclass
class _Window:
    """One reason's log window: when its last line was written, and how many events
    went unlogged since."""

    logged_at: float
    """`now` of the last line written for this reason."""
    suppressed: int = 0
    """Events since then that wrote no line."""


class ThrottledLog:
    """At most one log line per reason per `interval` seconds of the injected clock.

    Unauthenticated events (COOKIE demands, half-open cap, garbage) can be caused by
    anyone at line rate with spoofed sources; one line each would let a flood fill the
    disk. The first event after a quiet interval is logged at once, in detail; events
    during the interval only count, and the first event after it writes one line
    summing them up.
    """

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self._log = log
        self.interval = interval
        """Seconds between two lines of the same reason."""
        self._windows: dict[IkeDropReason, _Window] = {}

    def event(
        self,
        reason: IkeDropReason,
        now: float,
        level: int,
        summary: str,
        message: str,
        *args: object,
    ) -> None:
        """Log `message % args` now if `reason` was quiet for `interval`; else count it.

        `summary` is a %-format with a count and a duration (seconds), written instead
        of `message` once events were suppressed: e.g. "demanded COOKIEs from %s
        IKE_SA_INIT requests in the last %.0f s".
        """
        window = self._windows.get(reason)
        if window is not None and now - window.logged_at < self.interval:
            window.suppressed += 1
            return
        if window is not None and window.suppressed:
            count = window.suppressed + 1  # this event too
            self._log.log(level, summary, f"{count:,}", now - window.logged_at)
        else:
            self._log.log(level, message, *args)
        self._windows[reason] = _Window(now)


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PeerKey = tuple[Identity, str]
"""Our identity and the peer's IP address: the pair INITIAL_CONTACT speaks for."""
ContactKey = tuple[str, Identity | None, str]


@dataclass(frozen=True)
class EndpointConfig:
    """Settings of the endpoint itself (not of one connection)."""

    ike_port: int = 500
    """UDP port IKE starts on."""
    nat_port: int = 4500
    """UDP port of NAT traversal, where IKE messages carry the non-ESP marker."""
    half_open_timeout: float = 30.0
    """Seconds a responder SA may wait for IKE_AUTH before it is dropped."""
    max_half_open: int = 1000
    """Responder SAs that may wait for IKE_AUTH at once; more IKE_SA_INITs are dropped."""
    cookies: CookiePolicy = field(default_factory=CookiePolicy)
    """When to demand a COOKIE before creating a responder SA (RFC 7296 §2.6)."""
    log_interval: float = 10.0
    """Seconds between two log lines of the same unauthenticated drop reason."""
    partial_csum: bool = False
    """Offer lockgate peers TCP segments with partial checksums inside ESP (the data
    plane writes them to a TUN with virtio-net headers, whose kernel completes them)."""
    resources: int = 1
    """Data-plane workers (`[gateway] workers`). A CHILD SA's worker is its inbound SPI
    modulo this, so our inbound SPIs are chosen per worker. Above 1, every CHILD SA
    negotiation carries SA_RESOURCE_INFO and, with a peer that sends it too, we ask
    for one CHILD SA per worker with the same selectors (RFC 9611). 1: as without."""

    def __post_init__(self) -> None:
        if self.resources < 1:
            raise LocalProtocolError(f"resources must be at least 1, not {self.resources}")


class Endpoint:
    """All IKE SAs of a daemon; the unit the asyncio adapter and the daemon drive."""

    def __init__(
        self,
        connections: Sequence[ConnectionConfig] = (),
        *,
        rng: RandomSource | None = None,
        config: EndpointConfig | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or EndpointConfig()
        self._rng: RandomSource = rng or SystemRandom()
        self._connections: dict[str, ConnectionConfig] = {}
        self._by_remote_address: dict[IpAddress, list[ConnectionConfig]] = {}
        """Connections by peer address, so an IKE_SA_INIT does not read all of them."""
        self._wildcards: list[ConnectionConfig] = []
        """Connections that accept any peer address (%any)."""
        self._udp_unanswered: set[str] = set()
        """Connections whose peer agreed on ESP in UDP by Vendor ID but never answered
        on port 4500: initiated without the Vendor ID until a reload."""
        self._keys = KeyPool(self._rng)
        """Key pairs made by `prepare_keys`, for the groups the connections start with."""
        self.set_connections(connections)
        self._by_spi: dict[bytes, IkeSa] = {}
        """IKE SAs by our own SPI (SPIi when we initiated, SPIr when we responded)."""
        self._half_open: dict[tuple[bytes, Address], IkeSa] = {}
        """Responder SAs by (peer's SPIi, peer address), to catch IKE_SA_INIT retransmissions."""
        self._half_open_key: dict[int, tuple[bytes, Address]] = {}
        """The `_half_open` key of each responder SA there."""
        self._half_open_ids: set[int] = set()
        """IKE SAs in state HALF_OPEN (what the COOKIE and half-open limits count)."""
        self._sas: dict[int, IkeSa] = {}
        self._dirty: dict[int, IkeSa] = {}
        """SAs that called `on_change` since they were last collected, in that order."""
        self._timers: list[tuple[float, int]] = []
        """Heap of (time, IKE SA id); an entry is stale unless `_timer_at` agrees."""
        self._timer_at: dict[int, float] = {}
        """Each SA's current timer as last collected."""
        self._by_connection: _SaIndex[str] = _SaIndex()
        self._by_peer: _SaIndex[PeerKey] = _SaIndex()
        """For INITIAL_CONTACT: SAs by (our identity, the peer's address)."""
        self._by_peer_id: _SaIndex[ContactKey] = _SaIndex()
        """For a peer's INITIAL_CONTACT: SAs by `_contact_key`."""
        self._by_remote_ip: _SaIndex[IpAddress] = _SaIndex()
        """SAs by the peer's current IP address: whom an unprotected hint or an ESP
        packet of an unknown SPI concerns (§2.21.4)."""
        self._hinted: dict[int, float] = {}
        """When each IKE SA last acted on a hint that its peer restarted."""
        self._answer_limit = AnswerLimit()
        """Rate limits of our unprotected answers (INVALID_IKE_SPI, INVALID_SPI)."""
        self._child_owner: dict[int, IkeSa] = {}
        """The IKE SA each CHILD SA was last seen under (checked before use: it moves)."""
        self._now = 0.0
        """The latest time a caller gave us (for collecting outside timed calls)."""
        self.sas_visited = 0
        """Diagnostics: how many times an IKE SA was collected (its outputs, timer and
        indexes refreshed). Idle polling leaves it unchanged, however many SAs exist."""
        self._cookie_jar: CookieJar | None = None
        self._sa_context = SaContext(
            self._rng,
            ike_ids=itertools.count(1),
            child_ids=itertools.count(1),
            nat_port=self.config.nat_port,
            half_open_timeout=self.config.half_open_timeout,
            wall_clock=wall_clock,
            key_pool=self._keys,
            partial_csum=self.config.partial_csum,
            resources=self.config.resources,
        )
        """What every IKE SA made here shares (their numbering, randomness, key pool)."""
        self._events: deque[Event] = deque()
        self._events_queued = 0
        """Events ever queued here."""
        self._events_taken = 0
        """Events ever taken by the caller."""
        self._datagrams: list[tuple[int, Datagram]] = []
        """Datagrams with the number of events that must be taken before they go."""
        self._drops: Counter[IkeDropReason] = Counter()
        self._drops_view: Mapping[IkeDropReason, int] = MappingProxyType(self._drops)
        self._throttle = ThrottledLog(log, self.config.log_interval)

    # --- diagnostics --------------------------------------------------------------------

    @property
    def drops(self) -> Mapping[IkeDropReason, int]:
        """Received datagrams dropped so far, by reason (read-only, live); each counts
        once. Reasons that never occurred are absent."""
        return self._drops_view

    def _drop(self, reason: IkeDropReason) -> None:
        self._drops[reason] += 1

    def count_drop(self, reason: IkeDropReason) -> None:
        """Count a datagram the caller dropped before handing it here (its backlog was
        full), beside the endpoint's own drops."""
        self._drops[reason] += 1

    # --- configuration ------------------------------------------------------------------

    @property
    def connections(self) -> dict[str, ConnectionConfig]:
        """The configured connections by name."""
        return dict(self._connections)

    def set_connections(self, connections: Sequence[ConnectionConfig]) -> None:
        """Replace the configuration (reload). Existing IKE SAs keep the one they began with."""
        self._connections = {c.name: c for c in connections}
        self._udp_unanswered.clear()  # a reload: perhaps the firewall was opened too
        self._by_remote_address = {}
        self._wildcards = []
        for conn in self._connections.values():
            if conn.remote_address is None:
                self._wildcards.append(conn)
            else:
                address = ipaddress.ip_address(conn.remote_address)
                self._by_remote_address.setdefault(address, []).append(conn)
        self._keys.want(_first_groups(self._connections.values()))

    def prepare_keys(self, budget: int) -> int:
        """Make up to `budget` key pairs ahead of need, of the key exchange groups the
        connections' first IKE and ESP proposals name; call it while idle (the daemon
        does, a few at a time). Returns how many are still missing. Each pair is used
        once, by the next IKE_SA_INIT or CREATE_CHILD_SA of its group."""
        return self._keys.fill(budget)

    def ike_sas(self) -> list[IkeSa]:
        """Every IKE SA that is not yet gone."""
        return list(self._sas.values())

    def ike_sa_total(self) -> int:
        """How many IKE SAs are not yet gone (without listing them)."""
        return len(self._sas)

    def ike_sa(self, ike_sa_id: int) -> IkeSa | None:
        """An IKE SA by its unique number."""
        return self._sas.get(ike_sa_id)

    def ike_sas_of(self, connection: str) -> list[IkeSa]:
        """The IKE SAs (not yet gone) of one connection, oldest first."""
        return self._by_connection.get(connection)

    def ike_sa_count(self, connection: str) -> int:
        """How many IKE SAs (not yet gone) one connection has: O(1)."""
        return self._by_connection.count(connection)

    # --- API calls ----------------------------------------------------------------------

    def initiate(self, connection: str, now: float) -> IkeSa:
        """Start an IKE SA (and its first CHILD SA) for a configured connection."""
        config = self._connections.get(connection)
        if config is None:
            raise LocalProtocolError(f"no connection named {connection!r}")
        if config.remote_address is None:
            raise LocalProtocolError(f"connection {connection!r} has no peer address (%any)")
        local = (config.local_addresses[0], config.ike_port)
        remote = (config.remote_address, config.ike_port)
        sa = IkeSa(self._sa_context, config, initiator=True, local=local, remote=remote, now=now)
        # §2.4: INITIAL_CONTACT asserts this is the only IKE SA between the two
        # identities, and the peer drops every other; so only when we hold none with
        # that peer under the same identity of ours, whichever connection made it.
        sa.send_initial_contact = config.initial_contact and not self._by_peer.count(_peer_key(sa))
        sa.withhold_udp_vid = config.name in self._udp_unanswered
        self._add(sa)
        sa.initiate(now)
        self._collect(sa, now)
        return sa

    def delete(self, ike_sa_id: int, now: float, reason: str = "deleted by operator") -> None:
        """Delete an IKE SA and its CHILD SAs (INFORMATIONAL Delete to the peer)."""
        sa = self._sas.get(ike_sa_id)
        if sa is None:
            raise LocalProtocolError(f"no IKE SA {ike_sa_id}")
        self._now = now
        sa.delete(now, reason)
        self._collect(sa, now)

    def delete_connection(
        self, connection: str, now: float, reason: str = "deleted by operator"
    ) -> int:
        """Delete every IKE SA of a connection; returns how many."""
        self._now = now
        sas = self._by_connection.get(connection)
        for sa in sas:
            sa.delete(now, reason)
            self._collect(sa, now)
        return len(sas)

    def delete_child(self, unique_id: int, now: float, reason: str = "deleted by operator") -> None:
        """Delete one CHILD SA (INFORMATIONAL Delete of its ESP SPI)."""
        self._now = now
        sa = self._owner_of(unique_id)
        if sa is not None:
            sa.delete_child(unique_id, now, reason)
            self._collect(sa, now)
            return
        raise LocalProtocolError(f"no CHILD SA {unique_id}")

    def rekey_child(self, unique_id: int, now: float) -> None:
        """Rekey one CHILD SA now (CREATE_CHILD_SA, make-before-break)."""
        self._now = now
        sa = self._owner_of(unique_id)
        if sa is not None:
            sa.rekey_child(unique_id, now)
            self._collect(sa, now)
            return
        raise LocalProtocolError(f"no CHILD SA {unique_id}")

    def rekey_connection(self, connection: str, now: float) -> int:
        """Rekey every CHILD SA of a connection; returns how many rekeys started."""
        self._now = now
        count = 0
        for sa in self._by_connection.get(connection):
            for unique_id, child in list(sa.children.items()):
                if not child.deleting and not child.rekeying:
                    sa.rekey_child(unique_id, now)
                    count += 1
            self._collect(sa, now)
        return count

    def reconfigure(self, config: ConnectionConfig) -> list[IkeSa]:
        """Hand a connection's new settings (`set_connections` first) to its IKE SAs
        and their CHILD SAs (`IkeSa.reconfigure`); returns those IKE SAs. Nothing is
        sent: a rekey of each (`rekey_child`, `rekey_ike_sa`) puts the settings to use."""
        sas = self._by_connection.get(config.name)
        for sa in sas:
            sa.reconfigure(config)
        return sas

    def rekey_ike_sa(self, ike_sa_id: int, now: float) -> None:
        """Rekey an IKE SA now (§2.8); its CHILD SAs move to the new one."""
        sa = self._sas.get(ike_sa_id)
        if sa is None:
            raise LocalProtocolError(f"no IKE SA {ike_sa_id}")
        self._now = now
        sa.rekey_ike(now)
        self._collect(sa, now)

    def child_limit_reached(self, unique_id: int, now: float, *, hard: bool) -> None:
        """A CHILD SA's ESP counters reached a limit: soft rekeys it, hard deletes it."""
        self._now = now
        sa = self._owner_of(unique_id)
        if sa is not None:
            sa.child_limit_reached(unique_id, now, hard=hard)
            self._collect(sa, now)

    def heard_from_peer(self, ike_sa_id: int, now: float) -> None:
        """Tell an IKE SA its peer is alive (e.g. ESP arrived), postponing liveness checks."""
        sa = self._sas.get(ike_sa_id)
        if sa is not None:
            sa.heard_from_peer(now)

    def check_liveness(self, ike_sa_id: int, now: float) -> None:
        """Send the peer of an IKE SA an empty INFORMATIONAL request (§1.4); a peer that
        never answers ends the IKE SA through retransmission give-up."""
        sa = self._sas.get(ike_sa_id)
        if sa is None:
            raise LocalProtocolError(f"no IKE SA {ike_sa_id}")
        self._now = now
        sa.check_liveness(now)
        self._collect(sa, now)

    def esp_spi_unknown(self, spi: int, local: Address, remote: Address, now: float) -> None:
        """An ESP packet with an SPI we do not know came from `remote` to `local`.

        For ESP in UDP, `local` and `remote` are the UDP addresses and ports the packet
        used; for raw ESP (IP protocol 50) pass the IKE port (500) on both sides.

        If we have an IKE SA with that peer address, the packet is not for SAs we lost:
        nothing happens. Otherwise we may have restarted and the peer still sends on
        SAs we forgot, so it gets the unprotected INVALID_SPI hint of RFC 7296 §1.5 and
        §2.21.4, rate-limited, if a configured connection accepts that address. The
        hint is queued like every datagram: take it with `datagrams_to_send`.
        """
        self._now = now
        address = _ip(remote[0])
        if self._by_remote_ip.count(address) or not self._match(local, remote):
            return
        if not self._answer_limit.allow(address, now):
            self._answer_limited(remote, now)
            return
        self._drop(IkeDropReason.INVALID_SPI_SENT)
        self._throttle.event(
            IkeDropReason.INVALID_IKE_SPI_SENT,
            now,
            logging.INFO,
            "told peers %s times in the last %.0f s that we lost their SAs",
            "ESP for unknown SPI %08x from %s: sending INVALID_SPI (we may have restarted)",
            spi,
            _fmt(remote),
        )
        # §1.5: no IKE SPI means anything to the peer; zero ones are allowed (the one
        # exception to §3.1) and mark it as no exchange's. Not part of an exchange, so
        # it is never answered. The Notification Data is the SPI of the packet.
        hint = Message(
            spi_i=bytes(8),
            spi_r=bytes(8),
            exchange_type=ExchangeType.INFORMATIONAL,
            message_id=0,
            initiator=True,
            response=False,
            payloads=(Notify(NotifyType.INVALID_SPI, spi.to_bytes(4, "big"), ProtocolId.ESP),),
        )
        self._send_unprotected(hint, local, remote)

    def close(self, now: float) -> None:
        """Delete every IKE SA (shutdown); drive timers until `get_timer()` is None."""
        self._now = now
        for sa in list(self._sas.values()):
            sa.delete(now, "shutting down")
            self._collect(sa, now)

    # --- input --------------------------------------------------------------------------

    def receive_message(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        """An IKE message (without any non-ESP marker) received on `local` from `remote`."""
        self._now = now
        try:
            header = decode_header(data)
        except IkeError as exc:
            reason = (
                IkeDropReason.BAD_VERSION
                if isinstance(exc, InvalidMajorVersion)
                else IkeDropReason.UNPARSABLE
            )
            self._drop(reason)
            self._throttle.event(
                reason,
                now,
                logging.DEBUG,
                f"dropped %s datagrams ({reason}) in the last %.0f s",
                "dropping malformed datagram from %s: %s",
                _fmt(remote),
                exc,
            )
            return
        if header.initiator:
            # Sent by the original initiator: we are the responder, our SPI is SPIr.
            if header.spi_r == bytes(8):
                if header.exchange_type == ExchangeType.INFORMATIONAL and not header.response:
                    self._receive_invalid_spi(data, header, local, remote, now)
                else:
                    self._receive_init_request(data, header, local, remote, now)
                return
            sa = self._by_spi.get(header.spi_r)
        else:
            sa = self._by_spi.get(header.spi_i)
        if self._invalid_ike_spi(data, header, remote, now):
            return
        if sa is None:
            self._unknown_ike_sa(header, local, remote, now)
            return
        sa.receive_message(data, header, local, remote, now)
        self._collect(sa, now)

    def _unknown_ike_sa(
        self, header: IkeHeader, local: Address, remote: Address, now: float
    ) -> None:
        """A message for an IKE SA we do not know; we may have restarted and lost it.

        §2.21.4: a response is never answered. A protected request (§1.5: "an encrypted
        IKE request") from an address a connection accepts gets an unprotected
        INVALID_IKE_SPI, rate-limited, so the peer checks at once whether we still know
        its IKE SA instead of sending into the void until its own liveness check fails.
        """
        if (
            header.response
            or header.exchange_type == ExchangeType.IKE_SA_INIT
            or header.next_payload not in (PayloadType.SK, PayloadType.SKF)
            or not self._match(local, remote)
        ):
            self._drop(IkeDropReason.UNKNOWN_SPI)
            self._throttle.event(
                IkeDropReason.UNKNOWN_SPI,
                now,
                logging.DEBUG,
                "dropped %s datagrams for unknown IKE SPIs in the last %.0f s",
                "no IKE SA for SPIs %s/%s from %s",
                header.spi_i.hex(),
                header.spi_r.hex(),
                _fmt(remote),
            )
            return
        if not self._answer_limit.allow(_ip(remote[0]), now):
            self._answer_limited(remote, now)
            return
        self._drop(IkeDropReason.INVALID_IKE_SPI_SENT)
        self._throttle.event(
            IkeDropReason.INVALID_IKE_SPI_SENT,
            now,
            logging.INFO,
            "told peers %s times in the last %.0f s that we lost their SAs",
            "no IKE SA for SPIs %s/%s from %s: answering INVALID_IKE_SPI (we may have restarted)",
            header.spi_i.hex(),
            header.spi_r.hex(),
            _fmt(remote),
        )
        # A response (§1.5): the same SPIs, Message ID and exchange type, R set and the
        # I flag of the other role, so the requester routes it to its IKE SA.
        answer = Message(
            spi_i=header.spi_i,
            spi_r=header.spi_r,
            exchange_type=header.exchange_type,
            message_id=header.message_id,
            initiator=not header.initiator,
            response=True,
            payloads=(Notify(NotifyType.INVALID_IKE_SPI),),
        )
        self._send_unprotected(answer, local, remote)

    def _answer_limited(self, remote: Address, now: float) -> None:
        self._drop(IkeDropReason.ANSWER_RATE_LIMITED)
        self._throttle.event(
            IkeDropReason.ANSWER_RATE_LIMITED,
            now,
            logging.DEBUG,
            "left %s messages for lost SAs unanswered (rate limit) in the last %.0f s",
            "not answering %s about lost SAs: rate limit reached",
            _fmt(remote),
        )

    def _send_unprotected(self, message: Message, local: Address, remote: Address) -> None:
        """Queue a message outside any IKE SA, to where its cause came from."""
        datagram = Datagram(encode_message(message), local, remote)
        self._datagrams.append((self._events_queued, datagram))

    # --- hints that a peer restarted (§2.21.4) ------------------------------------------

    def _receive_invalid_spi(
        self, data: bytes, header: IkeHeader, local: Address, remote: Address, now: float
    ) -> None:
        """An INFORMATIONAL request with a zero SPIr: the INVALID_SPI hint of §1.5 if it
        names the outbound SPI of a CHILD SA of ours with that address; anything else
        is dropped as before (no IKE_SA_INIT)."""
        spi = _invalid_spi(data, header)
        if spi is not None:
            for sa in self._by_remote_ip.get(_ip(remote[0])):
                if any(child.spi_out == spi for child in sa.children.values()):
                    self._restart_hint(sa, "INVALID_SPI", remote, now)
                    return
        self._receive_init_request(data, header, local, remote, now)

    def _invalid_ike_spi(self, data: bytes, header: IkeHeader, remote: Address, now: float) -> bool:
        """True if an unprotected response is an INVALID_IKE_SPI answer to our
        outstanding request (same SPIs, Message ID and exchange, from the peer's
        address): then taken as a hint that the peer restarted."""
        if not header.response or not _unprotected(header):
            return False
        sa = self._by_spi.get(header.spi_i)
        if sa is None:
            sa = self._by_spi.get(header.spi_r)
        if (
            sa is None
            or (sa.spi_i, sa.spi_r) != (header.spi_i, header.spi_r)
            or _ip(sa.remote[0]) != _ip(remote[0])
        ):
            return False
        out = sa.tm.outstanding
        if (
            out is None
            or out.message_id != header.message_id
            or out.context.exchange_type != header.exchange_type
        ):
            return False
        try:
            payloads = decode_payloads(header.next_payload, data[IKE_HEADER_LEN:])
        except IkeError:
            return False
        if not any(
            isinstance(p, Notify) and p.notify_type == NotifyType.INVALID_IKE_SPI for p in payloads
        ):
            return False
        self._restart_hint(sa, "INVALID_IKE_SPI", remote, now)
        return True

    def _restart_hint(self, sa: IkeSa, kind: str, remote: Address, now: float) -> None:
        """An unprotected notify suggests that the peer of `sa` lost its state.

        Anyone can forge one (§2.21.4), so it deletes nothing and is never answered: it
        only makes the IKE SA check its peer's liveness at once, on a short schedule,
        and at most once per `HINT_INTERVAL`.
        """
        last = self._hinted.get(sa.ike_sa_id)
        if last is not None and now - last < HINT_INTERVAL:
            self._drop(IkeDropReason.HINT_RATE_LIMITED)
            return
        self._hinted[sa.ike_sa_id] = now
        self._drop(IkeDropReason.RESTART_HINT)
        if not sa.check_liveness_soon(now):
            return
        self._throttle.event(
            IkeDropReason.RESTART_HINT,
            now,
            logging.INFO,
            "checked the liveness of peers after %s unprotected INVALID_SPI/INVALID_IKE_SPI"
            " in the last %.0f s",
            "peer %s: unprotected %s from %s suggests it restarted; checking liveness",
            sa.config.name,
            kind,
            _fmt(remote),
        )
        self._collect(sa, now)

    def _receive_init_request(
        self, data: bytes, header: IkeHeader, local: Address, remote: Address, now: float
    ) -> None:
        spi_i, exchange_type = header.spi_i, header.exchange_type
        if exchange_type != ExchangeType.IKE_SA_INIT:
            self._drop(IkeDropReason.UNEXPECTED_EXCHANGE)
            self._throttle.event(
                IkeDropReason.UNEXPECTED_EXCHANGE,
                now,
                logging.DEBUG,
                "dropped %s non-IKE_SA_INIT requests with zero SPIr in the last %.0f s",
                "dropping %d from %s with zero SPIr",
                exchange_type,
                _fmt(remote),
            )
            return
        existing = self._half_open.get((spi_i, remote))
        if existing is not None:
            existing.receive_message(data, header, local, remote, now)
            self._collect(existing, now)
            return
        candidates = self._match(local, remote)
        if not candidates:
            self._drop(IkeDropReason.NO_CONNECTION)
            self._throttle.event(
                IkeDropReason.NO_CONNECTION,
                now,
                logging.INFO,
                "ignored %s IKE_SA_INIT requests matching no configured connection"
                " in the last %.0f s",
                "IKE_SA_INIT from %s to %s matches no configured connection; ignored",
                _fmt(remote),
                _fmt(local),
            )
            return
        half_open = len(self._half_open_ids)
        if half_open >= self.config.max_half_open:
            self._drop(IkeDropReason.HALF_OPEN_CAP)
            self._throttle.event(
                IkeDropReason.HALF_OPEN_CAP,
                now,
                logging.WARNING,
                "too many half-open IKE SAs: dropped %s IKE_SA_INIT requests in the last %.0f s",
                "too many half-open IKE SAs (%d); dropping IKE_SA_INIT",
                half_open,
            )
            return
        if self.config.cookies.required(half_open) and self._demand_cookie(
            data, local, remote, half_open, now
        ):
            return
        sa = IkeSa(
            self._sa_context,
            candidates[0],
            initiator=False,
            local=local,
            remote=remote,
            now=now,
            candidates=tuple(candidates),
        )
        self._add(sa)
        self._half_open[(spi_i, remote)] = sa
        self._half_open_key[sa.ike_sa_id] = (spi_i, remote)
        sa.receive_message(data, header, local, remote, now)
        self._collect(sa, now)

    def _demand_cookie(
        self, data: bytes, local: Address, remote: Address, half_open: int, now: float
    ) -> bool:
        """True if the request was answered with a COOKIE (or dropped) instead of an SA."""
        if self._cookie_jar is None:
            self._cookie_jar = CookieJar(self.config.cookies, self._rng, now)
        try:
            demand = self._cookie_jar.check_request(decode_message(data), remote[0], half_open, now)
        except IkeError as exc:
            # Garbage (undecodable, or no Nonce to bind a COOKIE to): no answer.
            self._drop(IkeDropReason.UNPARSABLE)
            self._throttle.event(
                IkeDropReason.UNPARSABLE,
                now,
                logging.DEBUG,
                "dropped %s unparsable datagrams in the last %.0f s",
                "dropping IKE_SA_INIT from %s: %s",
                _fmt(remote),
                exc,
            )
            return True
        if demand is None:
            return False
        # §2.6: stateless, so nothing is kept; a genuine initiator comes back with it.
        self._drop(IkeDropReason.COOKIE_DEMANDED)
        self._throttle.event(
            IkeDropReason.COOKIE_DEMANDED,
            now,
            logging.INFO,
            "demanded COOKIEs from %s IKE_SA_INIT requests in the last %.0f s",
            "%d IKE SAs half open: asking %s for a COOKIE",
            half_open,
            _fmt(remote),
        )
        self._send_unprotected(demand, local, remote)
        return True

    def _match(self, local: Address, remote: Address) -> list[ConnectionConfig]:
        """Connections that accept an IKE_SA_INIT from `remote` on `local`, best first.

        One with the exact peer address comes before a %any one; the identities in
        IKE_AUTH may still pick another of these candidates.
        """
        local_ip = _ip(local[0])
        remote_ip = _ip(remote[0])
        return [
            conn
            for conn in self._by_remote_address.get(remote_ip, []) + self._wildcards
            if any(_ip(a) == local_ip for a in conn.local_addresses)
        ]

    # --- output and time ----------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Every datagram due now: (bare IKE message, local address, remote address)."""
        self._now = now
        self._collect_dirty(now)
        if not self._datagrams:
            return []
        ready = [d for need, d in self._datagrams if need <= self._events_taken]
        self._datagrams = [(n, d) for n, d in self._datagrams if n > self._events_taken]
        return ready

    def next_event(self) -> Event | None:
        """The next event of any IKE SA, oldest first, or None."""
        self._collect_dirty(self._now)
        if not self._events:
            return None
        self._events_taken += 1
        return self._events.popleft()

    def events(self) -> Iterator[Event]:
        """Every pending event, oldest first."""
        while (event := self.next_event()) is not None:
            yield event

    def get_timer(self) -> float | None:
        """The earliest time `handle_timer` must run, or None."""
        self._collect_dirty(self._now)
        timers, current = self._timers, self._timer_at
        while timers and current.get(timers[0][1]) != timers[0][0]:
            heapq.heappop(timers)  # stale: that SA's timer moved or it is gone
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        """Run the due timers of the IKE SAs (retransmissions, lifetimes, keepalives)."""
        self._now = now
        self._collect_dirty(now)
        timers, current = self._timers, self._timer_at
        due: list[IkeSa] = []
        while timers and timers[0][0] <= now:
            when, ike_sa_id = heapq.heappop(timers)
            if current.get(ike_sa_id) != when:
                continue
            del current[ike_sa_id]
            sa = self._sas.get(ike_sa_id)
            if sa is not None:
                due.append(sa)
        # Each due SA runs once per call, like a pass over all of them would; a timer
        # it sets at or before `now` is due on the next call.
        for sa in due:
            sa.handle_timer(now)
            self._collect(sa, now)

    # --- bookkeeping ----------------------------------------------------------------------

    def _add(self, sa: IkeSa) -> None:
        self._sas[sa.ike_sa_id] = sa
        if sa.spi_local != bytes(8):
            self._by_spi[sa.spi_local] = sa
        sa.on_change = self._mark_dirty
        sa.on_drop = self._drop
        self._dirty[sa.ike_sa_id] = sa

    def _mark_dirty(self, sa: IkeSa) -> None:
        self._dirty[sa.ike_sa_id] = sa

    def _owner_of(self, unique_id: int) -> IkeSa | None:
        """The IKE SA holding CHILD SA `unique_id` now, or None."""
        self._collect_dirty(self._now)
        sa = self._child_owner.get(unique_id)
        if sa is not None and unique_id in sa.children:
            return sa
        # Not where it was last seen: every move calls on_change, so this is only a
        # backstop against a stale entry.
        for sa in self._sas.values():
            if unique_id in sa.children:
                self._child_owner[unique_id] = sa
                return sa
        return None

    def _collect_dirty(self, now: float) -> None:
        """Collect every SA that reported a change, oldest report first."""
        while self._dirty:
            ike_sa_id = next(iter(self._dirty))
            self._collect(self._dirty[ike_sa_id], now)

    def _collect_events(self, sa: IkeSa) -> None:
        spis_in = self._sa_context.spis_in
        while (event := sa.next_event()) is not None:
            self._events.append(event)
            self._events_queued += 1
            if isinstance(event, ChildSaInstalled):
                spis_in.add(event.spi_in)
            elif isinstance(event, ChildSaDeleted):
                spis_in.discard(event.spi_in)

    def _collect(self, sa: IkeSa, now: float) -> None:
        """Take an SA's events, then its datagrams; refresh its timer and indexes;
        forget the SA once it is gone."""
        self._dirty.pop(sa.ike_sa_id, None)
        self.sas_visited += 1
        if sa.initial_contact and sa.state is IkeSaState.ESTABLISHED:
            sa.initial_contact = False
            self._by_peer_id.put(sa, _contact_key(sa))
            self._drop_stale(sa, now)
        self._collect_events(sa)
        # §2.18: a new IKE SA from a rekey answers to its own SPI from now on (after
        # crossing rekeys, §2.8.2, two do until one of them is deleted again).
        spawned = [s for s in sa.spawned if s.ike_sa_id not in self._sas]
        sa.spawned.clear()
        for new in spawned:
            self._add(new)
        # An SA queues an event before the datagram it must precede, so every datagram
        # taken now waits for all events taken so far.
        out = sa.datagrams_to_send(now)
        if out:
            queued = self._events_queued
            self._datagrams.extend((queued, d) for d in out)
        self._refresh(sa)
        for new in spawned:
            self._collect(new, now)
        # The partner of a rekey may have changed through this SA: catch it now too.
        for other in (sa.rekeyed_into, sa.rekeyed_from):
            if other is not None and other.ike_sa_id in self._dirty:
                self._collect(other, now)

    def _refresh(self, sa: IkeSa) -> None:
        """Bring the indexes and the timer heap up to date with one SA."""
        ike_sa_id = sa.ike_sa_id
        if sa.state is not IkeSaState.HALF_OPEN:
            self._half_open_ids.discard(ike_sa_id)
            key = self._half_open_key.pop(ike_sa_id, None)
            if key is not None and self._half_open.get(key) is sa:
                del self._half_open[key]
        else:
            self._half_open_ids.add(ike_sa_id)
        if sa.state is IkeSaState.DELETED:
            if sa.udp_unanswered and self._sas.get(ike_sa_id) is sa:
                self._udp_unanswered.add(sa.config.name)
                log.warning(
                    "%s: no answer on UDP port %d: IKE SAs to this peer stay on port %d"
                    " with raw ESP until the configuration is reloaded",
                    sa.config.name,
                    sa.nat_port,
                    sa.config.ike_port,
                )
            self._sas.pop(ike_sa_id, None)
            if self._by_spi.get(sa.spi_local) is sa:
                del self._by_spi[sa.spi_local]
            self._timer_at.pop(ike_sa_id, None)
            self._by_connection.remove(sa)
            self._by_peer.remove(sa)
            self._by_peer_id.remove(sa)
            self._by_remote_ip.remove(sa)
            self._hinted.pop(ike_sa_id, None)
            for unique_id in sa.children:
                if self._child_owner.get(unique_id) is sa:
                    del self._child_owner[unique_id]
            return
        if sa.spi_local != bytes(8) and sa.spi_local not in self._by_spi:
            self._by_spi[sa.spi_local] = sa
        self._by_connection.put(sa, sa.config.name)
        self._by_peer.put(sa, _peer_key(sa))
        self._by_remote_ip.put(sa, _ip(sa.remote[0]))
        if sa.peer_id is not None:
            self._by_peer_id.put(sa, _contact_key(sa))
        for unique_id in sa.children:
            self._child_owner[unique_id] = sa
        timer = sa.get_timer()
        if timer is None:
            self._timer_at.pop(ike_sa_id, None)
        elif self._timer_at.get(ike_sa_id) != timer:
            self._timer_at[ike_sa_id] = timer
            heapq.heappush(self._timers, (timer, ike_sa_id))
            if len(self._timers) > 64 + 4 * len(self._timer_at):
                # Many stale entries (timers that kept moving): rebuild from the truth.
                self._timers = [(t, i) for i, t in self._timer_at.items()]
                heapq.heapify(self._timers)

    def _drop_stale(self, sa: IkeSa, now: float) -> None:
        """Remove the older IKE SAs of a peer that sent INITIAL_CONTACT (RFC 7296 §2.4).

        The peer restarted and lost them, so no Delete is sent; their removal is
        reported before the new SA's events, so the daemon tears the old CHILD SAs down
        before it installs the new ones for the same selectors.
        """
        for other in self._by_peer_id.get(_contact_key(sa)):
            if other is not sa and other.state in (IkeSaState.ESTABLISHED, IkeSaState.DELETING):
                other.gone("replaced: the peer restarted (INITIAL_CONTACT)", by_peer=True)
                self._collect(other, now)


def _contact_key(sa: IkeSa) -> ContactKey:
    """Whose older IKE SAs a peer's INITIAL_CONTACT replaces (§2.4): the connection's
    with the identity it proved; for a remote-access client, that user's at the same
    address only (Windows proves its private IP address, which clients in other homes
    share, and one user may have several devices). The address is where the IKE SA is
    now: a phone that moved with MOBIKE (RFC 4555) and reconnects from its new address
    replaces the SA that followed it there."""
    if sa.config.remote_access is not None:
        return (sa.config.name, None, f"{sa.eap_identity or sa.peer_id}@{sa.remote[0]}")
    return (sa.config.name, sa.peer_id, "")


def _peer_key(sa: IkeSa) -> PeerKey:
    """Our identity and the address the peer first spoke from."""
    return (sa.config.local_id, sa.init_remote[0])


def _unprotected(header: IkeHeader) -> bool:
    """A message outside IKE_SA_INIT whose payloads are not in an SK or SKF payload."""
    return header.exchange_type != ExchangeType.IKE_SA_INIT and header.next_payload not in (
        PayloadType.SK,
        PayloadType.SKF,
    )


def _invalid_spi(data: bytes, header: IkeHeader) -> int | None:
    """The ESP SPI of an unprotected N(INVALID_SPI), or None.

    §1.5 puts it in the Notification Data; some put it in the SPI field (with the
    Protocol ID), which §3.10 describes for notifies about an SA: both are read.
    """
    if not _unprotected(header):
        return None
    try:
        payloads = decode_payloads(header.next_payload, data[IKE_HEADER_LEN:])
    except IkeError:
        return None
    for p in payloads:
        if isinstance(p, Notify) and p.notify_type == NotifyType.INVALID_SPI:
            raw = p.data if len(p.data) == 4 else p.spi
            if len(raw) == 4:
                return int.from_bytes(raw, "big")
    return None


def _fmt(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = [
    "HINT_INTERVAL",
    "IKE_HEADER_LEN",
    "UNPROTECTED_ADDRESS_INTERVAL",
    "UNPROTECTED_PER_SECOND",
    "AnswerLimit",
    "Datagram",
    "Endpoint",
    "EndpointConfig",
    "IkeDropReason",
    "ThrottledLog",
]
