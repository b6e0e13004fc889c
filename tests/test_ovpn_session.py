"""A server session and a minimal OpenVPN client of our own, both in memory.

The client speaks the wire protocol with the same codec and reliability layer, TLS
through `ssl.MemoryBIO`, and key method 2 as OpenVPN's ssl.c writes it. The stock
client's interop is the namespace test's job (tests/test_ovpn_netns.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ovpn.data import OCC_EXIT, OCC_MAGIC, PING_MAGIC, DataChannelKey
from ovpn.keys import KeyMethod2, derive_data_keys
from ovpn.packet import ControlPacket, Opcode, PacketError, split_first_octet
from ovpn.push import PushOptions, encode_message, split_messages
from ovpn.reliable import ReliableReceiver, ReliableSender
from ovpn.server import Server
from ovpn.session import (
    AUTH_PENDING,
    AuthDecision,
    AuthPending,
    AuthRequest,
    ClientAuthenticated,
    ClientAuthFailed,
    ClientDisconnected,
    DataKeysReady,
    ServerSession,
    SessionSettings,
    next_key_id,
)
from ovpn.tls import server_context
from ovpn.tls_crypt import TlsCrypt
from testkit.pki import Pki

SERVER_NAME = "vpn.example.net"
CLIENT_ADDRESS = ipaddress.IPv4Interface("192.0.2.2/24")
PUSH = PushOptions(
    CLIENT_ADDRESS,
    ipaddress.IPv4Address("192.0.2.1"),
    (ipaddress.IPv4Network("203.0.113.0/24"),),
    (ipaddress.IPv4Address("203.0.113.53"),),
)


# --- A throwaway PKI: the lab CA, and a server certificate OpenVPN accepts -------------


@dataclass(frozen=True)
class ServerPki:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    ca_key_pem: bytes = b""
    """The CA's key, to issue client certificates."""

    def write(self, directory: Path) -> tuple[Path, Path, Path]:
        paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
        for path, data in zip(paths, (self.ca_pem, self.cert_pem, self.key_pem), strict=True):
            path.write_bytes(data)
        return paths


def make_server_pki() -> ServerPki:
    """The lab's CA with a server certificate carrying what `remote-cert-tls server`
    checks: the serverAuth EKU and a keyUsage extension."""
    pki = Pki()
    server = pki.issue(SERVER_NAME, key_usage=True)
    return ServerPki(pki.ca.cert_pem, server.cert_pem, server.key_pem, pki.ca.key_pem)


@pytest.fixture(scope="module")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServerPki, Path]:
    pki = make_server_pki()
    directory = tmp_path_factory.mktemp("ovpn-pki")
    pki.write(directory)
    return pki, directory


# --- The minimal client ----------------------------------------------------------------


@dataclass
class _ClientKey:
    key_id: int
    tls: ssl.SSLObject
    bio_in: ssl.MemoryBIO
    bio_out: ssl.MemoryBIO
    sender: ReliableSender[tuple[Opcode, bytes]] = field(default_factory=ReliableSender)
    receiver: ReliableReceiver[ControlPacket] = field(default_factory=ReliableReceiver)
    km_sent: KeyMethod2 | None = None
    data: DataChannelKey | None = None


class MiniClient:
    def __init__(
        self,
        ca_pem: bytes,
        *,
        username: str = "alice",
        password: str = "right-Password1",
        ciphers: str = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
        iv_proto: int = 2 | 4 | 128,
        seed: int = 1,
        tls_crypt: TlsCrypt | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.tls_crypt = tls_crypt
        self.wrap_id = 1
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.load_verify_locations(cadata=ca_pem.decode())
        self.session_id = self.rng.randbytes(8)
        self.server_session_id: bytes | None = None
        self.username, self.password = username, password
        self.peer_info = f"IV_VER=2.6-test\nIV_PROTO={iv_proto}\nIV_CIPHERS={ciphers}\n"
        self.keys: dict[int, _ClientKey] = {}
        self.send_key = 0
        self.messages: list[str] = []
        self.received_data: list[bytes] = []
        self.peer_id = 0
        self.cipher: str | None = None
        self.pending_data: list[bytes] = []
        self._new_key(0).sender.send((Opcode.CONTROL_HARD_RESET_CLIENT_V2, b""))

    def _new_key(self, key_id: int) -> _ClientKey:
        bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(bio_in, bio_out, server_hostname=SERVER_NAME)
        key = _ClientKey(key_id, tls, bio_in, bio_out)
        self.keys[key_id] = key
        return key

    def soft_reset(self) -> None:
        key = self._new_key(next_key_id(max(self.keys)))
        key.sender.send((Opcode.CONTROL_SOFT_RESET_V1, b""))

    def packets(self, now: float) -> list[bytes]:
        data, self.pending_data = self.pending_data, []
        return data + [self._wrap(p) for p in self._control_packets(now)]

    def _wrap(self, packet: bytes) -> bytes:
        if self.tls_crypt is None:
            return packet
        self.wrap_id += 1
        return self.tls_crypt.wrap(packet, self.wrap_id, 77)

    def _control_packets(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        for key in self.keys.values():
            for pid, (opcode, payload) in key.sender.due(now):
                acks = key.receiver.take_acks(4)
                out.append(
                    ControlPacket(
                        opcode,
                        key.key_id,
                        self.session_id,
                        acks,
                        self.server_session_id if acks else None,
                        pid,
                        payload,
                    ).encode()
                )
            while key.receiver.acks_pending:
                out.append(
                    ControlPacket(
                        Opcode.ACK_V1,
                        key.key_id,
                        self.session_id,
                        key.receiver.take_acks(8),
                        self.server_session_id,
                    ).encode()
                )
        return out

    def receive(self, wire: bytes) -> None:
        opcode, key_id = split_first_octet(wire)
        if opcode == Opcode.DATA_V2:
            key = self.keys[key_id]
            assert key.data is not None
            self.received_data.append(key.data.open(wire))
            return
        if self.tls_crypt is not None:
            wire = self.tls_crypt.unwrap(wire)[0]
        pkt = ControlPacket.decode(wire)
        self.server_session_id = pkt.session_id
        if pkt.key_id not in self.keys and pkt.opcode == Opcode.CONTROL_SOFT_RESET_V1:
            self.soft_reset()  # the server renegotiates: answer with our own reset
        key = self.keys[pkt.key_id]
        key.sender.ack(pkt.acks)
        if pkt.packet_id is None or not key.receiver.receive(pkt.packet_id, pkt):
            return
        for ordered in key.receiver.pop_ready():
            if ordered.opcode == Opcode.CONTROL_HARD_RESET_SERVER_V2:
                self._tls_step(key)  # ClientHello
            elif ordered.opcode == Opcode.CONTROL_SOFT_RESET_V1:
                self._tls_step(key)
            elif ordered.opcode == Opcode.CONTROL_V1:
                key.bio_in.write(ordered.payload)
                self._tls_step(key)

    def _tls_step(self, key: _ClientKey) -> None:
        if key.km_sent is None:
            try:
                key.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                key.km_sent = KeyMethod2(
                    self.rng.randbytes(32),
                    self.rng.randbytes(32),
                    self.rng.randbytes(48),
                    "V4,dev-type tun",
                    self.username,
                    self.password,
                    self.peer_info,
                )
                key.tls.write(key.km_sent.encode())
        else:
            while True:
                try:
                    record = key.tls.read(16384)
                except ssl.SSLWantReadError:
                    break
                if key.data is None and record[:4] == b"\0\0\0\0":
                    self._on_server_key_method(key, record)
                else:
                    self._on_messages(split_messages(record))
        out = key.bio_out.read()
        for i in range(0, len(out), 1000):
            key.sender.send((Opcode.CONTROL_V1, out[i : i + 1000]))

    def _on_server_key_method(self, key: _ClientKey, record: bytes) -> None:
        server_km = KeyMethod2.decode(record, from_client=False)
        assert key.km_sent is not None and self.server_session_id is not None
        key.material = derive_data_keys(  # type: ignore[attr-defined]
            key.km_sent, server_km, self.session_id, self.server_session_id
        )
        if key.key_id == 0:
            key.tls.write(encode_message("PUSH_REQUEST"))
        else:
            assert self.cipher is not None
            key.data = DataChannelKey(
                self.cipher,
                key.material,
                key_id=key.key_id,
                server=False,  # type: ignore[attr-defined]
            )
            self.send_key = key.key_id

    def _on_messages(self, messages: list[str]) -> None:
        for message in messages:
            self.messages.append(message)
            if message.startswith("PUSH_REPLY"):
                options = dict(o.split(" ", 1) for o in message.split(",")[1:] if " " in o)
                self.cipher = options["cipher"]
                self.peer_id = int(options["peer-id"])
                key = self.keys[0]
                if key.data is None:
                    key.data = DataChannelKey(
                        self.cipher,
                        key.material,
                        key_id=0,
                        server=False,  # type: ignore[attr-defined]
                    )

    def send_data(self, payload: bytes) -> None:
        key = self.keys[self.send_key]
        assert key.data is not None
        self.pending_data.append(key.data.seal(payload, self.peer_id))

    def control_message(self, text: str) -> None:
        key = self.keys[self.send_key]
        key.tls.write(encode_message(text))
        key.sender.send((Opcode.CONTROL_V1, key.bio_out.read()))


# --- Helpers ---------------------------------------------------------------------------


class Users:
    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []
        self.push = PUSH

    def __call__(self, request: AuthRequest) -> AuthDecision:
        self.requests.append(request)
        if request.username == "alice" and request.password == "right-Password1":
            return AuthDecision(True, push=self.push)
        return AuthDecision(False, "wrong password")


def ip_packet(src: str, dst: str, body: bytes = b"hello") -> bytes:
    total = 20 + len(body)
    header = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0, 0, 64, 17, 0, 0])
    return header + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + body


def ip6_packet(src: str, dst: str, body: bytes = b"hello") -> bytes:
    """An IPv6 packet (RFC 8200 §3: next header UDP, hop limit 64)."""
    header = bytes([0x60, 0, 0, 0, len(body) >> 8, len(body) & 0xFF, 17, 64])
    return header + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + body


@dataclass
class Pair:
    server: Server
    client: MiniClient
    users: Users
    now: float = 1000.0
    events: list[object] = field(default_factory=list)
    tun: list[bytes] = field(default_factory=list)
    remote: tuple[str, int] = ("198.51.100.1", 40000)
    drop: Callable[[bytes], bool] | None = None
    sent_to_server: list[bytes] = field(default_factory=list)

    @property
    def session(self) -> ServerSession:
        return self.server.sessions[self.remote]

    def pump(self, rounds: int = 30) -> None:
        for _ in range(rounds):
            moved = False
            for packet in self.client.packets(self.now):
                moved = True
                if self.drop is not None and self.drop(packet):
                    continue
                self.sent_to_server.append(packet)
                session = self.server.receive(packet, self.remote, self.now)
                if session is not None:
                    self._collect(session)
            for session in list(self.server.sessions.values()):
                self._collect(session)
            if not moved:
                return

    def _collect(self, session: ServerSession) -> None:
        out = self.server.collect(session, self.now)
        self.events += out.events
        self.tun += out.to_tun
        for packet in out.to_client:
            self.client.receive(packet)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for session in self.server.handle_timer(self.now):
            self._collect(session)
        self.pump()


def make_pair(
    server_pki: tuple[ServerPki, Path],
    tls_crypt_key: bytes | None = None,
    *,
    tcp: bool = False,
    **client_kw: object,
) -> Pair:
    pki, directory = server_pki
    settings = SessionSettings(
        server_context(str(directory / "server.pem"), str(directory / "server.key")),
        ciphers=("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"),
        tls_crypt=TlsCrypt(tls_crypt_key) if tls_crypt_key is not None else None,
        tcp=tcp,
    )
    rng = random.Random(7)
    users = Users()
    server = Server(settings, users, random=rng.randbytes)
    return Pair(server, MiniClient(pki.ca_pem, **client_kw), users)  # type: ignore[arg-type]


# --- Tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"])
def test_connect_push_and_data_both_ways(server_pki: tuple[ServerPki, Path], cipher: str) -> None:
    pair = make_pair(server_pki, ciphers=cipher)
    pair.pump()
    assert any(m.startswith("PUSH_REPLY") for m in pair.client.messages)
    reply = next(m for m in pair.client.messages if m.startswith("PUSH_REPLY"))
    assert "ifconfig 192.0.2.2 255.255.255.0" in reply
    assert "route 203.0.113.0 255.255.255.0" in reply
    assert "dhcp-option DNS 203.0.113.53" in reply
    assert "topology subnet" in reply and f"cipher {cipher}" in reply
    assert "tls-ekm" not in reply  # Python's ssl cannot export keying material
    assert any(isinstance(e, ClientAuthenticated) and e.cipher == cipher for e in pair.events)
    # The authenticator saw the credentials, and nothing of the password in its repr.
    request = pair.users.requests[0]
    assert request.username == "alice" and "right-Password1" not in repr(request)

    pair.client.send_data(ip_packet("192.0.2.2", "203.0.113.10"))
    pair.pump()
    assert pair.tun == [ip_packet("192.0.2.2", "203.0.113.10")]
    reply_packet = ip_packet("203.0.113.10", "192.0.2.2", b"pong")
    assert pair.server.route_from_tun(reply_packet, pair.now) is pair.session
    pair._collect(pair.session)
    assert pair.client.received_data == [reply_packet]


@pytest.mark.parametrize("tcp", [False, True])
def test_a_tcp_client_is_told_to_turn_nagle_off(
    server_pki: tuple[ServerPki, Path], tcp: bool
) -> None:
    # OpenVPN 2.6 clients keep Nagle's algorithm on their TCP socket unless pushed
    # this, and then wait up to a delayed ACK (40 ms) whenever control and data mix.
    pair = make_pair(server_pki, tcp=tcp)
    pair.pump()
    reply = next(m for m in pair.client.messages if m.startswith("PUSH_REPLY"))
    assert ("socket-flags TCP_NODELAY" in reply.split(",")) is tcp


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        # DAD's and MLD's before an address. A link-local source (a router
        # solicitation's) is checked in tests/test_p2c_netns.py with a real client's
        # kernel: the address guard keeps link-local literals out of the tree.
        ("::", "data_link_local"),
        ("2001:db8:c::99", "data_spoofed_source"),
    ],
)
def test_a_clients_link_scope_ipv6_is_dropped_but_not_counted_as_spoofing(
    server_pki: tuple[ServerPki, Path], source: str, reason: str
) -> None:
    # Every client's kernel sends a router solicitation or two on its new TUN; an
    # operator must not see a spoofing counter grow with every login.
    pair = make_pair(server_pki)
    pair.pump()
    pair.client.send_data(ip6_packet(source, "2001:db8:b::10"))
    pair.pump()
    assert pair.tun == []
    assert dict(pair.session.drops) == {reason: 1}


DUAL = dataclasses.replace(
    PUSH,
    address6=ipaddress.IPv6Interface("2001:db8:c::2/64"),
    gateway6=ipaddress.IPv6Address("2001:db8:c::1"),
    routes6=(ipaddress.IPv6Network("2001:db8:b::/64"),),
)


def test_a_dual_stack_client_is_pushed_ipv6_and_routed_by_either_address(
    server_pki: tuple[ServerPki, Path],
) -> None:
    pair = make_pair(server_pki)
    pair.users.push = DUAL
    pair.pump()
    reply = next(m for m in pair.client.messages if m.startswith("PUSH_REPLY"))
    options = reply.split(",")
    # OpenVPN 2.6's syntax: the address with its prefix and the server's end, then
    # the routes through it.
    assert "ifconfig-ipv6 2001:db8:c::2/64 2001:db8:c::1" in options
    assert "route-ipv6 2001:db8:b::/64" in options
    assert options.index("ifconfig-ipv6 2001:db8:c::2/64 2001:db8:c::1") < options.index(
        "route-ipv6 2001:db8:b::/64"
    )
    assert "ifconfig 192.0.2.2 255.255.255.0" in options
    # Its packets from its IPv6 address go to the TUN; from another one they are dropped.
    good6 = ip6_packet("2001:db8:c::2", "2001:db8:b::10")
    pair.client.send_data(good6)
    pair.client.send_data(ip6_packet("2001:db8:c::99", "2001:db8:b::10"))
    pair.client.send_data(ip_packet("192.0.2.2", "203.0.113.10"))
    pair.pump()
    assert pair.tun == [good6, ip_packet("192.0.2.2", "203.0.113.10")]
    assert pair.session.drops["data_spoofed_source"] == 1
    # Packets from the TUN find it by either address.
    back6 = ip6_packet("2001:db8:b::10", "2001:db8:c::2", b"pong")
    assert pair.server.route_from_tun(back6, pair.now) is pair.session
    assert pair.server.route_from_tun(ip6_packet("2001:db8:b::10", "2001:db8:c::3"), 0) is None
    assert pair.server.route_from_tun(b"\x60" + bytes(20), pair.now) is None  # truncated
    assert pair.server.drops == {"tun_no_client": 1, "tun_not_ip": 1}
    pair._collect(pair.session)
    assert pair.client.received_data == [back6]
    # Gone, the session no longer owns either address.
    pair.server.remove(pair.remote)
    assert pair.server.session_for(ipaddress.IPv6Address("2001:db8:c::2")) is None
    assert pair.server.session_for(ipaddress.IPv4Address("192.0.2.2")) is None


def test_a_client_without_an_ipv6_address_sends_no_ipv6(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki)
    pair.pump()
    reply = next(m for m in pair.client.messages if m.startswith("PUSH_REPLY"))
    assert "ifconfig-ipv6" not in reply and "route-ipv6" not in reply
    pair.client.send_data(ip6_packet("2001:db8:c::2", "2001:db8:b::10"))
    pair.pump()
    assert pair.tun == [] and pair.session.drops["data_spoofed_source"] == 1


def test_push_request_without_request_push_bit(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki, iv_proto=2)
    pair.pump()
    replies = [m for m in pair.client.messages if m.startswith("PUSH_REPLY")]
    assert len(replies) == 1  # only in answer to PUSH_REQUEST
    assert "protocol-flags cc-exit" not in replies[0]


def test_wrong_password_gets_auth_failed_and_session_closes(
    server_pki: tuple[ServerPki, Path],
) -> None:
    pair = make_pair(server_pki, password="wrong-Password")
    pair.pump()
    assert "AUTH_FAILED" in pair.client.messages
    assert not any(m.startswith("PUSH_REPLY") for m in pair.client.messages)
    assert [type(e) for e in pair.events] == [ClientAuthFailed]
    assert pair.session.address is None
    pair.advance(6)
    assert isinstance(pair.events[-1], ClientDisconnected)
    assert pair.remote not in pair.server.sessions


def test_no_common_cipher_is_refused(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki, ciphers="BF-CBC")
    pair.pump()
    assert "AUTH_FAILED" in pair.client.messages
    failed = [e for e in pair.events if isinstance(e, ClientAuthFailed)]
    assert failed and failed[0].reason == "no common data cipher"
    assert pair.users.requests == []


def test_hostile_packets_are_dropped_and_counted(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki)
    pair.pump()
    session = pair.session
    data = pair.client.keys[0].data
    assert data is not None
    good = data.seal(ip_packet("192.0.2.2", "203.0.113.10"), pair.client.peer_id)
    control = next(p for p in pair.sent_to_server if split_first_octet(p)[0] == Opcode.CONTROL_V1)
    hostile = [
        good,
        good,  # replayed data packet
        good[:10],  # truncated
        good[:-1] + bytes([good[-1] ^ 1]),  # tampered
        data.seal(ip_packet("192.0.2.99", "203.0.113.10"), 0),  # spoofed source
        control,  # replayed control packet
        control[:5],  # truncated control
        b"\xff" * 40,  # garbage opcode
        b"",
    ]
    for packet in hostile:
        pair.server.receive(packet, pair.remote, pair.now)
    assert len(pair.server.collect(session, pair.now).to_tun) == 1
    assert session.drops["data_replay"] >= 2
    assert session.drops["data_truncated"] == 1
    assert session.drops["data_spoofed_source"] == 1
    assert session.drops["data_link_local"] == 0
    assert session.drops["control_replay"] == 1
    assert session.drops["control_malformed"] == 2
    assert session.drops["packet_empty"] == 1
    assert session.established

    # Unknown remotes cost only a counter.
    for packet in (good, control, b"\x38" + bytes(5)):
        assert pair.server.receive(packet, ("198.51.100.9", 1), pair.now) is None
    assert pair.server.drops["no_session"] == 2
    assert pair.server.drops["malformed_initial"] == 1


def test_keepalive_ping_and_timeout(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki)
    pair.pump()
    pair.advance(11)
    assert PING_MAGIC in pair.client.received_data
    pair.client.send_data(PING_MAGIC)
    pair.pump()
    assert pair.tun == []  # a ping is not for the TUN
    for _ in range(13):
        pair.advance(10)
    assert isinstance(pair.events[-1], ClientDisconnected)
    assert pair.events[-1].reason == "ping timeout"


def test_explicit_exit_notify(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki)
    pair.pump()
    pair.client.send_data(OCC_MAGIC + bytes([OCC_EXIT]))
    pair.pump()
    assert pair.events[-1] == ClientDisconnected("client exited")
    pair2 = make_pair(server_pki)
    pair2.pump()
    pair2.client.control_message("EXIT")
    pair2.pump()
    assert pair2.events[-1] == ClientDisconnected("client exited")


@pytest.mark.parametrize("initiator", ["client", "server"])
def test_soft_reset_keeps_traffic_flowing(
    server_pki: tuple[ServerPki, Path], initiator: str
) -> None:
    pair = make_pair(server_pki)
    pair.pump()
    session = pair.session
    old = pair.client.keys[0].data
    assert old is not None
    if initiator == "client":
        pair.client.soft_reset()
    else:
        session.renegotiate(pair.now)
        pair._collect(session)
    # Data sealed with the old key while the new one is negotiated still arrives.
    in_flight = old.seal(ip_packet("192.0.2.2", "203.0.113.10", b"old"), 0)
    pair.pump()
    assert any(isinstance(e, DataKeysReady) and e.renegotiation for e in pair.events)
    assert pair.client.send_key == 1
    pair.server.receive(in_flight, pair.remote, pair.now)
    pair.client.send_data(ip_packet("192.0.2.2", "203.0.113.10", b"new"))
    pair.pump()
    assert [p[-3:] for p in pair.tun] == [b"old", b"new"]
    # The server now seals with key 1.
    pair.server.route_from_tun(ip_packet("203.0.113.10", "192.0.2.2"), pair.now)
    out = pair.server.collect(session, pair.now).to_client
    assert split_first_octet(out[0]) == (Opcode.DATA_V2, 1)
    # After the transition window the old key no longer decrypts.
    pair.advance(61)
    pair.server.receive(old.seal(ip_packet("192.0.2.2", "203.0.113.10"), 0), pair.remote, pair.now)
    assert session.drops["data_no_key"] == 1
    assert len(pair.users.requests) == 2  # the renegotiation re-authenticated


def test_lossy_udp_still_connects(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki)
    rng = random.Random(3)
    pair.drop = lambda _packet: rng.random() < 0.3
    for _ in range(40):
        pair.advance(2.5)
        if pair.client.cipher is not None:
            break
    assert pair.client.cipher == "AES-256-GCM"


def test_handshake_that_never_finishes_times_out(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki)
    pair.drop = lambda packet: split_first_octet(packet)[0] == Opcode.CONTROL_V1
    pair.pump()
    assert pair.remote in pair.server.sessions
    for _ in range(7):
        pair.advance(10)
    assert pair.remote not in pair.server.sessions
    assert isinstance(pair.events[-1], ClientDisconnected)


def test_new_reset_from_same_address_replaces_session(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki)
    pair.pump()
    first = pair.session
    pair.client = MiniClient(server_pki[0].ca_pem, seed=2)
    pair.pump()
    assert pair.session is not first
    assert pair.client.cipher is not None
    with pytest.raises(PacketError):
        ControlPacket.decode(b"")


def test_tls_crypt_session(server_pki: tuple[ServerPki, Path]) -> None:
    key = bytes(range(256))
    pair = make_pair(server_pki, key, tls_crypt=TlsCrypt(key, server=False))
    pair.pump()
    assert pair.client.cipher == "AES-256-GCM"
    session = pair.session
    control = next(p for p in pair.sent_to_server if split_first_octet(p)[0] == Opcode.CONTROL_V1)
    pair.server.receive(control, pair.remote, pair.now)  # replayed wrapped packet
    pair.server.receive(control[:-1] + b"\0", pair.remote, pair.now)  # forged
    assert session.drops["tls_crypt_replay"] == 1
    assert session.drops["tls_crypt_failed"] == 1
    # A client without the key never gets a session.
    stranger = MiniClient(server_pki[0].ca_pem, seed=9)
    for packet in stranger.packets(pair.now):
        assert pair.server.receive(packet, ("198.51.100.7", 9), pair.now) is None
    assert pair.server.drops["malformed_initial"] == 1


def test_deferred_decision_waits_then_connects(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki)
    waiting: list[AuthRequest] = []

    def later(request: AuthRequest) -> AuthPending:
        waiting.append(request)
        return AUTH_PENDING

    pair.server._authenticate = later  # type: ignore[assignment]
    pair.pump()
    session = pair.session
    assert len(waiting) == 1 and session.auth_pending and not session.established
    assert pair.client.cipher is None  # no PUSH_REPLY before the decision
    request = waiting[0]
    assert (request.session_id, request.key_id) == (session.session_id, 0)
    decision = AuthDecision(True, push=PUSH, username="alice@cert")
    assert session.complete_auth(request.key_id, decision, pair.now)
    assert not session.complete_auth(request.key_id, decision, pair.now)  # only once
    pair._collect(session)
    pair.pump()
    assert pair.client.cipher == "AES-256-GCM"
    assert session.username == "alice@cert"
    assert any(
        isinstance(e, ClientAuthenticated) and e.username == "alice@cert" for e in pair.events
    )


def test_deferred_refusal_and_a_decision_that_never_comes(
    server_pki: tuple[ServerPki, Path],
) -> None:
    pair = make_pair(server_pki)
    waiting: list[AuthRequest] = []
    pair.server._authenticate = lambda r: waiting.append(r) or AUTH_PENDING  # type: ignore[assignment]
    pair.pump()
    pair.session.complete_auth(0, AuthDecision(False, "wrong password"), pair.now)
    pair._collect(pair.session)
    pair.pump()
    assert "AUTH_FAILED" in pair.client.messages
    # A second client whose decision never comes is closed at the handshake window.
    pair.client = MiniClient(server_pki[0].ca_pem, seed=5)
    pair.remote = ("198.51.100.1", 40001)
    pair.pump()
    session = pair.session
    pair.advance(61)
    assert session.closed and session.close_reason == "handshake timeout"
    assert pair.remote not in pair.server.sessions


def test_unfinished_handshakes_evict_the_oldest(server_pki: tuple[ServerPki, Path]) -> None:
    pair = make_pair(server_pki)
    ended: list[ServerSession] = []
    pair.server.max_half_open = 3
    pair.server._on_end = ended.append
    for port in range(5):
        stranger = MiniClient(server_pki[0].ca_pem, seed=20 + port)
        for packet in stranger.packets(pair.now):
            pair.server.receive(packet, ("198.51.100.9", port), pair.now)
    assert len(pair.server.sessions) == 3
    assert pair.server.drops["half_open_evicted"] == 2
    assert [s.remote for s in ended] == [("198.51.100.9", 0), ("198.51.100.9", 1)]
    assert all(s.closed for s in ended)
    for session in list(pair.server.sessions.values()):
        pair.server.collect(session, pair.now)  # the strangers' answers go nowhere
    pair.pump()  # a real client still gets in
    assert pair.client.cipher == "AES-256-GCM"
