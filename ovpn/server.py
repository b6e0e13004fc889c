"""One OpenVPN server: sessions by transport address, peer ids, routing to clients.

Still sans-I/O. The adapter hands every packet in with an opaque `remote` (a UDP
address, or a TCP connection object) and asks `collect` what to send. A new session
starts only on P_CONTROL_HARD_RESET_CLIENT_V2/V3 with packet id 0, so stray
packets cost a counter, never state.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ovpn.packet import HARD_RESET_CLIENT, ControlPacket, PacketError, split_first_octet
from ovpn.session import (
    Authenticator,
    ClientAuthenticated,
    ClientDisconnected,
    Event,
    ServerSession,
    SessionSettings,
)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_PEER_ID = 0xFFFFFE
"""0xFFFFFF means "no peer id" to OpenVPN."""
DEFAULT_MAX_HALF_OPEN = 128
"""Sessions not yet authenticated kept at once; a new one beyond it evicts the oldest,
so clients that never finish their handshake cannot hold the server's room for the
whole handshake window (a flood must outpace real handshakes to hurt them)."""


@dataclass
class Output:
    """What one session has to say after an input."""

    to_client: list[bytes] = field(default_factory=list)
    to_tun: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class Server:
    def __init__(
        self,
        settings: SessionSettings,
        authenticate: Authenticator,
        *,
        random: Callable[[int], bytes],
        max_sessions: int = 500,
        max_half_open: int = DEFAULT_MAX_HALF_OPEN,
        on_end: Callable[[ServerSession], None] | None = None,
    ) -> None:
        self.settings = settings
        self._authenticate = authenticate
        self._random = random
        self.max_sessions = max_sessions
        """Established sessions kept at once (half-open ones come on top)."""
        self.max_half_open = max_half_open
        self._on_end = on_end
        """Called once for every session the server forgets, closed by then."""
        self.sessions: dict[Hashable, ServerSession] = {}
        self._by_address: dict[IpAddress, ServerSession] = {}
        """Established sessions by virtual address, IPv4 and IPv6 alike."""
        self._peer_ids: set[int] = set()
        self.drops: Counter[str] = Counter()

    def receive(self, packet: bytes, remote: Hashable, now: float) -> ServerSession | None:
        """Feed one packet from `remote`; returns the session it went to, if any."""
        session = self.sessions.get(remote)
        if session is not None and self._is_new_client_reset(packet, session):
            # The client restarted (new session id) from the same address.
            self._forget(remote, session, "replaced by a new session from the same address")
            session = None
        if session is None:
            session = self._maybe_start(packet, remote, now)
            if session is None:
                return None
        session.receive(packet, now)
        return session

    def _plain_control(self, packet: bytes) -> bytes:
        """The control packet without its tls-crypt wrapping (PacketError if forged)."""
        if self.settings.tls_crypt is None:
            return packet
        return self.settings.tls_crypt.unwrap(packet)[0]

    def _is_new_client_reset(self, packet: bytes, session: ServerSession) -> bool:
        try:
            opcode, _ = split_first_octet(packet)
            if opcode not in HARD_RESET_CLIENT:
                return False
            pkt = ControlPacket.decode(self._plain_control(packet))
        except PacketError:
            return False
        return pkt.packet_id == 0 and pkt.session_id != session.remote_session_id

    def _maybe_start(self, packet: bytes, remote: Hashable, now: float) -> ServerSession | None:
        try:
            opcode, key_id = split_first_octet(packet)
            if opcode not in HARD_RESET_CLIENT:
                self.drops["no_session"] += 1
                return None
            pkt = ControlPacket.decode(self._plain_control(packet))
        except PacketError:
            self.drops["malformed_initial"] += 1
            return None
        if key_id != 0 or pkt.packet_id != 0 or pkt.acks:
            self.drops["malformed_initial"] += 1
            return None
        if len(self.sessions) >= self.max_sessions + self.max_half_open:
            self.drops["server_full"] += 1
            return None
        self._make_half_open_room()
        peer_id = self._free_peer_id()
        if peer_id is None:
            self.drops["server_full"] += 1
            return None
        session = ServerSession(
            self.settings,
            self._authenticate,
            session_id=self._random(8),
            peer_id=peer_id,
            remote=remote,
            random=self._random,
            now=now,
        )
        self._peer_ids.add(peer_id)
        self.sessions[remote] = session
        return session

    def _make_half_open_room(self) -> None:
        """Evict the oldest unauthenticated sessions until a new one fits."""
        if len(self.sessions) < self.max_half_open:
            return  # cannot be over the limit
        half_open = [(r, s) for r, s in self.sessions.items() if not s.established]
        for remote, session in half_open[: max(0, len(half_open) - self.max_half_open + 1)]:
            self.drops["half_open_evicted"] += 1
            self._forget(remote, session, "evicted: too many unfinished handshakes")

    def _free_peer_id(self) -> int | None:
        return next((i for i in range(MAX_PEER_ID + 1) if i not in self._peer_ids), None)

    def session_for(self, destination: IpAddress) -> ServerSession | None:
        """The established session whose virtual address is `destination`."""
        return self._by_address.get(destination)

    def route_from_tun(self, ip_packet: bytes, now: float) -> ServerSession | None:
        """Give an IP packet from the TUN to the client it is addressed to."""
        version = ip_packet[0] >> 4 if ip_packet else 0
        destination: IpAddress
        if version == 4 and len(ip_packet) >= 20:
            destination = ipaddress.IPv4Address(ip_packet[16:20])
        elif version == 6 and len(ip_packet) >= 40:
            destination = ipaddress.IPv6Address(ip_packet[24:40])
        else:
            self.drops["tun_not_ip"] += 1
            return None
        session = self._by_address.get(destination)
        if session is None:
            self.drops["tun_no_client"] += 1
            return None
        session.send_to_client(ip_packet, now)
        return session

    def collect(self, session: ServerSession, now: float) -> Output:
        """Drain a session's output, keeping the address map in step with its events."""
        out = Output(session.take_packets(), session.take_tun_packets(), session.take_events())
        for event in out.events:
            if isinstance(event, ClientAuthenticated):
                for address in _addresses(session):
                    other = self._by_address.get(address)
                    if other is not None and other is not session:
                        other.disconnect(now, reason="address taken over")
                    self._by_address[address] = session
            elif isinstance(event, ClientDisconnected):
                self._forget(session.remote, session, event.reason)
        return out

    def remove(self, remote: Hashable, reason: str = "connection closed") -> None:
        """The transport is gone (TCP connection closed)."""
        session = self.sessions.get(remote)
        if session is not None:
            self._forget(remote, session, reason)

    def _forget(self, remote: Hashable, session: ServerSession, reason: str) -> None:
        if self.sessions.get(remote) is not session:
            return
        del self.sessions[remote]
        self._peer_ids.discard(session.peer_id)
        for address in _addresses(session):
            if self._by_address.get(address) is session:
                del self._by_address[address]
        session.close(reason)  # no-op when it closed itself
        if self._on_end is not None:
            self._on_end(session)

    def next_timer(self) -> float | None:
        return min(
            (t for s in self.sessions.values() if (t := s.next_timer()) is not None),
            default=None,
        )

    def handle_timer(self, now: float) -> list[ServerSession]:
        """Run due timers; returns the sessions that may have output."""
        due = [
            s
            for s in list(self.sessions.values())
            if (t := s.next_timer()) is not None and t <= now
        ]
        for session in due:
            session.handle_timer(now)
        return due


def _addresses(session: ServerSession) -> list[IpAddress]:
    """A session's virtual addresses: its IPv4 one and, if it has one, its IPv6 one."""
    push = session.push
    if push is None:
        return []
    out: list[IpAddress] = [push.address.ip]
    if push.address6 is not None:
        out.append(push.address6.ip)
    return out
