"""The OpenVPN wire format: control and data packets, and TCP's length framing.

Every packet starts with one octet: the opcode in the high 5 bits and the key id in
the low 3 (draft-openvpntech-openvpn-wire-protocol, "Packet format"). Control packets
then carry the sender's session id, an ACK array (with the receiver's session id when
it is not empty) and, except P_ACK_V1, a packet id and the TLS payload. P_DATA_V2
carries a 24-bit peer id and an opaque, encrypted rest. Over TCP each packet is
preceded by its length in 16 bits.

Decoders raise only `PacketError` on short or malformed input.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

SESSION_ID_LEN = 8
MAX_ACKS = 8
"""The most ACKs in one array; OpenVPN refuses more (reliable.h RELIABLE_ACK_SIZE)."""
DATA_V2_HEADER_LEN = 4


class PacketError(ValueError):
    """Short, truncated or malformed input; the packet is dropped."""


class Opcode(enum.IntEnum):
    CONTROL_SOFT_RESET_V1 = 3
    CONTROL_V1 = 4
    ACK_V1 = 5
    DATA_V1 = 6
    CONTROL_HARD_RESET_CLIENT_V2 = 7
    CONTROL_HARD_RESET_SERVER_V2 = 8
    DATA_V2 = 9
    CONTROL_HARD_RESET_CLIENT_V3 = 10
    CONTROL_WKC_V1 = 11


CONTROL_OPCODES = frozenset(
    {
        Opcode.CONTROL_SOFT_RESET_V1,
        Opcode.CONTROL_V1,
        Opcode.ACK_V1,
        Opcode.CONTROL_HARD_RESET_CLIENT_V2,
        Opcode.CONTROL_HARD_RESET_SERVER_V2,
        Opcode.CONTROL_HARD_RESET_CLIENT_V3,
    }
)
"""Control opcodes this codec understands (P_CONTROL_WKC_V1 needs tls-crypt-v2)."""

HARD_RESET_CLIENT = frozenset(
    {Opcode.CONTROL_HARD_RESET_CLIENT_V2, Opcode.CONTROL_HARD_RESET_CLIENT_V3}
)


def split_first_octet(data: bytes) -> tuple[int, int]:
    """(opcode number, key id) of a packet; the opcode may be one we do not know."""
    if not data:
        raise PacketError("empty packet")
    return data[0] >> 3, data[0] & 0x07


def first_octet(opcode: int, key_id: int) -> int:
    if not 0 <= key_id <= 7 or not 0 <= opcode <= 31:
        raise PacketError(f"opcode {opcode} / key id {key_id} out of range")
    return (opcode << 3) | key_id


@dataclass(frozen=True)
class ControlPacket:
    """One control-channel packet (plain: no tls-auth / tls-crypt wrapping)."""

    opcode: Opcode
    key_id: int
    session_id: bytes
    """The sender's session id (8 octets)."""
    acks: tuple[int, ...] = ()
    """Packet ids of the receiver's packets that the sender acknowledges."""
    remote_session_id: bytes | None = None
    """The receiver's session id; present exactly when `acks` is not empty."""
    packet_id: int | None = None
    """This packet's id in the reliability layer; None only for P_ACK_V1."""
    payload: bytes = b""

    def encode(self) -> bytes:
        if len(self.session_id) != SESSION_ID_LEN:
            raise PacketError("session id must be 8 octets")
        if len(self.acks) > MAX_ACKS:
            raise PacketError(f"{len(self.acks)} ACKs, at most {MAX_ACKS}")
        out = bytearray((first_octet(self.opcode, self.key_id),))
        out += self.session_id
        out.append(len(self.acks))
        for ack in self.acks:
            out += struct.pack("!I", ack)
        if self.acks:
            if self.remote_session_id is None or len(self.remote_session_id) != SESSION_ID_LEN:
                raise PacketError("ACKs need the remote session id")
            out += self.remote_session_id
        if self.opcode == Opcode.ACK_V1:
            if self.packet_id is not None or self.payload:
                raise PacketError("P_ACK_V1 has no packet id and no payload")
            if not self.acks:
                raise PacketError("P_ACK_V1 without ACKs")
        else:
            if self.packet_id is None:
                raise PacketError(f"{self.opcode.name} needs a packet id")
            out += struct.pack("!I", self.packet_id)
            out += self.payload
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> ControlPacket:
        number, key_id = split_first_octet(data)
        try:
            opcode = Opcode(number)
        except ValueError:
            raise PacketError(f"unknown opcode {number}") from None
        if opcode not in CONTROL_OPCODES:
            raise PacketError(f"{opcode.name} is not a control packet")
        pos = 1
        if len(data) < pos + SESSION_ID_LEN + 1:
            raise PacketError("control packet shorter than its header")
        session_id = data[pos : pos + SESSION_ID_LEN]
        pos += SESSION_ID_LEN
        n_acks = data[pos]
        pos += 1
        if n_acks > MAX_ACKS:
            raise PacketError(f"{n_acks} ACKs, at most {MAX_ACKS}")
        end = pos + 4 * n_acks + (SESSION_ID_LEN if n_acks else 0)
        if len(data) < end:
            raise PacketError("ACK array truncated")
        acks = struct.unpack_from(f"!{n_acks}I", data, pos)
        pos += 4 * n_acks
        remote: bytes | None = None
        if n_acks:
            remote = data[pos : pos + SESSION_ID_LEN]
            pos += SESSION_ID_LEN
        if opcode == Opcode.ACK_V1:
            if not n_acks:
                raise PacketError("P_ACK_V1 without ACKs")
            if pos != len(data):
                raise PacketError("trailing octets after P_ACK_V1")
            return cls(opcode, key_id, session_id, acks, remote)
        if len(data) < pos + 4:
            raise PacketError("packet id truncated")
        (packet_id,) = struct.unpack_from("!I", data, pos)
        return cls(opcode, key_id, session_id, acks, remote, packet_id, data[pos + 4 :])


def data_v2_header(key_id: int, peer_id: int) -> bytes:
    """The 4 octets that start a P_DATA_V2 packet (also its AEAD associated data)."""
    if not 0 <= peer_id < 1 << 24:
        raise PacketError(f"peer id {peer_id} is not a 24-bit number")
    return struct.pack("!I", (first_octet(Opcode.DATA_V2, key_id) << 24) | peer_id)


def parse_data_v2(data: bytes) -> tuple[int, int]:
    """(key id, peer id) of a P_DATA_V2 packet."""
    number, key_id = split_first_octet(data)
    if number != Opcode.DATA_V2:
        raise PacketError(f"opcode {number} is not P_DATA_V2")
    if len(data) < DATA_V2_HEADER_LEN:
        raise PacketError("P_DATA_V2 shorter than its header")
    return key_id, int.from_bytes(data[1:4], "big")


# --- TCP: every packet behind a 16-bit length -------------------------------------


def frame(packet: bytes) -> bytes:
    """The packet as sent on a TCP stream."""
    if not 0 < len(packet) <= 0xFFFF:
        raise PacketError(f"cannot frame a {len(packet)}-octet packet")
    return struct.pack("!H", len(packet)) + packet


class StreamDeframer:
    """Cuts a TCP byte stream back into packets."""

    def __init__(self, max_packet: int = 0xFFFF) -> None:
        self._buf = bytearray()
        self.max_packet = max_packet

    def feed(self, data: bytes) -> list[bytes]:
        """The complete packets `data` finishes; PacketError if the stream is broken
        (a zero or oversized length), after which the connection must be closed."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 2:
            (length,) = struct.unpack_from("!H", self._buf)
            if length == 0 or length > self.max_packet:
                raise PacketError(f"TCP frame length {length}")
            if len(self._buf) < 2 + length:
                break
            out.append(bytes(self._buf[2 : 2 + length]))
            del self._buf[: 2 + length]
        return out

    @property
    def pending(self) -> int:
        """Octets of an incomplete packet held back."""
        return len(self._buf)
