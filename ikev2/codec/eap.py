"""The EAP messages inside an EAP payload (RFC 3748 §4-5, RFC 2759 via EAP).

`ikev2.codec.payloads.Eap` carries Code, Identifier and the octets after the EAP
header: Type and Type-Data. This module gives those octets a shape for the types the
remote-access server speaks: Identity (1), Nak (3), MS-CHAPv2 (26, with its own
header: OpCode, MS-CHAPv2-ID, MS-Length; draft-kamath-pppext-eap-mschapv2 §2) and
EAP-TLS (13: Flags, an optional TLS Message Length, then TLS data; RFC 5216 §3.1).

`decode_eap_data(code, data)` raises only `InvalidSyntax`; a type we do not speak is
kept as `EapOther`, so the caller can answer it (with a Nak, or a Failure).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from struct import Struct

from ikev2.codec.buffer import Reader, pack
from ikev2.codec.payloads import Eap
from ikev2.constants import EapCode
from ikev2.errors import InvalidSyntax


class EapType(enum.IntEnum):
    """EAP method types (RFC 3748 §5, IANA)."""

    IDENTITY = 1
    NOTIFICATION = 2
    NAK = 3
    MD5_CHALLENGE = 4
    TLS = 13
    MSCHAPV2 = 26


class MsChapV2OpCode(enum.IntEnum):
    """MS-CHAPv2 packet OpCodes (RFC 2759 §3-6)."""

    CHALLENGE = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4
    CHANGE_PASSWORD = 7


_MS_HEADER = Struct("!BBBH")
"""EAP Type, OpCode, MS-CHAPv2-ID, MS-Length (MS-Length: the EAP Length less 5)."""
_CHALLENGE_VALUE = 16
_TLS_LENGTH = Struct("!I")
_RESPONSE_VALUE = 49
"""Peer-Challenge (16), Reserved (8), NT-Response (24), Flags (1) (RFC 2759 §4)."""


@dataclass(frozen=True, slots=True)
class EapIdentity:
    """Identity (RFC 3748 §5.1): empty in a request, the user's name in a response."""

    identity: bytes = b""
    """The identity as the client typed it; "DOMAIN\\user" from Windows."""


@dataclass(frozen=True, slots=True)
class EapNak:
    """Legacy Nak (RFC 3748 §5.3.1): the client wants another method."""

    desired: tuple[int, ...] = ()
    """The EAP types the client would accept (0: none)."""


@dataclass(frozen=True, slots=True)
class MsChapV2Challenge:
    """The server's challenge (RFC 2759 §3), in an EAP Request."""

    ms_id: int
    """MS-CHAPv2-ID: the response must echo it."""
    challenge: bytes
    """The 16-octet Authenticator Challenge."""
    name: bytes = b""
    """The server's name (informational)."""


@dataclass(frozen=True, slots=True)
class MsChapV2Response:
    """The client's response (RFC 2759 §4), in an EAP Response."""

    ms_id: int
    """MS-CHAPv2-ID of the challenge it answers."""
    peer_challenge: bytes
    """The client's 16-octet challenge."""
    nt_response: bytes
    """The 24-octet NT-Response."""
    name: bytes = b""
    """The user name the client hashed (RFC 2759 §8.2)."""
    flags: int = 0
    """Reserved; zero."""


@dataclass(frozen=True, slots=True)
class MsChapV2Success:
    """Success (RFC 2759 §5): in a Request it carries "S=<authenticator> M=<text>"; the
    client's Response is the OpCode alone (then `ms_id` and `message` are empty)."""

    ms_id: int = 0
    """MS-CHAPv2-ID (requests only)."""
    message: bytes = b""
    """The success message (requests only)."""


@dataclass(frozen=True, slots=True)
class MsChapV2Failure:
    """Failure (RFC 2759 §6): "E=691 R=0 C=<challenge> V=3 M=<text>" in a Request; the
    client's Response is the OpCode alone."""

    ms_id: int = 0
    """MS-CHAPv2-ID (requests only)."""
    message: bytes = b""
    """The failure message (requests only)."""


class EapTlsFlag(enum.IntFlag):
    """EAP-TLS Flags (RFC 5216 §3.1; RFC 9190 keeps them for TLS 1.3)."""

    LENGTH = 0x80
    """L: the four-octet TLS Message Length follows."""
    MORE = 0x40
    """M: more fragments of this TLS message (or flight) follow."""
    START = 0x20
    """S: the server's EAP-TLS Start (a Request without data)."""


@dataclass(frozen=True, slots=True)
class EapTls:
    """One EAP-TLS packet (RFC 5216 §3.1-3.2): a fragment of the TLS records, an ACK
    (no flags and no data), or the server's Start."""

    flags: int = 0
    """`EapTlsFlag` bits but L, which the encoder sets when `tls_length` is given."""
    tls_length: int | None = None
    """The TLS Message Length: the whole reassembled message (with flag L)."""
    data: bytes = b""
    """This fragment's TLS data."""


@dataclass(frozen=True, slots=True)
class EapOther:
    """A type we do not speak (or an MS-CHAPv2 OpCode we do not), kept as octets."""

    eap_type: int
    """The EAP Type."""
    data: bytes = b""
    """The Type-Data."""


EapData = (
    EapIdentity
    | EapNak
    | MsChapV2Challenge
    | MsChapV2Response
    | MsChapV2Success
    | MsChapV2Failure
    | EapTls
    | EapOther
)
"""The typed content of an EAP Request or Response."""


def _ms(opcode: int, ms_id: int, body: bytes) -> bytes:
    # MS-Length counts from the OpCode: the EAP Length less the EAP header and Type.
    return pack(_MS_HEADER, EapType.MSCHAPV2, opcode, ms_id, 4 + len(body)) + body


def encode_eap_data(code: int, data: EapData) -> bytes:
    """Type and Type-Data of an EAP Request (`code` REQUEST) or Response."""
    response = code == EapCode.RESPONSE
    match data:
        case EapIdentity(identity):
            return bytes([EapType.IDENTITY]) + identity
        case EapNak(desired):
            return bytes([EapType.NAK, *desired])
        case MsChapV2Challenge(ms_id, challenge, name):
            if len(challenge) != _CHALLENGE_VALUE:
                raise ValueError("an MS-CHAPv2 challenge has 16 octets")
            return _ms(
                MsChapV2OpCode.CHALLENGE, ms_id, bytes([_CHALLENGE_VALUE]) + challenge + name
            )
        case MsChapV2Response(ms_id, peer_challenge, nt_response, name, flags):
            if len(peer_challenge) != 16 or len(nt_response) != 24:
                raise ValueError("an MS-CHAPv2 response has a 16- and a 24-octet value")
            value = peer_challenge + bytes(8) + nt_response + bytes([flags])
            return _ms(MsChapV2OpCode.RESPONSE, ms_id, bytes([_RESPONSE_VALUE]) + value + name)
        case MsChapV2Success(ms_id, message) | MsChapV2Failure(ms_id, message):
            opcode = (
                MsChapV2OpCode.SUCCESS
                if isinstance(data, MsChapV2Success)
                else MsChapV2OpCode.FAILURE
            )
            if response:
                return bytes([EapType.MSCHAPV2, opcode])
            return _ms(opcode, ms_id, message)
        case EapTls(flags, tls_length, body):
            flags &= ~EapTlsFlag.LENGTH
            if tls_length is None:
                return bytes([EapType.TLS, flags]) + body
            if not 0 <= tls_length <= 0xFFFFFFFF:
                raise ValueError("an EAP-TLS Message Length has four octets")
            return (
                bytes([EapType.TLS, flags | EapTlsFlag.LENGTH])
                + pack(_TLS_LENGTH, tls_length)
                + body
            )
        case EapOther(eap_type, body):
            return bytes([eap_type]) + body
    raise TypeError(f"not EAP data: {data!r}")


def decode_eap_data(code: int, data: bytes) -> EapData:
    """The typed content of an EAP Request or Response (raises `InvalidSyntax`)."""
    if not data:
        raise InvalidSyntax("EAP request or response without a Type")
    eap_type, rest = data[0], data[1:]
    if eap_type == EapType.IDENTITY:
        return EapIdentity(rest)
    if eap_type == EapType.NAK:
        return EapNak(tuple(rest))
    if eap_type == EapType.MSCHAPV2:
        return _decode_mschapv2(code, rest)
    if eap_type == EapType.TLS:
        return _decode_tls(rest)
    return EapOther(eap_type, rest)


def _decode_mschapv2(code: int, data: bytes) -> EapData:
    buf = Reader(data)
    opcode = buf.pull_uint8()
    if code == EapCode.RESPONSE and opcode in (MsChapV2OpCode.SUCCESS, MsChapV2OpCode.FAILURE):
        # The client's Success and Failure Responses are the OpCode alone.
        if not buf.eof():
            raise InvalidSyntax("MS-CHAPv2 Success or Failure Response with data")
        return MsChapV2Success() if opcode == MsChapV2OpCode.SUCCESS else MsChapV2Failure()
    ms_id = buf.pull_uint8()
    ms_length = buf.pull_uint16()
    if ms_length != len(data):
        raise InvalidSyntax("MS-Length does not match the EAP Length")
    if opcode == MsChapV2OpCode.CHALLENGE and code == EapCode.REQUEST:
        if buf.pull_uint8() != _CHALLENGE_VALUE:
            raise InvalidSyntax("MS-CHAPv2 challenge is not 16 octets")
        return MsChapV2Challenge(ms_id, buf.pull_bytes(_CHALLENGE_VALUE), buf.pull_rest())
    if opcode == MsChapV2OpCode.RESPONSE and code == EapCode.RESPONSE:
        if buf.pull_uint8() != _RESPONSE_VALUE:
            raise InvalidSyntax("MS-CHAPv2 response value is not 49 octets")
        peer_challenge = buf.pull_bytes(16)
        if buf.pull_bytes(8) != bytes(8):
            raise InvalidSyntax("MS-CHAPv2 response with a non-zero reserved field")
        nt_response = buf.pull_bytes(24)
        flags = buf.pull_uint8()
        return MsChapV2Response(ms_id, peer_challenge, nt_response, buf.pull_rest(), flags)
    if code == EapCode.REQUEST and opcode == MsChapV2OpCode.SUCCESS:
        return MsChapV2Success(ms_id, buf.pull_rest())
    if code == EapCode.REQUEST and opcode == MsChapV2OpCode.FAILURE:
        return MsChapV2Failure(ms_id, buf.pull_rest())
    return EapOther(EapType.MSCHAPV2, data)


def _decode_tls(data: bytes) -> EapTls:
    buf = Reader(data)
    flags = buf.pull_uint8()
    tls_length = buf.pull_uint32() if flags & EapTlsFlag.LENGTH else None
    # L lives on as `tls_length`; the reserved bits are kept as sent (the method
    # ignores them, RFC 5216 §3.1).
    return EapTls(flags & ~EapTlsFlag.LENGTH, tls_length, buf.pull_rest())


def eap_payload(code: EapCode, identifier: int, data: EapData | None = None) -> Eap:
    """An EAP payload: a Request or Response with `data`, or a Success or Failure."""
    if code in (EapCode.SUCCESS, EapCode.FAILURE):
        return Eap(code, identifier)
    if data is None:
        raise ValueError("an EAP Request or Response needs data")
    return Eap(code, identifier, encode_eap_data(code, data))


def eap_data(payload: Eap) -> EapData:
    """The typed content of an EAP Request or Response payload (raises `InvalidSyntax`)."""
    if payload.code not in (EapCode.REQUEST, EapCode.RESPONSE):
        raise InvalidSyntax(f"EAP code {payload.code} carries no data")
    return decode_eap_data(payload.code, payload.data)


__all__ = [
    "EapData",
    "EapIdentity",
    "EapNak",
    "EapOther",
    "EapTls",
    "EapTlsFlag",
    "EapType",
    "MsChapV2Challenge",
    "MsChapV2Failure",
    "MsChapV2OpCode",
    "MsChapV2Response",
    "MsChapV2Success",
    "decode_eap_data",
    "eap_data",
    "eap_payload",
    "encode_eap_data",
]
