"""UDP encapsulation of ESP and the port-4500 demultiplexing (RFC 3948)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ikev2.constants
from esp.udpencap import (
    NAT_KEEPALIVE,
    NON_ESP_MARKER,
    DatagramKind,
    classify,
    decapsulate_udp,
    encapsulate_udp,
    frame_ike,
    strip_marker,
    udp_header,
)

IKE_HEADER = bytes(range(1, 29))  # 28 octets: the smallest IKE message (RFC 7296 §3.1)


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"\xff", DatagramKind.KEEPALIVE),  # RFC 3948 §2.3
        (NON_ESP_MARKER + IKE_HEADER, DatagramKind.IKE),  # RFC 3948 §2.2
        (NON_ESP_MARKER + IKE_HEADER[:27], DatagramKind.INVALID),
        (NON_ESP_MARKER, DatagramKind.INVALID),
        (b"\x00\x00\x01\x00" + bytes(4), DatagramKind.ESP),  # SPI 256, sequence 0
        (b"\x12\x34\x56\x78\x00\x00\x00", DatagramKind.INVALID),  # 7 octets
        (b"", DatagramKind.INVALID),
        (b"\xfe", DatagramKind.INVALID),
        (b"\xff\xff", DatagramKind.INVALID),
    ],
)
def test_classify(payload: bytes, kind: DatagramKind) -> None:
    assert classify(payload) is kind


def test_ike_framing_round_trip() -> None:
    framed = frame_ike(IKE_HEADER)
    assert framed[:4] == b"\x00\x00\x00\x00"
    assert classify(framed) is DatagramKind.IKE
    assert strip_marker(framed) == IKE_HEADER


def test_keepalive_is_one_ff_octet() -> None:
    assert NAT_KEEPALIVE == b"\xff"


def test_udp_header_and_round_trip() -> None:
    esp = b"\xc0\xff\xee\x01" + bytes(40)
    datagram = encapsulate_udp(esp, 4500, 4501)
    assert datagram[:8] == udp_header(4500, 4501, len(esp))
    assert datagram[:8].hex() == "1194119500340000"  # length 52, checksum 0 (RFC 3948 §2.1)
    assert decapsulate_udp(datagram) == (4500, 4501, esp)
    # Octets past the UDP length (link padding) are not payload.
    assert decapsulate_udp(datagram + b"\x00\x00") == (4500, 4501, esp)


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        bytes(7),
        bytes.fromhex("1194119400070000"),
        bytes.fromhex("1194119400100000") + bytes(4),
    ],
)
def test_bad_udp_lengths(datagram: bytes) -> None:
    assert decapsulate_udp(datagram) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_classify_and_decapsulate_never_raise(data: bytes) -> None:
    assert isinstance(classify(data), DatagramKind)
    parsed = decapsulate_udp(data)
    assert parsed is None or len(parsed[2]) <= len(data) - 8


def test_the_marker_is_written_and_read_by_this_module_only() -> None:
    # The daemon puts the marker in front of the IKE messages it sends from port 4500
    # with `frame_ike` (RFC 7296 §2.23, `Pump.send_datagram`); the IKE core sends bare
    # messages and holds no copy of the four octets. So the demultiplexer recognises
    # exactly what is written.
    assert not hasattr(ikev2.constants, "NON_ESP_MARKER")
    framed = frame_ike(IKE_HEADER)
    assert framed[:4] == NON_ESP_MARKER
    assert classify(framed) is DatagramKind.IKE and strip_marker(framed) == IKE_HEADER
