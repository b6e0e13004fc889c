"""Hypothesis properties of the IKEv2 codec: every payload and whole messages round-trip,
and random, truncated or bit-flipped octets raise only the codec's error type."""

from __future__ import annotations

import contextlib
import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikev2.codec import (
    Authentication,
    Certificate,
    CertificateRequest,
    ConfigAttribute,
    Configuration,
    Delete,
    Eap,
    Encrypted,
    IdI,
    IdR,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TsI,
    TsR,
    UnknownPayload,
    VendorId,
    decode_message,
    decode_payloads,
    encode_message,
    encode_payloads,
)
from ikev2.codec.payloads import DECODERS
from ikev2.constants import ExchangeType, NotifyType, PayloadType, ProtocolId
from ikev2.errors import InvalidSyntax

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
small_bytes = st.binary(max_size=40)

attributes = st.one_of(
    st.builds(TransformAttribute, st.integers(0, 0x7FFF), u16),
    st.builds(TransformAttribute, st.integers(0, 0x7FFF), small_bytes),
)
transforms = st.builds(Transform, u8, u16, st.lists(attributes, max_size=3).map(tuple))
proposals = st.builds(
    Proposal,
    u8,
    u8,
    st.sampled_from([b"", bytes(4), b"\x01\x02\x03\x04", bytes(range(8))]),
    st.lists(transforms, max_size=5).map(tuple),
)
ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
selectors = st.one_of(
    st.builds(TrafficSelector, ipv4, ipv4, u8, u16, u16),
    st.builds(TrafficSelector, ipv6, ipv6, u8, u16, u16),
)
# Unknown payload types: not one we decode, and not SK.
unknown_types = st.integers(1, 255).filter(lambda t: t not in DECODERS and t != PayloadType.SK)

payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(SecurityAssociation, st.lists(proposals, min_size=1, max_size=3).map(tuple)),
    st.builds(KeyExchange, u16, small_bytes),
    st.builds(IdI, u8, small_bytes),
    st.builds(IdR, u8, small_bytes),
    st.builds(Certificate, u8, small_bytes),
    st.builds(CertificateRequest, u8, small_bytes),
    st.builds(Authentication, u8, small_bytes),
    st.builds(Nonce, st.binary(min_size=16, max_size=64)),
    st.builds(Notify, u16, small_bytes, u8, st.sampled_from([b"", bytes(4), bytes(range(8))])),
    st.builds(Delete, u8, st.lists(st.binary(min_size=4, max_size=4), max_size=4).map(tuple)),
    st.builds(VendorId, small_bytes),
    st.builds(TsI, st.lists(selectors, max_size=4).map(tuple)),
    st.builds(TsR, st.lists(selectors, max_size=4).map(tuple)),
    st.builds(
        Configuration,
        u8,
        st.lists(st.builds(ConfigAttribute, st.integers(0, 0x7FFF), small_bytes), max_size=4).map(
            tuple
        ),
    ),
    st.builds(Eap, st.sampled_from([3, 4]), u8, st.just(b"")),
    st.builds(Eap, st.sampled_from([1, 2]), u8, st.binary(min_size=1, max_size=30)),
    st.builds(UnknownPayload, unknown_types, small_bytes, st.just(False)),
)


@EXAMPLES
@given(payloads)
def test_every_payload_round_trips(payload: Payload) -> None:
    first, data = encode_payloads([payload])
    assert first == payload.payload_type
    assert decode_payloads(first, data) == (payload,)


@EXAMPLES
@given(st.lists(payloads, max_size=6))
def test_payload_chains_round_trip(chain: list[Payload]) -> None:
    first, data = encode_payloads(chain)
    assert decode_payloads(first, data) == tuple(chain)


messages = st.builds(
    Message,
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=8, max_size=8),
    st.sampled_from(list(ExchangeType)),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.booleans(),
    st.lists(payloads, max_size=5).map(tuple),
)


@EXAMPLES
@given(messages, st.none() | st.tuples(u8, st.binary(max_size=60)))
def test_messages_round_trip(message: Message, sk: tuple[int, bytes] | None) -> None:
    if sk is not None:
        message = Message(
            message.spi_i,
            message.spi_r,
            message.exchange_type,
            message.message_id,
            message.initiator,
            message.response,
            (*message.payloads, Encrypted(sk[0], sk[1])),
        )
    data = encode_message(message)
    assert decode_message(data) == message
    assert encode_message(decode_message(data)) == data


def _decodes_or_invalid_syntax(data: bytes) -> None:
    with contextlib.suppress(InvalidSyntax):
        decode_message(data)


@EXAMPLES
@given(st.binary(max_size=300))
def test_random_octets_raise_only_invalid_syntax(data: bytes) -> None:
    _decodes_or_invalid_syntax(data)


@EXAMPLES
@given(st.binary(min_size=28, max_size=28), st.binary(max_size=200))
def test_random_payload_chains_raise_only_invalid_syntax(header: bytes, body: bytes) -> None:
    # A header whose length field is right, so the payload parser is exercised.
    fixed = header[:17] + b"\x20" + header[18:24] + (28 + len(body)).to_bytes(4, "big")
    _decodes_or_invalid_syntax(fixed + body)
    for first in (PayloadType.SA, PayloadType.TSi, PayloadType.CP, PayloadType.NOTIFY):
        with contextlib.suppress(InvalidSyntax):
            decode_payloads(first, body)


@EXAMPLES
@given(messages, st.data())
def test_truncated_messages_raise_invalid_syntax(message: Message, data: st.DataObject) -> None:
    wire = encode_message(message)
    cut = data.draw(st.integers(0, len(wire) - 1))
    try:
        decode_message(wire[:cut])
    except InvalidSyntax:
        return
    raise AssertionError("a truncated message decoded")


@EXAMPLES
@given(messages, st.data())
def test_bit_flips_decode_or_raise_invalid_syntax(message: Message, data: st.DataObject) -> None:
    wire = bytearray(encode_message(message))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire) - 1))
        wire[position] ^= 1 << data.draw(st.integers(0, 7))
    _decodes_or_invalid_syntax(bytes(wire))


def test_ike_delete_round_trips_without_spis() -> None:
    payload = Delete(ProtocolId.IKE)
    first, data = encode_payloads([payload])
    assert data[4:] == b"\x01\x00\x00\x00"  # protocol 1, SPI size 0, no SPIs (RFC 7296 §3.11)
    assert decode_payloads(first, data) == (payload,)


@EXAMPLES
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=60))
def test_every_payload_decoder_alone_raises_only_invalid_syntax(
    payload_type: int, body: bytes
) -> None:
    # Called directly, not through decode_payloads: a short read inside a body must
    # surface as the codec's InvalidSyntax too (a fuzzing find).
    with contextlib.suppress(InvalidSyntax):
        DECODERS[payload_type](body)


def test_truncated_sa_body_raises_invalid_syntax_with_its_notify() -> None:
    # Three octets: less than the 8-octet proposal substructure header (RFC 7296 §3.3.1).
    try:
        SecurityAssociation.decode_body(b"\x00\x00\x00")
    except InvalidSyntax as exc:
        assert exc.notify == NotifyType.INVALID_SYNTAX
    else:
        raise AssertionError("a truncated SA body decoded")
