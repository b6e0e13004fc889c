"""Structure-aware hypothesis strategies for the fuzz properties.

Valid IKEv2 payloads and messages (every payload type the codec knows, proposals with
transforms and attributes, traffic selectors, notifies) whose fields, lengths and
counts are then mutated on the wire; ESP packets of every suite with mutations of the
SPI, sequence number, IV, ciphertext, ICV and length. Values lean towards the ones a
parser cares about (0, 1, the maximum, the lengths around a boundary) rather than
being uniform.
"""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from ikev2.codec import (
    MESSAGE_RULES,
    Authentication,
    Certificate,
    CertificateRequest,
    ConfigAttribute,
    Configuration,
    Delete,
    Eap,
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
)
from ikev2.codec.payloads import DECODERS
from ikev2.constants import (
    DhGroup,
    EncrId,
    ExchangeType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from testkit.fuzz.mutate import Mutation

# --- numbers a parser cares about --------------------------------------------------------

u8 = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 0x7F, 0x80, 0xFE, 0xFF]), st.integers(0, 0xFF))
u16 = st.one_of(
    st.sampled_from([0, 1, 4, 8, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]), st.integers(0, 0xFFFF)
)
u32 = st.one_of(st.sampled_from([0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF))
small_bytes = st.binary(max_size=48)
spi_bytes = st.sampled_from([b"", bytes(4), b"\x00\x00\x01\x00", b"\xde\xad\xbe\xef", bytes(8)])

# --- SA payloads (RFC 7296 §3.3) ----------------------------------------------------------

transform_types = st.one_of(st.sampled_from(list(TransformType)), u8)
transform_ids = st.one_of(
    st.sampled_from(
        [
            *map(int, EncrId),
            *map(int, PrfId),
            *map(int, IntegId),
            *map(int, DhGroup),
            0,
            1,
        ]
    ),
    u16,
)
key_lengths = st.sampled_from([0, 1, 64, 128, 192, 256, 512, 0xFFFF])
attributes = st.one_of(
    # Key Length in TV form, mostly: the only attribute IKEv2 defines.
    st.builds(TransformAttribute, st.just(14), key_lengths),
    st.builds(TransformAttribute, st.integers(0, 0x7FFF), u16),
    st.builds(TransformAttribute, st.integers(0, 0x7FFF), small_bytes),
)
transforms = st.builds(
    Transform, transform_types, transform_ids, st.lists(attributes, max_size=3).map(tuple)
)


@st.composite
def proposals(draw: st.DrawFn) -> Proposal:
    """A proposal whose transforms are a plausible mix of every type, or arbitrary."""
    return Proposal(
        number=draw(st.one_of(st.integers(1, 4), u8)),
        protocol=draw(st.one_of(st.sampled_from(list(ProtocolId)), u8)),
        spi=draw(spi_bytes),
        transforms=tuple(draw(st.lists(transforms, max_size=6))),
    )


sa_payloads = st.builds(
    SecurityAssociation, st.lists(proposals(), min_size=1, max_size=4).map(tuple)
)

# --- traffic selectors (RFC 7296 §3.13) --------------------------------------------------

ipv4 = st.one_of(
    st.sampled_from(["0.0.0.0", "255.255.255.255", "192.0.2.0", "192.0.2.255", "203.0.113.7"]),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
).map(ipaddress.IPv4Address)
ipv6 = st.one_of(
    st.sampled_from(["::", "2001:db8::", "2001:db8:ffff::ffff"]),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
).map(ipaddress.IPv6Address)
selectors = st.one_of(
    st.builds(TrafficSelector, ipv4, ipv4, u8, u16, u16),
    st.builds(TrafficSelector, ipv6, ipv6, u8, u16, u16),
)

# --- notifies (RFC 7296 §3.10) ------------------------------------------------------------

notify_types = st.one_of(st.sampled_from(list(NotifyType)), u16)
notifies = st.builds(
    Notify,
    notify_types,
    st.one_of(small_bytes, st.binary(min_size=1, max_size=80)),
    st.one_of(st.sampled_from(list(ProtocolId)), u8),
    spi_bytes,
)

protocols = st.one_of(st.sampled_from(list(ProtocolId)), u8)
deletes = st.one_of(
    st.builds(
        Delete, protocols, st.lists(st.binary(min_size=4, max_size=4), max_size=4).map(tuple)
    ),
    st.builds(Delete, st.just(int(ProtocolId.IKE)), st.just(())),
)

# --- every payload ------------------------------------------------------------------------

unknown_types = st.integers(1, 255).filter(
    lambda t: t not in DECODERS and t not in (PayloadType.SK, PayloadType.SKF)
)
groups = st.one_of(st.sampled_from(list(DhGroup)), u16)

eap_tls_bodies = st.builds(
    lambda flags, length, data: bytes([13, flags]) + length + data,
    st.one_of(st.sampled_from([0, 0x20, 0x40, 0x80, 0xC0]), u8),
    st.one_of(st.just(b""), st.binary(min_size=4, max_size=4), st.binary(max_size=3)),
    st.binary(max_size=40),
)
"""EAP-TLS Type-Data (RFC 5216 §3.1): any flags, a TLS Message Length that may lie or
be cut short, and a fragment."""

payloads: st.SearchStrategy[Payload] = st.one_of(
    sa_payloads,
    st.builds(KeyExchange, groups, st.one_of(small_bytes, st.binary(min_size=30, max_size=140))),
    st.builds(IdI, u8, small_bytes),
    st.builds(IdR, u8, small_bytes),
    st.builds(Certificate, u8, small_bytes),
    st.builds(CertificateRequest, u8, small_bytes),
    st.builds(Authentication, u8, small_bytes),
    st.builds(Nonce, st.binary(min_size=16, max_size=64)),
    notifies,
    deletes,
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
    st.builds(Eap, st.sampled_from([1, 2]), u8, eap_tls_bodies),
    st.builds(UnknownPayload, unknown_types, small_bytes, st.booleans()),
)
payload_chains = st.lists(payloads, max_size=6).map(tuple)

exchange_types = st.one_of(st.sampled_from(list(ExchangeType)), u8)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """A plaintext IKE message (no SK payload) with any exchange and flags."""
    return Message(
        spi_i=draw(st.one_of(st.just(bytes(8)), st.binary(min_size=8, max_size=8))),
        spi_r=draw(st.one_of(st.just(bytes(8)), st.binary(min_size=8, max_size=8))),
        exchange_type=draw(exchange_types),
        message_id=draw(u32),
        initiator=draw(st.booleans()),
        response=draw(st.booleans()),
        payloads=draw(payload_chains),
        version=draw(st.one_of(st.just(0x20), u8)),
    )


# --- mutations ---------------------------------------------------------------------------

mutations = st.builds(
    Mutation,
    st.lists(
        st.tuples(
            st.sampled_from(
                ["flip", "set", "u16", "u32", "cut", "grow", "drop", "dup", "plen", "next"]
            ),
            st.integers(0, 1 << 16),
            st.integers(0, 0xFFFFFFFF),
        ),
        max_size=4,
    ).map(tuple),
)
"""Up to four wire edits: bit flips, boundary values, truncation, length and type fields."""


# --- payload chains shaped like each exchange (RFC 7296 §1, ikev2.codec.rules) ------------

_BY_TYPE: dict[int, st.SearchStrategy[Payload]] = {
    PayloadType.SA: sa_payloads,
    PayloadType.KE: st.builds(
        KeyExchange, groups, st.one_of(small_bytes, st.binary(min_size=30, max_size=140))
    ),
    PayloadType.IDi: st.builds(IdI, u8, small_bytes),
    PayloadType.IDr: st.builds(IdR, u8, small_bytes),
    PayloadType.CERT: st.builds(Certificate, u8, small_bytes),
    PayloadType.CERTREQ: st.builds(CertificateRequest, u8, small_bytes),
    PayloadType.AUTH: st.builds(Authentication, u8, small_bytes),
    PayloadType.NONCE: st.builds(Nonce, st.binary(min_size=16, max_size=64)),
    PayloadType.NOTIFY: notifies,
    PayloadType.DELETE: deletes,
    PayloadType.VENDOR_ID: st.builds(VendorId, small_bytes),
    PayloadType.TSi: st.builds(TsI, st.lists(selectors, max_size=3).map(tuple)),
    PayloadType.TSr: st.builds(TsR, st.lists(selectors, max_size=3).map(tuple)),
    PayloadType.CP: st.builds(
        Configuration,
        u8,
        st.lists(st.builds(ConfigAttribute, st.integers(0, 0x7FFF), small_bytes), max_size=4).map(
            tuple
        ),
    ),
    PayloadType.EAP: st.one_of(
        st.builds(Eap, st.sampled_from([1, 2, 3, 4]), u8, st.binary(max_size=8)).filter(
            lambda e: e.code in (3, 4) or len(e.data) >= 1
        ),
        st.builds(Eap, st.sampled_from([1, 2]), u8, eap_tls_bodies),
    ),
}


@st.composite
def shaped_chains(draw: st.DrawFn, exchange: int, response: bool) -> tuple[Payload, ...]:
    """Payloads an (exchange, response) may carry, in counts its rule allows (mostly:
    now and then a required one is left out), in RFC order or shuffled."""
    out: list[Payload] = []
    for rule in MESSAGE_RULES[(ExchangeType(exchange), response)]:
        low = rule.min_count if draw(st.integers(0, 9)) else 0
        count = draw(st.integers(low, min(rule.max_count, low + 2)))
        out += [draw(_BY_TYPE[rule.payload_type]) for _ in range(count)]
    if draw(st.booleans()):
        out = list(draw(st.permutations(out)))
    return tuple(out)


@st.composite
def shaped_messages(draw: st.DrawFn) -> Message:
    """A message whose payloads suit its exchange, so it gets past the payload rules
    to the exchange's own processing."""
    exchange = draw(st.sampled_from([34, 35, 36, 37]))
    response = draw(st.booleans())
    return Message(
        spi_i=draw(st.binary(min_size=8, max_size=8)),
        spi_r=draw(st.one_of(st.just(bytes(8)), st.binary(min_size=8, max_size=8))),
        exchange_type=exchange,
        message_id=draw(u32),
        initiator=draw(st.booleans()),
        response=response,
        payloads=draw(shaped_chains(exchange, response)),
    )
