"""UDP encapsulation of ESP for NAT traversal (RFC 3948).

On port 4500 one socket carries three things, told apart by their first octets
(RFC 3948 §2.2, §2.3): IKE messages behind a 4-octet zero non-ESP marker, ESP
packets (whose SPI is never zero), and one-octet 0xFF NAT keepalives.
"""

from __future__ import annotations

import enum
import struct

from esp.suites import ESP_HEADER_LEN

NAT_T_PORT = 4500
"""UDP port of IKE and ESP once NAT traversal is on (RFC 3948 §2, RFC 7296 §2.23)."""
NON_ESP_MARKER = b"\x00\x00\x00\x00"
"""Prefix of IKE messages on port 4500 (RFC 3948 §2.2)."""
NAT_KEEPALIVE = b"\xff"
"""The NAT-keepalive payload (RFC 3948 §2.3)."""
UDP_HEADER_LEN = 8

MIN_ESP_LEN = ESP_HEADER_LEN
"""SPI + sequence number: the least an ESP packet can be (RFC 4303 §2)."""

_UDP_HEADER = struct.Struct("!HHHH")
_MARKER_LEN = len(NON_ESP_MARKER)
# The non-ESP marker and a whole IKE header (28 octets, RFC 7296 §3.1): the least an
# IKE message on port 4500 can be.
_MIN_IKE = _MARKER_LEN + 28


class DatagramKind(enum.Enum):
    """What a UDP payload received on port 4500 is."""

    IKE = "ike"
    """An IKE message behind the non-ESP marker."""
    ESP = "esp"
    """An ESP packet starting with its (non-zero) SPI."""
    KEEPALIVE = "keepalive"
    """A NAT keepalive, to be ignored."""
    INVALID = "invalid"
    """Too short to be any of them; drop it."""


def classify(payload: bytes) -> DatagramKind:
    """Tell IKE, ESP and keepalives apart in a port-4500 UDP payload (RFC 3948 §2).

    The one statement of the port's rules. Per-packet loops (`DataPlane.from_udp`,
    `Pump._read_nat_gro`) take the ESP case first with the same two tests inline,
    `len(payload) >= MIN_ESP_LEN and payload[:4] != NON_ESP_MARKER`, which is exactly
    the ESP verdict here (a keepalive is one octet), and call this for the rest.
    """
    n = len(payload)
    if payload == NAT_KEEPALIVE:
        return DatagramKind.KEEPALIVE
    if payload[:_MARKER_LEN] == NON_ESP_MARKER:
        # Shorter than an IKE header cannot be IKE.
        return DatagramKind.IKE if n >= _MIN_IKE else DatagramKind.INVALID
    if n >= MIN_ESP_LEN:
        return DatagramKind.ESP
    return DatagramKind.INVALID


def strip_marker(payload: bytes) -> bytes:
    """The IKE message behind the non-ESP marker of a payload `classify`d as IKE."""
    return payload[_MARKER_LEN:]


def frame_ike(message: bytes) -> bytes:
    """UDP payload for sending an IKE message on port 4500 (RFC 3948 §2.2)."""
    return NON_ESP_MARKER + message


def udp_header(src_port: int, dst_port: int, payload_len: int) -> bytes:
    """UDP header for ESP-in-UDP with a zero checksum.

    RFC 3948 §2.1 lets an IPv4 sender put 0 in the checksum. Only for raw
    packets over IPv4 (tests, captures): a kernel UDP socket writes its own.
    """
    return _UDP_HEADER.pack(src_port, dst_port, UDP_HEADER_LEN + payload_len, 0)


def encapsulate_udp(
    esp_packet: bytes, src_port: int = NAT_T_PORT, dst_port: int = NAT_T_PORT
) -> bytes:
    """UDP header followed by the ESP packet (RFC 3948 §2.1)."""
    return udp_header(src_port, dst_port, len(esp_packet)) + esp_packet


def decapsulate_udp(datagram: bytes) -> tuple[int, int, bytes] | None:
    """(source port, destination port, payload) of a raw UDP datagram, or None if
    its length field disagrees with the octets present."""
    if len(datagram) < UDP_HEADER_LEN:
        return None
    src_port, dst_port, length, _checksum = _UDP_HEADER.unpack_from(datagram)
    if length < UDP_HEADER_LEN or length > len(datagram):
        return None
    return src_port, dst_port, datagram[UDP_HEADER_LEN:length]
