"""Fuzz targets: one per network entry point, each a ``run(data)`` that checks its contract.

A target raises :class:`Finding` when a property breaks (wrong error type, state changed
by a rejected message, a table that grows past its limit). Any other exception that
leaves ``run`` is itself a finding: it escaped the entry point. The hypothesis
properties (``tests/fuzz/test_*.py``) and the dedicated run (``bench/fuzz.py``) drive the
same targets, the former with structured inputs, the latter with seeded mutations of
each target's ``seeds()``.

Contracts (from the modules' docstrings):

* codec (``decode_header``, ``decode_message``, payload decoders): only ``InvalidSyntax``
  and its subclasses; what decodes re-encodes and decodes to the same message.
* SK open, SKF reassembly: ``InvalidSyntax``, ``IntegrityCheckFailed`` and
  ``FragmentLimitExceeded`` only; the reassembler stays within its limits.
* COOKIE check: ``InvalidSyntax`` only (``InvalidCookie`` is handled inside).
* endpoint and IKE SA: nothing escapes; a message that does not authenticate leaves an
  established SA exactly as it was; a request refused with an error notify (or dropped)
  leaves it as it was but for the Message ID it used up.
* ESP: ``decapsulate`` returns a ``DropReason`` or (inner, next header), never raises;
  a packet dropped before authentication moves nothing; ``decapsulate_batch`` gives what
  one-by-one ``decapsulate`` gives.
* data plane: nothing escapes and every datagram is accounted for exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import random
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from daemon.childsa import ChildSaEntry, entry_from_event
from daemon.dataplane import DataPlane
from daemon.packet import flow_of, fragment_ipv4, too_big_reply
from esp.drops import DropReason
from esp.replay import ReplayWindow
from esp.sa import PARTS_PER_PACKET, EspSA
from esp.udpencap import DatagramKind, classify, frame_ike
from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.codec import (
    Authentication,
    Configuration,
    Delete,
    Eap,
    IkeHeader,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    Transform,
    TsI,
    TsR,
    decode_header,
    decode_message,
    decode_payloads,
    encode_message,
    encode_payloads,
)
from ikev2.codec.cp import decode_attribute
from ikev2.codec.eap import EapIdentity, eap_data, eap_payload
from ikev2.codec.message import generic_header
from ikev2.codec.payloads import DECODERS
from ikev2.config import EncapMode, PostQuantumKey
from ikev2.constants import EapCode, ExchangeType, NotifyType, ProtocolId
from ikev2.cookies import CookieJar, CookiePolicy, InvalidCookie
from ikev2.crypto.dh import KEMS, respond_key_exchange
from ikev2.crypto.dh import KeyExchange as KeyPair
from ikev2.crypto.rng import DeterministicRandom
from ikev2.crypto.sk import SkCipher
from ikev2.eap_mschapv2 import EapFailed
from ikev2.eap_tls import MAX_TLS_MESSAGE, EapTlsClient, EapTlsServer
from ikev2.errors import IntegrityCheckFailed, InvalidKeData, InvalidSyntax, LocalProtocolError
from ikev2.events import ChildSaInstalled
from ikev2.fragments import (
    FragmentLimitExceeded,
    FragmentLimits,
    Reassembler,
    fragment_message,
    is_fragmented,
    open_fragment,
)
from ikev2.sa import IkeSa
from ikev2.sa_types import IkeDropReason, IkeSaState
from ikev2.ts import TrafficSelector as IkeTs
from testkit.fuzz.world import (
    A_ADDR,
    B_ADDR,
    ESP_SPI,
    FUZZ_PPK,
    HYBRID_ESP_PROPOSAL,
    HYBRID_PROPOSAL,
    EspKeys,
    Pair,
    esp_keys,
    established,
    half_open_intermediate,
    ipv4_packet,
    is_auth_request,
    is_auth_response,
    seal_raw,
    seal_raw_fragment,
    sk_ciphers,
    waiting_followup,
)
from testkit.ikev2_pair import deliver, on_wire
from testkit.pki import Pki


class Finding(AssertionError):
    """A fuzz property does not hold."""


class Target:
    """One entry point under fuzz."""

    name = "target"
    cost = 1
    """Relative cost of one case; the dedicated run gives cheap targets more cases."""

    def seeds(self) -> list[bytes]:
        """Valid inputs that the seeded loop mutates."""
        return [b""]

    def from_message(self, message: Message) -> bytes | None:
        """This target's input built from a generated message (its header fields and
        payload chain), for structure-aware seeds; None if the target takes no IKE."""
        return None

    def run(self, data: bytes) -> None:
        """Feed one input; raise ``Finding`` if a property breaks."""
        raise NotImplementedError

    def check_bounds(self) -> None:
        """Raise ``Finding`` if a table the target fills grew past its limit."""


def _only(allowed: tuple[type[BaseException], ...], call: Callable[[], Any]) -> Any:
    """Run ``call``; an error of an ``allowed`` type is the documented refusal."""
    try:
        return call()
    except allowed:
        return None


# --- codec --------------------------------------------------------------------------------


def _sample_messages() -> list[Message]:
    sa = SecurityAssociation(
        (
            Proposal(1, 1, b"", (Transform.make(1, 20, 256), Transform(2, 7), Transform(4, 31))),
            Proposal(2, 3, b"\x01\x02\x03\x04", (Transform.make(1, 12, 128), Transform(3, 12))),
        )
    )
    ts = TrafficSelector(
        ipaddress.IPv4Address("192.0.2.0"), ipaddress.IPv4Address("192.0.2.255"), 0, 0, 65535
    )
    base = dict(spi_i=b"\x11" * 8, spi_r=bytes(8), message_id=0, initiator=True, response=False)
    return [
        Message(
            exchange_type=ExchangeType.IKE_SA_INIT,
            payloads=(
                sa,
                KeyExchange(31, bytes(32)),
                Nonce(bytes(range(32))),
                Notify(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20)),
                Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
            ),
            **base,  # type: ignore[arg-type]
        ),
        Message(
            exchange_type=ExchangeType.INFORMATIONAL,
            payloads=(Delete(3, (b"\x01\x02\x03\x04",)), Notify(16384), TsI((ts,)), TsR((ts,))),
            **base,  # type: ignore[arg-type]
        ),
        invalid_spi_hint(b"\x01\x02\x03\x04"),
        invalid_ike_spi_answer(b"\x11" * 8, b"\x22" * 8, 1),
    ]


def invalid_spi_hint(spi: bytes) -> Message:
    """The unprotected INVALID_SPI notification of RFC 7296 §1.5, sent by a peer that
    lost its SAs for ESP of an SPI it does not know: both IKE SPIs zero, an
    INFORMATIONAL request with Message ID 0, the ESP SPI as the Notify's data."""
    notify = Notify(NotifyType.INVALID_SPI, spi, ProtocolId.ESP)
    return Message(bytes(8), bytes(8), ExchangeType.INFORMATIONAL, 0, True, False, (notify,))


def invalid_ike_spi_answer(spi_i: bytes, spi_r: bytes, message_id: int) -> Message:
    """The unprotected INVALID_IKE_SPI answer of §2.21.4 to a request (sent as the
    initiator) for an IKE SA the peer does not know: its SPIs and Message ID, R set."""
    notify = Notify(NotifyType.INVALID_IKE_SPI)
    return Message(spi_i, spi_r, ExchangeType.INFORMATIONAL, message_id, False, True, (notify,))


class CodecTarget(Target):
    """``decode_header``, ``decode_message`` and every payload decoder."""

    name = "codec"

    def __init__(self, extra_seeds: list[bytes] | None = None) -> None:
        self._extra = extra_seeds or []

    def seeds(self) -> list[bytes]:
        return [encode_message(m) for m in _sample_messages()] + self._extra

    def from_message(self, message: Message) -> bytes | None:
        return encode_message(message)

    def run(self, data: bytes) -> None:
        _only((InvalidSyntax,), lambda: decode_header(data))
        message = _only((InvalidSyntax,), lambda: decode_message(data))
        if message is not None:
            # What we accepted must be something we can say again (RFC 7296 §3: the
            # codec's own encoding), and it must mean the same.
            again = decode_message(encode_message(message))
            if again != message:
                raise Finding(f"decode(encode(m)) != m for {message!r}")
        if data:
            # The same octets as a payload chain starting with any type.
            _only((InvalidSyntax,), lambda: decode_payloads(data[0], data[1:]))
            _only((InvalidSyntax,), lambda: decode_payloads(data[0], data[1:], inner=True))


class PayloadTarget(Target):
    """Each payload body decoder, alone and the way the network reaches it (one payload
    behind a correct generic header, RFC 7296 §3.2). The first octet picks the type."""

    name = "payloads"
    _types = sorted(DECODERS)

    def seeds(self) -> list[bytes]:
        out = []
        for message in _sample_messages():
            for payload in message.payloads:
                out.append(bytes([payload.payload_type]) + payload.encode_body())
        return out

    def from_message(self, message: Message) -> bytes | None:
        if not message.payloads:
            return None
        payload = message.payloads[0]
        return bytes([payload.payload_type]) + payload.encode_body()

    def run(self, data: bytes) -> None:
        if not data or len(data) > 0xFFF0:
            return
        kind = data[0] if data[0] in DECODERS else self._types[data[0] % len(self._types)]
        # Called alone, a decoder raises only InvalidSyntax too (Payload.decode_body).
        _only((InvalidSyntax,), lambda: DECODERS[kind](data[1:]))
        chain = generic_header(0, len(data) - 1) + data[1:]
        decoded = _only((InvalidSyntax,), lambda: decode_payloads(kind, chain))
        if decoded is not None:
            first, again = encode_payloads(decoded)
            if decode_payloads(first, again) != decoded:
                raise Finding(f"payload does not round-trip: {decoded!r}")
            for payload in decoded:
                _contents(payload)


def _contents(payload: object) -> None:
    """What an EAP or CP payload carries is decoded too, and refused only with
    InvalidSyntax: the remote-access server reads it from unauthenticated clients'
    IKE_AUTH (the EAP rounds come before the client's AUTH, RFC 7296 §2.16)."""
    if isinstance(payload, Eap) and payload.code in (1, 2):
        _only((InvalidSyntax,), lambda: eap_data(payload))
    elif isinstance(payload, Configuration):
        for attr in payload.attributes:
            _only((InvalidSyntax,), functools.partial(decode_attribute, attr))


# --- SK payload, fragments, COOKIEs -------------------------------------------------------

_TEMPLATE = IkeHeader(
    spi_i=b"\x01" * 8,
    spi_r=b"\x02" * 8,
    next_payload=0,
    exchange_type=ExchangeType.INFORMATIONAL,
    message_id=7,
    length=0,
    initiator=True,
    response=False,
)


def _inner_seed_chains() -> list[tuple[int, bytes]]:
    out = []
    for message in _sample_messages():
        first, chain = encode_payloads(message.payloads)
        out.append((first, chain))
    return out


class SkOpenTarget(Target):
    """``SkCipher.open`` on whole received messages (tampered, truncated, anything)."""

    def __init__(self, cipher_name: str) -> None:
        self.cipher = sk_ciphers()[cipher_name]
        self.name = f"sk_open[{cipher_name}]"

    def seeds(self) -> list[bytes]:
        return [seal_raw(self.cipher, _TEMPLATE, f, chain) for f, chain in _inner_seed_chains()]

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        return seal_raw(self.cipher, _TEMPLATE, first, chain)

    def run(self, data: bytes) -> None:
        _only((InvalidSyntax, IntegrityCheckFailed), lambda: self.cipher.open(data))


class SkInnerTarget(Target):
    """What is inside an SK payload that authenticates: first octet is the first inner
    payload type, second the Pad Length (0xFF: correct), the rest the inner chain."""

    def __init__(self, cipher_name: str) -> None:
        self.cipher = sk_ciphers()[cipher_name]
        self.name = f"sk_inner[{cipher_name}]"

    def seeds(self) -> list[bytes]:
        return [bytes([f, 0xFF]) + chain for f, chain in _inner_seed_chains()]

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        return bytes([first, 0xFF]) + chain

    def run(self, data: bytes) -> None:
        if len(data) < 2:
            return
        pad = None if data[1] == 0xFF else data[1]
        sealed = seal_raw(self.cipher, _TEMPLATE, data[0], data[2:], pad)
        try:
            self.cipher.open(sealed)
        except IntegrityCheckFailed as exc:
            raise Finding(f"a correctly sealed SK payload does not verify: {exc}") from exc
        except InvalidSyntax:
            pass


class FragmentTarget(Target):
    """``Reassembler.receive``: authenticated SKF messages with any Fragment Number,
    Total Fragments, Message ID and chunk, plus raw (tampered) SKF octets.

    Layout of an input: flags (1: bit 0 raw, bit 1 response), message ID (1),
    number (2), total (2), first payload (1), chunk.
    """

    cost = 2

    def __init__(self, cipher_name: str = "aes256gcm16") -> None:
        self.cipher = sk_ciphers()[cipher_name]
        self.name = f"fragments[{cipher_name}]"
        self.limits = FragmentLimits(max_fragments=8, max_message_len=4096, max_pending=3)
        self.reassembler = Reassembler(self.limits)
        self.now = 0.0

    def seeds(self) -> list[bytes]:
        out = []
        for first, chain in _inner_seed_chains():
            n = 3
            size = len(chain) // n + 1
            for i in range(n):
                out.append(
                    bytes([0, 7])
                    + struct.pack("!HHB", i + 1, n, first)
                    + chain[i * size : (i + 1) * size]
                )
        message = dataclasses.replace(_sample_messages()[1], encrypted=True)
        for raw in fragment_message(message, self.cipher, DeterministicRandom(b"f"), 200):
            out.append(b"\x01" + raw)
        return out

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        # One complete fragment: its chunk is a whole inner payload chain.
        return bytes([0, message.message_id & 0xFF]) + struct.pack("!HHB", 1, 1, first) + chain

    def run(self, data: bytes) -> None:
        if len(data) < 7:
            return
        self.now += 0.25
        if data[0] & 1:
            raw = data[1:]
        else:
            number, total, first = struct.unpack("!HHB", data[2:7])
            template = dataclasses.replace(
                _TEMPLATE, message_id=data[1] % 4, response=bool(data[0] & 2)
            )
            raw = seal_raw_fragment(self.cipher, template, first, number, total, data[7:])
            # What we sealed must authenticate; only its contents may be refused.
            try:
                open_fragment(self.cipher, raw)
            except IntegrityCheckFailed as exc:
                raise Finding(f"a correctly sealed SKF payload does not verify: {exc}") from exc
            except InvalidSyntax:
                pass
        allowed = (InvalidSyntax, IntegrityCheckFailed, FragmentLimitExceeded)
        _only(allowed, lambda: self.reassembler.receive(raw, self.cipher, self.now))
        self.check_bounds()

    def check_bounds(self) -> None:
        pending = self.reassembler._pending
        if len(pending) > self.limits.max_pending:
            raise Finding(f"{len(pending)} messages pending, limit {self.limits.max_pending}")
        for p in pending.values():
            if p.size > self.limits.max_message_len or len(p.chunks) > self.limits.max_fragments:
                raise Finding(f"pending message holds {p.size} octets in {len(p.chunks)} chunks")


class CookieTarget(Target):
    """``CookieJar.check_request`` on decoded IKE_SA_INIT requests, ``verify`` on octets."""

    name = "cookies"

    def __init__(self) -> None:
        self.jar = CookieJar(
            CookiePolicy(demand_above=0, rotate_interval=10.0, grace=2.0),
            DeterministicRandom(b"jar"),
            0.0,
        )
        self.now = 0.0

    def seeds(self) -> list[bytes]:
        request = _sample_messages()[0]
        cookie = self.jar.make(bytes(range(32)), A_ADDR, request.spi_i, 0.0)
        with_cookie = dataclasses.replace(
            request, payloads=(Notify(NotifyType.COOKIE, cookie), *request.payloads)
        )
        return [encode_message(request), encode_message(with_cookie)]

    def from_message(self, message: Message) -> bytes | None:
        return encode_message(message)

    def run(self, data: bytes) -> None:
        self.now += 0.5
        message = _only((InvalidSyntax,), lambda: decode_message(data))
        if message is not None:
            answer = _only(
                (InvalidSyntax,), lambda: self.jar.check_request(message, A_ADDR, 5, self.now)
            )
            if answer is not None and not isinstance(answer, Message):
                raise Finding(f"check_request returned {answer!r}")
        nonce = data[:32].ljust(16, b"\x00")
        try:
            self.jar.verify(data, nonce, A_ADDR, b"\x11" * 8, self.now)
        except InvalidCookie:
            return
        raise Finding("a COOKIE we never made verified")


class EapTlsTarget(Target):
    """``EapTlsServer.process`` after its Start, on a run of EAP-TLS responses: each is
    a two-octet length and the Type-Data after the EAP-TLS Type (flags, TLS Message
    Length, fragment). The server may answer, or refuse with ``EapFailed`` and an
    EAP-Failure; it never says Success without a key, and never holds more than one
    TLS flight's worth of reassembled data."""

    name = "eap_tls"
    cost = 4

    def __init__(self) -> None:
        pki = Pki()
        server, user = pki.issue("vpn.example.net"), pki.issue_client("alice")
        self.credentials = LocalCredentials.from_pem(server.cert_pem, server.key_pem)
        self.user = LocalCredentials.from_pem(user.cert_pem, user.key_pem)
        self.anchors = TrustAnchors.from_pem(pki.ca.cert_pem)

    def _server(self) -> tuple[EapTlsServer, Eap]:
        """A server past its Identity round, and its EAP-TLS Start."""
        server = EapTlsServer(
            DeterministicRandom(b"eap"), self.credentials, self.anchors, time.time, None, 200
        )
        start = server.process(
            eap_payload(EapCode.RESPONSE, server.identifier, EapIdentity(b"alice"))
        )
        return server, start

    def seeds(self) -> list[bytes]:
        """A real client's responses, up to the EAP-Success."""
        server, packet = self._server()
        client = EapTlsClient("alice", self.user, fragment_size=150)
        out = b""
        while packet.code == EapCode.REQUEST:
            answer = client.process(packet)
            if answer is None:
                break
            out += len(answer.data[1:]).to_bytes(2, "big") + answer.data[1:]
            packet = server.process(answer)
        return [out]

    def run(self, data: bytes) -> None:
        server, start = self._server()
        identifier, rest = start.identifier, data
        while len(rest) >= 2:
            size = int.from_bytes(rest[:2], "big")
            body, rest = rest[2 : 2 + size], rest[2 + size :]
            try:
                reply = server.process(Eap(EapCode.RESPONSE, identifier, bytes([13]) + body))
            except EapFailed as exc:
                if exc.eap is None or exc.eap.code != EapCode.FAILURE:
                    raise Finding(f"refusal without an EAP-Failure: {exc}") from None
                return
            if reply.code == EapCode.SUCCESS and server.msk is None:
                raise Finding("EAP-Success without an MSK")
            if len(server._framing._incoming) > MAX_TLS_MESSAGE:
                raise Finding(f"{len(server._framing._incoming)} octets held for reassembly")
            identifier = reply.identifier


# --- IKE endpoint and SA ------------------------------------------------------------------


def _child_state(sa: IkeSa) -> tuple[Any, ...]:
    return tuple(
        (uid, c.spi_in, c.spi_out, c.deleting, c.rekeying, c.peer_rekey, c.expire_at)
        for uid, c in sorted(sa.children.items())
    )


def snapshot(sa: IkeSa, *, with_ids: bool = True) -> tuple[Any, ...]:
    """The state a rejected message must leave alone: state, keys, Message IDs, window,
    CHILD SAs, fragments pending, peer address."""
    keys = None if sa.keys is None else (sa.keys.sk_d, sa.keys.sk_ei, sa.keys.sk_er)
    ids: tuple[Any, ...] = ()
    if with_ids:
        ids = (sa.tm.next_request_id, sa.tm.expected_request_id, sa.tm.cached_response)
    return (
        sa.state,
        sa.spi_i,
        sa.spi_r,
        keys,
        ids,
        sa.tm.outstanding is None,
        len(sa.tm.pending),
        _child_state(sa),
        len(sa.reassembler),
        sa.remote,
        sa.local,
        sa.ike_rekeying,
        sa.rekeyed_into is not None,
    )


_LIVENESS_CHECK = slice(4, 7)
"""What of a `snapshot` a liveness check changes: the Message IDs, whether a request
is outstanding, and the exchanges queued behind it."""


def _beyond_liveness_check(before: tuple[Any, ...], after: tuple[Any, ...]) -> bool:
    """Whether two `snapshot`s (with ids) differ in more than a liveness check changes:
    a restart hint is never proof, so it deletes and moves nothing (§2.21.4)."""
    cut = _LIVENESS_CHECK
    return before[: cut.start] + before[cut.stop :] != after[: cut.start] + after[cut.stop :]


def _drain(pair: Pair) -> list[bytes]:
    out = []
    for ep in (pair.a, pair.b):
        list(ep.events())
        out += [d.data for d in ep.datagrams_to_send(pair.clock)]
    return out


def _bounded(pair: Pair, limit: int = 16) -> None:
    for ep in (pair.a, pair.b):
        if len(ep._half_open) > limit or len(ep._sas) > limit + 4:
            raise Finding(f"endpoint holds {len(ep._sas)} SAs, {len(ep._half_open)} half open")
        if ep._datagrams or ep._events:
            raise Finding("datagrams or events left behind after a drain")


class EndpointFreshTarget(Target):
    """``Endpoint.receive_message`` on a responder with no SA yet, ports 500 and 4500
    (4500 sorted first as the daemon sorts it, `testkit.ikev2_pair.deliver`).

    Valid IKE_SA_INITs may create half-open SAs: their number stays within
    ``max_half_open`` and the COOKIE threshold, and the clock expires them.
    """

    name = "endpoint_fresh"
    cost = 4

    def __init__(self) -> None:
        self.pair = Pair("fresh")
        self.cases = 0

    def seeds(self) -> list[bytes]:
        pair = established("seeds")
        return [m for m in pair.recorded if len(m) < 4000]

    def from_message(self, message: Message) -> bytes | None:
        # Shaped like an IKE_SA_INIT request, the message that creates state.
        return encode_message(
            dataclasses.replace(
                message,
                spi_r=bytes(8),
                exchange_type=ExchangeType.IKE_SA_INIT,
                message_id=0,
                initiator=True,
                response=False,
            )
        )

    def run(self, data: bytes) -> None:
        self.cases += 1
        b = self.pair.b
        deliver(b, data, (B_ADDR, 500), (A_ADDR, 500), self.pair.clock)
        deliver(b, frame_ike(data), (B_ADDR, 4500), (A_ADDR, 4500), self.pair.clock)
        deliver(b, data, (B_ADDR, 4500), (A_ADDR, 4500), self.pair.clock)
        _drain(self.pair)
        _bounded(self.pair)
        if self.cases % 50 == 0:
            self.pair.clock += 31.0  # past half_open_timeout: the table empties
            b.handle_timer(self.pair.clock)
            _drain(self.pair)


class EstablishedTarget(Target):
    """Raw datagrams (mutated recordings) to both sides of an established IKE SA.

    A datagram that does not authenticate under the receiver's keys must leave its SA
    as it was. One that does (a replayed request the other side never sent) may change
    it; so may a restart hint that the endpoint takes (RFC 7296 §2.21.4: an unprotected
    INVALID_SPI or INVALID_IKE_SPI starts a liveness check at once), but only the
    Message IDs and the exchange queue. The pair is rebuilt after any change.
    """

    name = "established"
    cost = 6
    fragment_size = 200
    """Small enough that IKE_AUTH and the rekey travel as SKF fragments (RFC 7383)."""

    def __init__(self) -> None:
        self.pair = established(fragment_size=self.fragment_size)

    def seeds(self) -> list[bytes]:
        # A rekey, a liveness check and a CHILD SA delete on a twin pair (same seed, so
        # the same SPIs and keys): their messages are new to self.pair.
        twin = established(fragment_size=self.fragment_size)
        (child,) = twin.sa("a").children
        twin.a.check_liveness(twin.sa("a").ike_sa_id, 1.0)
        twin.pump()
        twin.a.rekey_child(child, 2.0)
        twin.pump()
        # INVALID_SPI hints naming each side's outbound SPI, as the peer would after a
        # restart (valid for self.pair, which has the same SPIs), and an INVALID_IKE_SPI
        # answer to a request neither side has out.
        hints = [
            encode_message(invalid_spi_hint(c.spi_out.to_bytes(4, "big")))
            for side in ("a", "b")
            for c in self.pair.sa(side).children.values()
        ]
        sa = self.pair.sa("a")
        hints.append(encode_message(invalid_ike_spi_answer(sa.spi_i, sa.spi_r, 5)))
        return [m for m in twin.recorded if len(m) < 4000] + hints

    def _authentic(self, sa: IkeSa, data: bytes) -> bool:
        if sa.sk is None:
            return False
        try:
            if is_fragmented(data):
                open_fragment(sa.sk.inbound, data)
            else:
                sa.sk.inbound.open(data)
        except (InvalidSyntax, IntegrityCheckFailed):
            return False
        return True

    def from_message(self, message: Message) -> bytes | None:
        # Plaintext under the established SA's SPIs: it must not authenticate.
        sa = self.pair.sa("a")
        return encode_message(dataclasses.replace(message, spi_i=sa.spi_i, spi_r=sa.spi_r))

    def run(self, data: bytes) -> None:
        pair = self.pair
        changed = False
        for side, ep, local in (("b", pair.b, B_ADDR), ("a", pair.a, A_ADDR)):
            sa = pair.sa(side)
            before = snapshot(sa)
            hints = ep.drops[IkeDropReason.RESTART_HINT]
            authentic = self._authentic(sa, data)
            remote = A_ADDR if local == B_ADDR else B_ADDR
            deliver(ep, data, (local, 500), (remote, 500), pair.clock)
            deliver(ep, frame_ike(data), (local, 4500), (remote, 4500), pair.clock)
            _drain(pair)
            after = snapshot(sa)
            if before != after:
                hinted = ep.drops[IkeDropReason.RESTART_HINT] > hints
                if hinted and _beyond_liveness_check(before, after):
                    raise Finding(f"a restart hint changed more of SA {side}: {before} -> {after}")
                if not authentic and not hinted:
                    raise Finding(
                        f"unauthenticated datagram changed SA {side}: {before} -> {after}"
                    )
                changed = True
        _bounded(pair)
        if changed or len(pair.a.ike_sas()) != 1 or len(pair.b.ike_sas()) != 1:
            self.pair = established(fragment_size=self.fragment_size)


# Inputs of the sealed targets: selector (1), first inner payload type (1), inner chain.
_REQUEST_EXCHANGES = (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA)


def _open_reply(cipher: SkCipher, datagrams: list[bytes]) -> Message | None:
    """Decrypt the (possibly fragmented) reply a side sent."""
    reassembler = Reassembler()
    for ike in datagrams:
        if is_fragmented(ike):
            message = reassembler.receive(ike, cipher, 0.0)
            if message is not None:
                return message
        else:
            return cipher.open(ike)
    return None


def _inner_seeds(pair: Pair) -> list[bytes]:
    """Realistic inner chains for requests to b: Delete, notifies, a CHILD SA rekey."""
    sa = pair.sa("a")
    (child,) = sa.children.values()
    spi = child.spi_in.to_bytes(4, "big")
    chains: list[tuple[int, tuple[Payload, ...]]] = [
        (0, (Delete(ProtocolId.ESP, (spi,)),)),
        (0, (Delete(ProtocolId.IKE),)),
        (0, (Notify(NotifyType.INITIAL_CONTACT), Notify(NotifyType.AUTHENTICATION_FAILED))),
        (0, ()),
    ]
    for rekey_ike in (False, True):
        # The initiator's real CHILD SA and IKE SA rekey requests (§1.3.2, §1.3.3).
        twin = established()
        sa_a = twin.sa("a")
        if rekey_ike:
            twin.a.rekey_ike_sa(sa_a.ike_sa_id, 1.0)
        else:
            twin.a.rekey_child(next(iter(sa_a.children)), 1.0)
        held = twin.pump(hold=lambda sender, ike: sender == "a")
        sk = twin.sa("b").sk
        opened = _open_reply(sk.inbound, [ike for _, ike in held]) if sk is not None else None
        if opened is not None:
            chains.append((1, opened.payloads))
    out = []
    for selector, payloads in chains:
        first, raw = encode_payloads(payloads)
        out.append(bytes([selector, first]) + raw)
    return out


class SealedRequestTarget(Target):
    """Authenticated INFORMATIONAL / CREATE_CHILD_SA requests with any inner payloads,
    sealed with the initiator's keys and the Message ID the responder expects.

    Refused (an error notify) or dropped (no answer) requests leave the responder's SA
    as it was (RFC 7296 §2.21); answered ones may change it, and the pair is rebuilt.
    """

    name = "sealed_request"
    cost = 8

    def __init__(self) -> None:
        self.pair = established()

    def seeds(self) -> list[bytes]:
        return _inner_seeds(self.pair)

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        selector = int(message.exchange_type == ExchangeType.CREATE_CHILD_SA)
        return bytes([selector, first]) + chain

    def run(self, data: bytes) -> None:
        if len(data) < 2:
            return
        pair = self.pair
        sa_a, sa_b = pair.sa("a"), pair.sa("b")
        assert sa_a.sk is not None
        exchange = _REQUEST_EXCHANGES[data[0] % 2]
        template = IkeHeader(
            sa_a.spi_i, sa_a.spi_r, 0, exchange, sa_b.tm.expected_request_id, 0, True, False
        )
        sealed = seal_raw(sa_a.sk.outbound, template, data[1], data[2:])
        before = snapshot(sa_b, with_ids=False)
        before_ids = sa_b.tm.expected_request_id
        deliver(pair.b, sealed, (B_ADDR, 500), (A_ADDR, 500), pair.clock)
        list(pair.b.events())  # datagrams wait for the events before them
        replies = [d.data for d in pair.b.datagrams_to_send(pair.clock)]
        reply = _open_reply(sa_a.sk.inbound, replies) if replies else None
        unchanged = snapshot(sa_b, with_ids=False) == before
        if reply is None and not (unchanged and before_ids == sa_b.tm.expected_request_id):
            raise Finding("a dropped request changed the SA")
        refused = reply is not None and any(
            isinstance(p, Notify) and p.is_error for p in reply.payloads
        )
        if refused and not unchanged:
            # §2.21: a later request refused with a notify leaves the IKE SA as it was.
            raise Finding(f"a request refused with {reply} changed the SA")
        _bounded(pair)
        if not unchanged or sa_b.state is not IkeSaState.ESTABLISHED:
            self.pair = established()


class SealedResponseTarget(Target):
    """Authenticated responses with any inner payloads to a request the initiator has
    outstanding: a liveness check, a CHILD SA rekey or an IKE SA rekey (first octet)."""

    name = "sealed_response"
    cost = 12

    def __init__(self) -> None:
        self.pair = established()

    def seeds(self) -> list[bytes]:
        out = []
        twin = established()
        (uid,) = twin.sa("a").children
        twin.a.rekey_child(uid, 1.0)
        held = twin.pump(hold=lambda sender, ike: sender == "b")
        sk = twin.sa("a").sk
        for _, ike in held:
            opened = _open_reply(sk.inbound, [ike]) if sk is not None else None
            if opened is not None:
                first, raw = encode_payloads(opened.payloads)
                out.append(bytes([1, first]) + raw)
        out.append(b"\x00\x00")
        return out

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        # INFORMATIONAL answers the liveness check, CREATE_CHILD_SA one of the rekeys.
        rekey = message.exchange_type == ExchangeType.CREATE_CHILD_SA
        selector = 1 + (message.message_id & 1) if rekey else 0
        return bytes([selector, first]) + chain

    def run(self, data: bytes) -> None:
        if len(data) < 2:
            return
        pair = self.pair
        sa_a, sa_b = pair.sa("a"), pair.sa("b")
        kind = data[0] % 3
        if kind == 0:
            pair.a.check_liveness(sa_a.ike_sa_id, pair.clock)
        elif kind == 1:
            pair.a.rekey_child(next(iter(sa_a.children)), pair.clock)
        else:
            pair.a.rekey_ike_sa(sa_a.ike_sa_id, pair.clock)
        pair.a.datagrams_to_send(pair.clock)  # the request is "lost"
        list(pair.a.events())
        out = sa_a.tm.outstanding
        assert out is not None and sa_b.sk is not None
        template = IkeHeader(
            sa_a.spi_i, sa_a.spi_r, 0, out.context.exchange_type, out.message_id, 0, False, True
        )
        sealed = seal_raw(sa_b.sk.outbound, template, data[1], data[2:])
        deliver(pair.a, sealed, (A_ADDR, 500), (B_ADDR, 500), pair.clock)
        _drain(pair)
        _bounded(pair)
        self.pair = established()


class AuthRequestTarget(Target):
    """IKE_AUTH requests with any inner payloads, sealed with the keys of a real
    IKE_SA_INIT, to the half-open responder."""

    name = "auth_request"
    cost = 10
    ppk: PostQuantumKey | None = None
    """Both sides hold this PPK (RFC 8784): the request carries PPK_IDENTITY and
    NO_PPK_AUTH for the mutations to work on."""

    def __init__(self) -> None:
        self.genuine_auth = b""
        """The AUTH payload of the real request: with it, establishing is correct."""
        self.genuine_no_ppk = b""
        """The real request's NO_PPK_AUTH data: a responder that does not know the
        (mutated) PPK_IDENTITY authenticates with it, correctly (RFC 8784 §3)."""

    def _half_open(self) -> tuple[Pair, list[tuple[str, bytes]]]:
        pair = Pair("auth", ppk=self.ppk)
        pair.a.initiate("conn", 0.0)
        return pair, pair.pump(hold=is_auth_request)

    def seeds(self) -> list[bytes]:
        pair, held = self._half_open()
        sk = pair.sa("b").sk
        assert sk is not None
        out = []
        for _, ike in held:
            if not is_fragmented(ike):
                opened = sk.inbound.open(ike)
                auth = opened.get(Authentication)
                if auth is not None:
                    self.genuine_auth = auth.encode_body()
                no_ppk = opened.notify(NotifyType.NO_PPK_AUTH)
                if no_ppk is not None:
                    self.genuine_no_ppk = no_ppk.data
                first, raw = encode_payloads(opened.payloads)
                out.append(bytes([0, first]) + raw)
        return out

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        return bytes([0, first]) + chain

    def run(self, data: bytes) -> None:
        if len(data) < 2:
            return
        pair, _ = self._half_open()
        sa_a, sa_b = pair.sa("a"), pair.sa("b")
        assert sa_a.sk is not None
        template = IkeHeader(sa_a.spi_i, sa_a.spi_r, 0, 35, 1, 0, True, False)
        sealed = seal_raw(sa_a.sk.outbound, template, data[1], data[2:])
        deliver(pair.b, sealed, (B_ADDR, 500), (A_ADDR, 500), 1.0)
        _drain(pair)
        _bounded(pair)
        if sa_b.state is IkeSaState.ESTABLISHED:
            auth = sa_b.sk and _only((InvalidSyntax,), lambda: decode_payloads(data[1], data[2:]))
            bodies = [p.encode_body() for p in auth or () if isinstance(p, Authentication)]
            fallback = [
                p.data
                for p in auth or ()
                if isinstance(p, Notify) and p.notify_type == NotifyType.NO_PPK_AUTH
            ]
            genuine = bool(self.genuine_auth) and self.genuine_auth in bodies
            if self.genuine_no_ppk and self.genuine_no_ppk in fallback and bodies:
                genuine = True
            if not genuine:
                raise Finding("an IKE_AUTH request without the PSK's AUTH established the SA")


class AuthResponseTarget(Target):
    """IKE_AUTH responses with any inner payloads to the initiator's IKE_AUTH."""

    name = "auth_response"
    cost = 12
    ppk: PostQuantumKey | None = None
    """Both sides hold this PPK: the initiator waits for a PPK_IDENTITY (RFC 8784)."""

    def _waiting(self) -> Pair:
        pair = Pair("auth", ppk=self.ppk)
        pair.a.initiate("conn", 0.0)
        pair.pump(hold=is_auth_response)
        return pair

    def seeds(self) -> list[bytes]:
        pair = Pair("auth", ppk=self.ppk)
        pair.a.initiate("conn", 0.0)
        held = pair.pump(hold=is_auth_response)
        sk = pair.sa("a").sk
        assert sk is not None
        opened = _open_reply(sk.inbound, [ike for _, ike in held])
        if opened is None:
            return [b"\x00\x00"]
        first, raw = encode_payloads(opened.payloads)
        return [bytes([0, first]) + raw]

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        return bytes([0, first]) + chain

    def run(self, data: bytes) -> None:
        if len(data) < 2:
            return
        pair = self._waiting()
        sa_a, sa_b = pair.sa("a"), pair.sa("b")
        assert sa_b.sk is not None
        template = IkeHeader(sa_a.spi_i, sa_a.spi_r, 0, 35, 1, 0, False, True)
        sealed = seal_raw(sa_b.sk.outbound, template, data[1], data[2:])
        deliver(pair.a, sealed, (A_ADDR, 500), (B_ADDR, 500), 1.0)
        _drain(pair)
        _bounded(pair)


class InitResponseTarget(Target):
    """IKE_SA_INIT responses (plaintext payload chains) to the initiator's request."""

    name = "init_response"
    cost = 4
    ppk: PostQuantumKey | None = None
    """The initiator offers this PPK: USE_PPK in both IKE_SA_INIT messages (RFC 8784)."""

    def seeds(self) -> list[bytes]:
        pair = Pair("init", ppk=self.ppk)
        pair.a.initiate("conn", 0.0)
        pair.pump()
        out = []
        for ike in pair.recorded:
            header = decode_header(ike)
            if header.exchange_type == ExchangeType.IKE_SA_INIT and header.response:
                out.append(ike[8:])  # SPIr onwards: the initiator's SPI is filled in
        return out

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        header = struct.pack("!BBBBII", first, 0x20, 34, 0x20, 0, 28 + len(chain))
        return message.spi_r + header + chain

    def run(self, data: bytes) -> None:
        pair = Pair("init", ppk=self.ppk)
        pair.a.initiate("conn", 0.0)
        pair.a.datagrams_to_send(0.0)
        sa = pair.sa("a")
        message = sa.spi_i + data
        deliver(pair.a, message, (A_ADDR, 500), (B_ADDR, 500), 0.5)
        _drain(pair)
        _bounded(pair)


class PpkAuthRequestTarget(AuthRequestTarget):
    """:class:`AuthRequestTarget` with a PPK: PPK_IDENTITY and NO_PPK_AUTH (RFC 8784)."""

    name = "auth_request[ppk]"
    ppk = FUZZ_PPK


class PpkAuthResponseTarget(AuthResponseTarget):
    """:class:`AuthResponseTarget` with a PPK: the response's PPK_IDENTITY (RFC 8784)."""

    name = "auth_response[ppk]"
    ppk = FUZZ_PPK


class PpkInitResponseTarget(InitResponseTarget):
    """:class:`InitResponseTarget` with a PPK: the response's USE_PPK (RFC 8784)."""

    name = "init_response[ppk]"
    ppk = FUZZ_PPK


class ScheduleTarget(Target):
    """Two endpoints over a hostile network: the input is a schedule of what the wire
    does to genuine datagrams (deliver, lose, duplicate, reorder), clock jumps and API
    calls (rekeys of CHILD and IKE SAs from either side, deletes, liveness checks).

    Properties: nothing escapes any call (API misuse may raise ``LocalProtocolError``);
    everything sent is an IKE message; the tables stay small; and after 400 s of a
    perfect network, two IKE SAs that both sides hold established agree on their
    CHILD SAs (each side's inbound SPI is the other's outbound, RFC 7296 §2.8).
    """

    name = "schedule"
    cost = 40
    encap: EncapMode = "nat"
    """The pair's `encap`: every message on port 500 ("nat"), or on 4500 after
    IKE_SA_INIT behind the non-ESP marker (`ScheduleAutoTarget`)."""
    ike_proposals: tuple[str, ...] = ()
    """The pair's IKE proposals; () for the defaults."""
    esp_proposals: tuple[str, ...] = ()
    """The pair's ESP proposals; () for the defaults."""

    def seeds(self) -> list[bytes]:
        return [
            bytes([0] * 8),
            bytes([5, 1, 1, 0, 0, 0, 0]),  # a CHILD rekey whose request is lost
            bytes([5, 6, 0, 0, 0, 0, 0, 0, 0, 0]),  # rekeys from both sides cross
            bytes([7, 8, 0, 0, 0, 0, 0, 0, 0]),  # IKE rekeys cross
            bytes([5, 2, 3, 0, 0, 0, 0, 0]),
            bytes([9, 4, 0, 1, 0, 0x14, 0, 0]),
            bytes([10, 6, 0, 0, 0, 0, 0, 0]),  # a CHILD delete while the peer rekeys it
        ]

    def run(self, data: bytes) -> None:
        pair = established(
            "schedule",
            encap=self.encap,
            ike_proposals=self.ike_proposals,
            esp_proposals=self.esp_proposals,
        )
        queue: list[tuple[str, Any]] = []

        def collect() -> None:
            for name, ep in (("a", pair.a), ("b", pair.b)):
                list(ep.events())
                for d in ep.datagrams_to_send(pair.clock):
                    try:
                        decode_header(d.data)
                    except InvalidSyntax as exc:
                        raise Finding(f"{name} sent something that is not IKE: {exc}") from exc
                    queue.append((name, d))

        def deliver_queued(index: int) -> None:
            sender, d = queue[index]
            receiver = pair.b if sender == "a" else pair.a
            deliver(receiver, on_wire(d), d.remote, d.local, pair.clock)

        def tick(seconds: float) -> None:
            pair.clock += seconds
            for ep in (pair.a, pair.b):
                ep.handle_timer(pair.clock)

        for op in data[:48]:
            collect()
            kind, arg = op % 12, op >> 4
            if kind == 0 and queue:
                deliver_queued(0)
                queue.pop(0)
            elif kind == 1 and queue:
                queue.pop(0)  # lost
            elif kind == 2 and queue:
                deliver_queued(0)  # duplicated: it stays queued
            elif kind == 3 and len(queue) > 1:
                queue[0], queue[1] = queue[1], queue[0]
            elif kind == 4:
                tick(1.0 + 4 * arg)
            else:
                self._api(pair, kind, arg)
        # A perfect network for 400 s: retransmissions, DPD and rekeys settle.
        for _ in range(200):
            collect()
            while queue:
                deliver_queued(0)
                queue.pop(0)
                collect()
            tick(2.0)
        self._agree(pair)

    @staticmethod
    def _api(pair: Pair, kind: int, arg: int) -> None:
        ep = pair.a if kind % 2 else pair.b
        sas = sorted(ep.ike_sas(), key=lambda sa: sa.ike_sa_id)
        if not sas:
            return
        sa = sas[arg % len(sas)]
        children = sorted(sa.children)
        try:
            if kind in (5, 6) and children:
                ep.rekey_child(children[arg % len(children)], pair.clock)
            elif kind in (7, 8):
                ep.rekey_ike_sa(sa.ike_sa_id, pair.clock)
            elif kind == 9:
                ep.check_liveness(sa.ike_sa_id, pair.clock)
            elif kind == 10 and children:
                ep.delete_child(children[arg % len(children)], pair.clock)
            elif kind == 11 and arg == 15:
                ep.delete(sa.ike_sa_id, pair.clock)
        except LocalProtocolError:
            pass  # asked for something this SA cannot do now: our misuse, refused

    @staticmethod
    def _agree(pair: Pair) -> None:
        for ep in (pair.a, pair.b):
            if len(ep.ike_sas()) > 4:
                raise Finding(f"{len(ep.ike_sas())} IKE SAs after the network healed")
        by_spis = {(sa.spi_i, sa.spi_r): sa for sa in pair.b.ike_sas()}
        for sa_a in pair.a.ike_sas():
            sa_b = by_spis.get((sa_a.spi_i, sa_a.spi_r))
            established = (sa_a.state, sa_b.state if sa_b else None) == (
                IkeSaState.ESTABLISHED,
                IkeSaState.ESTABLISHED,
            )
            if sa_b is None or not established:
                continue
            live_a = {(c.spi_in, c.spi_out) for c in sa_a.children.values() if not c.deleting}
            live_b = {(c.spi_out, c.spi_in) for c in sa_b.children.values() if not c.deleting}
            if live_a != live_b:
                raise Finding(
                    f"CHILD SAs disagree: a has {sorted(live_a)}, b mirrors {sorted(live_b)}"
                )


# --- ESP ----------------------------------------------------------------------------------

_PRE_AUTH_DROPS = frozenset(
    {
        DropReason.TOO_SHORT,
        DropReason.NO_SA,
        DropReason.BAD_LENGTH,
        DropReason.REPLAY,
        DropReason.ICV_FAILURE,
        DropReason.LIFETIME_EXPIRED,
    }
)


def _esp_state(sa: Any) -> tuple[int, int, int, int]:
    return (sa.replay.highest, sa.replay._bitmap, sa.packet_count, sa.byte_count)


def _check_decap(result: object) -> None:
    if isinstance(result, DropReason):
        return
    if not (
        isinstance(result, tuple)
        and len(result) == 2
        and isinstance(result[0], bytes)
        and isinstance(result[1], int)
    ):
        raise Finding(f"decapsulate returned {result!r}")


_WINDOW_STARTS = (0, 5, (1 << 31) + 3, (1 << 32) - 20)
_ESN_WINDOW_STARTS = (0, (1 << 32) - 20, (1 << 32) + 20, (1 << 33) - 5)


def fresh_inbound(keys: EspKeys, choice: int) -> EspSA:
    """An inbound SA whose replay window starts at one of a few places that matter:
    0, just below a 2^32 boundary, just above one (ESN, RFC 4303 Appendix A2.2)."""
    sa = keys.inbound()
    starts = _ESN_WINDOW_STARTS if keys.esn else _WINDOW_STARTS
    start = starts[choice % len(starts)]
    if start:
        sa.replay = ReplayWindow(sa.replay.size, highest=start)
    return sa


class EspTarget(Target):
    """``EspSA.decapsulate`` of one suite (with or without ESN).

    Input layout: mode (1), then for mode bit 0 a raw packet, else a sequence number
    (4) and the plaintext (inner | padding | Pad Length | Next Header) sealed with the
    SA's keys (and, with ESN, the high half the SA will infer), so the padding, Next
    Header and inner checks see authenticated garbage. Mode bit 1 starts the case on a
    fresh SA whose window starts where bits 2-3 say (see :func:`fresh_inbound`).
    """

    def __init__(self, keys: EspKeys) -> None:
        self.keys = keys
        self.name = f"esp[{keys.suite.name}{'-esn' if keys.esn else ''}]"
        self.sa = keys.inbound()

    def seeds(self) -> list[bytes]:
        out = keys_seeds(self.keys)
        inner = ipv4_packet("203.0.113.1", "192.0.2.1", b"x" * 9) + b"\x01\x02\x02\x04"
        return [b"\x03" + p for p in out] + [
            b"\x02" + struct.pack("!I", 5) + inner,
            b"\x0e" + struct.pack("!I", 30) + inner,
        ]

    def packet(self, data: bytes, sa: EspSA | None = None) -> bytes:
        if data[0] & 1:
            return data[1:]
        seq = int.from_bytes(data[1:5].ljust(4, b"\x00"), "big")
        if self.keys.esn:
            full = (sa or self.sa).replay.infer_seq(seq)
            seq = full if full >= 0 else seq
        return self.keys.seal(seq, data[5:])

    def run(self, data: bytes) -> None:
        if not data:
            return
        if data[0] & 2:
            self.sa = fresh_inbound(self.keys, data[0] >> 2)
        packet = self.packet(data)
        sa = self.sa
        before = _esp_state(sa)
        result = sa.decapsulate(packet)
        _check_decap(result)
        if result in _PRE_AUTH_DROPS and _esp_state(sa) != before:
            raise Finding(f"{result} dropped after moving the window: {before} -> {_esp_state(sa)}")
        if not data[0] & 1 and result is DropReason.ICV_FAILURE:
            # Sealed with the SA's keys and the sequence number it infers: must verify.
            raise Finding("a packet sealed with the SA's keys failed its ICV")


def keys_seeds(keys: EspKeys) -> list[bytes]:
    """Packets an outbound twin of the SA produced: IPv4, IPv6, dummy, empty."""
    out_sa = keys.outbound()
    inner4 = ipv4_packet("203.0.113.1", "192.0.2.1", b"payload")
    inner6 = bytes([0x60]) + bytes(39) + b"v6"
    packets = [out_sa.encapsulate(inner4), out_sa.encapsulate(inner6)]
    packets.append(out_sa.encapsulate(b"", next_header=59))
    return [p for p in packets if isinstance(p, bytes)]


class EspBatchTarget(Target):
    """``decapsulate_batch`` gives exactly what ``decapsulate`` one by one gives, and
    ``decapsulate`` of a memoryview or bytearray what it gives for bytes (it takes any
    bytes-like packet; GRO reads hand it slices).

    Input: packets separated by the octets ``ESP!``; each is raw or sealed as for
    :class:`EspTarget`. Fresh twin SAs take the same sequence.
    """

    cost = 2

    def __init__(self, keys: EspKeys) -> None:
        self.keys = keys
        self.name = f"esp_batch[{keys.suite.name}{'-esn' if keys.esn else ''}]"
        self.single = EspTarget(keys)

    def seeds(self) -> list[bytes]:
        return [b"ESP!".join(self.single.seeds() * 2)]

    def run(self, data: bytes) -> None:
        parts = [p for p in data.split(b"ESP!")[:32] if p]
        if not parts:
            return
        one = fresh_inbound(self.keys, parts[0][0] >> 2)
        batch = fresh_inbound(self.keys, parts[0][0] >> 2)
        packets = [self.single.packet(p, one) for p in parts]
        expected = [one.decapsulate(p) for p in packets]
        got = batch.decapsulate_batch(packets)
        for r in got:
            _check_decap(r)
        if got != expected:
            raise Finding(f"decapsulate_batch gave {got}, decapsulate gave {expected}")
        if _esp_state(one) != _esp_state(batch) or one.drops != batch.drops:
            raise Finding("decapsulate_batch left other counters than decapsulate")
        views = fresh_inbound(self.keys, parts[0][0] >> 2)
        kinds = (memoryview, bytearray)
        # decapsulate is annotated `bytes` but documented (and used) for any buffer.
        buffers = [cast(bytes, kinds[i % 2](p)) for i, p in enumerate(packets)]
        from_views = [views.decapsulate(b) for b in buffers]
        normalised = [r if isinstance(r, DropReason) else (bytes(r[0]), r[1]) for r in from_views]
        if normalised != expected:
            raise Finding(f"decapsulate of buffers gave {normalised}, of bytes {expected}")


# --- data plane ---------------------------------------------------------------------------


class _Wire:
    def __init__(self) -> None:
        self.tun: list[bytes] = []

    def send(self, entry: ChildSaEntry, parts: list[bytes]) -> int:
        return len(parts) // PARTS_PER_PACKET

    def send_keepalive(self, local: Any, remote: Any) -> bool:
        return True

    def write_tun(
        self, packets: list[bytes], interface: str | None = None, partial: Sequence[int] = ()
    ) -> int:
        self.tun.extend(packets)
        return len(packets)


def _dataplane_event(keys: EspKeys) -> ChildSaInstalled:
    suite = keys.suite
    return ChildSaInstalled(
        connection="conn",
        child="net",
        unique_id=1,
        ike_sa_id=1,
        spi_in=ESP_SPI,
        spi_out=0x2000_0002,
        encr_id=suite.encr_id,
        encr_key_bits=suite.key_bits,
        integ_id=suite.integ_id or 0,
        esn=keys.esn,
        encr_key_in=keys.encr_key,
        integ_key_in=keys.integ_key,
        encr_key_out=keys.encr_key,
        integ_key_out=keys.integ_key,
        local_ts=(IkeTs.from_network("192.0.2.0/24"),),
        remote_ts=(IkeTs.from_network("203.0.113.0/24"),),
        udp_encap=True,
        local=(B_ADDR, 4500),
        remote=(A_ADDR, 4500),
        lifetime=3600.0,
        rekey_time=3000.0,
        life_bytes=0,
        life_packets=0,
        replay_window=64,
    )


class DataPlaneTarget(Target):
    """``DataPlane.from_udp`` / ``from_esp`` (port 4500 classification, SAD lookup,
    decapsulation, selector check). Every datagram ends up counted exactly once: as
    IKE, a keepalive, a drop (of the data plane or of the SA) or a TUN write.

    Input: mode (1): bit 0 raw datagram else a sealed inner packet (sequence (4) and
    inner IP packet, padded and trailed correctly), bit 1 via ``from_esp``.
    """

    name = "dataplane"
    cost = 2

    def __init__(self, keys: EspKeys | None = None) -> None:
        self.keys = keys or esp_keys()[0]
        self.wire = _Wire()
        self.ike: list[bytes] = []
        self.plane = DataPlane(self.wire, on_ike=lambda m, lo, re: self.ike.append(m))
        self.plane.install(entry_from_event(_dataplane_event(self.keys)))

    def seeds(self) -> list[bytes]:
        inner = ipv4_packet("203.0.113.1", "192.0.2.1", b"\x00\x35\x00\x35" + b"d" * 8)
        return [
            b"\x00" + struct.pack("!I", 1) + inner,
            b"\x02" + struct.pack("!I", 2) + inner,
            b"\x01\xff",
            b"\x01" + bytes(4) + bytes(28),
            *(b"\x01" + p for p in keys_seeds(self.keys)),
        ]

    def _sealed(self, data: bytes) -> bytes:
        seq = int.from_bytes(data[1:5].ljust(4, b"\x00"), "big")
        inner = data[5:]
        align = self.keys.suite.align
        pad = -(len(inner) + 2) % align
        nh = 4 if inner[:1] and inner[0] >> 4 == 4 else 41
        return self.keys.seal(seq, inner + bytes(range(1, pad + 1)) + bytes([pad, nh]))

    def _accounted(self) -> int:
        plane = self.plane
        return (
            sum(plane.total_drops().values())
            + plane.counters["ike_on_4500"]
            + plane.counters["keepalives_received"]
            + len(self.wire.tun)
        )

    def run(self, data: bytes) -> None:
        if not data:
            return
        packet = data[1:] if data[0] & 1 else self._sealed(data)
        before = self._accounted()
        if data[0] & 2:
            self.plane.from_esp([packet])
        else:
            self.plane.from_udp([(packet, (B_ADDR, 4500), (A_ADDR, 4500))])
            kind = classify(packet)
            if kind is DatagramKind.IKE and (not self.ike or self.ike[-1] != packet[4:]):
                raise Finding("an IKE datagram on 4500 did not reach the IKE handler")
        if self._accounted() != before + 1:
            raise Finding(f"one datagram counted {self._accounted() - before} times")
        if len(self.wire.tun) > 1000:
            self.wire.tun.clear()
            self.plane = DataPlane(self.wire, on_ike=lambda m, lo, re: self.ike.append(m))
            self.plane.install(entry_from_event(_dataplane_event(self.keys)))
        del self.ike[:-1]


class InnerPacketTarget(Target):
    """The inner-packet helpers of ``daemon.packet`` on what a host behind the gateway
    (or, after decryption, the peer) may send: ``flow_of``, ``too_big_reply``,
    ``fragment_ipv4``, and ``DataPlane.from_tun`` with a small tunnel MTU.

    Input: MTU (2), then the IP packet. Fragments fit the MTU and carry exactly the
    original payload in order (RFC 791 §3.2); an ICMP error fits the IPv6 minimum MTU
    (RFC 4443 §2.4) and is itself a readable packet.
    """

    name = "inner_packet"
    cost = 2

    def __init__(self) -> None:
        self.wire = _Wire()
        self.plane = DataPlane(self.wire)
        self.entry = entry_from_event(_dataplane_event(esp_keys()[0]))
        self.plane.install(self.entry)

    def seeds(self) -> list[bytes]:
        v4 = ipv4_packet("192.0.2.1", "203.0.113.1", b"\x00\x35\x00\x35" + b"d" * 600)
        v4_no_df = v4[:6] + b"\x00\x00" + v4[8:]
        v6 = bytes([0x60, 0, 0, 0]) + (600).to_bytes(2, "big") + bytes([17, 64]) + bytes(32)
        return [b"\x01\x00" + v4, b"\x01\x00" + v4_no_df, b"\x00\x60" + v4_no_df, b"\x02\x00" + v6]

    def run(self, data: bytes) -> None:
        if len(data) < 2:
            return
        mtu = int.from_bytes(data[:2], "big")
        packet = data[2:]
        flow = flow_of(packet)
        if flow is not None and not (flow[0] in (4, 6) and all(v >= -1 for v in flow)):
            raise Finding(f"flow_of gave {flow}")
        reply = too_big_reply(packet, mtu)
        if reply is not None and (len(reply) > 1280 or flow_of(reply) is None):
            raise Finding(f"ICMP error of {len(reply)} octets, flow {flow_of(reply)}")
        # The data plane fragments only IPv4 packets (may_fragment checks the version).
        pieces = fragment_ipv4(packet, mtu) if packet[:1] and packet[0] >> 4 == 4 else None
        if pieces is not None:
            ihl = (packet[0] & 0x0F) * 4
            total = int.from_bytes(packet[2:4], "big")
            data_out = b""
            for piece in pieces:
                if len(piece) > max(mtu, 0) or flow_of(piece) is None:
                    raise Finding(f"fragment of {len(piece)} octets for MTU {mtu}")
                data_out += piece[(piece[0] & 0x0F) * 4 :]
            if data_out != packet[ihl:total]:
                raise Finding("fragments do not carry the packet's payload")
        self.entry.mtu = max(mtu, 68)
        self.plane.from_tun([packet])


# --- the catalogue ------------------------------------------------------------------------


class ScheduleAutoTarget(ScheduleTarget):
    """The same hostile network between two lockgates as configured by default: they
    agree on ESP in UDP by Vendor ID and run IKE on port 4500 (tasks.ike_natd)."""

    name = "schedule-auto"
    encap: EncapMode = "auto"


class ScheduleHybridTarget(ScheduleTarget):
    """The same hostile network with hybrid ML-KEM proposals for IKE and ESP: every
    rekey, of either kind, runs an IKE_FOLLOWUP_KE exchange (RFC 9370 §2.2.4), and
    crossing rekeys are settled before it."""

    name = "schedule-hybrid"
    cost = 60
    ike_proposals = (HYBRID_PROPOSAL,)
    esp_proposals = (HYBRID_ESP_PROPOSAL,)


class KemTarget(Target):
    """ML-KEM key exchange data from the peer (FIPS 203): the initiator's encapsulation
    key to ``respond_key_exchange``, the responder's ciphertext to ``shared_secret``.

    Only ``InvalidKeData`` (INVALID_SYNTAX) may refuse it; a ciphertext of the right
    size always decapsulates (to a pseudo-random secret if it is wrong: implicit
    rejection). First octet: bit 0 the method (768/1024), bit 1 the role.
    """

    name = "kem"

    def __init__(self) -> None:
        self.methods = sorted(KEMS)
        rng = DeterministicRandom(b"kem")
        self.ours = {m: KeyPair.generate(m, rng) for m in self.methods}
        self.rng = rng

    def seeds(self) -> list[bytes]:
        out = []
        for i, method in enumerate(self.methods):
            ek = self.ours[method].public_bytes
            ciphertext, _ = respond_key_exchange(method, ek, self.rng)
            out += [bytes([i]) + ciphertext, bytes([i | 2]) + ek]
        return out

    def run(self, data: bytes) -> None:
        if not data:
            return
        method = self.methods[data[0] % len(self.methods)]
        info = KEMS[method]
        if data[0] & 2:
            reply = _only(
                (InvalidKeData,), lambda: respond_key_exchange(method, data[1:], self.rng)
            )
            if reply is not None and len(reply[0]) != info.ciphertext_len:
                raise Finding(f"{info.name} answered a ciphertext of {len(reply[0])} octets")
            return
        secret = _only((InvalidKeData,), lambda: self.ours[method].shared_secret(data[1:]))
        if len(data) - 1 == info.ciphertext_len and secret is None:
            raise Finding(f"a well-sized {info.name} ciphertext was refused (an oracle)")
        if secret is not None and len(secret) != info.shared_len:
            raise Finding(f"{info.name} gave a secret of {len(secret)} octets")


class IntermediateRequestTarget(Target):
    """Authenticated IKE_INTERMEDIATE requests (RFC 9242) with any inner payloads, sealed
    with the IKE_SA_INIT keys, to a responder waiting for its additional ML-KEM key
    exchange. It answers (a KE, or an error notify) or drops; it never establishes."""

    name = "intermediate_request"
    cost = 8

    def __init__(self) -> None:
        self.pair = half_open_intermediate()

    def seeds(self) -> list[bytes]:
        ek = KeyPair.generate(max(KEMS), DeterministicRandom(b"seed")).public_bytes
        ek768 = KeyPair.generate(min(KEMS), DeterministicRandom(b"seed")).public_bytes
        out = []
        for payloads in (
            (KeyExchange(min(KEMS), ek768),),
            (KeyExchange(max(KEMS), ek),),
            (KeyExchange(min(KEMS), ek768[:-1]),),
            (Notify(NotifyType.INITIAL_CONTACT),),
            (),
        ):
            first, chain = encode_payloads(payloads)
            out.append(bytes([first]) + chain)
        return out

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        return bytes([first]) + chain

    def run(self, data: bytes) -> None:
        if not data:
            return
        pair = self.pair
        sa_a, sa_b = pair.sa("a"), pair.sa("b")
        if sa_a.sk is None:
            raise Finding("IKE_SA_INIT gave the initiator no keys")
        template = IkeHeader(
            sa_a.spi_i, sa_a.spi_r, 0, ExchangeType.IKE_INTERMEDIATE, 1, 0, True, False
        )
        sealed = seal_raw(sa_a.sk.outbound, template, data[0], data[1:])
        deliver(pair.b, sealed, (B_ADDR, 500), (A_ADDR, 500), pair.clock)
        list(pair.b.events())
        pair.b.datagrams_to_send(pair.clock)
        if sa_b.state is IkeSaState.ESTABLISHED:
            raise Finding("an IKE_INTERMEDIATE request established the IKE SA")
        _bounded(pair)
        self.pair = half_open_intermediate()


class FollowupRequestTarget(Target):
    """Authenticated IKE_FOLLOWUP_KE requests (RFC 9370 §2.2.4) with any inner payloads
    to a responder that answered a CHILD SA rekey with N(ADDITIONAL_KEY_EXCHANGE) and
    waits for its ML-KEM round. It answers (a KE, or an error notify such as
    STATE_NOT_FOUND) and keeps its IKE SA; only the genuine link makes a CHILD SA."""

    name = "followup_request"
    cost = 10

    def __init__(self) -> None:
        self.pair, self.link = waiting_followup()

    def seeds(self) -> list[bytes]:
        ek = KeyPair.generate(min(KEMS), DeterministicRandom(b"seed")).public_bytes
        link = Notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, self.link)
        out = []
        for payloads in (
            (KeyExchange(min(KEMS), ek), link),
            (KeyExchange(max(KEMS), ek), link),
            (KeyExchange(min(KEMS), ek[:-1]), link),
            (KeyExchange(min(KEMS), ek), Notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, b"x")),
            (KeyExchange(min(KEMS), ek),),
            (link,),
        ):
            first, chain = encode_payloads(payloads)
            out.append(bytes([first]) + chain)
        return out

    def from_message(self, message: Message) -> bytes | None:
        first, chain = encode_payloads(message.payloads)
        return bytes([first]) + chain

    def run(self, data: bytes) -> None:
        if not data:
            return
        pair = self.pair
        sa_a, sa_b = pair.sa("a"), pair.sa("b")
        if sa_a.sk is None:
            raise Finding("the initiator has no keys")
        before = len(sa_b.children)
        message_id = sa_b.tm.expected_request_id
        template = IkeHeader(sa_a.spi_i, sa_a.spi_r, 0, ExchangeType.IKE_FOLLOWUP_KE,
                             message_id, 0, True, False)  # fmt: skip
        sealed = seal_raw(sa_a.sk.outbound, template, data[0], data[1:])
        deliver(pair.b, sealed, (B_ADDR, 500), (A_ADDR, 500), pair.clock)
        list(pair.b.events())
        pair.b.datagrams_to_send(pair.clock)
        if sa_b.state is not IkeSaState.ESTABLISHED:
            raise Finding("an IKE_FOLLOWUP_KE request ended the IKE SA")
        if len(sa_b.children) > before and self.link not in data:
            raise Finding("an IKE_FOLLOWUP_KE without the link made a CHILD SA")
        _bounded(pair)
        self.pair, self.link = waiting_followup()


def all_targets(*, heavy: bool = True) -> list[Target]:
    """Every target; ``heavy=False`` leaves out the ones that set up IKE SAs per case."""
    targets: list[Target] = [
        CodecTarget(),
        PayloadTarget(),
        CookieTarget(),
        EapTlsTarget(),
        DataPlaneTarget(),
        InnerPacketTarget(),
        KemTarget(),
    ]
    for name in sk_ciphers():
        targets += [SkOpenTarget(name), SkInnerTarget(name)]
    targets += [FragmentTarget("aes256gcm16"), FragmentTarget("aes128-sha256")]
    for keys in esp_keys():
        targets += [EspTarget(keys), EspBatchTarget(keys)]
    if heavy:
        targets += [
            EndpointFreshTarget(),
            EstablishedTarget(),
            SealedRequestTarget(),
            SealedResponseTarget(),
            AuthRequestTarget(),
            AuthResponseTarget(),
            IntermediateRequestTarget(),
            FollowupRequestTarget(),
            InitResponseTarget(),
            PpkAuthRequestTarget(),
            PpkAuthResponseTarget(),
            PpkInitResponseTarget(),
            ScheduleTarget(),
            ScheduleAutoTarget(),
            ScheduleHybridTarget(),
        ]
    return targets


def random_bytes(rng: random.Random, max_len: int = 600) -> bytes:
    """Unstructured input: the baseline every entry point must survive."""
    return rng.randbytes(rng.choice((0, 1, 4, 8, 28, 32, rng.randrange(max_len))))


__all__ = ["Finding", "Target", "all_targets", "random_bytes", "snapshot"]
