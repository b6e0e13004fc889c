"""IKE header, payload chain and whole messages (RFC 7296 §3.1, §3.2).

``decode_message`` turns received octets into a :class:`Message`; every way the octets
can be wrong raises :class:`ikev2.errors.InvalidSyntax` (or its subclasses
``UnsupportedCriticalPayload`` / ``InvalidMajorVersion``), never anything else.
``encode_message`` does the reverse; values that do not fit their fields raise
:class:`ikev2.errors.LocalProtocolError` (our bug, not the peer's).

An SK payload is decoded as :class:`Encrypted` and stays opaque here; the crypto layer
(``ikev2.crypto.sk``) opens it and returns a :class:`Message` with ``encrypted=True``
whose ``payloads`` are the inner ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from struct import Struct
from struct import error as StructError
from typing import TypeVar

from ikev2.codec.buffer import U8_U8_U16, BufferReadError, pack
from ikev2.codec.payloads import DECODERS, Encrypted, Notify, Payload, UnknownPayload
from ikev2.constants import (
    GENERIC_PAYLOAD_HEADER_LEN,
    IKE_HEADER_LEN,
    IKE_VERSION,
    HeaderFlag,
    PayloadType,
)
from ikev2.errors import (
    InvalidMajorVersion,
    InvalidSyntax,
    LocalProtocolError,
    UnsupportedCriticalPayload,
)

_CRITICAL = 0x80
_MAX_LEN = 0xFFFF
# Plain ints: an IntFlag operation goes through enum.py, several calls per message.
_INITIATOR = int(HeaderFlag.INITIATOR)
_RESPONSE = int(HeaderFlag.RESPONSE)
_NO_NEXT = int(PayloadType.NONE)
_SK = int(PayloadType.SK)
_HEADER = Struct("!8s8sBBBBII")
"""The IKE header (RFC 7296 §3.1): SPIs, Next Payload, Version, Exchange Type, Flags,
Message ID, Length."""

P = TypeVar("P", bound=Payload)


@dataclass(frozen=True, slots=True)
class IkeHeader:
    """The fixed 28-octet IKE header (RFC 7296 §3.1)."""

    spi_i: bytes
    """IKE SA Initiator's SPI (8 octets)."""
    spi_r: bytes
    """IKE SA Responder's SPI (8 octets; zero in the first IKE_SA_INIT request)."""
    next_payload: int
    """Type of the first payload."""
    exchange_type: int
    """Exchange Type (:class:`ExchangeType`)."""
    message_id: int
    """Message ID (32 bits)."""
    length: int
    """Length of the whole message in octets."""
    initiator: bool
    """I flag: sent by the original initiator of the IKE SA."""
    response: bool
    """R flag: this message is a response."""
    version: int = IKE_VERSION
    """Major (high nibble) and minor version."""

    def encode(self) -> bytes:
        """The 28 header octets."""
        return _encode_header(self, self.next_payload, self.length)

    def message(
        self,
        payloads: tuple[Payload, ...],
        *,
        encrypted: bool = False,
        plaintext: bytes | None = None,
    ) -> Message:
        """The message this header heads, with ``payloads`` (the inverse of
        :meth:`Message.header`; ``encrypted`` and ``plaintext`` as in :class:`Message`)."""
        return Message(
            spi_i=self.spi_i,
            spi_r=self.spi_r,
            exchange_type=self.exchange_type,
            message_id=self.message_id,
            initiator=self.initiator,
            response=self.response,
            payloads=payloads,
            encrypted=encrypted,
            version=self.version,
            plaintext=plaintext,
        )


def decode_header(data: bytes) -> IkeHeader:
    """Parse the IKE header of a received message and check its version and length.

    Enough to route the message to its IKE SA before decoding the payloads.
    """
    if len(data) < IKE_HEADER_LEN:
        raise InvalidSyntax(f"message of {len(data)} octets is shorter than the IKE header")
    spi_i, spi_r, next_payload, version, exchange_type, flags, message_id, length = (
        _HEADER.unpack_from(data)
    )
    if version >> 4 != IKE_VERSION >> 4:
        raise InvalidMajorVersion(version)
    if length != len(data):
        raise InvalidSyntax(f"IKE header says {length} octets, datagram has {len(data)}")
    return IkeHeader(
        spi_i=spi_i,
        spi_r=spi_r,
        next_payload=next_payload,
        exchange_type=exchange_type,
        message_id=message_id,
        length=length,
        initiator=bool(flags & _INITIATOR),
        response=bool(flags & _RESPONSE),
        version=version,
    )


@dataclass(frozen=True, slots=True)
class Message:
    """An IKE message: header fields and payloads (RFC 7296 §3).

    With ``encrypted=False`` the payloads are the ones on the wire (an SK payload, if
    any, is the last and is an :class:`Encrypted`). With ``encrypted=True`` the payloads
    are the ones inside the SK payload: the form the state machine builds before
    sealing and gets back after opening (``ikev2.crypto.sk``).
    """

    spi_i: bytes
    """IKE SA Initiator's SPI (8 octets)."""
    spi_r: bytes
    """IKE SA Responder's SPI (8 octets)."""
    exchange_type: int
    """Exchange Type (:class:`ExchangeType`)."""
    message_id: int
    """Message ID."""
    initiator: bool
    """I flag: sent by the original initiator of the IKE SA."""
    response: bool
    """R flag: this message is a response."""
    payloads: tuple[Payload, ...] = ()
    """Payloads in order (inner payloads when ``encrypted``)."""
    encrypted: bool = False
    """Whether ``payloads`` belong inside an SK payload."""
    version: int = IKE_VERSION
    """Major and minor version octet of the header."""
    plaintext: bytes | None = field(default=None, compare=False, repr=False)
    """A received encrypted message: its inner payloads as the peer encoded them (the
    SK payload's plaintext without padding), which IntAuth covers (RFC 9242 §3.3.2)."""

    def encode_header(self, next_payload: int, length: int) -> bytes:
        """``self.header(next_payload, length).encode()`` without the IkeHeader object
        (two messages of every setup are encoded)."""
        return _encode_header(self, next_payload, length)

    def header(self, next_payload: int, length: int) -> IkeHeader:
        """The header of this message for a given first payload and total length."""
        return IkeHeader(
            spi_i=self.spi_i,
            spi_r=self.spi_r,
            next_payload=next_payload,
            exchange_type=self.exchange_type,
            message_id=self.message_id,
            length=length,
            initiator=self.initiator,
            response=self.response,
            version=self.version,
        )

    def get(self, kind: type[P]) -> P | None:
        """The first payload of a class, or ``None``."""
        for payload in self.payloads:
            if isinstance(payload, kind):
                return payload
        return None

    def get_all(self, kind: type[P]) -> list[P]:
        """Every payload of a class, in order."""
        return [p for p in self.payloads if isinstance(p, kind)]

    def notify(self, notify_type: int) -> Notify | None:
        """The first Notify of a type, or ``None``."""
        for payload in self.payloads:
            if isinstance(payload, Notify) and payload.notify_type == notify_type:
                return payload
        return None

    def error_notifies(self) -> list[Notify]:
        """The error Notify payloads (types below 16384)."""
        return [p for p in self.payloads if isinstance(p, Notify) and p.is_error]


def _encode_header(fields: IkeHeader | Message, next_payload: int, length: int) -> bytes:
    """The 28 octets of the IKE header (RFC 7296 §3.1) of a header or a message."""
    spi_i, spi_r = fields.spi_i, fields.spi_r
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise LocalProtocolError("IKE SPIs must be 8 octets")
    flags = (_INITIATOR if fields.initiator else 0) | (_RESPONSE if fields.response else 0)
    octet_fields = (next_payload, fields.version, fields.exchange_type, flags)
    try:
        return pack(_HEADER, spi_i, spi_r, *octet_fields, fields.message_id, length)
    except OverflowError as exc:
        raise LocalProtocolError(f"IKE header field out of range: {exc}") from exc


# --- Payload chain ----------------------------------------------------------------------


def generic_header(next_payload: int, body_len: int, critical: bool = False) -> bytes:
    """The 4-octet generic payload header (RFC 7296 §3.2)."""
    length = GENERIC_PAYLOAD_HEADER_LEN + body_len
    if length > _MAX_LEN:
        raise LocalProtocolError(f"payload of {length} octets does not fit its length field")
    try:
        return pack(U8_U8_U16, next_payload, _CRITICAL if critical else 0, length)
    except OverflowError as exc:
        raise LocalProtocolError(f"bad next payload type {next_payload}") from exc


def encode_payloads(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """Encode a payload chain; returns the type of the first payload and the octets.

    An :class:`Encrypted` payload must be last: its Next Payload field carries the
    type of its first inner payload (RFC 7296 §3.14).
    """
    parts: list[bytes] = []
    # Each payload's Next Payload field names the one after it (RFC 7296 §3.2).
    next_types = [p.payload_type for p in payloads]
    next_types.append(_NO_NEXT)
    last_index = len(payloads) - 1
    for index, payload in enumerate(payloads):
        next_type = next_types[index + 1]
        if isinstance(payload, Encrypted):
            if index != last_index:
                raise LocalProtocolError("the SK payload must be the last payload")
            next_type = payload.first_payload
        try:
            body = payload.encode_body()
        except (OverflowError, ValueError) as exc:
            raise LocalProtocolError(f"cannot encode {type(payload).__name__}: {exc}") from exc
        critical = _CRITICAL if isinstance(payload, UnknownPayload) and payload.critical else 0
        length = GENERIC_PAYLOAD_HEADER_LEN + len(body)
        if length > _MAX_LEN:
            raise LocalProtocolError(f"payload of {length} octets does not fit its length field")
        try:
            parts += (U8_U8_U16.pack(next_type, critical, length), body)
        except StructError as exc:
            raise LocalProtocolError(f"bad next payload type {next_type}") from exc
    return next_types[0], b"".join(parts)


def decode_payloads(first_type: int, data: bytes, *, inner: bool = False) -> tuple[Payload, ...]:
    """Decode a payload chain starting with a payload of ``first_type``.

    ``inner`` is True for the plaintext of an SK payload, where another SK payload is
    not allowed. Raises only :class:`InvalidSyntax` (or a subclass).
    """
    try:
        return _decode_payloads(first_type, data, inner)
    except BufferReadError as exc:
        raise InvalidSyntax(f"truncated payload: {exc}") from exc


def _decode_payloads(next_type: int, data: bytes, inner: bool) -> tuple[Payload, ...]:
    # The chain is walked with offsets rather than a Reader: it is the hottest loop of
    # the decoder, and each generic header is one unpack_from.
    end = len(data)
    pos = 0
    payloads: list[Payload] = []
    while next_type != _NO_NEXT:
        this_type = next_type
        if pos + GENERIC_PAYLOAD_HEADER_LEN > end:
            raise BufferReadError(f"need a generic payload header, {end - pos} octets left")
        next_type, flags, length = U8_U8_U16.unpack_from(data, pos)
        critical = bool(flags & _CRITICAL)
        if length < GENERIC_PAYLOAD_HEADER_LEN:
            raise InvalidSyntax(f"payload length {length} is shorter than its header")
        if pos + length > end:
            raise BufferReadError(f"payload of {length} octets, {end - pos} left")
        body = data[pos + GENERIC_PAYLOAD_HEADER_LEN : pos + length]
        pos += length
        if this_type == _SK:
            if inner:
                raise InvalidSyntax("SK payload inside an SK payload")
            if pos != end:
                raise InvalidSyntax("the SK payload is not the last payload")
            payloads.append(Encrypted(next_type, body))
            return tuple(payloads)
        decoder = DECODERS.get(this_type)
        if decoder is not None:
            payloads.append(decoder(body))
        elif critical:
            # RFC 7296 §2.5: reject the whole message when a critical payload is unknown.
            raise UnsupportedCriticalPayload(this_type)
        else:
            payloads.append(UnknownPayload(this_type, body, critical=False))
    if pos != end:
        raise InvalidSyntax(f"{end - pos} octets after the last payload")
    return tuple(payloads)


# --- Whole messages ---------------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """Encode an unencrypted message (or one whose SK payload is already sealed)."""
    if message.encrypted:
        raise LocalProtocolError("an encrypted message is encoded by ikev2.crypto.sk")
    first, chain = encode_payloads(message.payloads)
    return message.encode_header(first, IKE_HEADER_LEN + len(chain)) + chain


def decode_message(data: bytes) -> Message:
    """Decode a received IKE message (without the non-ESP marker of port 4500)."""
    header = decode_header(data)
    return header.message(decode_payloads(header.next_payload, data[IKE_HEADER_LEN:]))
