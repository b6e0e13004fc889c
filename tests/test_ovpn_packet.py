"""The OpenVPN wire codec: round trips, exact layouts, and garbage raising only
PacketError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovpn.packet import (
    CONTROL_OPCODES,
    ControlPacket,
    Opcode,
    PacketError,
    StreamDeframer,
    data_v2_header,
    frame,
    parse_data_v2,
)

session_ids = st.binary(min_size=8, max_size=8)
packet_ids = st.integers(0, 2**32 - 1)


@st.composite
def control_packets(draw: st.DrawFn) -> ControlPacket:
    opcode = draw(st.sampled_from(sorted(CONTROL_OPCODES)))
    acks = tuple(draw(st.lists(packet_ids, max_size=8)))
    if opcode == Opcode.ACK_V1 and not acks:
        acks = (draw(packet_ids),)
    remote = draw(session_ids) if acks else None
    is_ack = opcode == Opcode.ACK_V1
    return ControlPacket(
        opcode,
        draw(st.integers(0, 7)),
        draw(session_ids),
        acks,
        remote,
        None if is_ack else draw(packet_ids),
        b"" if is_ack else draw(st.binary(max_size=64)),
    )


@given(control_packets())
def test_control_round_trip(pkt: ControlPacket) -> None:
    assert ControlPacket.decode(pkt.encode()) == pkt


@given(st.binary(max_size=80))
def test_garbage_raises_only_packet_error(data: bytes) -> None:
    with contextlib.suppress(PacketError):
        ControlPacket.decode(data)


@given(control_packets(), st.data())
def test_truncated_control_raises_packet_error_or_decodes_shorter(
    pkt: ControlPacket, data: st.DataObject
) -> None:
    wire = pkt.encode()
    cut = data.draw(st.integers(0, len(wire) - 1))
    try:
        ControlPacket.decode(wire[:cut])
    except PacketError:
        return
    # Only the payload may be cut without the header noticing.
    assert pkt.payload and cut >= len(wire) - len(pkt.payload)


def test_control_layout() -> None:
    # draft-openvpntech-openvpn-wire-protocol, "Control channel packet format":
    # opcode|key id, session id, ACK count, ACKed ids, remote session id, packet id.
    pkt = ControlPacket(Opcode.CONTROL_V1, 1, bytes(range(8)), (5, 6), b"\xaa" * 8, 7, b"tls")
    wire = pkt.encode()
    assert wire[0] == (4 << 3) | 1
    assert wire[1:9] == bytes(range(8))
    assert wire[9] == 2
    assert wire[10:18] == bytes.fromhex("0000000500000006")
    assert wire[18:26] == b"\xaa" * 8
    assert wire[26:30] == bytes.fromhex("00000007")
    assert wire[30:] == b"tls"


def test_hard_reset_without_acks_has_no_remote_session() -> None:
    pkt = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, b"\x01" * 8, packet_id=0)
    assert pkt.encode() == bytes([7 << 3]) + b"\x01" * 8 + b"\x00" + b"\x00" * 4


@pytest.mark.parametrize(
    "pkt",
    [
        ControlPacket(Opcode.ACK_V1, 0, b"\x01" * 8),  # an ACK without ACKs
        ControlPacket(Opcode.CONTROL_V1, 0, b"\x01" * 8),  # no packet id
        ControlPacket(Opcode.CONTROL_V1, 0, b"\x01" * 7, packet_id=0),  # short session id
        ControlPacket(Opcode.CONTROL_V1, 0, b"\x01" * 8, (1,), None, 0),  # no remote sid
        ControlPacket(Opcode.CONTROL_V1, 0, b"\x01" * 8, tuple(range(9)), b"\x02" * 8, 0),
        ControlPacket(Opcode.CONTROL_V1, 8, b"\x01" * 8, packet_id=0),  # key id > 7
    ],
)
def test_encode_refuses_inconsistent_packets(pkt: ControlPacket) -> None:
    with pytest.raises(PacketError):
        pkt.encode()


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        bytes([1 << 3]) + bytes(13),  # P_CONTROL_HARD_RESET_CLIENT_V1: key method 1
        bytes([9 << 3]) + bytes(13),  # data, not control
        bytes([4 << 3]) + bytes(8) + bytes([9]) + bytes(60),  # nine ACKs
        bytes([5 << 3]) + bytes(8) + b"\x00",  # P_ACK_V1 with no ACKs
        bytes([5 << 3]) + bytes(8) + b"\x01" + bytes(12) + b"x",  # trailing octet
    ],
)
def test_decode_refuses(wire: bytes) -> None:
    with pytest.raises(PacketError):
        ControlPacket.decode(wire)


@given(st.integers(0, 7), st.integers(0, 2**24 - 1), st.binary(max_size=20))
def test_data_v2_header_round_trip(key_id: int, peer_id: int, rest: bytes) -> None:
    header = data_v2_header(key_id, peer_id)
    assert header[0] == (9 << 3) | key_id
    assert parse_data_v2(header + rest) == (key_id, peer_id)


def test_data_v2_refuses() -> None:
    with pytest.raises(PacketError):
        parse_data_v2(bytes([9 << 3, 0, 0]))
    with pytest.raises(PacketError):
        parse_data_v2(bytes([4 << 3, 0, 0, 0]))
    with pytest.raises(PacketError):
        data_v2_header(0, 2**24)


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.data())
def test_tcp_framing_round_trip_in_any_pieces(packets: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    deframer = StreamDeframer()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += deframer.feed(stream[start:end])
    assert out == packets
    assert deframer.pending == 0


def test_tcp_framing_refuses_zero_and_oversized_lengths() -> None:
    with pytest.raises(PacketError):
        StreamDeframer().feed(b"\x00\x00")
    with pytest.raises(PacketError):
        StreamDeframer(max_packet=100).feed(b"\x00\x65" + bytes(101))
    with pytest.raises(PacketError):
        frame(b"")
