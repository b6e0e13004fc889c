"""One client's session on the server: control channel, authentication, data channel.

The path of a connection (draft-openvpntech-openvpn-wire-protocol; OpenVPN ssl.c):

    P_CONTROL_HARD_RESET_CLIENT_V2  ->  P_CONTROL_HARD_RESET_SERVER_V2
    P_CONTROL_V1 carrying TLS       <-> TLS handshake (ssl over memory BIOs)
    client's key method 2           ->  authentication decision (injected callback)
                                    <-  server's key method 2; data keys from the PRF
    PUSH_REQUEST                    ->  PUSH_REPLY (or AUTH_FAILED)
    P_DATA_V2                       <-> IP packets

Each key generation (key id 0..7) has its own TLS connection, its own reliability
layer and its own data keys. A soft reset (P_CONTROL_SOFT_RESET_V1, from either side)
starts the next key id; the old one keeps decrypting for `transition_window`
seconds and keeps encrypting until the new one is confirmed (make before break).

Nothing here raises on bad input: it is dropped and counted in `drops`.
"""

from __future__ import annotations

import enum
import ipaddress
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ovpn.data import CIPHERS, OCC_EXIT, OCC_MAGIC, PING_MAGIC, DataChannelKey, DataDrop
from ovpn.keys import (
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_REQUEST_PUSH,
    KeyMethod2,
    KeyMethodError,
    derive_data_keys,
    iv_proto,
    negotiate_cipher,
    parse_peer_info,
)
from ovpn.packet import (
    HARD_RESET_CLIENT,
    MAX_ACKS,
    ControlPacket,
    Opcode,
    PacketError,
    split_first_octet,
)
from ovpn.push import PushOptions, encode_message, push_reply, split_messages
from ovpn.reliable import ReliableReceiver, ReliableSender
from ovpn.replay import ReplayWindow
from ovpn.tls import TlsEndpoint
from ovpn.tls_crypt import TlsCrypt

MAX_CONTROL_PAYLOAD = 1100
"""TLS bytes per P_CONTROL_V1: the packet stays under OpenVPN's 1250-octet tls-mtu."""
ACKS_PER_CONTROL = 4
"""ACKs piggybacked on a control packet (OpenVPN's CONTROL_SEND_ACK_MAX)."""
MAX_RETRANSMISSIONS = 10
AUTH_FAILED_LINGER = 5.0
"""Seconds a refused session stays to deliver AUTH_FAILED before it is closed."""
OPTIONS_STRING = "V4,dev-type tun,link-mtu 1550,tun-mtu 1500,proto UDPv4,key-method 2,tls-server"
"""Our OCC options string; 2.6 clients only compare it for warnings."""


# --- Configuration, callbacks, events --------------------------------------------


@dataclass(frozen=True)
class SessionSettings:
    """How every session of one server behaves."""

    tls_context: ssl.SSLContext
    """Server side TLS: certificate, key, optional client CA (see `ovpn.tls`)."""
    ciphers: tuple[str, ...] = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    """Data ciphers, preferred first."""
    ping: int = 10
    """Seconds of silence before we send a keepalive ping; pushed as `ping`."""
    ping_restart: int = 60
    """Pushed as `ping-restart`; the server gives up after twice this much silence."""
    handshake_timeout: float = 60.0
    """A key generation must finish TLS and key method 2 within this (hand-window)."""
    transition_window: float = 60.0
    """The old key still decrypts this long after a new one is active."""
    renegotiate_seconds: float | None = None
    """Start a soft reset this long after a key became active (None: never)."""
    tls_crypt: TlsCrypt | None = None
    """Wrap every control packet with this static key (`tls-crypt`); None: plain."""
    tcp: bool = False
    """The clients come over TCP: PUSH_REPLY turns Nagle's algorithm off on theirs."""


@dataclass(frozen=True)
class AuthRequest:
    """What the client presented; the callback decides, at once or later (`AuthPending`)."""

    username: str
    password: str = field(repr=False)
    client_certificate: bytes | None
    """DER, verified against the client CA by TLS; None when none was asked for."""
    peer_info: dict[str, str]
    remote: object
    """The transport address the session was created for (opaque to the core)."""
    renegotiation: bool
    """True for a soft reset's re-authentication (the session is already up)."""
    session_id: bytes = b""
    """The server's session id: with `key_id`, where a deferred decision goes."""
    key_id: int = 0


@dataclass(frozen=True)
class AuthDecision:
    accepted: bool
    reason: str = ""
    """Why a login was refused (logged; not sent to the client)."""
    push: PushOptions | None = None
    """The client's configuration; required when `accepted` on a first login."""
    username: str | None = None
    """The name the server knows the client by, when not the one it sent (a
    certificate's subject); None keeps the client's."""


class AuthPending:
    """The authenticator's answer "later": the key state waits (within the handshake
    window) until the decision arrives through `ServerSession.complete_auth`, so a slow
    check (a memory-hard password hash) runs off the event loop."""

    def __repr__(self) -> str:
        return "AUTH_PENDING"


AUTH_PENDING = AuthPending()

Authenticator = Callable[[AuthRequest], "AuthDecision | AuthPending"]


@dataclass(frozen=True)
class ClientAuthenticated:
    username: str
    address: ipaddress.IPv4Interface
    cipher: str
    peer_id: int


@dataclass(frozen=True)
class ClientAuthFailed:
    username: str
    reason: str


@dataclass(frozen=True)
class DataKeysReady:
    key_id: int
    cipher: str
    renegotiation: bool


@dataclass(frozen=True)
class ClientDisconnected:
    reason: str


Event = ClientAuthenticated | ClientAuthFailed | DataKeysReady | ClientDisconnected


# --- One key generation ------------------------------------------------------------


class _KeyPhase(enum.Enum):
    TLS = "tls"  # reset exchanged, TLS handshake under way
    KEY_EXCHANGE = "key-exchange"  # TLS up, waiting for the client's key method 2
    AUTH_PENDING = "auth-pending"  # key methods exchanged, the decision is on its way
    ACTIVE = "active"  # key method 2 done
    FAILED = "failed"


@dataclass
class _KeyState:
    key_id: int
    tls: TlsEndpoint
    started: float
    sender: ReliableSender[tuple[Opcode, bytes]] = field(default_factory=ReliableSender)
    receiver: ReliableReceiver[ControlPacket] = field(default_factory=ReliableReceiver)
    phase: _KeyPhase = _KeyPhase.TLS
    data: DataChannelKey | None = None
    activated: float | None = None
    retire_at: float | None = None
    """When a superseded key stops decrypting."""
    pending: _PendingAuth | None = None
    """The key methods and cipher awaiting a deferred decision."""


@dataclass(frozen=True)
class _PendingAuth:
    client: KeyMethod2
    server: KeyMethod2
    peer_info: dict[str, str]
    cipher: str


def _link_scope(payload: bytes) -> bool:
    """An IPv6 packet from a link-local or the unspecified address (RFC 4291 §2.5.2,
    §2.5.6): what a client's kernel sends on its TUN by itself as the link comes up
    (router solicitations, MLD reports, DAD). It never leaves a link, so the server
    drops it, but counts it apart from spoofing: every client sends some."""
    if len(payload) < 40 or payload[0] >> 4 != 6:
        return False
    source = ipaddress.IPv6Address(payload[8:24])  # only on the drop path
    return source.is_link_local or source.is_unspecified


def next_key_id(key_id: int) -> int:
    """Key ids run 0, 1, ..., 7, 1, ...: 0 belongs to the first key only."""
    return key_id + 1 if key_id < 7 else 1


class _SessionState(enum.Enum):
    HANDSHAKE = "handshake"
    AUTH_FAILED = "auth-failed"
    ESTABLISHED = "established"
    CLOSING = "closing"
    CLOSED = "closed"


class ServerSession:
    """The server's end of one OpenVPN client connection.

    Inputs: `receive` (one OpenVPN packet, TCP framing already removed),
    `send_to_client` (an IP packet from the TUN), `handle_timer`, `renegotiate`,
    `disconnect`. Outputs: `take_packets` (for the client), `take_tun_packets`,
    `take_events`, `next_timer`, `drops`.
    """

    def __init__(
        self,
        settings: SessionSettings,
        authenticate: Authenticator,
        *,
        session_id: bytes,
        peer_id: int,
        remote: object,
        random: Callable[[int], bytes],
        now: float,
    ) -> None:
        self.settings = settings
        self._authenticate = authenticate
        self.session_id = session_id
        self.peer_id = peer_id
        self.remote = remote
        self._random = random
        self.remote_session_id: bytes | None = None
        self._keys: dict[int, _KeyState] = {}
        self._primary: int | None = None
        self._send_key: int | None = None
        self._state = _SessionState.HANDSHAKE
        self._close_at: float | None = None
        self._disconnect_reason = "disconnected"
        self._last_received = now
        self._last_sent = now
        self.created = now
        self.username: str | None = None
        """Who the client is: the decision's `username`, else the name it sent."""
        self._claimed_username: str | None = None
        self.close_reason: str | None = None
        self.peer_info: dict[str, str] = {}
        self.push: PushOptions | None = None
        self._source_for: PushOptions | None = None
        self._source = b""
        self._source6: bytes | None = None
        self.cipher: str | None = None
        self._cc_exit = False
        self._out: list[bytes] = []
        self._tun: list[bytes] = []
        self._events: list[Event] = []
        self.drops: Counter[str] = Counter()
        # tls-crypt's own packet ids: one per packet sent, replay-checked on receipt.
        self._wrap_id = 1
        self._wrap_time = int.from_bytes(random(4), "big")
        self._wrap_replay = ReplayWindow(64)
        self.bytes_in = 0
        self.bytes_out = 0

    # -- state ---------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self._state is _SessionState.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self._state is _SessionState.CLOSED

    @property
    def auth_pending(self) -> bool:
        """Whether a key state waits for a deferred authentication decision."""
        return any(ks.pending is not None for ks in self._keys.values())

    @property
    def address(self) -> ipaddress.IPv4Address | None:
        """The client's virtual IPv4 address once authenticated."""
        return self.push.address.ip if self.push is not None and self.established else None

    # -- outputs -------------------------------------------------------------------

    def take_packets(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def take_tun_packets(self) -> list[bytes]:
        out, self._tun = self._tun, []
        return out

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_timer(self) -> float | None:
        if self.closed:
            return None
        times: list[float] = []
        for ks in self._keys.values():
            t = ks.sender.next_timer()
            if t is not None:
                times.append(t)
            if ks.phase is not _KeyPhase.ACTIVE:
                times.append(ks.started + self.settings.handshake_timeout)
            if ks.retire_at is not None:
                times.append(ks.retire_at)
        if self._close_at is not None:
            times.append(self._close_at)
        if self.established:
            times.append(self._last_sent + self.settings.ping)
            times.append(self._last_received + 2 * self.settings.ping_restart)
            renegotiate_at = self._renegotiate_at()
            if renegotiate_at is not None:
                times.append(renegotiate_at)
        else:
            times.append(self.created + self.settings.handshake_timeout)
        return min(times) if times else None

    # -- inputs --------------------------------------------------------------------

    def receive(self, packet: bytes, now: float) -> None:
        """One packet from the client."""
        if self.closed:
            self.drops["session_closed"] += 1
            return
        try:
            opcode, key_id = split_first_octet(packet)
        except PacketError:
            self.drops["packet_empty"] += 1
            return
        if opcode == Opcode.DATA_V2:
            # Data changes nothing the control flush below would send: skip it (it
            # runs once per packet on the data path).
            self._receive_data(packet, key_id, now)
            return
        if opcode == Opcode.DATA_V1:
            self.drops["data_v1_unsupported"] += 1
        else:
            self._receive_control(packet, now)
        self._flush(now)

    def send_to_client(self, ip_packet: bytes, now: float) -> None:
        """An IP packet from the TUN for this client."""
        if not self.established:
            self.drops["tun_not_established"] += 1
            return
        self._send_data(ip_packet, now)

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._close_at is not None and now >= self._close_at:
            self._close("auth failed" if self._state is _SessionState.AUTH_FAILED else "closed")
            return
        for ks in list(self._keys.values()):
            if (
                ks.phase is not _KeyPhase.ACTIVE
                and now >= ks.started + self.settings.handshake_timeout
            ):
                self._close("handshake timeout" if ks.key_id == 0 else "renegotiation timeout")
                return
            if ks.sender.oldest_unacked_sends > MAX_RETRANSMISSIONS:
                self._close("control channel unanswered")
                return
            if ks.retire_at is not None and now >= ks.retire_at:
                del self._keys[ks.key_id]
        if self.established:
            if now >= self._last_received + 2 * self.settings.ping_restart:
                self._close("ping timeout")
                return
            renegotiate_at = self._renegotiate_at()
            if renegotiate_at is not None and now >= renegotiate_at:
                self.renegotiate(now)
            if now >= self._last_sent + self.settings.ping:
                self._send_data(PING_MAGIC, now)
        elif (
            self._state is _SessionState.HANDSHAKE
            and now >= self.created + self.settings.handshake_timeout
        ):
            self._close("handshake timeout")
            return
        self._flush(now)

    def renegotiate(self, now: float) -> None:
        """Start a soft reset from our side (new key id, new TLS handshake)."""
        if not self.established or self._primary is None:
            return
        if any(ks.phase is not _KeyPhase.ACTIVE for ks in self._keys.values()):
            return  # one renegotiation at a time
        ks = self._new_key_state(next_key_id(self._primary), now)
        ks.sender.send((Opcode.CONTROL_SOFT_RESET_V1, b""))
        self._flush(now)

    def disconnect(self, now: float, *, restart: bool = True, reason: str = "disconnected") -> None:
        """End the session from our side: tell the client (RESTART: reconnect, HALT:
        stay away), give the message a moment to leave, then close."""
        if self.closed or self._primary is None:
            self._close(reason)
            return
        self._write_message(self._keys[self._primary], "RESTART" if restart else "HALT")
        self._state = _SessionState.CLOSING
        self._close_at = now + 2.0
        self._disconnect_reason = reason
        self._flush(now)

    # -- control channel -----------------------------------------------------------

    def _receive_control(self, raw: bytes, now: float) -> None:
        wrapper = self.settings.tls_crypt
        if wrapper is not None:
            try:
                raw, replay_id = wrapper.unwrap(raw)
            except PacketError:
                self.drops["tls_crypt_failed"] += 1
                return
            if not self._wrap_replay.check(replay_id):
                self.drops["tls_crypt_replay"] += 1
                return
            self._wrap_replay.commit(replay_id)
        try:
            pkt = ControlPacket.decode(raw)
        except PacketError:
            self.drops["control_malformed"] += 1
            return
        if pkt.opcode in HARD_RESET_CLIENT:
            if self.remote_session_id is None and pkt.key_id == 0 and pkt.packet_id == 0:
                self.remote_session_id = pkt.session_id
                self._new_key_state(0, now).sender.send((Opcode.CONTROL_HARD_RESET_SERVER_V2, b""))
            elif pkt.session_id != self.remote_session_id:
                # A restarted client reuses the address; the server decides whether to
                # replace this session, the session itself ignores it.
                self.drops["control_foreign_reset"] += 1
                return
        if pkt.session_id != self.remote_session_id:
            self.drops["control_wrong_session"] += 1
            return
        if pkt.acks and pkt.remote_session_id != self.session_id:
            self.drops["control_wrong_ack_session"] += 1
            return
        ks = self._keys.get(pkt.key_id)
        if ks is None:
            ks = self._accept_soft_reset(pkt, now)
            if ks is None:
                return
        self._last_received = now
        ks.sender.ack(pkt.acks)
        if pkt.packet_id is None:
            return
        if ks.receiver.is_duplicate(pkt.packet_id):
            self.drops["control_replay"] += 1
        if not ks.receiver.receive(pkt.packet_id, pkt):
            self.drops["control_beyond_window"] += 1
            return
        for ordered in ks.receiver.pop_ready():
            self._deliver(ks, ordered, now)

    def _accept_soft_reset(self, pkt: ControlPacket, now: float) -> _KeyState | None:
        expected = next_key_id(self._primary) if self._primary is not None else None
        if (
            pkt.opcode != Opcode.CONTROL_SOFT_RESET_V1
            or pkt.key_id != expected
            or pkt.packet_id != 0
            or not self.established
        ):
            self.drops["control_unknown_key"] += 1
            return None
        ks = self._new_key_state(pkt.key_id, now)
        ks.sender.send((Opcode.CONTROL_SOFT_RESET_V1, b""))
        return ks

    def _new_key_state(self, key_id: int, now: float) -> _KeyState:
        ks = _KeyState(key_id, TlsEndpoint(self.settings.tls_context), now)
        old = self._keys.get(key_id)
        if old is not None and old.key_id == self._send_key:
            self._send_key = None
        self._keys[key_id] = ks
        return ks

    def _deliver(self, ks: _KeyState, pkt: ControlPacket, now: float) -> None:
        """One control packet, in order, of key state `ks`."""
        if pkt.opcode != Opcode.CONTROL_V1:
            return  # resets carry nothing we use
        if not pkt.payload:
            return
        for record in ks.tls.feed(pkt.payload):
            self._on_record(ks, record, now)
        if ks.tls.failure is not None and ks.phase is not _KeyPhase.FAILED:
            ks.phase = _KeyPhase.FAILED
            self.drops["tls_failed"] += 1
            self._close(ks.tls.failure.reason)
            return
        self._queue_tls_output(ks)

    def _queue_tls_output(self, ks: _KeyState) -> None:
        out = ks.tls.take_output()
        for i in range(0, len(out), MAX_CONTROL_PAYLOAD):
            ks.sender.send((Opcode.CONTROL_V1, out[i : i + MAX_CONTROL_PAYLOAD]))

    def _write_message(self, ks: _KeyState, text: str) -> None:
        ks.tls.write(encode_message(text))
        self._queue_tls_output(ks)

    def _on_record(self, ks: _KeyState, record: bytes, now: float) -> None:
        if ks.phase is _KeyPhase.TLS:
            ks.phase = _KeyPhase.KEY_EXCHANGE
        if ks.phase is _KeyPhase.KEY_EXCHANGE:
            self._on_key_method(ks, record, now)
            return
        for message in split_messages(record):
            self._on_message(ks, message, now)

    def _on_key_method(self, ks: _KeyState, record: bytes, now: float) -> None:
        try:
            client = KeyMethod2.decode(record, from_client=True)
        except KeyMethodError:
            self.drops["key_method_malformed"] += 1
            self._close("malformed key method 2")
            return
        renegotiation = ks.key_id != 0
        peer_info = parse_peer_info(client.peer_info)
        server = KeyMethod2(
            random1=self._random(32), random2=self._random(32), options=OPTIONS_STRING
        )
        # Our key method goes out at once, whatever the decision: the data keys are
        # used only once it accepts (OpenVPN's deferred authentication does the same).
        ks.tls.write(server.encode())
        ks.phase = _KeyPhase.AUTH_PENDING
        cipher, decision = self._decide(client, peer_info, ks, renegotiation)
        if isinstance(decision, AuthPending):
            if cipher is None:  # _decide defers only with a cipher
                decision = AuthDecision(False, "internal: deferred without a cipher")
            else:
                ks.pending = _PendingAuth(client, server, peer_info, cipher)
                self._queue_tls_output(ks)
                return
        self._apply_decision(ks, client, server, peer_info, cipher, decision, now)

    def complete_auth(self, key_id: int, decision: AuthDecision, now: float) -> bool:
        """The decision the authenticator deferred for key state `key_id`; False when
        nothing waits for it any more (the session or that key state is gone)."""
        ks = self._keys.get(key_id)
        if self.closed or ks is None or ks.pending is None:
            return False
        pending, ks.pending = ks.pending, None
        decision = self._checked(decision, ks.key_id != 0)
        self._apply_decision(
            ks, pending.client, pending.server, pending.peer_info, pending.cipher, decision, now
        )
        self._flush(now)
        return True

    def _apply_decision(
        self,
        ks: _KeyState,
        client: KeyMethod2,
        server: KeyMethod2,
        peer_info: dict[str, str],
        cipher: str | None,
        decision: AuthDecision,
        now: float,
    ) -> None:
        renegotiation = ks.key_id != 0
        ks.phase = _KeyPhase.ACTIVE
        ks.activated = now
        if not decision.accepted or cipher is None:
            self._refuse(ks, decision.username or client.username, decision.reason, now)
            return
        username = decision.username or client.username
        if not renegotiation:
            self.username = username
            self._claimed_username = client.username
            self.peer_info = peer_info
            self.push = decision.push
            self.cipher = cipher
            self._cc_exit = bool(iv_proto(peer_info) & IV_PROTO_CC_EXIT_NOTIFY)
        push = self.push
        if push is None:  # _checked accepts a first login only with one
            self._close("internal: accepted without a client configuration")
            return
        material = derive_data_keys(client, server, self.remote_session_id or b"", self.session_id)
        ks.data = DataChannelKey(cipher, material, key_id=ks.key_id)
        previous = self._primary
        self._primary = ks.key_id
        if previous is not None and previous in self._keys:
            self._keys[previous].retire_at = now + self.settings.transition_window
        else:
            self._send_key = ks.key_id
        self._events.append(DataKeysReady(ks.key_id, cipher, renegotiation))
        if not renegotiation:
            self._state = _SessionState.ESTABLISHED
            self._events.append(ClientAuthenticated(username, push.address, cipher, self.peer_id))
            if iv_proto(peer_info) & IV_PROTO_REQUEST_PUSH:
                self._write_message(ks, self._push_reply(push, cipher))
        self._queue_tls_output(ks)

    def _decide(
        self, client: KeyMethod2, peer_info: dict[str, str], ks: _KeyState, renegotiation: bool
    ) -> tuple[str | None, AuthDecision | AuthPending]:
        """The data cipher and the decision (or AUTH_PENDING: `complete_auth` follows)."""
        if renegotiation and client.username != self._claimed_username:
            return None, AuthDecision(False, "user name changed on renegotiation")
        cipher = negotiate_cipher(list(self.settings.ciphers), peer_info)
        if cipher is None or cipher not in CIPHERS:
            return None, AuthDecision(False, "no common data cipher")
        if renegotiation and cipher != self.cipher:
            return None, AuthDecision(False, "data cipher changed on renegotiation")
        try:
            decision = self._authenticate(
                AuthRequest(
                    client.username,
                    client.password,
                    ks.tls.peer_certificate(),
                    peer_info,
                    self.remote,
                    renegotiation,
                    self.session_id,
                    ks.key_id,
                )
            )
        except Exception as exc:  # the callback's bug must not take the server down
            self.drops["authenticator_error"] += 1
            return None, AuthDecision(False, f"authenticator failed: {type(exc).__name__}")
        if isinstance(decision, AuthPending):
            return cipher, decision
        return cipher, self._checked(decision, renegotiation)

    @staticmethod
    def _checked(decision: AuthDecision, renegotiation: bool) -> AuthDecision:
        if decision.accepted and not renegotiation and decision.push is None:
            return AuthDecision(False, "no client configuration")
        return decision

    def _refuse(self, ks: _KeyState, username: str, reason: str, now: float) -> None:
        self._events.append(ClientAuthFailed(username, reason))
        self._write_message(ks, "AUTH_FAILED")
        self._state = _SessionState.AUTH_FAILED
        self._close_at = now + AUTH_FAILED_LINGER

    def _push_reply(self, push: PushOptions, cipher: str) -> str:
        return push_reply(
            push,
            cipher=cipher,
            peer_id=self.peer_id,
            ping=self.settings.ping,
            ping_restart=self.settings.ping_restart,
            cc_exit=self._cc_exit,
            tcp=self.settings.tcp,
        )

    def _on_message(self, ks: _KeyState, message: str, now: float) -> None:
        if message == "PUSH_REQUEST":
            if self._state is _SessionState.AUTH_FAILED:
                self._write_message(ks, "AUTH_FAILED")
            elif self.established and self.push is not None and self.cipher is not None:
                self._write_message(ks, self._push_reply(self.push, self.cipher))
        elif message == "EXIT":
            self._close("client exited")
        else:
            self.drops["control_unknown_message"] += 1

    # -- data channel --------------------------------------------------------------

    def _receive_data(self, packet: bytes, key_id: int, now: float) -> None:
        ks = self._keys.get(key_id)
        if ks is None or ks.data is None or not self.established:
            self.drops["data_no_key"] += 1
            return
        try:
            payload = ks.data.open(packet)
        except DataDrop as drop:
            self.drops[drop.reason] += 1
            return
        self._last_received = now
        if self._send_key != key_id and key_id == self._primary:
            # The client uses the new key: it has it, so we switch too.
            self._send_key = key_id
        if payload == PING_MAGIC:
            return
        if payload.startswith(OCC_MAGIC):
            if payload[len(OCC_MAGIC) : len(OCC_MAGIC) + 1] == bytes((OCC_EXIT,)):
                self._close("client exited")
            return
        if not self._source_allowed(payload):
            self.drops["data_link_local" if _link_scope(payload) else "data_spoofed_source"] += 1
            return
        self.bytes_in += len(payload)
        self._tun.append(payload)

    def _source_allowed(self, payload: bytes) -> bool:
        """Only the client's own virtual addresses may appear as the source (its IPv6
        one only when it has one)."""
        push = self.push
        if push is None or not payload:
            return False
        if push is not self._source_for:
            # `IPv4Interface.ip` builds a new address object on every call: keep its
            # octets for as long as the push options stay the same object.
            self._source_for, self._source = push, push.address.ip.packed
            self._source6 = push.address6.ip.packed if push.address6 is not None else None
        version = payload[0] >> 4
        if version == 4:
            return len(payload) >= 20 and payload[12:16] == self._source
        if version == 6:
            return len(payload) >= 40 and payload[8:24] == self._source6
        return False

    def _send_data(self, payload: bytes, now: float) -> None:
        ks = self._keys.get(self._send_key) if self._send_key is not None else None
        if ks is None or ks.data is None:
            self.drops["tun_no_key"] += 1
            return
        try:
            self._out.append(ks.data.seal(payload, self.peer_id))
        except DataDrop as drop:
            self.drops[drop.reason] += 1
            return
        if payload != PING_MAGIC:
            self.bytes_out += len(payload)
        self._last_sent = now

    def _renegotiate_at(self) -> float | None:
        if self.settings.renegotiate_seconds is None or self._primary is None:
            return None
        activated = self._keys[self._primary].activated
        return None if activated is None else activated + self.settings.renegotiate_seconds

    # -- output and teardown -----------------------------------------------------------

    def _flush(self, now: float) -> None:
        """Turn what each key state has to say into control packets."""
        if self.closed or self.remote_session_id is None:
            return
        for ks in self._keys.values():
            if (
                self._send_key is not None
                and ks.key_id == self._primary
                and ks.key_id != self._send_key
                and ks.sender.idle
            ):
                # Our key method 2 was acknowledged: the client holds the new key.
                self._send_key = ks.key_id
            for packet_id, (opcode, payload) in ks.sender.due(now):
                acks = ks.receiver.take_acks(ACKS_PER_CONTROL)
                self._emit(
                    ControlPacket(
                        opcode,
                        ks.key_id,
                        self.session_id,
                        acks,
                        self.remote_session_id if acks else None,
                        packet_id,
                        payload,
                    ),
                    now,
                )
            while ks.receiver.acks_pending:
                acks = ks.receiver.take_acks(MAX_ACKS)
                self._emit(
                    ControlPacket(
                        Opcode.ACK_V1, ks.key_id, self.session_id, acks, self.remote_session_id
                    ),
                    now,
                )
        primary = self._keys.get(self._primary) if self._primary is not None else None
        if self._state is _SessionState.CLOSING and primary is not None and primary.sender.idle:
            self._close(self._disconnect_reason)

    def _emit(self, pkt: ControlPacket, now: float) -> None:
        wire = pkt.encode()
        if self.settings.tls_crypt is not None:
            wire = self.settings.tls_crypt.wrap(wire, self._wrap_id, self._wrap_time)
            self._wrap_id += 1
        self._out.append(wire)
        self._last_sent = now

    def close(self, reason: str) -> None:
        """End the session at once, without a word to the client (its transport is
        gone, or the server needs the room)."""
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self._state = _SessionState.CLOSED
        self.close_reason = reason
        self._keys.clear()
        self._events.append(ClientDisconnected(reason))
