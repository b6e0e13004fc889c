"""The payloads of RFC 7296 §3 as frozen dataclasses.

Each payload class knows its Payload Type (``TYPE``), how to encode its body (the
octets after the 4-octet generic payload header) and how to decode one. The generic
header and the payload chain are handled by :mod:`ikev2.codec.message`.

Numbers that come from the network (transform IDs, notify types, ID types, ...) are
kept as ``int`` so an unknown value is carried, not rejected; compare them with the
``IntEnum`` members of :mod:`ikev2.constants`, which are ints too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from struct import Struct
from struct import error as StructError
from typing import ClassVar, Self, TypeVar

from ikev2.codec.buffer import U8_U8_U16, U16_U16, BufferReadError, Reader, pack
from ikev2.constants import (
    EapCode,
    IdType,
    PayloadType,
    ProtocolId,
    TransformAttributeType,
    TsType,
    notify_is_error,
)
from ikev2.errors import InvalidSyntax, LocalProtocolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LAST = 0
_MORE_PROPOSALS = 2
_MORE_TRANSFORMS = 3
_ATTR_TV = 0x8000  # "AF" bit: attribute in Type/Value form (RFC 7296 §3.3.5)
_NONCE_MIN = 16  # RFC 7296 §3.9
_NONCE_MAX = 256
_PROPOSAL_HEADER = Struct("!BBBB")
"""Proposal Num, Protocol ID, SPI Size, Num Transforms (RFC 7296 §3.3.1)."""
_PROPOSAL = Struct("!BBHBBBB")
"""A proposal substructure's header and fixed fields, as one (RFC 7296 §3.3.1)."""
_TRANSFORM = Struct("!BBHBBH")
"""A transform substructure's header and fixed fields, as one (RFC 7296 §3.3.2)."""
_TYPE_RESERVED3 = Struct("!B3x")
"""A one-octet type and three reserved octets (ID §3.5, AUTH §3.8, TS §3.13, CP §3.15)."""
_TS_FIXED = Struct("!BBHHH")
"""TS Type, IP Protocol ID, Selector Length, Start Port, End Port (RFC 7296 §3.13.1)."""


class Payload:
    """Base of every payload; ``TYPE`` is its Payload Type (RFC 7296 §3.2)."""

    __slots__ = ()
    TYPE: ClassVar[int] = PayloadType.NONE

    @property
    def payload_type(self) -> int:
        """The Payload Type number that goes in the preceding Next Payload field."""
        return self.TYPE

    def encode_body(self) -> bytes:
        """The payload's octets after the generic payload header."""
        raise NotImplementedError

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        """Parse the octets after the generic payload header (raises ``InvalidSyntax``)."""
        raise NotImplementedError


# --- SA (RFC 7296 §3.3) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransformAttribute:
    """One transform attribute (RFC 7296 §3.3.5).

    An ``int`` value is sent in Type/Value form (16 bits, e.g. Key Length); a ``bytes``
    value in Type/Length/Value form.
    """

    attr_type: int
    """Attribute Type (15 bits); 14 is Key Length."""
    value: int | bytes
    """16-bit value (TV form) or octets (TLV form)."""


@dataclass(frozen=True, slots=True)
class Transform:
    """One transform of a proposal (RFC 7296 §3.3.2)."""

    transform_type: int
    """Transform Type: ENCR, PRF, INTEG, DH or ESN (:class:`TransformType`)."""
    transform_id: int
    """Transform ID within that type; unknown IDs are kept as they are."""
    attributes: tuple[TransformAttribute, ...] = ()
    """Transform attributes, in wire order."""

    @property
    def key_length(self) -> int | None:
        """The Key Length attribute in bits, or ``None`` when absent (RFC 7296 §3.3.5)."""
        for attr in self.attributes:
            if attr.attr_type == TransformAttributeType.KEY_LENGTH and isinstance(attr.value, int):
                return attr.value
        return None

    @classmethod
    def make(cls, transform_type: int, transform_id: int, key_length: int | None = None) -> Self:
        """A transform with an optional Key Length attribute."""
        attrs: tuple[TransformAttribute, ...] = ()
        if key_length is not None:
            attrs = (TransformAttribute(TransformAttributeType.KEY_LENGTH, key_length),)
        return cls(transform_type, transform_id, attrs)


@dataclass(frozen=True, slots=True)
class Proposal:
    """One proposal substructure of an SA payload (RFC 7296 §3.3.1)."""

    number: int
    """Proposal Num: 1 for the first, then counting up."""
    protocol: int
    """Protocol ID (:class:`ProtocolId`)."""
    spi: bytes
    """SPI: empty for IKE_SA_INIT, 8 octets for an IKE rekey, 4 for ESP/AH."""
    transforms: tuple[Transform, ...]
    """Transforms in wire order."""

    def transforms_of(self, transform_type: int) -> tuple[Transform, ...]:
        """The transforms of one type, in wire order."""
        return tuple([t for t in self.transforms if t.transform_type == transform_type])


@dataclass(frozen=True, slots=True)
class SecurityAssociation(Payload):
    """SA payload: the proposals offered or the one chosen (RFC 7296 §3.3)."""

    TYPE: ClassVar[int] = PayloadType.SA
    proposals: tuple[Proposal, ...]
    """Proposals in order of preference."""

    def encode_body(self) -> bytes:
        try:
            return _encode_proposals(self.proposals)
        except StructError as exc:
            raise OverflowError(f"SA payload field out of range: {exc}") from exc

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        return cls(_decode_proposals(data))


def _encode_proposals(proposals: tuple[Proposal, ...]) -> bytes:
    # Struct.pack directly (struct.error is turned into OverflowError by the caller):
    # an SA payload is encoded in every IKE_SA_INIT and IKE_AUTH.
    parts: list[bytes] = []
    last_proposal = len(proposals)
    for pi, prop in enumerate(proposals, 1):
        body = [prop.spi]
        last_transform = len(prop.transforms)
        for ti, tr in enumerate(prop.transforms, 1):
            marker = _LAST if ti == last_transform else _MORE_TRANSFORMS
            if tr.attributes:
                attrs = b"".join([_encode_attribute(a) for a in tr.attributes])
                length = 8 + len(attrs)
                body += (
                    _TRANSFORM.pack(marker, 0, length, tr.transform_type, 0, tr.transform_id),
                    attrs,
                )
            else:
                body.append(_TRANSFORM.pack(marker, 0, 8, tr.transform_type, 0, tr.transform_id))
        rest = b"".join(body)
        marker = _LAST if pi == last_proposal else _MORE_PROPOSALS
        header = (marker, 0, 8 + len(rest), prop.number, prop.protocol, len(prop.spi))
        parts += (_PROPOSAL.pack(*header, last_transform), rest)
    return b"".join(parts)


def _encode_attribute(attr: TransformAttribute) -> bytes:
    # Raises struct.error or OverflowError; SecurityAssociation.encode_body reports both
    # as OverflowError.
    if isinstance(attr.value, int):
        return U16_U16.pack(_ATTR_TV | _check_attr_type(attr.attr_type), attr.value)
    return U16_U16.pack(_check_attr_type(attr.attr_type), len(attr.value)) + attr.value


def _check_attr_type(attr_type: int) -> int:
    if not 0 <= attr_type < _ATTR_TV:
        raise OverflowError("attribute type out of range")
    return attr_type


# The SA payload is decoded by offsets into its body, each substructure bounded by its
# own Length field, rather than through a Reader per proposal and per transform: it is
# the largest payload of IKE_SA_INIT and IKE_AUTH. A length running past its container
# is a BufferReadError (a truncated field), as with the Reader.


_T = TypeVar("_T")


def _short(what: str, need: int, left: int) -> BufferReadError:
    return BufferReadError(f"{what} needs {need} octets, {left} left")


def _substructures(
    data: bytes,
    pos: int,
    end: int,
    more: bool,
    more_marker: int,
    what: str,
    decode: Callable[[bytes, int, int], _T],
    out: list[_T],
) -> int:
    """Decode a chain of proposal or transform substructures (RFC 7296 §3.3.1, §3.3.2)
    starting at `pos` into `out`: each opens with Last/More (`more_marker`), a
    reserved octet and its Length, and `decode` gets the octets after those four.
    Returns where the chain ended."""
    while more:
        if pos + 4 > end:
            raise _short(f"{what} header", 4, end - pos)
        marker, _, length = U8_U8_U16.unpack_from(data, pos)
        if marker not in (_LAST, more_marker) or length < 8:
            raise InvalidSyntax(f"malformed {what} substructure")
        if pos + length > end:
            raise _short(what, length, end - pos)
        out.append(decode(data, pos + 4, pos + length))
        pos += length
        more = marker == more_marker
    return pos


def _decode_proposals(data: bytes) -> tuple[Proposal, ...]:
    proposals: list[Proposal] = []
    end = len(data)
    pos = _substructures(
        data, 0, end, end > 0, _MORE_PROPOSALS, "proposal", _decode_proposal, proposals
    )
    if pos != end:
        raise InvalidSyntax("data after the last proposal")
    if not proposals:
        raise InvalidSyntax("SA payload without proposals")
    return tuple(proposals)


def _decode_proposal(data: bytes, pos: int, end: int) -> Proposal:
    # The caller checked that the proposal's 4 fixed octets are there (length >= 8).
    number, protocol, spi_size, count = _PROPOSAL_HEADER.unpack_from(data, pos)
    pos += 4
    if pos + spi_size > end:
        raise _short("SPI", spi_size, end - pos)
    spi = data[pos : pos + spi_size]
    pos += spi_size
    transforms: list[Transform] = []
    pos = _substructures(
        data, pos, end, count > 0, _MORE_TRANSFORMS, "transform", _decode_transform, transforms
    )
    if pos != end or len(transforms) != count:
        raise InvalidSyntax("proposal length or transform count does not match its transforms")
    return Proposal(number, protocol, spi, tuple(transforms))


def _decode_transform(data: bytes, pos: int, end: int) -> Transform:
    # The caller checked that the transform's 4 fixed octets are there (length >= 8).
    transform_type, _, transform_id = U8_U8_U16.unpack_from(data, pos)
    pos += 4
    attrs: list[TransformAttribute] = []
    while pos < end:
        if pos + 4 > end:
            raise _short("transform attribute", 4, end - pos)
        word, value = U16_U16.unpack_from(data, pos)
        pos += 4
        if word & _ATTR_TV:
            attrs.append(TransformAttribute(word & ~_ATTR_TV, value))
        else:
            # TLV form: the second word is the Attribute Length (RFC 7296 §3.3.5).
            if pos + value > end:
                raise _short("transform attribute value", value, end - pos)
            attrs.append(TransformAttribute(word, data[pos : pos + value]))
            pos += value
    return Transform(transform_type, transform_id, tuple(attrs))


# --- KE, ID, CERT, CERTREQ, AUTH, Nonce (RFC 7296 §3.4-3.9) -----------------------------


@dataclass(frozen=True, slots=True)
class KeyExchange(Payload):
    """KE payload (RFC 7296 §3.4)."""

    TYPE: ClassVar[int] = PayloadType.KE
    group: int
    """Diffie-Hellman Group Num (:class:`DhGroup`)."""
    data: bytes
    """Key Exchange Data: the public value in the group's encoding."""

    def encode_body(self) -> bytes:
        return self.group.to_bytes(2, "big") + b"\x00\x00" + self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        buf = Reader(data)
        group, _ = buf.pull_struct(U16_U16)
        return cls(group, buf.pull_rest())


@dataclass(frozen=True, slots=True)
class _Identification(Payload):
    """Common part of IDi and IDr (RFC 7296 §3.5)."""

    id_type: int
    """ID Type (:class:`IdType`)."""
    data: bytes
    """Identification Data (address octets, FQDN, RFC 822 address, DER DN, ...)."""

    @property
    def id_prime(self) -> bytes:
        """IDx' of RFC 7296 §2.15: ID Type, three reserved octets and the data."""
        return self.encode_body()

    def encode_body(self) -> bytes:
        return bytes([self.id_type]) + b"\x00\x00\x00" + self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        buf = Reader(data)
        id_type = buf.pull_uint8()
        buf.skip(3)
        return cls(id_type, buf.pull_rest())

    @classmethod
    def from_address(cls, address: IPAddress) -> Self:
        """ID_IPV4_ADDR or ID_IPV6_ADDR."""
        kind = IdType.ID_IPV4_ADDR if address.version == 4 else IdType.ID_IPV6_ADDR
        return cls(kind, address.packed)

    @classmethod
    def from_fqdn(cls, name: str) -> Self:
        """ID_FQDN (no terminator, RFC 7296 §3.5)."""
        return cls(IdType.ID_FQDN, name.encode("ascii"))

    @classmethod
    def from_rfc822(cls, address: str) -> Self:
        """ID_RFC822_ADDR."""
        return cls(IdType.ID_RFC822_ADDR, address.encode("ascii"))

    @classmethod
    def from_der_dn(cls, der: bytes) -> Self:
        """ID_DER_ASN1_DN: the DER encoding of an X.501 Name."""
        return cls(IdType.ID_DER_ASN1_DN, der)


@dataclass(frozen=True, slots=True)
class IdI(_Identification):
    """IDi, the initiator's identity (RFC 7296 §3.5)."""

    TYPE: ClassVar[int] = PayloadType.IDi


@dataclass(frozen=True, slots=True)
class IdR(_Identification):
    """IDr, the responder's identity (RFC 7296 §3.5)."""

    TYPE: ClassVar[int] = PayloadType.IDr


@dataclass(frozen=True, slots=True)
class Certificate(Payload):
    """CERT payload (RFC 7296 §3.6)."""

    TYPE: ClassVar[int] = PayloadType.CERT
    encoding: int
    """Certificate Encoding (:class:`CertEncoding`); 4 is a DER X.509 certificate."""
    data: bytes
    """Certificate Data."""

    def encode_body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        buf = Reader(data)
        return cls(buf.pull_uint8(), buf.pull_rest())


@dataclass(frozen=True, slots=True)
class CertificateRequest(Payload):
    """CERTREQ payload (RFC 7296 §3.7)."""

    TYPE: ClassVar[int] = PayloadType.CERTREQ
    encoding: int
    """Certificate Encoding wanted (:class:`CertEncoding`)."""
    authorities: bytes
    """Certification Authority: concatenated SHA-1 hashes of trusted CAs' public keys."""

    def encode_body(self) -> bytes:
        return bytes([self.encoding]) + self.authorities

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        buf = Reader(data)
        return cls(buf.pull_uint8(), buf.pull_rest())


@dataclass(frozen=True, slots=True)
class Authentication(Payload):
    """AUTH payload (RFC 7296 §3.8)."""

    TYPE: ClassVar[int] = PayloadType.AUTH
    method: int
    """Auth Method (:class:`AuthMethod`)."""
    data: bytes
    """Authentication Data (a PRF output for PSK, a signature otherwise)."""

    def encode_body(self) -> bytes:
        return bytes([self.method]) + b"\x00\x00\x00" + self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        buf = Reader(data)
        method = buf.pull_uint8()
        buf.skip(3)
        return cls(method, buf.pull_rest())


@dataclass(frozen=True, slots=True)
class Nonce(Payload):
    """Ni/Nr payload (RFC 7296 §3.9); its data is 16 to 256 octets."""

    TYPE: ClassVar[int] = PayloadType.NONCE
    data: bytes
    """Nonce Data."""

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        if not _NONCE_MIN <= len(data) <= _NONCE_MAX:
            raise InvalidSyntax(f"nonce of {len(data)} octets (RFC 7296 §3.9: 16 to 256)")
        return cls(data)


# --- Notify, Delete, Vendor ID (RFC 7296 §3.10-3.12) ------------------------------------


@dataclass(frozen=True, slots=True)
class Notify(Payload):
    """Notify payload (RFC 7296 §3.10)."""

    TYPE: ClassVar[int] = PayloadType.NOTIFY
    notify_type: int
    """Notify Message Type (:class:`NotifyType`); unknown numbers are kept."""
    data: bytes = b""
    """Notification Data."""
    protocol: int = ProtocolId.NONE
    """Protocol ID: 0 unless the notify is about a CHILD SA (then ESP/AH)."""
    spi: bytes = b""
    """SPI the notify is about (empty for IKE SA notifies)."""

    @property
    def is_error(self) -> bool:
        """Error notifies are types below 16384 (RFC 7296 §3.10.1)."""
        return notify_is_error(self.notify_type)

    def encode_body(self) -> bytes:
        header = pack(U8_U8_U16, self.protocol, len(self.spi), self.notify_type)
        return header + self.spi + self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        # By offsets, without a Reader: every IKE_SA_INIT carries several notifies.
        if len(data) < 4:
            raise BufferReadError(f"Notify header needs 4 octets, {len(data)} left")
        protocol, spi_size, notify_type = U8_U8_U16.unpack_from(data)
        spi_end = 4 + spi_size
        if spi_end > len(data):
            raise BufferReadError(f"Notify SPI needs {spi_size} octets, {len(data) - 4} left")
        return cls(notify_type, data[spi_end:], protocol, data[4:spi_end])


@dataclass(frozen=True, slots=True)
class Delete(Payload):
    """Delete payload (RFC 7296 §3.11).

    For the IKE SA itself ``protocol`` is IKE and ``spis`` is empty (the SA is the one
    the message travels in); for CHILD SAs it lists the 4-octet SPIs of the sender's
    inbound SAs.
    """

    TYPE: ClassVar[int] = PayloadType.DELETE
    protocol: int
    """Protocol ID (:class:`ProtocolId`)."""
    spis: tuple[bytes, ...] = ()
    """The SPIs, all of the same size."""

    def encode_body(self) -> bytes:
        sizes = {len(spi) for spi in self.spis}
        if len(sizes) > 1:
            raise OverflowError("Delete SPIs of different sizes")
        default_size = 0 if self.protocol == ProtocolId.IKE else 4
        spi_size = sizes.pop() if sizes else default_size
        return pack(U8_U8_U16, self.protocol, spi_size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        buf = Reader(data)
        protocol, spi_size, count = buf.pull_struct(U8_U8_U16)
        if count and not spi_size:
            raise InvalidSyntax("Delete payload lists SPIs of size 0")
        spis = tuple(buf.pull_bytes(spi_size) for _ in range(count))
        if not buf.eof():
            raise InvalidSyntax("Delete payload longer than its SPIs")
        return cls(protocol, spis)


@dataclass(frozen=True, slots=True)
class VendorId(Payload):
    """Vendor ID payload (RFC 7296 §3.12)."""

    TYPE: ClassVar[int] = PayloadType.VENDOR_ID
    data: bytes
    """Vendor ID octets."""

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        return cls(data)


# --- Traffic selectors (RFC 7296 §3.13) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One traffic selector (RFC 7296 §3.13.1), IPv4 or IPv6 address range.

    Other TS types (e.g. TS_FC_ADDR_RANGE) are refused by the decoder with
    INVALID_SYNTAX; lockgate never proposes them.
    """

    start_address: IPAddress
    """First address of the range (inclusive)."""
    end_address: IPAddress
    """Last address of the range (inclusive); same family as ``start_address``."""
    ip_protocol: int = 0
    """IP protocol number; 0 means any."""
    start_port: int = 0
    """First port (inclusive)."""
    end_port: int = 65535
    """Last port (inclusive). RFC 7296 §3.13.1: start 65535, end 0 means OPAQUE."""

    @property
    def ts_type(self) -> TsType:
        """TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE."""
        if self.start_address.version == 4:
            return TsType.TS_IPV4_ADDR_RANGE
        return TsType.TS_IPV6_ADDR_RANGE

    def encode(self) -> bytes:
        """Wire form of this selector."""
        if self.start_address.version != self.end_address.version:
            raise OverflowError("traffic selector mixes IPv4 and IPv6")
        start = self.start_address.packed
        fixed = (self.ts_type, self.ip_protocol, 8 + 2 * len(start), self.start_port)
        return pack(_TS_FIXED, *fixed, self.end_port) + start + self.end_address.packed


_TS_FAMILY: dict[int, tuple[int, Callable[[bytes], IPAddress]]] = {
    TsType.TS_IPV4_ADDR_RANGE: (4, ipaddress.IPv4Address),
    TsType.TS_IPV6_ADDR_RANGE: (16, ipaddress.IPv6Address),
}
"""TS Type -> address length and address class (RFC 7296 §3.13.1)."""


def _decode_selector(buf: Reader) -> TrafficSelector:
    ts_type, ip_protocol, length = buf.pull_struct(U8_U8_U16)
    family = _TS_FAMILY.get(ts_type)
    if family is None:
        raise InvalidSyntax(f"unsupported traffic selector type {ts_type}")
    addr_len, address = family
    if length != 8 + 2 * addr_len:
        raise InvalidSyntax("traffic selector length does not match its type")
    rest = buf.pull_bytes(length - 4)  # the ports and the two addresses
    start_port, end_port = U16_U16.unpack_from(rest)
    # The type fixes the family: build that address class directly (ip_address() of
    # 16 octets tries, and fails, IPv4 first).
    start = address(rest[4 : 4 + addr_len])
    end = address(rest[4 + addr_len :])
    return TrafficSelector(start, end, ip_protocol, start_port, end_port)


@dataclass(frozen=True, slots=True)
class _TrafficSelectors(Payload):
    """Common part of TSi and TSr (RFC 7296 §3.13)."""

    selectors: tuple[TrafficSelector, ...]
    """The selectors, in wire order (the first is the packet that triggered, §2.9)."""

    def encode_body(self) -> bytes:
        parts = [pack(_TYPE_RESERVED3, len(self.selectors))]
        parts += [ts.encode() for ts in self.selectors]
        return b"".join(parts)

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        buf = Reader(data)
        count = buf.pull_uint8()
        buf.skip(3)
        selectors = tuple([_decode_selector(buf) for _ in range(count)])
        if not buf.eof():
            raise InvalidSyntax("traffic selector payload longer than its selectors")
        return cls(selectors)


@dataclass(frozen=True, slots=True)
class TsI(_TrafficSelectors):
    """TSi, the initiator's traffic selectors (RFC 7296 §3.13)."""

    TYPE: ClassVar[int] = PayloadType.TSi


@dataclass(frozen=True, slots=True)
class TsR(_TrafficSelectors):
    """TSr, the responder's traffic selectors (RFC 7296 §3.13)."""

    TYPE: ClassVar[int] = PayloadType.TSr


# --- SK, CP, EAP (RFC 7296 §3.14-3.16) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Encrypted(Payload):
    """SK payload as it is on the wire (RFC 7296 §3.14): still encrypted.

    Its generic header's Next Payload names the first *inner* payload; the SK payload
    is always the last one of a message. ``ikev2.crypto.sk`` seals and opens it.
    """

    TYPE: ClassVar[int] = PayloadType.SK
    first_payload: int
    """Payload Type of the first payload inside."""
    body: bytes
    """IV, ciphertext (with padding and Pad Length) and ICV."""

    def encode_body(self) -> bytes:
        return self.body

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        # The first inner payload type is in the SK payload's own generic header, which
        # only the payload chain decoder (message.py) sees.
        raise LocalProtocolError("the SK payload is decoded by decode_payloads()")


@dataclass(frozen=True, slots=True)
class ConfigAttribute:
    """One configuration attribute (RFC 7296 §3.15.1)."""

    attr_type: int
    """Attribute Type (15 bits, :class:`CpAttributeType`)."""
    value: bytes = b""
    """Value; empty in a CFG_REQUEST asking for any value."""


@dataclass(frozen=True, slots=True)
class Configuration(Payload):
    """CP payload (RFC 7296 §3.15)."""

    TYPE: ClassVar[int] = PayloadType.CP
    cfg_type: int
    """CFG Type (:class:`CfgType`)."""
    attributes: tuple[ConfigAttribute, ...] = ()
    """Configuration attributes in wire order."""

    def encode_body(self) -> bytes:
        parts = [pack(_TYPE_RESERVED3, self.cfg_type)]
        for attr in self.attributes:
            parts.append(pack(U16_U16, _check_attr_type(attr.attr_type), len(attr.value)))
            parts.append(attr.value)
        return b"".join(parts)

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        buf = Reader(data)
        cfg_type = buf.pull_uint8()
        buf.skip(3)
        attrs: list[ConfigAttribute] = []
        while not buf.eof():
            word, length = buf.pull_struct(U16_U16)
            attr_type = word & 0x7FFF  # top bit reserved, ignored on receipt
            attrs.append(ConfigAttribute(attr_type, buf.pull_bytes(length)))
        return cls(cfg_type, tuple(attrs))


@dataclass(frozen=True, slots=True)
class Eap(Payload):
    """EAP payload (RFC 7296 §3.16) carrying one EAP message (RFC 3748 §4)."""

    TYPE: ClassVar[int] = PayloadType.EAP
    code: int
    """EAP Code (:class:`EapCode`)."""
    identifier: int
    """EAP Identifier."""
    data: bytes = b""
    """Type and Type-Data (empty for Success and Failure)."""

    def encode_body(self) -> bytes:
        return pack(U8_U8_U16, self.code, self.identifier, 4 + len(self.data)) + self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        buf = Reader(data)
        code, identifier, length = buf.pull_struct(U8_U8_U16)
        if length != len(data):
            raise InvalidSyntax("EAP length does not match the EAP payload")
        if code in (EapCode.REQUEST, EapCode.RESPONSE) and length < 5:
            raise InvalidSyntax("EAP request/response without a Type")
        return cls(code, identifier, buf.pull_rest())


# --- Payloads we do not know ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnknownPayload(Payload):
    """A payload whose type we do not implement, kept so messages round-trip.

    A critical one is refused by the decoder (RFC 7296 §2.5), so any instance the
    decoder returns is non-critical and is to be ignored.
    """

    type_number: int
    """Its Payload Type."""
    data: bytes
    """Its body."""
    critical: bool = field(default=False)
    """The Critical bit as received or to send."""

    @property
    def payload_type(self) -> int:
        return self.type_number

    def encode_body(self) -> bytes:
        return self.data


DECODERS: dict[int, Callable[[bytes], Payload]] = {
    cls.TYPE: cls.decode_body
    for cls in (
        SecurityAssociation,
        KeyExchange,
        IdI,
        IdR,
        Certificate,
        CertificateRequest,
        Authentication,
        Nonce,
        Notify,
        Delete,
        VendorId,
        TsI,
        TsR,
        Configuration,
        Eap,
    )
}
"""Payload Type -> body decoder, for every payload except SK (handled by the message)."""

__all__ = [
    "DECODERS",
    "Authentication",
    "Certificate",
    "CertificateRequest",
    "ConfigAttribute",
    "Configuration",
    "Delete",
    "Eap",
    "Encrypted",
    "IPAddress",
    "IdI",
    "IdR",
    "KeyExchange",
    "Nonce",
    "Notify",
    "Payload",
    "Proposal",
    "SecurityAssociation",
    "TrafficSelector",
    "Transform",
    "TransformAttribute",
    "TsI",
    "TsR",
    "UnknownPayload",
    "VendorId",
]
