"""The data plane: moves packets between the TUN device and the peer gateways.

The stages, as in wireguard-go's ``device/send.go`` and ``receive.go``:

Outbound: TUN read → SPD lookup (most specific policy) → size check (ICMP "too big"
or inner fragmentation) → ESP encapsulate (one cipher object per SA) → send, one
batch per SA (ESP-in-UDP on 4500, or raw IP protocol 50).

Inbound: UDP 4500 datagram → classify (IKE behind the non-ESP marker goes to the IKE
endpoint, 0xFF keepalives are counted, the rest is ESP) → SAD lookup by SPI → replay
check, decrypt, commit (inside `EspSA.decapsulate`) → selector check → TUN write.

Between two lockgates that agreed on it in IKE_SA_INIT (`ChildSaEntry.partial_csum`),
the segments of a TSO super-packet (and single TCP segments the kernel left
unchecksummed) travel with the partial checksum the sending kernel left in them,
marked inside ESP (`esp.sa.NH_PARTIAL_CSUM`, under the ICV); the receiver hands them
to its TUN with F_NEEDS_CSUM, and its kernel completes them. The choice is made per
SA after the lookup: segments for any other SA get their checksums here. Only TCP
the kernel handed over with F_NEEDS_CSUM is ever marked
(`tun.vnet.split_frame_partial`).

This module does no I/O itself: a `Transport` sends and writes, and the caller feeds
batches of what it read. So the same code runs over real sockets (`daemon.pump`) and
in memory in the tests. Nothing from the network raises here: every refusal is a
counted drop reason.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from daemon.childsa import ChildSaEntry
from daemon.packet import flow_of, fragment_ipv4, may_fragment, too_big_reply
from daemon.sad import Sad
from daemon.spd import Spd
from esp.drops import DropReason
from esp.sa import NH_PARTIAL_CSUM, PARTS_PER_PACKET
from esp.udpencap import MIN_ESP_LEN, NON_ESP_MARKER, DatagramKind, classify, strip_marker
from ikev2.events import Address
from tun.vnet import completed_tcp

log = logging.getLogger(__name__)

_FLOW_CACHE_MAX = 4096
"""Most flows remembered per cache before it starts over."""
_PORT_PROTOCOLS = frozenset({6, 17})


class _EntryIndex:
    """Installed CHILD SAs grouped by one key (connection, peer or IKE SA), in the
    order they were added. A key with one SA (most of them: one CHILD SA per IKE SA,
    often one per connection) holds the entry itself rather than a one-entry dict,
    some 230 octets less per SA; a key with none is absent."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[Any, ChildSaEntry | dict[int, ChildSaEntry]] = {}

    def add(self, key: object, entry: ChildSaEntry) -> None:
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = entry
        elif isinstance(group, dict):
            group[entry.unique_id] = entry
        else:
            self._groups[key] = {group.unique_id: group, entry.unique_id: entry}

    def discard(self, key: object, entry: ChildSaEntry) -> None:
        group = self._groups.get(key)
        if group is entry:
            del self._groups[key]
        elif isinstance(group, dict):
            group.pop(entry.unique_id, None)
            if len(group) == 1:
                (self._groups[key],) = group.values()
            elif not group:
                del self._groups[key]

    def get(self, key: object) -> list[ChildSaEntry]:
        group = self._groups.get(key)
        if group is None:
            return []
        return list(group.values()) if isinstance(group, dict) else [group]

    def pop(self, key: object) -> list[ChildSaEntry]:
        found = self.get(key)
        self._groups.pop(key, None)
        return found

    def __contains__(self, key: object) -> bool:
        return key in self._groups


def flow_key(packet: bytes) -> bytes | None:
    """The octets that decide a TCP or UDP packet's policy (protocol, addresses,
    ports), for packets whose `flow_of` reads exactly those; None for the rest
    (fragments, IPv4 options, IPv6 extension headers, other protocols, short ones).

    Segments of one connection share the key, so the SPD is searched once per
    connection instead of once per packet.
    """
    first = packet[0]
    if first == 0x45:
        if (
            len(packet) >= 24
            and packet[9] in _PORT_PROTOCOLS
            and not (packet[6] & 0x3F or packet[7])
        ):
            return packet[9:10] + packet[12:24]
    elif first >> 4 == 6 and len(packet) >= 44 and packet[6] in _PORT_PROTOCOLS:
        return packet[6:7] + packet[8:44]
    return None


FlowRun = tuple[bytes, int, int, int, int]
"""What a packet of the same flow as one with a `flow_key` repeats: (addresses and
ports, their offset, the first octet, the protocol's offset, the protocol). Another
packet has that key exactly when it starts with the same first octet, has the
addresses and ports at the offset and the protocol, and (IPv4) is no fragment;
for IPv6 the first octet also holds half the traffic class, so a change there
only costs a key lookup."""

_NO_RUN: FlowRun = (b"\x00", 0, -1, 0, -1)
"""Matches no packet (no first octet is -1)."""


def _selects_everything(entry: ChildSaEntry) -> bool:
    """Whether a CHILD SA's selectors let every IPv4 and IPv6 packet through on both
    sides (a route-mode connection's 0.0.0.0/0 and ::/0): its TUN's packets then need
    no per-packet check."""
    return all(
        any(ts.version == version and ts.covers_everything() for ts in side)
        for side in (entry.local_ts, entry.remote_ts)
        for version in (4, 6)
    )


def _flow_run(packet: bytes) -> FlowRun:
    """The `FlowRun` of a packet whose `flow_key` is not None."""
    if packet[0] == 0x45:
        return packet[12:24], 12, 0x45, 9, packet[9]
    return packet[8:44], 8, packet[0], 6, packet[6]


class Drop(enum.Enum):
    """Why the data plane (rather than the ESP engine) refused a packet."""

    MALFORMED = "malformed"
    """A packet from the TUN device that is not a readable IPv4/IPv6 packet."""
    NO_POLICY = "no_policy"
    """Outbound: no CHILD SA's selectors cover the packet."""
    TOO_BIG = "too_big"
    """Outbound: larger than the tunnel MTU with DF set; ICMP too-big was sent back."""
    POLICY_MISMATCH = "policy_mismatch"
    """Inbound: the decrypted packet is outside the SA's selectors (RFC 4301 §5.2)."""
    INVALID_DATAGRAM = "invalid_datagram"
    """Inbound: a port-4500 datagram that is neither IKE, ESP nor a keepalive."""
    SEND_FAILED = "send_failed"
    """Outbound: the socket refused the packet (buffer full, no route)."""
    TUN_WRITE_FAILED = "tun_write_failed"
    """Inbound: the TUN device refused the packet."""
    HANDOFF_FAILED = "handoff_failed"
    """Outbound, with data-plane workers: a packet for a CHILD SA another worker holds
    could not be handed to it (its socket full, or the packet came from a hand-off
    itself and would go round)."""


class Transport(Protocol):
    """Where the data plane's output goes."""

    def send(self, entry: ChildSaEntry, parts: list[bytes]) -> int:
        """Send ESP packets of one SA to its peer, framed as the SA says (UDP or raw);
        return how many packets left. ``parts`` holds each packet (SPI through ICV)
        as `PARTS_PER_PACKET` octet strings, as `EspSA.encapsulate_parts` gives
        them, so a gathering send never copies the ciphertext."""

    def send_keepalive(self, local: Address, remote: Address) -> bool:
        """Send a one-octet NAT keepalive from our port 4500 (RFC 3948 §2.3)."""

    def write_tun(
        self, packets: list[bytes], interface: str | None = None, partial: Sequence[int] = ()
    ) -> int:
        """Write plaintext IP packets to the gateway's TUN device, or to the route-mode
        TUN named `interface`; return how many were taken. `partial` lists the
        indexes of TCP segments whose checksum field holds only the pseudo-header
        sum: the writer has them completed (F_NEEDS_CSUM, or computed)."""


ICMP_ERRORS_PER_SECOND = 100
"""Most ICMP "too big" errors sent per second (RFC 1812 §4.3.2.8 asks routers to
limit the rate of ICMP errors they originate)."""

IkeHandler = Callable[[bytes, Address, Address], None]
"""Receives an IKE message that arrived on port 4500: (message, local, remote)."""
AcquireHandler = Callable[[bytes], None]
"""Told about an outbound packet no policy covers (for start = "trap")."""
Handoff = Callable[[int, list[bytes], bool], int]
"""Hands plaintext packets to the data-plane worker that holds their CHILD SA: (its
index, the packets, whether they are TCP segments with partial checksums); returns
how many it took."""
UnknownSpiHandler = Callable[[int, Address, Address], None]
"""Told about an ESP packet of an SPI no SA has: (SPI, local, remote), the UDP
addresses and ports for ESP in UDP, the IKE port (500) on both sides for raw ESP."""
EspOrigin = Callable[[bytes], tuple[Address, Address] | None]
"""Where an ESP packet of a batch came from, (local, remote) as `UnknownSpiHandler`
takes them: asked only for packets of an unknown SPI, so a reader can keep what it
needs to answer (the datagrams, the raw frames) without a cost per known packet."""

UNKNOWN_SPI_REPORT_INTERVAL = 0.1
"""Seconds between two reports of an unknown SPI from one remote address: the IKE
endpoint answers at most one a second to an address anyway (`ikev2.endpoint.
AnswerLimit`), so a flood of unknown SPIs costs a dictionary lookup per packet here."""
_UNKNOWN_SPI_REMOTES_MAX = 1024
"""Most remote addresses remembered for that interval before the stale are pruned."""


class _DatagramOrigin:
    """The `EspOrigin` of a batch of UDP datagrams: which one a packet is, found by
    identity, the table built on the first question only."""

    __slots__ = ("_by_id", "_datagrams")

    def __init__(self, datagrams: Sequence[tuple[bytes, Address, Address]]) -> None:
        self._datagrams = datagrams
        self._by_id: dict[int, tuple[Address, Address]] | None = None

    def __call__(self, packet: bytes) -> tuple[Address, Address] | None:
        if self._by_id is None:
            self._by_id = {id(data): (local, remote) for data, local, remote in self._datagrams}
        return self._by_id.get(id(packet))


class DataPlane:
    """SPD, SAD and the two packet paths between them."""

    def __init__(
        self,
        transport: Transport,
        *,
        on_ike: IkeHandler | None = None,
        on_acquire: AcquireHandler | None = None,
        on_unknown_spi: UnknownSpiHandler | None = None,
        icmp_source_v4: bytes | None = None,
        icmp_source_v6: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        """Output of both paths."""
        self.on_ike = on_ike
        """Receiver of IKE messages found on port 4500."""
        self.on_acquire = on_acquire
        """Receiver of outbound packets without a policy."""
        self.on_unknown_spi = on_unknown_spi
        """Told about inbound ESP of an unknown SPI (the IKE endpoint may answer with
        INVALID_SPI, RFC 7296 §2.21.4), at most once per
        `UNKNOWN_SPI_REPORT_INTERVAL` per remote address."""
        self.icmp_source = {4: icmp_source_v4, 6: icmp_source_v6}
        """Source address of the ICMP errors we send, per IP version (None: the
        original destination)."""
        self.spd: Spd[ChildSaEntry] = Spd()
        """Outbound policies."""
        self.sad: Sad[ChildSaEntry] = Sad()
        """Inbound SAs by SPI."""
        self.entries: dict[int, ChildSaEntry] = {}
        """Installed CHILD SAs by unique id (change it only through `install`,
        `remove` and `move_to_ike_sa`, which keep the indexes below in step)."""
        # The same entries grouped three ways, so the gateway's questions ("is this
        # connection up?", "which SAs ride this IKE SA?") cost O(1) plus what they
        # return, not a scan of every CHILD SA (thousands of peers call them per SA).
        self._by_connection = _EntryIndex()
        self._by_peer = _EntryIndex()
        self._by_ike_sa = _EntryIndex()
        self.drops: Counter[str] = Counter()
        """Drops not attributable to an installed SA, plus those of removed SAs."""
        self.counters: Counter[str] = Counter()
        """Other events worth showing: keepalives and IKE messages seen on 4500."""
        self.retired_traffic: dict[str, list[int]] = {}
        """Per connection, what its removed CHILD SAs carried: bytes in, bytes out,
        packets in, packets out (`connection_traffic` adds the present ones)."""
        self.kernel_drops: Callable[[], dict[str, int]] | None = None
        """Packets the kernel dropped before the transport could read them, by
        reason (the pump's `Pump.kernel_drops`); shown in `status`."""
        self._clock = clock
        # Flow key -> SA for outbound packets, cleared whenever the SPD changes.
        self._outbound_cache: dict[bytes, ChildSaEntry] = {}
        # Per SA: flow key -> whether its inbound selectors cover it.
        self._inbound_cache: dict[ChildSaEntry, dict[bytes, bool]] = {}
        self._lingering: dict[int, tuple[ChildSaEntry, float]] = {}
        # Route mode: the CHILD SA each route-mode TUN sends into (no SPD: whatever
        # the TUN's routes bring is the connection's traffic), and whether its
        # selectors let everything through without a per-packet check.
        self._route_out: dict[str, ChildSaEntry] = {}
        self._route_any: dict[str, bool] = {}
        self._icmp_second = 0
        self._icmp_sent = 0
        self._unknown_spi_reported: dict[str, float] = {}
        """When an unknown SPI from each remote address was last reported."""
        self.on_tso: Callable[[str | None, bool], None] | None = None
        """Told when TSO on a TUN (None: the gateway's, else a route-mode one's name)
        becomes worth having or stops being: whether every CHILD SA sending from it
        takes partial checksums (`tso_wanted`)."""
        self.forwards: dict[int, ChildSaEntry] = {}
        """With data-plane workers: the CHILD SAs other workers hold, by unique id,
        whose traffic this one's TUN queue may still read (`install_forward`)."""
        self.handoff: Handoff | None = None
        """Where packets for a forward entry go (the worker's hand-off sockets)."""
        self._handing_back = False
        self._senders: Counter[str | None] = Counter()
        self._held: dict[ChildSaEntry, list[bytes]] | None = None
        self._partial_senders: Counter[str | None] = Counter()

    # ---- SA management -------------------------------------------------------------

    def install(self, entry: ChildSaEntry, *, preferred: bool = False) -> None:
        """Make a CHILD SA live: its inbound SPI in the SAD, its policy in the SPD.

        The inbound SA goes first, so the peer's first packets are accepted even
        if our policy is not yet used (RFC 7296 §2.8 make-before-break). An SA
        beside an equally specific one (a rekey) takes outbound traffic only when
        ``preferred``; else the older one keeps it until it is removed. Raises
        ``SpiInUse`` if the inbound SPI is taken.
        """
        self.sad.add(entry.spi_in, entry)
        interface = entry.interface
        if interface is None:
            self.spd.add(entry.policy, preferred=preferred)
            self._outbound_cache.clear()
        elif preferred or interface not in self._route_out:
            self._route_out[interface] = entry
            self._route_any[interface] = _selects_everything(entry)
        self.entries[entry.unique_id] = entry
        self._count_sender(entry, 1)
        self._by_connection.add(entry.connection, entry)
        self._by_peer.add(entry.peer, entry)
        self._by_ike_sa.add(entry.ike_sa_id, entry)
        log.debug(
            "data plane: installed CHILD SA %s #%d (in %08x, out %08x, mtu %d%s)",
            entry.connection,
            entry.unique_id,
            entry.spi_in,
            entry.spi_out,
            entry.mtu,
            ", sends at once" if preferred else "",
        )

    def install_forward(self, entry: ChildSaEntry, *, preferred: bool = False) -> None:
        """Select outbound packets for a CHILD SA that the worker `entry.forward_to`
        holds (`childsa.forward_entry`): they are handed to it as plaintext, and it
        seals them. Its policy ranks behind any SA of this process with the same
        selectors (`Spd.add`'s `fallback`), so a worker's own SA always wins; its SPI
        stays out of the SAD (the kernel steers its ESP to the owner). Among forward
        entries, `preferred` acts as in `install`."""
        if entry.forward_to is None or entry.interface is not None:
            raise ValueError("a forward entry names its owner and uses the gateway's TUN")
        self.spd.add(entry.policy, preferred=preferred, fallback=True)
        self._outbound_cache.clear()
        self.forwards[entry.unique_id] = entry

    def remove(self, unique_id: int, *, linger: float = 0.0) -> ChildSaEntry | None:
        """Take a CHILD SA out of the data plane; its drop counts move to the totals.

        Its policy goes at once, so nothing more is sent on it. With ``linger`` its
        inbound SA stays in the SAD that many seconds more: the Delete that ends an
        SA travels on the IKE socket and the SA's last ESP packets on another, and
        the daemon may read the Delete first although it was sent last.
        `expire_lingering` removes it for good. A forward entry just goes.
        """
        entry = self.entries.pop(unique_id, None)
        if entry is None:
            forward = self.forwards.pop(unique_id, None)
            if forward is not None:
                self.spd.remove(forward.policy)
                self._outbound_cache.clear()
            return forward
        self._count_sender(entry, -1)
        self._by_connection.discard(entry.connection, entry)
        self._by_peer.discard(entry.peer, entry)
        self._by_ike_sa.discard(entry.ike_sa_id, entry)
        interface = entry.interface
        if interface is None:
            self.spd.remove(entry.policy)
            self._outbound_cache.clear()
        elif self._route_out.get(interface) is entry:
            # The newest other SA of the connection on that TUN sends from now on.
            others = [
                e for e in self._by_connection.get(entry.connection) if e.interface == interface
            ]
            if others:
                self._route_out[interface] = others[-1]
                self._route_any[interface] = _selects_everything(others[-1])
            else:
                del self._route_out[interface]
                self._route_any.pop(interface, None)
        if linger > 0:
            self._lingering[unique_id] = (entry, self._clock() + linger)
        else:
            self._forget(entry)
        return entry

    def tso_wanted(self, interface: str | None) -> bool:
        """Whether TSO on that TUN pays: it sends into at least one CHILD SA, and
        every one of them takes partial checksums (else a peer without them would
        have its super-packets' checksums computed here, slower than the kernel's
        own cutting)."""
        total = self._senders[interface]
        return total > 0 and self._partial_senders[interface] == total

    def _count_sender(self, entry: ChildSaEntry, step: int) -> None:
        interface = entry.interface
        before = self.tso_wanted(interface)
        self._senders[interface] += step
        if entry.partial_csum:
            self._partial_senders[interface] += step
        after = self.tso_wanted(interface)
        if after != before and self.on_tso is not None:
            self.on_tso(interface, after)

    def expire_lingering(self) -> int:
        """Drop the inbound SAs of removed CHILD SAs whose grace time is over."""
        now = self._clock()
        done = [uid for uid, (_, until) in self._lingering.items() if until <= now]
        for uid in done:
            entry, _ = self._lingering.pop(uid)
            self._forget(entry)
        return len(done)

    def lingering(self) -> list[ChildSaEntry]:
        """Removed CHILD SAs whose inbound SA still opens packets (`remove`'s linger)."""
        return [entry for entry, _ in self._lingering.values()]

    def _forget(self, entry: ChildSaEntry) -> None:
        self.sad.remove(entry.spi_in)
        self._inbound_cache.pop(entry, None)
        self.drops.update(entry.all_drops())
        total = self.retired_traffic.setdefault(entry.connection, [0, 0, 0, 0])
        for i, count in enumerate(_traffic(entry)):
            total[i] += count

    def connection_traffic(self) -> dict[str, list[int]]:
        """Per connection, everything its CHILD SAs carried so far, present and
        past: [bytes in, bytes out, packets in, packets out]. Read from the ESP SAs'
        own counters when asked, so the data plane keeps nothing more per packet."""
        totals = {name: list(counts) for name, counts in self.retired_traffic.items()}
        present = [*self.entries.values(), *(entry for entry, _ in self._lingering.values())]
        for entry in present:
            total = totals.setdefault(entry.connection, [0, 0, 0, 0])
            for i, count in enumerate(_traffic(entry)):
                total[i] += count
        return totals

    def remove_peer(self, peer: str) -> list[ChildSaEntry]:
        """Remove every CHILD SA negotiated with one `[peers.NAME]`."""
        gone = self.entries_of_peer(peer)
        for entry in gone:
            self.remove(entry.unique_id)
        return gone

    def entries_of_connection(self, connection: str) -> list[ChildSaEntry]:
        """Installed CHILD SAs of one `[connections.NAME]` (`ChildSaEntry.connection`),
        in the order they were installed."""
        return self._by_connection.get(connection)

    def has_connection(self, connection: str) -> bool:
        """Whether any CHILD SA of `[connections.NAME]` is installed."""
        return connection in self._by_connection

    def entries_of_peer(self, peer: str) -> list[ChildSaEntry]:
        """Installed CHILD SAs negotiated with one `[peers.NAME]`."""
        return self._by_peer.get(peer)

    def entries_of_ike_sa(self, ike_sa_id: int) -> list[ChildSaEntry]:
        """Installed CHILD SAs that answer to one IKE SA."""
        return self._by_ike_sa.get(ike_sa_id)

    def move_to_ike_sa(self, old: int, new: int) -> list[ChildSaEntry]:
        """The CHILD SAs of IKE SA `old` now answer to `new` (an IKE rekey moved them,
        RFC 7296 §2.18); returns them."""
        moved = self._by_ike_sa.pop(old)
        for entry in moved:
            entry.ike_sa_id = new
            self._by_ike_sa.add(new, entry)
        return moved

    # ---- outbound ------------------------------------------------------------------

    def from_tun(self, packets: Iterable[bytes], partial: bool = False) -> None:
        """Process a batch of packets read from the TUN device.

        Packets are grouped per SA and each group is sealed with one
        `encapsulate_batch` call and handed to the transport as one batch.
        With `partial` they are TCP segments whose checksum field holds only the
        pseudo-header sum (`tun.vnet.split_frame_partial`): a group for an SA whose
        peer agreed leaves so, marked; any other gets its checksums computed first.
        """
        batches: dict[ChildSaEntry, list[bytes]] = {}
        replies: list[bytes] = []
        # With `partial`: what an oversized segment became (fragments), unmarked.
        spill: dict[ChildSaEntry, list[bytes]] | None = {} if partial else None
        lookup = self.spd.lookup_flow
        cache = self._outbound_cache
        # The previous packet's flow (`_flow_run`), SA and batch: the next packet of
        # that flow, the common case, goes to the same batch without a key or a
        # cache lookup.
        run, run_at, lead, proto_at, proto = _NO_RUN
        batch: list[bytes] = []
        mtu = 0
        last: ChildSaEntry | None = None
        for packet in packets:
            if (
                packet.startswith(run, run_at)
                and packet[0] == lead
                and packet[proto_at] == proto
                and not (lead == 0x45 and (packet[6] & 0x3F or packet[7]))
                and last is not None
            ):
                if len(packet) <= mtu:
                    batch.append(packet)
                else:
                    self._too_big(last, packet, batch, spill, replies)
                continue
            key = flow_key(packet) if packet else None
            entry = cache.get(key) if key is not None else None
            if entry is None:
                flow = flow_of(packet)
                if flow is None:
                    self.drops[Drop.MALFORMED.value] += 1
                    continue
                policy = lookup(flow)
                if policy is None:
                    self.drops[Drop.NO_POLICY.value] += 1
                    if self.on_acquire is not None:
                        self.on_acquire(packet)
                    continue
                entry = policy.target
                if key is not None:
                    if len(cache) >= _FLOW_CACHE_MAX:
                        cache.clear()
                    cache[key] = entry
            found = batches.get(entry)
            if found is None:
                found = batches[entry] = []
            batch, mtu, last = found, entry.mtu, entry
            run, run_at, lead, proto_at, proto = _NO_RUN if key is None else _flow_run(packet)
            if len(packet) <= mtu:
                batch.append(packet)
            else:
                self._too_big(entry, packet, batch, spill, replies)
        for entry, inners in batches.items():
            if not inners:
                continue
            if partial and not entry.partial_csum:
                self._seal_and_send(entry, _completed(inners))
            else:
                self._seal_and_send(entry, inners, partial)
        if spill:
            for entry, pieces in spill.items():
                if pieces:
                    self._seal_and_send(entry, pieces)
        if replies:
            self.transport.write_tun(replies)

    def from_tun_segments(self, segments: list[bytes], partial: bool = False) -> None:
        """Process the segments of one TCP super-packet read from the TUN device.

        They share one flow, so the SPD is searched once; each segment still gets
        the size check of `from_tun` (the first is the largest). With `partial`
        their checksum fields hold only the pseudo-header sum: they leave so,
        marked, when the SA's peer agreed on it, else their checksums are
        computed here first.
        """
        if not segments:
            return
        first = segments[0]
        key = flow_key(first)
        entry = self._outbound_cache.get(key) if key is not None else None
        if partial and entry is None and key is not None:
            entry = self._lookup_cached(first, key)
        if entry is None or len(first) > entry.mtu:
            self.from_tun(segments, partial)
            return
        if partial and not entry.partial_csum:
            segments, partial = _completed(segments), False
        self._seal_and_send(entry, segments, partial)

    def _lookup_cached(self, packet: bytes, key: bytes) -> ChildSaEntry | None:
        # The SPD's answer for a flow, cached as `from_tun` caches it; None leaves
        # the counting of a packet without a policy to `from_tun`.
        flow = flow_of(packet)
        policy = self.spd.lookup_flow(flow) if flow is not None else None
        if policy is None:
            return None
        cache = self._outbound_cache
        if len(cache) >= _FLOW_CACHE_MAX:
            cache.clear()
        cache[key] = policy.target
        return policy.target

    def from_route_tun(self, interface: str, packets: list[bytes], partial: bool = False) -> None:
        """Process a batch read from the route-mode TUN `interface`: every packet goes
        into the CHILD SA of its connection, whatever its destination (routing chose
        the TUN); a connection whose selectors are narrower than everything still
        has each packet checked against them (RFC 4301 §5.1). `partial`: TCP
        segments with partial checksums, as `from_tun` takes them."""
        entry = self._route_out.get(interface)
        if entry is None:
            self.drops[Drop.NO_POLICY.value] += len(packets)
            return
        if partial and not entry.partial_csum:
            packets, partial = _completed(packets), False
        if not self._route_any[interface]:
            allowed = entry.policy.allows_outbound
            kept = []
            for packet in packets:
                flow = flow_of(packet) if packet else None
                if flow is None:
                    self.drops[Drop.MALFORMED.value] += 1
                elif allowed(flow):
                    kept.append(packet)
                else:
                    entry.drops[Drop.NO_POLICY.value] += 1
            packets = kept
        mtu = entry.mtu
        batch: list[bytes] = []
        replies: list[bytes] = []
        spill: dict[ChildSaEntry, list[bytes]] | None = {} if partial else None
        for packet in packets:
            if len(packet) <= mtu:
                batch.append(packet)
            else:
                self._too_big(entry, packet, batch, spill, replies)
        if batch:
            self._seal_and_send(entry, batch, partial)
        if spill and spill[entry]:
            self._seal_and_send(entry, spill[entry])
        if replies:
            self.transport.write_tun(replies, interface)

    def route_interfaces(self) -> list[str]:
        """The route-mode TUNs that have a CHILD SA to send into."""
        return list(self._route_out)

    def _seal_and_send(
        self, entry: ChildSaEntry, inners: list[bytes], partial: bool = False
    ) -> None:
        if entry.forward_to is not None:
            self._hand_off(entry.forward_to, inners, partial)
            return
        # A packet the SA refused has no parts; the SA counted it.
        parts = entry.outbound.encapsulate_parts(inners, partial=partial)
        if not parts:
            return
        if partial:
            self.counters["partial_segments_sent"] += len(parts) // PARTS_PER_PACKET
        held = self._held
        if held is not None:
            found = held.get(entry)
            if found is None:
                held[entry] = parts
            else:
                found += parts
            return
        self._send(entry, parts)

    def _hand_off(self, owner: int, inners: list[bytes], partial: bool) -> None:
        # Packets that came from a hand-off go no further: the worker that handed
        # them over found this one the owner, and a second hop could loop.
        handoff = self.handoff
        taken = 0
        if handoff is not None and not self._handing_back:
            taken = handoff(owner, inners, partial)
            self.counters["handed_off"] += taken
        if taken < len(inners):
            self.drops[Drop.HANDOFF_FAILED.value] += len(inners) - taken

    def from_handoff(self, packets: list[bytes], partial: bool = False) -> None:
        """Seal packets another worker's TUN queue read for a CHILD SA this worker
        holds, as `from_tun` would; what this worker now only forwards is dropped."""
        self._handing_back = True
        try:
            self.from_tun(packets, partial)
        finally:
            self._handing_back = False

    def _send(self, entry: ChildSaEntry, parts: list[bytes]) -> None:
        sent = self.transport.send(entry, parts)
        sealed = len(parts) // PARTS_PER_PACKET
        if sent < sealed:
            entry.drops[Drop.SEND_FAILED.value] += sealed - sent

    def hold_sends(self) -> None:
        """Keep what is sealed from now on until `release_sends`, per SA in order: a
        TUN read of many super-packets (each sealed on its own) then leaves in one
        send per SA, which UDP GSO makes few system calls."""
        if self._held is None:
            self._held = {}

    def release_sends(self) -> None:
        """Send what `hold_sends` kept, one batch per SA (sealing order is sequence
        order, so each SA's packets leave in order)."""
        held, self._held = self._held, None
        if held:
            for entry, parts in held.items():
                self._send(entry, parts)

    def _too_big(
        self,
        entry: ChildSaEntry,
        packet: bytes,
        batch: list[bytes],
        spill: dict[ChildSaEntry, list[bytes]] | None,
        replies: list[bytes],
    ) -> None:
        # `_oversized`, for a packet that may carry a partial checksum (`spill` is
        # not None): completed first, since it is fragmented or quoted in an ICMP
        # error, and its fragments go apart from the marked batch.
        if spill is None:
            self._oversized(entry, packet, batch, replies)
        else:
            self._oversized(entry, completed_tcp(packet), spill.setdefault(entry, []), replies)

    def _oversized(
        self, entry: ChildSaEntry, packet: bytes, batch: list[bytes], replies: list[bytes]
    ) -> None:
        # IPv4 without DF: fragment the inner packet so the ESP packets fit the path
        # (RFC 4301 §8.1 pre-fragmentation); else ICMP back so the sender's PMTU
        # discovery adapts (RFC 1191, RFC 8201).
        if may_fragment(packet):
            pieces = fragment_ipv4(packet, entry.mtu)
            if pieces is None:
                self.drops[Drop.MALFORMED.value] += 1
                return
            batch.extend(pieces)
            return
        entry.drops[Drop.TOO_BIG.value] += 1
        second = int(self._clock())
        if second != self._icmp_second:
            self._icmp_second, self._icmp_sent = second, 0
        if self._icmp_sent >= ICMP_ERRORS_PER_SECOND:
            self.counters["icmp_rate_limited"] += 1
            return
        reply = too_big_reply(packet, entry.mtu, self.icmp_source[packet[0] >> 4])
        if reply is not None:
            self._icmp_sent += 1
            replies.append(reply)

    def send_keepalive(self, local: Address, remote: Address) -> None:
        """Send a NAT keepalive (the IKE core decides when, `NatKeepaliveDue`)."""
        if self.transport.send_keepalive(local, remote):
            self.counters["keepalives_sent"] += 1

    # ---- inbound -------------------------------------------------------------------

    def from_udp(self, datagrams: Sequence[tuple[bytes, Address, Address]]) -> None:
        """Process datagrams received on port 4500: (payload, local, remote) each."""
        esp: list[bytes] = []
        for payload, local, remote in datagrams:
            # ESP is the common case: `classify`'s ESP test inline (a call per packet
            # costs more than the test); `classify` sorts the rest.
            if len(payload) >= MIN_ESP_LEN and payload[:4] != NON_ESP_MARKER:
                esp.append(payload)
                continue
            kind = classify(payload)
            if kind is DatagramKind.ESP:
                esp.append(payload)
            elif kind is DatagramKind.IKE:
                self.counters["ike_on_4500"] += 1
                if self.on_ike is not None:
                    self.on_ike(strip_marker(payload), local, remote)
            elif kind is DatagramKind.KEEPALIVE:
                self.counters["keepalives_received"] += 1
            else:
                self.drops[Drop.INVALID_DATAGRAM.value] += 1
        if esp:
            unknown = self._open_esp(esp)
            if unknown is not None and self.on_unknown_spi is not None:
                self._report_unknown_spis(unknown, _DatagramOrigin(datagrams))

    def from_esp(self, packets: Sequence[bytes], origin: EspOrigin | None = None) -> None:
        """Process ESP packets (SPI through ICV), from UDP or raw protocol 50.

        Packets are grouped per SA (keeping their order within an SA, which is all
        the replay window cares about) and opened with one `decapsulate_batch` call
        per SA. Those of an unknown SPI are reported to `on_unknown_spi` where
        `origin` tells where they came from.
        """
        unknown = self._open_esp(packets)
        if unknown is not None and origin is not None and self.on_unknown_spi is not None:
            self._report_unknown_spis(unknown, origin)

    def _report_unknown_spis(self, packets: list[bytes], origin: EspOrigin) -> None:
        """Tell `on_unknown_spi` of packets of unknown SPIs, at most one per remote
        address per `UNKNOWN_SPI_REPORT_INTERVAL` (the rest only counted as NO_SA)."""
        report = self.on_unknown_spi
        if report is None:
            return
        now = self._clock()
        reported = self._unknown_spi_reported
        for packet in packets:
            where = origin(packet)
            if where is None:
                continue
            local, remote = where
            last = reported.get(remote[0])
            if last is not None and now - last < UNKNOWN_SPI_REPORT_INTERVAL:
                continue
            if len(reported) >= _UNKNOWN_SPI_REMOTES_MAX:
                self._unknown_spi_reported = reported = {
                    a: t for a, t in reported.items() if now - t < UNKNOWN_SPI_REPORT_INTERVAL
                }
            reported[remote[0]] = now
            self.counters["unknown_spi_reported"] += 1
            report(int.from_bytes(packet[:4], "big"), local, remote)

    def _open_esp(self, packets: Sequence[bytes]) -> list[bytes] | None:
        """`from_esp` without the reports: the packets of an unknown SPI (None if none)."""
        unknown: list[bytes] | None = None
        groups: dict[ChildSaEntry, list[bytes]] = {}
        lookup = self.sad.lookup
        # Packets come in runs of one SPI: a run costs one SAD lookup.
        last_spi = b""
        group: list[bytes] = []
        for packet in packets:
            spi = packet[:4]
            if spi == last_spi and len(packet) >= MIN_ESP_LEN:
                group.append(packet)
                continue
            if len(packet) < MIN_ESP_LEN:
                self.drops[DropReason.TOO_SHORT.value] += 1
                continue
            entry = lookup(int.from_bytes(spi, "big"))
            if entry is None:
                # RFC 4303 §3.4.2: no SA, discard (and count: it is an auditable event).
                # The peer may still use SAs we lost in a restart: kept for a report.
                self.drops[DropReason.NO_SA.value] += 1
                if unknown is None:
                    unknown = [packet]
                else:
                    unknown.append(packet)
                last_spi = b""
                continue
            found = groups.get(entry)
            if found is None:
                found = groups[entry] = []
            group = found
            group.append(packet)
            last_spi = spi
        out: list[bytes] = []
        # Route-mode SAs: what they open goes to their own TUN.
        routed: dict[str, list[bytes]] | None = None
        # Per TUN (None: the gateway's), the indexes of segments with a partial
        # checksum in what goes there (NH_PARTIAL_CSUM, delivered only by an SA
        # that agreed on it).
        marks: dict[str | None, list[int]] | None = None
        for entry, group in groups.items():
            if entry.interface is None:
                target = out
            else:
                if routed is None:
                    routed = {}
                target = routed.setdefault(entry.interface, [])
            append = target.append
            allows = entry.policy.allows_inbound
            cache = self._inbound_cache.get(entry)
            if cache is None:
                cache = self._inbound_cache[entry] = {}
            # As in `from_tun`: the next packet of the previous one's flow has the
            # same verdict, known without a key or a cache lookup.
            run, run_at, lead, proto_at, proto = _NO_RUN
            known: bool | None = None
            for opened in entry.inbound.decapsulate_batch(group):
                if isinstance(opened, DropReason):
                    continue  # counted by the SA
                inner = opened[0]
                if not (
                    inner.startswith(run, run_at)
                    and inner[0] == lead
                    and inner[proto_at] == proto
                    and not (lead == 0x45 and (inner[6] & 0x3F or inner[7]))
                ):
                    key = flow_key(inner) if inner else None
                    known = None if key is None else cache.get(key)
                    if known is None:
                        known = allows(inner)
                        if key is not None:
                            if len(cache) >= _FLOW_CACHE_MAX:
                                cache.clear()
                            cache[key] = known
                    run, run_at, lead, proto_at, proto = (
                        _NO_RUN if key is None else _flow_run(inner)
                    )
                if known:
                    if opened[1] == NH_PARTIAL_CSUM:
                        if marks is None:
                            marks = {}
                        marks.setdefault(entry.interface, []).append(len(target))
                    append(inner)
                else:
                    entry.drops[Drop.POLICY_MISMATCH.value] += 1
        if marks is None:
            marks = {}
        else:
            self.counters["partial_segments_received"] += sum(map(len, marks.values()))
        if out:
            written = self.transport.write_tun(out, None, marks.get(None, ()))
            if written < len(out):
                self.drops[Drop.TUN_WRITE_FAILED.value] += len(out) - written
        if routed is not None:
            for interface, inners in routed.items():
                written = self.transport.write_tun(inners, interface, marks.get(interface, ()))
                if written < len(inners):
                    self.drops[Drop.TUN_WRITE_FAILED.value] += len(inners) - written
        return unknown

    # ---- status --------------------------------------------------------------------

    def total_drops(self) -> Counter[str]:
        """Every drop so far, per reason, across all SAs present and past."""
        total: Counter[str] = Counter(self.drops)
        for entry in self.entries.values():
            total.update(entry.all_drops())
        for entry, _ in self._lingering.values():
            total.update(entry.all_drops())
        return total

    def status(self) -> dict[str, Any]:
        """JSON-ready counters for `lockgate status`."""
        return {
            "sas": [entry.status() for entry in self.entries.values()],
            "drops": dict(sorted(self.total_drops().items())),
            "counters": dict(sorted(self.counters.items())),
            "kernel_drops": self.kernel_drops() if self.kernel_drops is not None else {},
        }


def _completed(segments: list[bytes]) -> list[bytes]:
    """Segments with partial checksums (`tun.vnet.split_frame_partial`), their
    checksums computed, for a peer that does not complete them."""
    return list(map(completed_tcp, segments))


def _traffic(entry: ChildSaEntry) -> tuple[int, int, int, int]:
    """An SA's bytes in, bytes out, packets in, packets out."""
    inbound, outbound = entry.inbound, entry.outbound
    return inbound.byte_count, outbound.byte_count, inbound.packet_count, outbound.packet_count
